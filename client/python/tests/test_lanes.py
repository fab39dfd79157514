"""Thread connections (lanes): a thread's blocking acquires over a connection of its own.

A thread's second acquire of one key gets a lane; every rule of the shared connection holds
there too: renewals, interrupts, outages, heartbeats, drops, close. Each test first checks
that the lane carried the call (the daemon counts one connection more), so that none passes
on the shared connection alone.
"""
import gc
import signal
import threading
import time

import pytest

import keylock
from harness import SilentRelay, wait_for


class Interrupted(Exception):
    pass


def _connections(c):
    return c.stats()["connections"]


def _warm(c):
    """Two acquires on this thread: the second makes its lane."""
    for _ in range(2):
        c.acquire("warm-up", ttl=5).release(noreply=True)


def test_a_threads_second_acquire_goes_over_its_own_connection(make_client):
    c = make_client()
    c.acquire("a", ttl=5).release()
    assert _connections(c) == 1
    outer = c.acquire("a", ttl=5)
    assert _connections(c) == 2
    assert c.inspect("a").holders[0].token == outer.token
    # Holding a lease through its lane, the thread's next acquire takes the shared connection.
    inner = c.acquire("b", ttl=5)
    assert _connections(c) == 2
    inner.release()
    outer.release(noreply=True)
    # Released over the lane, before the next acquire there: the same key is free for it.
    again = c.acquire("a", ttl=5, wait=0)
    assert again.token > outer.token
    again.release()


def test_no_lane_with_thread_connections_zero(make_client):
    c = make_client(thread_connections=0)
    for _ in range(3):
        c.acquire("a", ttl=5).release()
    assert _connections(c) == 1


def test_a_lane_ends_with_its_thread(make_client):
    c = make_client()
    c.ping()
    thread = threading.Thread(target=_warm, args=(c,))
    thread.start()
    thread.join(10)
    del thread

    def ended():
        gc.collect()
        return _connections(c) == 1

    wait_for(ended, what="the dead thread's lane closed")


def test_a_lease_taken_over_a_lane_is_renewed(make_client):
    c = make_client()
    _warm(c)
    # Calls over the lane only, a while apart: the I/O thread has gone to sleep with nothing
    # to renew, and only the grant below can tell it that it has.
    for _ in range(3):
        time.sleep(0.02)
        c.acquire("idle", ttl=5).release(noreply=True)
    lease = c.acquire("renewed", ttl=0.3)
    end = time.monotonic() + 1.2  # four ttls: held only if renewed
    wait_for(lambda: time.monotonic() > end or not lease.valid, what="four ttls")
    assert lease.valid
    assert lease.owned()
    assert _connections(c) == 2
    lease.release()


@pytest.fixture
def alarm():
    def interrupt(signum, frame):
        raise Interrupted()

    old = signal.signal(signal.SIGALRM, interrupt)
    yield lambda seconds: signal.setitimer(signal.ITIMER_REAL, seconds)
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, old)


def test_an_interrupted_wait_on_a_lane_leaves_nothing_held(make_client, alarm):
    holder = make_client(name="holder")
    waiter = make_client(name="waiter")
    _warm(waiter)
    held = holder.acquire("report", ttl=30)
    assert _connections(holder) == 3
    alarm(0.3)
    with pytest.raises(Interrupted):
        waiter.acquire("report", ttl=2)
    wait_for(lambda: holder.inspect("report").waiters == 0, what="the waiter withdrawn")
    held.release()
    assert not holder.inspect("report").held
    assert waiter.acquire("report", ttl=5, wait=0).valid


def test_a_grant_that_crosses_an_interrupt_on_a_lane_is_released(make_client, alarm):
    holder = make_client(name="holder", thread_connections=0)  # its connection count stays 1
    waiter = make_client(name="waiter")
    for round_ in range(10):
        _warm(waiter)
        held = holder.acquire("report", ttl=30)
        assert _connections(holder) == 3, f"round {round_}: no lane"
        release = threading.Timer(0.2, held.release)
        release.start()
        alarm(0.2)
        try:
            lease = waiter.acquire("report", ttl=30)
        except Interrupted:
            lease = None
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            release.join()
        if lease is not None:
            lease.release()
        wait_for(lambda: not holder.inspect("report").held, what=f"round {round_}: key free")
        assert holder.inspect("report").waiters == 0


def test_a_waiter_on_a_lane_gets_connection_error_when_the_daemon_dies(daemon, make_client):
    holder = make_client(name="holder")
    waiter = make_client(name="waiter", connect_timeout=0.5)
    held = holder.acquire("job", ttl=30)  # noqa: F841 - held for the whole test
    outcome = {}

    def wait_forever():
        _warm(waiter)
        try:
            outcome["lease"] = waiter.acquire("job", ttl=5)
        except BaseException as e:  # noqa: B902 - the test reports whatever ends the wait
            outcome["error"] = e

    thread = threading.Thread(target=wait_forever, daemon=True)
    thread.start()
    wait_for(lambda: holder.inspect("job").waiters == 1, what="the waiter queued")
    assert _connections(holder) == 3
    daemon.proc.kill()
    daemon.proc.wait(10)
    thread.join(10)
    assert not thread.is_alive(), "the waiter still hangs after the daemon died"
    assert isinstance(outcome.get("error"), keylock.ConnectionError), outcome
    assert "no keylockd reachable" in str(outcome["error"])


@pytest.fixture
def relay(daemon):
    r = SilentRelay(daemon.port)
    yield r
    r.close()


def test_a_waiter_on_a_silent_lane_fails_instead_of_hanging(relay, make_client):
    holder = make_client(name="holder")
    held = holder.acquire("silent", ttl=30)  # noqa: F841 - held for the whole test
    c = make_client(
        server=f"127.0.0.1:{relay.port}", health_check_interval=0.2, connect_timeout=1,
        request_timeout=60,
    )
    outcome = {}

    def wait_forever():
        _warm(c)
        try:
            outcome["lease"] = c.acquire("silent", ttl=5)
        except BaseException as e:  # noqa: B902
            outcome["error"] = e

    thread = threading.Thread(target=wait_forever, daemon=True)
    thread.start()
    wait_for(lambda: holder.inspect("silent").waiters == 1, what="the waiter queued")
    assert _connections(holder) == 3
    relay.held.set()
    thread.join(15)
    assert not thread.is_alive(), "the waiter hangs on a dead lane"
    assert isinstance(outcome.get("error"), keylock.ConnectionError), outcome


def test_a_lane_lease_is_lost_when_the_shared_connection_is_found_dead(relay, make_client):
    c = make_client(
        server=f"127.0.0.1:{relay.port}", health_check_interval=0.2, connect_timeout=1,
        request_timeout=60,
    )
    _warm(c)
    lost = []
    lease = c.acquire("silent", ttl=60, on_lost=lost.append)
    assert _connections(c) == 2
    relay.held.set()
    wait_for(lambda: lost, what="the lease lost with the dead connection")
    assert lost[0].reason == "connection_lost"
    assert not lease.valid


def test_closing_the_client_frees_a_lane_lease(make_client):
    c = make_client()
    other = make_client()
    _warm(c)
    lost = []
    lease = c.acquire("closing", ttl=30, on_lost=lost.append)
    assert _connections(other) == 3
    c.close()
    assert not lease.valid
    wait_for(lambda: lost, what="on_lost")
    assert lost[0].reason == "client_closed"
    wait_for(lambda: not other.inspect("closing").held, what="the daemon freed the key")
