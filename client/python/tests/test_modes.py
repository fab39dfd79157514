"""Issue 12 against a real keylockd: shared mode, several keys at once, opt-in reentrancy."""
import asyncio
import threading
import time

import pytest

import keylock
from harness import wait_for

BOUND = 10.0  # generous bound for "this must happen": a dead daemon fails, never hangs


# ---- shared mode --------------------------------------------------------------------------


def test_shared_locks_admit_two_holders_at_once_while_exclusive_excludes(make_client):
    a, b, writer = make_client(name="reader-a"), make_client(name="reader-b"), make_client()
    first = a.acquire("prices", wait=0, shared=True)
    second = b.acquire("prices", wait=0, shared=True)
    assert first.shared and first.mode == keylock.SHARED and first.token != second.token
    assert writer.try_acquire("prices") is None
    info = writer.inspect("prices")
    assert [h.mode for h in info.holders] == ["shared", "shared"]
    assert {h.client for h in info.holders} == {"reader-a", "reader-b"}
    assert all(h.keys == () for h in info.holders)
    first.release()
    second.release()
    lease = writer.try_acquire("prices")
    assert lease is not None and lease.mode == keylock.EXCLUSIVE


def test_an_exclusive_holder_excludes_shared_and_a_waiting_writer_queues_readers(make_client):
    a, b = make_client(), make_client()
    held = a.acquire("rw")
    assert b.try_acquire("rw", shared=True) is None
    held.release()

    reader = a.acquire("rw", shared=True, wait=BOUND)
    granted = threading.Event()

    def write():
        with b.lock("rw", wait=BOUND):
            granted.set()

    t = threading.Thread(target=write)
    t.start()
    try:
        wait_for(lambda: a.inspect("rw").waiters == 1, what="the writer to queue")
        # A new reader queues behind the waiting writer: writers never starve.
        assert make_client().try_acquire("rw", shared=True) is None
        reader.release()
        assert granted.wait(BOUND)
    finally:
        t.join(BOUND)


def test_lock_and_the_decorator_take_shared(make_client):
    client, observer = make_client(), make_client()
    with client.lock("cfg", shared=True) as lease:
        assert lease.shared and observer.inspect("cfg").holders[0].mode == "shared"

    @keylock.lock_decorator(key_maker=lambda: "cfg", shared=True, client=client)
    def read():
        return observer.inspect("cfg").holders[0].mode

    assert read() == "shared"


def test_shared_with_a_limit_above_one_is_a_protocol_error(client):
    with pytest.raises(keylock.ProtocolError):
        client.acquire("sem", limit=3, shared=True, wait=0)


# ---- several keys -------------------------------------------------------------------------


def test_lock_all_grants_every_key_atomically(make_client):
    holder, client, observer = make_client(), make_client(), make_client()
    busy = holder.acquire("acct:42")
    result = {}

    def take():
        try:
            result["lease"] = client.acquire_all(["acct:17", "acct:42"], wait=BOUND)
        except keylock.Error as e:  # pragma: no cover - reported below
            result["error"] = e

    t = threading.Thread(target=take)
    t.start()
    try:
        wait_for(lambda: observer.inspect("acct:42").waiters == 1, what="the set to queue")
        # The free key is not taken while the other is busy: it waits in both queues.
        free = observer.inspect("acct:17")
        assert not free.held and free.waiters == 1
        busy.release()
    finally:
        t.join(BOUND)
    assert "error" not in result, result.get("error")
    lease = result["lease"]
    assert lease.keys == ("acct:17", "acct:42") and lease.key == "acct:17"
    for key in lease.keys:
        holders = observer.inspect(key).holders
        assert [h.token for h in holders] == [lease.token]  # one lease, one token
        assert sorted(holders[0].keys) == ["acct:17", "acct:42"]
    lease.release()
    assert not observer.inspect("acct:17").held and not observer.inspect("acct:42").held


