"""The client behaviour list (issue 14), written once and run against both clients.

Every scenario below runs twice: against the Python client (in this process) and against the
C++ client (keylock_client_shim, driven over a line protocol). Both are driven through one
small interface, so a behaviour the two clients do not share fails here. The daemon, and for
the heartbeat a relay that falls silent, are real; everything runs on 127.0.0.1.

    KEYLOCKD=... KEYLOCK_CLIENT_SHIM=... python3 -m pytest tests/client_behaviour
"""
import os
import queue
import signal
import subprocess
import sys
import threading

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "client", "python"))
sys.path.insert(0, os.path.join(ROOT, "client", "python", "tests"))

import keylock  # noqa: E402
from harness import Daemon, SilentRelay, wait_for  # noqa: E402

BOUND = 10.0  # seconds: the generous bound of every wait for an event

# ---- the two clients behind one interface ----------------------------------------------------


class PythonClient:
    """The Python client: each acquire on its own thread, as the shim does."""

    kind = "python"

    def __init__(self, server, connect_timeout=5.0, request_timeout=10.0, health_check=5.0):
        self.c = keylock.Client(
            server, name="behaviour-python", connect_timeout=connect_timeout,
            request_timeout=request_timeout, health_check_interval=health_check,
        )
        self.results = {}
        self.leases = {}
        self.tokens = {}
        self.lost = {}
        self.cond = threading.Condition()
        self.threads = []
        self.ids = 0

    def _id(self):
        self.ids += 1
        return f"p{self.ids}"

    def acquire(self, key, ttl, wait=None, noextend=False):
        rid = self._id()
        token = keylock.CancelToken()
        self.tokens[rid] = token

        def on_lost(info):
            with self.cond:
                self.lost[rid] = info.reason
                self.cond.notify_all()

        def run():
            try:
                lease = self.c.acquire(
                    key, ttl=ttl, wait=wait, auto_extend=not noextend, on_lost=on_lost,
                    cancel=token,
                )
                self.leases[rid] = lease
                outcome = ("granted", lease.token)
            except keylock.Error as e:
                outcome = ("error", type(e).__name__)
            with self.cond:
                self.results[rid] = outcome
                self.cond.notify_all()

        t = threading.Thread(target=run, daemon=True)
        t.start()
        self.threads.append(t)
        return rid

    def result(self, rid):
        with self.cond:
            assert self.cond.wait_for(lambda: rid in self.results, BOUND), f"{rid}: no outcome"
            return self.results[rid]

    def done(self, rid):
        with self.cond:
            return rid in self.results

    def interrupt(self, rid):
        self.tokens[rid].cancel()

    def acquire_interrupted(self, key, ttl, when_queued):
        """A wait ended by an exception from a signal handler, in the waiting (main) thread."""

        class Interrupted(Exception):
            pass

        def handler(signum, frame):
            raise Interrupted()

        old = signal.signal(signal.SIGALRM, handler)
        main = threading.get_ident()
        poke = threading.Thread(
            target=lambda: (wait_for(when_queued, BOUND, what="queued"),
                            signal.pthread_kill(main, signal.SIGALRM)),
            daemon=True,
        )
        try:
            poke.start()
            try:
                self.c.acquire(key, ttl=ttl)
                return "granted"
            except Interrupted:
                return "interrupted"
        finally:
            poke.join(BOUND)
            signal.signal(signal.SIGALRM, old)

    def release(self, rid):
        try:
            self.leases[rid].release()
            return ("ok",)
        except keylock.Error as e:
            return ("error", type(e).__name__)

    def extend(self, rid, ttl):
        try:
            self.leases[rid].extend(ttl)
            return ("ok",)
        except keylock.Error as e:
            return ("error", type(e).__name__)

    def valid(self, rid):
        return self.leases[rid].valid

    def lost_reason(self, rid):
        with self.cond:
            assert self.cond.wait_for(lambda: rid in self.lost, BOUND), f"{rid}: not lost"
            return self.lost[rid]

    def reenter(self, key):
        with self.c.lock(key, reentrant=True) as outer:
            with self.c.lock(key, reentrant=True) as inner:
                return outer.depth, inner.depth, outer.token == inner.token

    def close(self):
        for token in self.tokens.values():
            token.cancel()
        for t in self.threads:
            t.join(BOUND)
        self.c.close()


