"""Failover over a list of daemons (cluster mode, issue 13): connecting past dead addresses,
moving to the next daemon when the one in use dies, and refusing malformed lists. Standalone
daemons on ephemeral loopback ports stand for a cluster's."""
import signal
import threading

import pytest

import keylock
from harness import Daemon, free_port, stop_process, wait_for


@pytest.fixture
def daemons():
    """Starts daemons on demand (on a chosen port when given); stops every one at the end."""
    started = []

    def start(port=0):
        d = Daemon()
        d.port = port
        started.append(d)
        return d.start()

    yield start
    for d in started:
        d.cleanup()


@pytest.fixture
def clients():
    made = []

    def make(server, **kwargs):
        kwargs.setdefault("auth", "")
        kwargs.setdefault("backoff_initial", 0.02)
        kwargs.setdefault("backoff_max", 0.2)
        c = keylock.Client(server, **kwargs)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def _dead() -> str:
    return f"127.0.0.1:{free_port()}"


def _held_on(daemon, key, clients) -> bool:
    return clients(daemon.address, name="observer").inspect(key).held


def test_a_server_list_whose_first_address_is_dead_connects_to_the_next_and_acquires(
    daemons, clients
):
    d = daemons()
    dead = _dead()
    c = clients(f"{dead},{d.address}")
    with c.lock("failover:first-dead") as lease:
        assert lease.valid
        assert c.server == d.address
        assert c.servers == (dead, d.address)
        assert _held_on(d, "failover:first-dead", clients)


def test_a_list_of_addresses_and_the_environment_take_lists_too(daemons, clients, monkeypatch):
    d = daemons()
    dead = _dead()
    c = clients([dead, d.address])
    assert c.ping() >= 0 and c.server == d.address
    monkeypatch.setenv("KEYLOCK_SERVER", f" {dead} , {d.address} ")
    c = clients(None)
    assert c.servers == (dead, d.address)
    assert c.ping() >= 0 and c.server == d.address


def _kill_in_use_and_reacquire(c, in_use, key, lost, lost_event):
    lease = c.acquire(key, ttl=30, on_lost=lambda info: (lost.append(info), lost_event.set()))
    assert lease.valid
    stop_process(in_use.proc, signal.SIGKILL)
    assert lost_event.wait(10)
    assert lost[0].reason == "connection_lost" and lost[0].token == lease.token
    assert not lease.valid
    with pytest.raises(keylock.NotHeld):
        lease.release()
    return c.acquire(key, wait=10)


def test_when_the_daemon_in_use_dies_its_lease_is_lost_and_the_next_acquire_goes_to_another(
    daemons, clients
):
    first, second = daemons(), daemons()
    c = clients(f"{first.address},{second.address}")
    assert c.ping() >= 0 and c.server == first.address
    lost, lost_event = [], threading.Event()
    nxt = _kill_in_use_and_reacquire(c, first, "failover:key", lost, lost_event)
    assert nxt.valid
    assert c.server == second.address
    assert _held_on(second, "failover:key", clients)
    assert len(lost) == 1
    nxt.release()


def test_when_the_last_daemon_of_the_list_dies_the_client_wraps_round_to_the_first(
    daemons, clients
):
    first_port = free_port()
    second = daemons()
    c = clients(f"127.0.0.1:{first_port},{second.address}")
    assert c.ping() >= 0 and c.server == second.address  # the first is not up yet
    first = daemons(first_port)
    lost, lost_event = [], threading.Event()
    nxt = _kill_in_use_and_reacquire(c, second, "failover:wrap", lost, lost_event)
    assert nxt.valid
    assert c.server == first.address
    assert _held_on(first, "failover:wrap", clients)
    nxt.release()


def test_an_acquire_waiting_when_the_daemon_in_use_dies_is_granted_by_the_next(
    daemons, clients
):
    first, second = daemons(), daemons()
    holder = clients(first.address, name="holder")
    held = holder.acquire("failover:waited")
    c = clients(f"{first.address},{second.address}")
    got, errors = [], []

    def waiter():
        try:
            got.append(c.acquire("failover:waited", wait=10))
        except keylock.Error as e:
            errors.append(e)

    t = threading.Thread(target=waiter)
    t.start()
    try:
        wait_for(lambda: holder.inspect("failover:waited").waiters == 1, what="the waiter")
        stop_process(first.proc, signal.SIGKILL)
    finally:
        t.join(15)
    assert not t.is_alive() and not errors and len(got) == 1
    assert got[0].valid
    assert _held_on(second, "failover:waited", clients)
    wait_for(lambda: not held.valid, what="the holder's lease to go with its daemon")


def test_when_no_server_of_the_list_answers_the_first_call_fails_naming_every_one(clients):
    a, b = _dead(), _dead()
    c = clients(f"{a},{b}", connect_timeout=2)
    with pytest.raises(keylock.ConnectionError) as info:
        c.ping()
    assert f"cannot connect to keylockd at {a}" in str(info.value)
    assert f"cannot connect to keylockd at {b}" in str(info.value)


@pytest.mark.parametrize(
    "server",
    [
        "127.0.0.1:7400,,127.0.0.1:7401",
        "127.0.0.1:7400,",
        ",127.0.0.1:7400",
        " , ",
        "127.0.0.1:7400,127.0.0.1:notaport",
        "127.0.0.1:7400,127.0.0.1:0",
        "127.0.0.1:7400,127.0.0.1:65536",
        "127.0.0.1:7400,[::1",
        [],
        ["127.0.0.1:7400", ""],
    ],
)
def test_a_malformed_server_list_is_refused_at_construction(server):
    with pytest.raises(ValueError):
        keylock.Client(server)