def test_try_acquire_all_takes_no_key_when_one_is_busy(make_client):
    holder, client = make_client(), make_client()
    busy = holder.acquire("b")
    assert client.try_acquire_all(["a", "b", "c"]) is None
    assert not client.inspect("a").held and not client.inspect("c").held
    busy.release()
    lease = client.try_acquire_all(("a", "b", "c"))
    assert lease is not None and len(lease.keys) == 3
    lease.release()


def test_lock_all_extend_and_release_act_on_the_whole_set(make_client):
    client, observer = make_client(), make_client()
    with client.lock_all(["x", "y"], ttl=2, auto_extend=False) as lease:
        lease.extend(60)
        for key in ("x", "y"):
            assert observer.inspect(key).holders[0].ttl_ms_left > 2000
    wait_for(lambda: not observer.inspect("x").held and not observer.inspect("y").held,
             what="the set to be released")


def test_the_expired_event_of_a_set_marks_its_lease_lost(client):
    lost = []
    lease = client.acquire_all(["p", "q"], ttl=0.2, auto_extend=False, on_lost=lost.append)
    wait_for(lambda: lost, what="on_lost")
    assert not lease.valid
    assert lost[0].reason == "expired" and lost[0].keys == ("p", "q")
    assert lost[0].token == lease.token
    with pytest.raises(keylock.NotHeld):
        lease.release()


def test_bad_sets_are_refused(client):
    with pytest.raises(TypeError):
        client.acquire_all("ab")  # a str is not a list of keys
    with pytest.raises(TypeError):
        client.lock_all("ab")
    with pytest.raises(TypeError):
        client.acquire_all(["a", 1])
    with pytest.raises(keylock.ProtocolError):
        client.acquire_all([], wait=0)
    with pytest.raises(keylock.ProtocolError):
        client.acquire_all(["a", "a"], wait=0)


def test_a_key_maker_returning_several_keys_locks_them_all(make_client):
    client, observer = make_client(), make_client()

    @keylock.lock_decorator(key_maker=lambda src, dst: [f"acct:{src}", f"acct:{dst}"],
                            client=client)
    def transfer(src, dst):
        return [observer.inspect(f"acct:{k}").holders[0].keys for k in (src, dst)]

    seen = transfer(1, 2)
    assert [sorted(k) for k in seen] == [["acct:1", "acct:2"]] * 2


# ---- reentrancy ---------------------------------------------------------------------------


def test_a_nested_decorated_call_on_the_same_key_completes_at_once(make_client):
    """The seed case: f decorated on key K calls g decorated on K. Without reentrancy g waits
    behind f (kept alive by auto-extend) until its wait runs out; with it, g runs under f's
    lease and no second acquire reaches the daemon."""
    client, observer = make_client(), make_client()
    tokens = []

    @keylock.lock_decorator(key_maker=lambda n: "K", ttl=1, wait=BOUND, reentrant=True,
                            client=client)
    def inner(n):
        tokens.append(observer.inspect("K").holders[0].token)
        return n + 1

    @keylock.lock_decorator(key_maker=lambda n: "K", ttl=1, wait=BOUND, reentrant=True,
                            client=client)
    def outer(n):
        tokens.append(observer.inspect("K").holders[0].token)
        return inner(n) * 10

    before = observer.stats()["acquires"]
    assert outer(1) == 20
    assert len(tokens) == 2 and tokens[0] == tokens[1]
    assert observer.stats()["acquires"] - before == 1
    wait_for(lambda: not observer.inspect("K").held, what="the outer release")


def test_without_reentrant_a_nested_acquire_queues_behind_its_own_thread(client):
    with client.lock("self", wait=BOUND):
        with pytest.raises(keylock.Timeout):
            client.acquire("self", wait=0)


