"""Client against a real keylockd: acquire/release, waits, limits, leases, errors."""
import gc
import threading
import time

import pytest

import keylock
from harness import PATHS, connections, take_lane, wait_for


def test_acquire_returns_a_lease_that_inspect_shows_and_release_ends(client):
    lease = client.acquire("report:monthly", ttl=10)
    assert isinstance(lease.token, int) and lease.token > 0
    assert lease.key == "report:monthly" and lease.valid
    info = client.inspect("report:monthly")
    assert info.held and info.limit == 1 and info.waiters == 0
    assert [h.token for h in info.holders] == [lease.token]
    assert info.holders[0].client == "tests"
    assert 9000 <= info.holders[0].ttl_ms_left <= 10000
    lease.release()
    assert not lease.valid
    assert not client.inspect("report:monthly").held
    lease.release()  # a second release does nothing


def test_keys_are_utf8_text(client):
    with client.lock("отчёт:月次") as lease:
        assert client.inspect("отчёт:月次").holders[0].token == lease.token


def test_fencing_tokens_strictly_increase_across_keys(client):
    tokens = []
    for i in range(20):
        with client.lock(f"fence:{i % 3}") as lease:
            tokens.append(lease.token)
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)


def test_try_acquire_returns_none_while_another_holds_the_key(make_client):
    a, b = make_client(), make_client()
    held = a.acquire("busy")
    assert b.try_acquire("busy") is None
    held.release()
    lease = b.try_acquire("busy")
    assert lease is not None and lease.valid
    lease.release()


def test_acquire_with_a_wait_raises_timeout_when_not_granted(make_client):
    a, b = make_client(), make_client()
    held = a.acquire("slow")
    start = time.monotonic()
    with pytest.raises(keylock.Timeout) as info:
        b.acquire("slow", wait=0.2)
    assert info.value.code == "timeout"
    assert isinstance(info.value, keylock.Error)
    assert time.monotonic() - start >= 0.19
    held.release()


def test_waiters_are_granted_in_fifo_order_the_moment_the_key_frees(make_client):
    holder = make_client()
    lease = holder.acquire("fifo")
    order = []
    threads = []
    for i in range(3):
        c = make_client()

        def wait_turn(c=c, i=i):
            with c.lock("fifo", wait=10):
                order.append(i)

        t = threading.Thread(target=wait_turn)
        t.start()
        threads.append(t)
        wait_for(lambda: holder.inspect("fifo").waiters == i + 1, what=f"waiter {i} queued")
    lease.release()
    for t in threads:
        t.join(10)
    assert order == [0, 1, 2]


@pytest.mark.parametrize("spin", [0, 1.0])
def test_a_caller_that_spins_for_its_answer_or_never_spins_sees_the_same_answers(
    make_client, spin
):
    # spin=1.0 spins on every call (recent answers always came within it), reading the socket
    # until the answer is there; spin=0 always sleeps in poll(2).
    c, holder = make_client(spin=spin), make_client()
    tokens = []
    for _ in range(50):
        with c.lock("spin:free") as lease:
            tokens.append(lease.token)
    assert tokens == sorted(tokens) and len(set(tokens)) == 50
    held = holder.acquire("spin:held")
    assert c.try_acquire("spin:held") is None
    got = []
    t = threading.Thread(target=lambda: got.append(c.acquire("spin:held", wait=10)))
    t.start()
    wait_for(lambda: holder.inspect("spin:held").waiters == 1, what="the spinner queued")
    held.release()
    t.join(10)
    assert got and got[0].valid and got[0].token > held.token
    got[0].release()


def test_limit_admits_that_many_holders_and_another_limit_is_a_conflict(make_client):
    a, b, c = make_client(), make_client(), make_client()
    first = a.acquire("pool", limit=2)
    second = b.acquire("pool", limit=2)
    assert c.try_acquire("pool", limit=2) is None
    with pytest.raises(keylock.Conflict) as info:
        c.acquire("pool", limit=3, wait=0)
    assert info.value.code == "conflict"
    assert len(a.inspect("pool").holders) == 2
    first.release()
    second.release()


def test_a_key_longer_than_the_daemon_limit_is_a_protocol_error(client):
    with pytest.raises(keylock.ProtocolError) as info:
        client.acquire("k" * 1025, wait=0)
    assert info.value.code == "bad_request"
    client.acquire("k" * 1024, wait=0).release()  # the limit itself is fine


def test_invalid_arguments_are_refused_before_anything_is_sent(client):
    with pytest.raises(ValueError):
        client.acquire("k", ttl=0)
    with pytest.raises(ValueError):
        client.acquire("k", wait=-1)
    with pytest.raises(TypeError):
        client.acquire(b"k")
    with pytest.raises(ValueError):
        keylock.Client("127.0.0.1:notaport")


def test_extend_sets_the_remaining_time(client):
    lease = client.acquire("ext", ttl=1, auto_extend=False)
    lease.extend(20)
    assert client.inspect("ext").holders[0].ttl_ms_left > 15000
    lease.release()
    with pytest.raises(keylock.NotHeld):
        lease.extend(1)


