"""An exception that interrupts a waiting acquire (issue 14) must not leave a lock held.

uWSGI's harakiri, Celery's soft time limit and signal.alarm timeouts all raise from a signal
handler while the thread waits. The acquire is withdrawn on the daemon before the exception
propagates, and a grant that got there first is released at once.
"""
import signal
import threading

import pytest

from harness import PATHS, connections, take_lane, wait_for


class Interrupted(Exception):
    pass


def _raise_interrupted(signum, frame):
    raise Interrupted()


@pytest.fixture
def alarm():
    """Arms SIGALRM to raise Interrupted in the main thread after `seconds`."""
    old = signal.signal(signal.SIGALRM, _raise_interrupted)

    def arm(seconds):
        signal.setitimer(signal.ITIMER_REAL, seconds)

    yield arm
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("wait", [None, 30.0])
def test_an_interrupted_wait_is_withdrawn_and_never_granted(make_client, alarm, wait, path):
    holder = make_client(name="holder", thread_connections=0)
    waiter = make_client(name="waiter")
    if path == "lane":
        take_lane(waiter)
    held = holder.acquire("report", ttl=30)
    if path == "lane":
        assert connections(holder) == 3  # holder, waiter, the waiter's lane
    alarm(0.3)
    with pytest.raises(Interrupted):
        waiter.acquire("report", ttl=2, wait=wait)
    # Withdrawn on the daemon: no waiter is left to be granted when the holder lets go.
    wait_for(lambda: holder.inspect("report").waiters == 0, what="the waiter withdrawn")
    held.release()
    info = holder.inspect("report")
    assert not info.held and info.waiters == 0
    # And the waiter's client renews nothing behind anyone's back.
    assert waiter.acquire("report", ttl=5, wait=0).valid


def test_a_keyboard_interrupt_is_handled_like_any_other(make_client):
    holder = make_client(name="holder")
    waiter = make_client(name="waiter")
    held = holder.acquire("report", ttl=30)
    old = signal.signal(signal.SIGALRM, lambda s, f: signal.default_int_handler(s, f))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(KeyboardInterrupt):
            waiter.acquire("report", ttl=2)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    wait_for(lambda: holder.inspect("report").waiters == 0, what="the waiter withdrawn")
    held.release()
    assert not holder.inspect("report").held


@pytest.mark.parametrize("path", PATHS)
def test_a_grant_that_crosses_the_interrupt_is_released(make_client, alarm, path):
    holder = make_client(name="holder", thread_connections=0)
    waiter = make_client(name="waiter", thread_connections=0 if path == "shared" else 16)
    # The interrupt lands around the moment the key frees, so some rounds see the grant
    # arrive first: whichever way each round goes, nothing stays held afterwards.
    for round_ in range(20):
        if path == "lane":
            take_lane(waiter)  # again: an interrupted wait on a lane ends the lane
        held = holder.acquire("report", ttl=30)
        if path == "lane":
            assert connections(holder) == 3, f"round {round_}: no lane"
        release = threading.Timer(0.2, held.release)
        release.start()
        alarm(0.2)
        try:
            lease = waiter.acquire("report", ttl=2)
        except Interrupted:
            lease = None
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            release.join()
        if lease is not None:
            lease.release()
        wait_for(lambda: not holder.inspect("report").held, what=f"round {round_}: key free")
        info = holder.inspect("report")
        assert not info.held and info.waiters == 0