def test_a_reentrant_lease_is_released_by_its_outermost_holder_and_renewed_until_then(
    make_client,
):
    client, observer = make_client(), make_client()
    with client.lock("nest", ttl=0.3, reentrant=True) as outer:
        assert outer.depth == 1
        with client.lock("nest", reentrant=True) as inner:
            assert inner.token == outer.token and outer.depth == 2
        assert outer.depth == 1 and outer.valid
        assert observer.inspect("nest").holders[0].token == outer.token
        # Auto-extend keeps running after the inner exit: the lease outlives several ttls.
        deadline = time.monotonic() + 1.2
        wait_for(lambda: not outer.valid or time.monotonic() >= deadline, what="four ttls")
        assert outer.valid and observer.inspect("nest").holders[0].token == outer.token
    wait_for(lambda: not observer.inspect("nest").held, what="the outermost release")
    again = client.acquire("nest", reentrant=True)
    assert again.token > outer.token and again.depth == 1
    again.release()


def test_a_nested_mode_mismatch_raises(client):
    with client.lock("rw", reentrant=True) as outer:
        with pytest.raises(keylock.ReentrancyError):
            client.acquire("rw", shared=True, reentrant=True)
        assert outer.depth == 1 and outer.valid
    with client.lock("rw", shared=True, reentrant=True):
        with pytest.raises(keylock.ReentrancyError):
            client.acquire("rw", reentrant=True)
        with client.lock("rw", shared=True, reentrant=True) as inner:
            assert inner.depth == 2


def test_nested_sets_must_be_equal_in_any_order(client):
    with client.lock_all(["m", "n"], reentrant=True) as outer:
        with client.lock_all(["n", "m"], reentrant=True) as same:
            assert same.token == outer.token and outer.depth == 2
        with pytest.raises(keylock.ReentrancyError):
            client.acquire("m", reentrant=True)
        with pytest.raises(keylock.ReentrancyError):
            client.acquire_all(["m", "n", "o"], reentrant=True)
        with client.lock("o", reentrant=True) as other:  # disjoint: another lock
            assert other.token != outer.token
        assert outer.depth == 1


def test_reentrancy_is_per_thread(client):
    with client.lock("per-thread", reentrant=True) as outer:
        seen = {}

        def other():
            seen["lease"] = client.try_acquire("per-thread", reentrant=True)

        t = threading.Thread(target=other)
        t.start()
        t.join(BOUND)
        assert seen == {"lease": None} and outer.depth == 1


def test_reentrancy_is_per_asyncio_task(client):
    """Two tasks on one event loop share a thread but not a hold: the second task's acquire
    goes to the daemon (and is refused with wait=0) instead of entering the first's lease."""

    async def main():
        outer = client.acquire("per-task", reentrant=True)
        try:

            async def other():
                return client.try_acquire("per-task", reentrant=True)

            other_lease = await asyncio.create_task(other())
            same_task = client.acquire("per-task", reentrant=True)
            depth = outer.depth
            same_task.release()
            return other_lease, depth
        finally:
            outer.release()

    other_lease, depth = asyncio.run(main())
    assert other_lease is None and depth == 2


def test_an_inner_exit_of_a_lost_reentrant_lease_raises_not_held(client):
    outer = client.acquire("fleeting", ttl=0.2, auto_extend=False, reentrant=True)
    inner = client.acquire("fleeting", reentrant=True)
    wait_for(lambda: not outer.valid, what="the lease to expire")
    with pytest.raises(keylock.NotHeld):
        inner.release()
    with pytest.raises(keylock.NotHeld):  # a nested acquire says so instead of a dead lease
        client.acquire("fleeting", reentrant=True)
    with pytest.raises(keylock.NotHeld):
        outer.release()


def test_a_garbage_collected_inner_lease_leaves_the_outer_hold(client):
    outer = client.acquire("gc", reentrant=True)
    inner = client.acquire("gc", reentrant=True)
    assert outer.depth == 2
    del inner
    wait_for(lambda: outer.depth == 1, what="the dropped inner hold to be left")
    assert outer.valid and client.inspect("gc").held
    outer.release()
