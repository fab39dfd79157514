"""locked(), owned(), release(key, token), CancelToken, extend refusals, and one lock() object
shared by threads (issue 14)."""
import threading

import pytest

import keylock
from harness import Daemon, wait_for


def test_locked_and_owned_follow_the_daemon(make_client):
    a = make_client(name="a")
    b = make_client(name="b")
    assert not a.locked("k")
    lease = a.acquire("k", ttl=30)
    assert b.locked("k")
    assert lease.owned()
    # An operator ends it from elsewhere: valid is this process's view, owned() asks.
    b.release("k", lease.token)
    assert not b.locked("k")
    assert lease.valid and not lease.owned()
    with pytest.raises(keylock.NotHeld):
        lease.extend(30)
    assert not lease.valid


def test_release_of_an_unknown_token_is_not_held(client):
    lease = client.acquire("k", ttl=30)
    with pytest.raises(keylock.NotHeld):
        client.release("k", lease.token + 1)
    assert client.locked("k")


def test_a_cancel_token_withdraws_a_waiting_acquire_from_another_thread(make_client):
    holder = make_client(name="holder")
    waiter = make_client(name="waiter")
    held = holder.acquire("k", ttl=30)
    token = keylock.CancelToken()
    outcome = {}

    def wait():
        try:
            outcome["lease"] = waiter.acquire("k", ttl=5, cancel=token)
        except BaseException as e:  # noqa: B902 - the test reports whatever ends the wait
            outcome["error"] = e

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    wait_for(lambda: holder.inspect("k").waiters == 1, what="the waiter queued")
    token.cancel()
    thread.join(10)
    assert isinstance(outcome.get("error"), keylock.Cancelled), outcome
    wait_for(lambda: holder.inspect("k").waiters == 0, what="the waiter withdrawn")
    held.release()
    assert not holder.locked("k")
    # A token already cancelled: Cancelled at once, nothing sent.
    with pytest.raises(keylock.Cancelled):
        waiter.acquire("k", cancel=token)
    assert not holder.locked("k")


def test_an_extend_refused_for_its_ttl_keeps_the_lease():
    d = Daemon("--max-ttl-ms", "10000", "--default-ttl-ms", "5000").start()
    c = keylock.Client(d.address)
    try:
        lease = c.acquire("k", ttl=5)
        with pytest.raises(keylock.ProtocolError):
            lease.extend(60)
        assert lease.valid and lease.owned()
        lease.extend(8)
        lease.release()
        assert not c.locked("k")
    finally:
        c.close()
        d.cleanup()


def test_one_lock_object_entered_by_two_threads_releases_each_its_own(make_client):
    c = make_client()
    shared = c.lock("k", limit=2, ttl=30)
    inside = threading.Barrier(2, timeout=10)
    leave_first = threading.Event()
    tokens = {}

    def first():
        with shared as lease:
            tokens["first"] = lease.token
            inside.wait()
            leave_first.wait(10)

    def second():
        with shared as lease:
            tokens["second"] = lease.token
            inside.wait()
            leave_first.set()
            # The first thread's exit must release its lease, not this one.
            wait_for(lambda: len(c.inspect("k").holders) == 1, what="the first lease released")
            tokens["left"] = [h.token for h in c.inspect("k").holders]

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert tokens["first"] != tokens["second"]
    assert tokens["left"] == [tokens["second"]]
    assert not c.inspect("k").held
