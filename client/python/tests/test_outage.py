"""Outages (issue 14): a daemon that dies while a thread waits is reported, never a silent hang.

Once no connection has been ready for connect_timeout, every waiting acquire and every new one
fails with ConnectionError; a wait that runs out while disconnected is a ConnectionError too.
Timeout (and None from try_acquire) always means the key was busy.
"""
import threading

import pytest

import keylock
from harness import PATHS, SilentRelay, connections, take_lane, wait_for


def _kill(daemon):
    daemon.proc.kill()
    daemon.proc.wait(10)


@pytest.mark.parametrize("path", PATHS)
def test_a_waiter_with_no_wait_gets_connection_error_when_the_daemon_dies(
    daemon, make_client, path
):
    holder = make_client(name="holder", thread_connections=0)
    waiter = make_client(name="waiter", connect_timeout=0.5)
    held = holder.acquire("job", ttl=30)  # noqa: F841 - held for the whole test
    outcome = {}

    def wait_forever():
        if path == "lane":
            take_lane(waiter)
        try:
            outcome["lease"] = waiter.acquire("job", ttl=5)  # wait=None, the default
        except BaseException as e:  # noqa: B902 - the test reports whatever ends the wait
            outcome["error"] = e

    thread = threading.Thread(target=wait_forever, daemon=True)
    thread.start()
    wait_for(lambda: holder.inspect("job").waiters == 1, what="the waiter queued")
    assert connections(holder) == (3 if path == "lane" else 2)
    _kill(daemon)
    thread.join(10)
    assert not thread.is_alive(), "the waiter still hangs after the daemon died"
    assert isinstance(outcome.get("error"), keylock.ConnectionError), outcome
    assert "no keylockd reachable" in str(outcome["error"])

    # While it stays unreachable, new acquires fail at once, whatever their wait.
    with pytest.raises(keylock.ConnectionError):
        waiter.acquire("job", wait=60)
    with pytest.raises(keylock.ConnectionError):
        waiter.try_acquire("job")

    # Back: acquires work again.
    daemon.restart()

    def acquired():
        try:
            lease = waiter.try_acquire("job", ttl=5)
        except keylock.ConnectionError:
            return False
        return lease is not None

    wait_for(acquired, what="an acquire after the daemon came back")


def test_a_wait_that_ends_while_the_daemon_is_down_is_connection_error(daemon, make_client):
    holder = make_client(name="holder")
    waiter = make_client(name="waiter", connect_timeout=60)  # the outage rule never applies
    held = holder.acquire("job", ttl=30)  # noqa: F841 - held for the whole test
    outcome = {}

    def wait_briefly():
        try:
            outcome["lease"] = waiter.acquire("job", ttl=5, wait=5)
        except BaseException as e:  # noqa: B902
            outcome["error"] = e

    thread = threading.Thread(target=wait_briefly, daemon=True)
    thread.start()
    wait_for(lambda: holder.inspect("job").waiters == 1, what="the waiter queued")
    _kill(daemon)
    thread.join(30)
    assert not thread.is_alive()
    assert isinstance(outcome.get("error"), keylock.ConnectionError), outcome
    assert not isinstance(outcome["error"], keylock.Timeout)


@pytest.fixture
def relay(daemon):
    r = SilentRelay(daemon.port)
    yield r
    r.close()


@pytest.mark.parametrize("path", PATHS)
def test_a_silent_connection_is_found_dead_by_the_heartbeat_and_its_lease_lost(
    relay, make_client, path
):
    c = make_client(
        server=f"127.0.0.1:{relay.port}", health_check_interval=0.2, connect_timeout=1,
        request_timeout=60,
    )
    if path == "lane":
        take_lane(c)  # the lease is the lane's: lost when the shared connection is found dead
    lost = []
    lease = c.acquire("silent", ttl=60, on_lost=lost.append)  # no renewal within the test
    assert connections(c) == (2 if path == "lane" else 1)
    relay.held.set()
    wait_for(lambda: lost, what="the lease lost to the dead connection")
    assert lost[0].reason == "connection_lost"
    assert not lease.valid


@pytest.mark.parametrize("path", PATHS)
def test_a_waiter_on_a_silent_connection_fails_instead_of_hanging(
    relay, make_client, daemon, path
):
    holder = make_client(name="holder", thread_connections=0)
    held = holder.acquire("silent", ttl=30)  # noqa: F841 - held for the whole test
    c = make_client(
        server=f"127.0.0.1:{relay.port}", health_check_interval=0.2, connect_timeout=1,
        request_timeout=60,
    )
    outcome = {}

    def wait_forever():
        if path == "lane":
            take_lane(c)
        try:
            outcome["lease"] = c.acquire("silent", ttl=5)
        except BaseException as e:  # noqa: B902
            outcome["error"] = e

    thread = threading.Thread(target=wait_forever, daemon=True)
    thread.start()
    wait_for(lambda: holder.inspect("silent").waiters == 1, what="the waiter queued")
    assert connections(holder) == (3 if path == "lane" else 2)
    relay.held.set()
    thread.join(15)
    assert not thread.is_alive(), "the waiter hangs on a dead connection"
    assert isinstance(outcome.get("error"), keylock.ConnectionError), outcome
