"""lock_decorator and default_key."""
import hashlib
import threading

import pytest

import keylock
from harness import wait_for


def fetch_remote_thing(name, *, fresh=False):
    return name


class Things:
    def fetch(self, name):
        return name


def test_default_key_is_the_qualified_name_then_str_of_args_and_kwargs():
    assert keylock.default_key(fetch_remote_thing, "alpha") == (
        "test_decorator.fetch_remote_thing('alpha',){}"
    )
    assert keylock.default_key(fetch_remote_thing, "alpha", fresh=True) == (
        "test_decorator.fetch_remote_thing('alpha',){'fresh': True}"
    )
    assert keylock.default_key(Things.fetch, 1).startswith("test_decorator.Things.fetch(1,)")
    assert keylock.default_key("stats") == "stats(){}"


def test_default_key_is_hashed_when_longer_than_the_key_limit():
    long_name = "x" * 2000
    key = keylock.default_key(fetch_remote_thing, long_name)
    full = "test_decorator.fetch_remote_thing" + str((long_name,)) + "{}"
    assert key == "test_decorator.fetch_remote_thing:" + hashlib.md5(full.encode()).hexdigest()
    # Right at the limit it is kept; multi-byte characters count as their UTF-8 bytes.
    prefix = "test_decorator.fetch_remote_thing('"
    fits = "é" * ((keylock.MAX_KEY_BYTES - len(prefix) - len("',){}")) // 2)
    assert keylock.default_key(fetch_remote_thing, fits).endswith("',){}")
    assert ":" in keylock.default_key(fetch_remote_thing, fits + "é")
    # Text that is not valid UTF-8 is hashed too (the daemon would refuse it).
    class Odd:
        def __repr__(self):
            return "\ud800"

    assert keylock.default_key(fetch_remote_thing, Odd()).startswith(
        "test_decorator.fetch_remote_thing:"
    )


def test_the_decorator_locks_the_default_key_while_the_function_runs(client):
    seen = {}

    @keylock.lock_decorator(client=client)
    def fetch(name, *, fresh=False):
        key = keylock.default_key(fetch.__wrapped__, name, fresh=fresh)
        seen["key"] = key
        seen["held"] = client.inspect(key).held
        return name.upper()

    assert fetch("alpha", fresh=True) == "ALPHA"
    assert seen["key"] == (
        "test_decorator.test_the_decorator_locks_the_default_key_while_the_function_runs"
        ".<locals>.fetch('alpha',){'fresh': True}"
    )
    assert seen["held"] is True
    assert not client.inspect(seen["key"]).held
    assert fetch.__name__ == "fetch"  # functools.wraps


def test_a_long_default_key_is_hashed_and_accepted_by_the_daemon(client):
    @keylock.lock_decorator(client=client)
    def fetch(name):
        return client.inspect(keylock.default_key(fetch.__wrapped__, name)).held

    assert fetch("n" * 5000) is True


def test_key_maker_makes_the_key_from_the_arguments(client):
    keys = []

    @keylock.lock_decorator(key_maker=lambda request, *a, **kw: "stats", client=client)
    def stats_view(request, page=1):
        keys.append(client.inspect("stats").held)
        return page

    assert stats_view("req", page=3) == 3
    assert keys == [True]

    @keylock.lock_decorator(key_maker=lambda *a, **kw: 42, client=client)
    def bad():
        pass

    with pytest.raises(TypeError):
        bad()


def test_the_decorator_releases_when_the_function_raises(client):
    @keylock.lock_decorator(key_maker=lambda: "raises", client=client)
    def boom():
        raise KeyError("x")

    with pytest.raises(KeyError):
        boom()
    assert not client.inspect("raises").held


def test_wait_bounds_the_decorator_and_raises_timeout(make_client):
    holder, c = make_client(), make_client()
    lease = holder.acquire("busy:deco")

    @keylock.lock_decorator(key_maker=lambda: "busy:deco", wait=0.1, client=c)
    def f():
        return 1

    with pytest.raises(keylock.Timeout):
        f()
    lease.release()
    assert f() == 1


def test_limit_lets_that_many_calls_run_at_once(client):
    inside, peak = [0], [0]
    lock = threading.Lock()
    gate = threading.Event()

    @keylock.lock_decorator(key_maker=lambda: "sem", limit=2, client=client)
    def f():
        with lock:
            inside[0] += 1
            peak[0] = max(peak[0], inside[0])
        gate.wait(10)
        with lock:
            inside[0] -= 1

    threads = [threading.Thread(target=f) for _ in range(4)]
    for t in threads:
        t.start()
    wait_for(lambda: client.inspect("sem").waiters == 2, what="two queued callers")
    assert len(client.inspect("sem").holders) == 2
    # Granted by the daemon is not yet inside f: wait for both holders' threads to get there
    # before letting them go, or the first may leave before the second enters.
    wait_for(lambda: inside[0] == 2, what="both holders inside the function")
    gate.set()
    for t in threads:
        t.join(10)
    assert peak[0] == 2


def test_a_lease_lost_while_the_function_runs_raises_not_held(make_client):
    c, other = make_client(), make_client()

    @keylock.lock_decorator(key_maker=lambda: "stolen", ttl=0.3, client=c)
    def f():
        token = other.inspect("stolen").holders[0].token
        # Anyone who knows key and token may release (PROTOCOL.md); the next renewal is refused.
        other._request("release", {"key": "stolen", "token": token})
        wait_for(lambda: not c._leases.held, what="the refused renewal")
        return "done"

    with pytest.raises(keylock.NotHeld):
        f()


def test_without_a_client_the_default_client_from_the_environment_is_used(daemon, monkeypatch):
    from keylock import client as client_module

    monkeypatch.setenv("KEYLOCK_SERVER", daemon.address)
    monkeypatch.setattr(client_module, "_default", None)

    @keylock.lock_decorator()
    def f(x):
        return x * 2

    try:
        assert f(21) == 42
        assert keylock.default_client().server == daemon.address
    finally:
        keylock.default_client().close()


class Counter:
    """No __repr__: repr(counter) is "<...Counter object at 0x...>", different in every
    process."""

    def bump(self, by):
        return by


class NamedCounter:
    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return f"counter:{self.name}"

    def bump(self, by):
        return by


def test_a_default_key_with_a_memory_address_is_refused_with_the_fix_named(client):
    with pytest.raises(ValueError, match="key_maker"):
        keylock.default_key(Counter.bump, Counter(), 1)
    bump = keylock.lock_decorator(client=client)(Counter.bump)
    with pytest.raises(ValueError, match="memory address"):
        bump(Counter(), 1)
    # With a stable repr() it works, and the key is the same for equal arguments.
    named = keylock.lock_decorator(client=client)(NamedCounter.bump)
    assert named(NamedCounter("a"), 2) == 2
    assert keylock.default_key(NamedCounter.bump, NamedCounter("a"), 2) == keylock.default_key(
        NamedCounter.bump, NamedCounter("a"), 2
    )
    # And a key_maker is the documented way out.
    keyed = keylock.lock_decorator(client=client, key_maker=lambda self, by: "counter")(
        Counter.bump
    )
    assert keyed(Counter(), 3) == 3


def test_the_default_key_is_the_same_in_another_process():
    import subprocess
    import sys

    code = (
        "import keylock\n"
        "def fetch(name, *, fresh=False): pass\n"
        "fetch.__module__ = 'app'\n"
        "print(keylock.default_key(fetch, 'alpha', 3, 2.5, fresh=True))\n"
    )
    env_path = [p for p in sys.path if p]
    runs = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True,
            env={"PYTHONPATH": ":".join(env_path), "PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2")
    }
    assert runs == {"app.fetch('alpha', 3, 2.5){'fresh': True}\n"}