def test_a_lease_that_runs_out_is_lost_with_on_lost_and_release_raises_not_held(client):
    lost = []
    event = threading.Event()

    def on_lost(info):
        lost.append(info)
        event.set()

    lease = client.acquire("short", ttl=0.2, auto_extend=False, on_lost=on_lost)
    assert event.wait(10)
    assert not lease.valid
    assert lost[0].reason == "expired" and lost[0].token == lease.token and lost[0].key == "short"
    with pytest.raises(keylock.NotHeld):
        lease.release()


def test_auto_extend_keeps_the_lease_past_its_ttl(make_client):
    holder, observer = make_client(), make_client()
    lost = []
    # Renewed every ttl/3: a ttl of 0.6 s leaves the renewal 0.4 s of scheduling slack on a
    # loaded machine (0.3 s left only 0.2 s).
    lease = holder.acquire("renewed", ttl=0.6, on_lost=lost.append)
    end = time.monotonic() + 2.0  # more than three ttls
    while time.monotonic() < end:
        info = observer.inspect("renewed")
        assert info.held and info.holders[0].token == lease.token
        time.sleep(0.05)
    assert lease.valid and not lost
    lease.release()
    assert not observer.inspect("renewed").held


def test_renewals_stop_the_moment_the_lease_is_released(metrics_daemon):
    with keylock.Client(metrics_daemon.address) as c:
        lease = c.acquire("stop", ttl=0.15)
        wait_for(lambda: metrics_daemon.metric("keylock_extends_total") >= 2, what="two renewals")
        lease.release()
        after_release = metrics_daemon.metric("keylock_extends_total")
        # Three ttls without a renewal: none was scheduled after release().
        time.sleep(0.45)
        c.ping()
        assert metrics_daemon.metric("keylock_extends_total") == after_release


@pytest.mark.parametrize("path", PATHS)
def test_noreply_release_reaches_the_daemon_before_later_requests(make_client, path):
    client = make_client(thread_connections=0 if path == "shared" else 16)
    if path == "lane":
        take_lane(client)  # released over the lane, inspected over the shared connection
    for _ in range(200):
        lease = client.acquire("noreply")
        lease.release(noreply=True)
        assert not client.inspect("noreply").held
    assert connections(client) == (2 if path == "lane" else 1)


def test_lock_context_releases_when_the_body_raises(client):
    with pytest.raises(ZeroDivisionError):
        with client.lock("boom") as lease:
            assert client.inspect("boom").held
            1 / 0
    assert not lease.valid
    assert not client.inspect("boom").held


def test_a_lease_dropped_without_release_is_released_in_the_background(client):
    lease = client.acquire("dropped")
    del lease
    gc.collect()
    wait_for(lambda: not client.inspect("dropped").held, what="the dropped lease's release")


def test_ping_stats_and_server_version(client):
    assert client.ping() >= 0
    assert client.server_version.count(".") == 2
    stats = client.stats()
    assert stats["connections"] >= 1 and "uptime_ms" in stats


def test_closing_the_client_loses_its_leases_and_fails_later_calls(make_client):
    c = make_client()
    lost = []
    lease = c.acquire("closing", on_lost=lost.append)
    c.close()
    assert [l.reason for l in lost] == ["client_closed"]
    assert not lease.valid
    with pytest.raises(keylock.ConnectionError):
        c.ping()
    with pytest.raises(keylock.NotHeld):
        lease.release()
    observer = make_client()
    wait_for(lambda: not observer.inspect("closing").held, what="the daemon to drop the lease")


def test_blocking_calls_from_on_lost_raise_instead_of_deadlocking(client):
    seen = []
    done = threading.Event()

    def on_lost(info):
        try:
            client.ping()
        except RuntimeError as e:
            seen.append(e)
        done.set()

    lease = client.acquire("cb", ttl=0.1, auto_extend=False, on_lost=on_lost)
    assert done.wait(10)
    assert not lease.valid
    assert len(seen) == 1
    assert client.ping() >= 0  # the client still works


def test_many_threads_on_one_key_never_overlap(client):
    inside = [0]
    violations = []
    count = [0]

    def worker():
        for _ in range(40):
            with client.lock("overlap:threads", wait=10):
                inside[0] += 1
                if inside[0] != 1:
                    violations.append(inside[0])
                time.sleep(0)
                count[0] += 1
                inside[0] -= 1

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert count[0] == 320 and not violations


def test_threads_read_each_others_answers_and_all_complete(make_client):
    # Whichever caller thread reads the socket (the others wait) handles every frame it
    # reads, its own answer or not: no call may be left unanswered by that hand-over.
    client = make_client(request_timeout=10)
    done = []
    errors = []

    def worker(n):
        try:
            for i in range(60):
                with client.lock(f"answers:{(n + i) % 3}", wait=10):
                    pass
                client.ping()
            done.append(n)
        except Exception as e:  # reported below, with the thread that saw it
            errors.append((n, e))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and sorted(done) == list(range(6))


def test_a_drop_after_the_last_answer_is_noticed_without_a_heartbeat(daemon, make_client):
    # The caller read its own answer; nothing is in flight and the heartbeat is off, so only
    # the I/O thread's watch of the socket, taken back once the caller stopped reading, can
    # see the daemon go away. The ttl is far beyond the test's bound.
    client = make_client(health_check_interval=0)
    client.ping()  # connected: the acquire's caller reads its answer itself
    lost = threading.Event()
    lease = client.acquire("watched", ttl=600, on_lost=lambda info: lost.set())
    daemon.stop()
    assert lost.wait(10) and not lease.valid