class CppClient:
    """The C++ client through keylock_client_shim's line protocol."""

    kind = "cpp"

    def __init__(self, server, connect_timeout=5.0, request_timeout=10.0, health_check=5.0):
        shim = os.environ.get("KEYLOCK_CLIENT_SHIM")
        if not shim:
            pytest.fail("KEYLOCK_CLIENT_SHIM is not set (ctest sets it)")
        ms = lambda s: str(int(s * 1000))  # noqa: E731
        self.proc = subprocess.Popen(
            [shim, server, ms(connect_timeout), ms(request_timeout), ms(health_check)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )
        self.lines = queue.Queue()
        self.results = {}
        self.lost = {}
        self.cond = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.ids = 0
        assert self._wait(lambda: "ready" in self.results), "the shim did not start"

    def _read(self):
        for line in self.proc.stdout:
            words = line.rstrip("\n").split(" ")
            with self.cond:
                if words[0] == "ready":
                    self.results["ready"] = ()
                elif words[0] == "lost":
                    self.lost[words[1]] = words[2]
                else:
                    self.results[words[0]] = tuple(words[1:])
                self.cond.notify_all()

    def _wait(self, predicate):
        with self.cond:
            return self.cond.wait_for(predicate, BOUND)

    def _send(self, *words):
        self.ids += 1
        rid = f"c{self.ids}"
        self.proc.stdin.write(" ".join([rid, *map(str, words)]) + "\n")
        self.proc.stdin.flush()
        return rid

    def _answer(self, rid):
        assert self._wait(lambda: rid in self.results), f"{rid}: no answer from the shim"
        return self.results[rid]

    def acquire(self, key, ttl, wait=None, noextend=False):
        args = [key, int(ttl * 1000), "-" if wait is None else int(wait * 1000)]
        if noextend:
            args.append("noextend")
        return self._send("acquire", *args)

    def result(self, rid):
        answer = self._answer(rid)
        if answer[0] == "granted":
            return ("granted", int(answer[1]))
        return ("error", answer[1])

    def done(self, rid):
        with self.cond:
            return rid in self.results

    def interrupt(self, rid):
        self._answer(self._send("interrupt", rid))

    def acquire_interrupted(self, key, ttl, when_queued):
        """The C++ way to end a wait from outside: its std::stop_token."""
        rid = self.acquire(key, ttl)
        wait_for(when_queued, BOUND, what="queued")
        self.interrupt(rid)
        outcome = self.result(rid)
        return "granted" if outcome[0] == "granted" else (
            "interrupted" if outcome[1] == "Cancelled" else outcome[1]
        )

    def release(self, rid):
        return self._answer(self._send("release", rid))[:2]

    def extend(self, rid, ttl):
        return self._answer(self._send("extend", rid, int(ttl * 1000)))[:2]

    def valid(self, rid):
        return self._answer(self._send("valid", rid)) == ("true",)

    def lost_reason(self, rid):
        assert self._wait(lambda: rid in self.lost), f"{rid}: not lost"
        return self.lost[rid]

    def reenter(self, key):
        answer = self._answer(self._send("reenter", key))
        assert answer[0] == "depth", answer
        return int(answer[1]), int(answer[2]), answer[3] == "same"

    def close(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(BOUND)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(BOUND)


CLIENTS = {"python": PythonClient, "cpp": CppClient}


@pytest.fixture(params=sorted(CLIENTS))
def make(request):
    """make(server, **options): a client of the parametrised kind, closed after the test."""
    made = []

    def build(server, **options):
        c = CLIENTS[request.param](server, **options)
        made.append(c)
        return c

    yield build
    for c in made:
        c.close()


@pytest.fixture
def daemon():
    d = Daemon().start()
    yield d
    d.cleanup()


@pytest.fixture
def observer(daemon):
    """A Python client that looks at the daemon from outside."""
    c = keylock.Client(daemon.address, name="observer")
    yield c
    c.close()


# ---- the behaviour list ---------------------------------------------------------------------


def test_grant(daemon, make, observer):
    c = make(daemon.address)
    rid = c.acquire("k", ttl=10)
    kind, token = c.result(rid)
    assert kind == "granted"
    assert [h.token for h in observer.inspect("k").holders] == [token]
    assert c.release(rid) == ("ok",)
    assert not observer.locked("k")


def test_timeout_means_the_key_was_busy(daemon, make, observer):
    held = observer.acquire("k", ttl=30)  # noqa: F841 - held while the client waits
    c = make(daemon.address)
    assert c.result(c.acquire("k", ttl=10, wait=0.2)) == ("error", "Timeout")


def test_cancel_from_another_thread_withdraws_the_acquire(daemon, make, observer):
    held = observer.acquire("k", ttl=30)
    c = make(daemon.address)
    rid = c.acquire("k", ttl=10)
    wait_for(lambda: observer.inspect("k").waiters == 1, what="the acquire queued")
    c.interrupt(rid)
    assert c.result(rid) == ("error", "Cancelled")
    wait_for(lambda: observer.inspect("k").waiters == 0, what="the acquire withdrawn")
    held.release()
    assert not observer.locked("k")


def test_interrupt_of_a_waiting_acquire_leaves_nothing_held(daemon, make, observer):
    held = observer.acquire("k", ttl=30)
    c = make(daemon.address)
    outcome = c.acquire_interrupted(
        "k", ttl=5, when_queued=lambda: observer.inspect("k").waiters == 1
    )
    assert outcome == "interrupted"
    wait_for(lambda: observer.inspect("k").waiters == 0, what="the acquire withdrawn")
    held.release()
    info = observer.inspect("k")
    assert not info.held and info.waiters == 0


def test_outage_fails_waiting_and_new_acquires_with_connection_error(daemon, make, observer):
    held = observer.acquire("k", ttl=30)  # noqa: F841
    c = make(daemon.address, connect_timeout=0.5)
    rid = c.acquire("k", ttl=10)  # no wait: until granted
    wait_for(lambda: observer.inspect("k").waiters == 1, what="the acquire queued")
    daemon.proc.kill()
    daemon.proc.wait(BOUND)
    assert c.result(rid) == ("error", "ConnectionError")
    assert c.result(c.acquire("k", ttl=10, wait=30)) == ("error", "ConnectionError")


def test_a_wait_that_ends_while_disconnected_is_not_a_timeout(daemon, make, observer):
    held = observer.acquire("k", ttl=30)  # noqa: F841
    c = make(daemon.address, connect_timeout=60)
    rid = c.acquire("k", ttl=10, wait=5)
    wait_for(lambda: observer.inspect("k").waiters == 1, what="the acquire queued")
    daemon.proc.kill()
    daemon.proc.wait(BOUND)
    assert c.result(rid) == ("error", "ConnectionError")


def test_reconnect_sends_a_waiting_acquire_again(daemon, make):
    holder = keylock.Client(daemon.address, name="holder")
    try:
        held = holder.acquire("k", ttl=30)  # noqa: F841 - lost with the restart
        c = make(daemon.address)
        rid = c.acquire("k", ttl=10, wait=8)
        wait_for(lambda: holder.inspect("k").waiters == 1, what="the acquire queued")
        daemon.restart()  # every lease and waiter goes with the old process
        assert c.result(rid)[0] == "granted"
    finally:
        holder.close()


def test_expiry_loses_the_lease(daemon, make):
    c = make(daemon.address)
    rid = c.acquire("k", ttl=0.3, noextend=True)
    assert c.result(rid)[0] == "granted"
    assert c.lost_reason(rid) == "expired"
    assert not c.valid(rid)
    assert c.release(rid) == ("error", "NotHeld")


def test_extend_refused_for_its_ttl_keeps_the_lease(make):
    d = Daemon("--max-ttl-ms", "10000", "--default-ttl-ms", "5000").start()
    observer = keylock.Client(d.address, name="observer")
    try:
        c = make(d.address)
        rid = c.acquire("k", ttl=5)
        kind, token = c.result(rid)
        assert kind == "granted"
        assert c.extend(rid, 60) == ("error", "ProtocolError")
        assert c.valid(rid)
        assert [h.token for h in observer.inspect("k").holders] == [token]
        assert c.extend(rid, 8) == ("ok",)
        assert c.release(rid) == ("ok",)
        assert not observer.locked("k")
    finally:
        observer.close()
        d.cleanup()


def test_an_extend_cut_off_by_a_drop_is_not_held_and_the_lease_lost(daemon, make):
    relay = SilentRelay(daemon.port)
    try:
        c = make(f"127.0.0.1:{relay.port}", request_timeout=60, health_check=60)
        rid = c.acquire("k", ttl=60)
        assert c.result(rid)[0] == "granted"
        relay.held.set()
        out = []
        t = threading.Thread(target=lambda: out.append(c.extend(rid, 30)), daemon=True)
        t.start()
        wait_for(lambda: relay.swallowed > 0, BOUND, what="the extend to reach the relay")
        relay.close()  # the connection ends with the extend unanswered
        t.join(BOUND)
        # The daemon dropped the lease with the connection: the extend says so, as extend of
        # any lost lease does, and the lease is lost here.
        assert out == [("error", "NotHeld")]
        assert c.lost_reason(rid) == "connection_lost"
        assert not c.valid(rid)
    finally:
        relay.close()


def test_reentrancy_nests_on_one_thread(daemon, make):
    c = make(daemon.address)
    # Inside the nested hold both handles are the one lease: depth 2 seen from either.
    assert c.reenter("k") == (2, 2, True)


def test_heartbeat_finds_a_silent_connection(daemon, make):
    relay = SilentRelay(daemon.port)
    try:
        c = make(f"127.0.0.1:{relay.port}", connect_timeout=1, request_timeout=60,
                 health_check=0.2)
        rid = c.acquire("k", ttl=60)  # no renewal within the test: only the heartbeat notices
        assert c.result(rid)[0] == "granted"
        relay.held.set()
        assert c.lost_reason(rid) == "connection_lost"
        assert not c.valid(rid)
    finally:
        relay.close()
