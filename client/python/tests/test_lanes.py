"""Thread connections (lanes): a thread's blocking acquires over a connection of its own.

A thread's second acquire of one key gets a lane. What only lanes have is tested here: when
one is used, renewals of its leases, its end with its thread and with close(). Interrupts,
outages and heartbeats are tested on both paths by test_interrupts.py and test_outage.py
(harness.PATHS). Each test checks that the lane carried the call (the daemon counts one
connection more), so that none passes on the shared connection alone.
"""
import gc
import threading
import time

from harness import connections as _connections
from harness import take_lane as _warm
from harness import wait_for


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
    seen = []

    def lock_twice():
        _warm(c)
        seen.append(_connections(c))

    thread = threading.Thread(target=lock_twice)
    thread.start()
    thread.join(10)
    assert seen == [2]  # the thread's lane, beside the shared connection
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
