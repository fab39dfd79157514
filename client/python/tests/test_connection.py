"""Connecting, authentication, reconnects and fork safety."""
import json
import os
import select
import signal
import threading
import time

import pytest

import keylock
from harness import Daemon, free_port, wait_for


def test_an_unreachable_daemon_fails_the_first_call_at_once_and_a_later_call_retries():
    port = free_port()
    c = keylock.Client(f"127.0.0.1:{port}", connect_timeout=2)
    try:
        with pytest.raises(keylock.ConnectionError):
            c.ping()
        with pytest.raises(keylock.ConnectionError):
            c.acquire("k")  # an acquire waiting for the first attempt fails with it
        d = Daemon()
        d.port = port
        try:
            wait_for(d._start_same_port, what="keylockd on the chosen port")
            assert c.ping() >= 0  # the next call connects
        finally:
            d.cleanup()
    finally:
        c.close()


def test_a_wrong_or_missing_secret_is_an_auth_error():
    d = Daemon("--auth", "s3cret").start()
    try:
        for auth in ("wrong", ""):
            with keylock.Client(d.address, auth=auth) as c:
                with pytest.raises(keylock.AuthError) as info:
                    c.ping()
                assert info.value.code == "unauthenticated"
                assert "s3cret" not in str(info.value)
        with keylock.Client(d.address, auth="s3cret") as c:
            c.acquire("secret").release()
    finally:
        d.cleanup()


def test_secret_and_server_come_from_the_environment(daemon, monkeypatch):
    monkeypatch.setenv("KEYLOCK_SERVER", daemon.address)
    monkeypatch.setenv("KEYLOCK_AUTH", "ignored-without-auth-on-the-daemon")
    with keylock.Client() as c:
        assert c.server == daemon.address
        assert c.ping() >= 0


def test_after_a_daemon_restart_waiting_acquires_are_resent_and_held_leases_are_lost(daemon):
    holder = keylock.Client(daemon.address, backoff_initial=0.02, backoff_max=0.2)
    waiter = keylock.Client(daemon.address, backoff_initial=0.02, backoff_max=0.2)
    try:
        lost = []
        lost_event = threading.Event()

        def on_lost(info):
            lost.append(info)
            lost_event.set()

        old = holder.acquire("restart", on_lost=on_lost)
        got = []

        def wait_for_it():
            got.append(waiter.acquire("restart", wait=30))

        t = threading.Thread(target=wait_for_it)
        t.start()
        wait_for(lambda: holder.inspect("restart").waiters == 1, what="the waiter to queue")

        daemon.restart()

        assert lost_event.wait(10)
        assert lost[0].reason == "connection_lost" and not old.valid
        t.join(10)
        assert not t.is_alive() and len(got) == 1
        new = got[0]
        assert new.valid and new.token > old.token
        info = holder.inspect("restart")  # the holder reconnected too
        assert [h.token for h in info.holders] == [new.token]
        with pytest.raises(keylock.NotHeld):
            old.release()
        new.release()
    finally:
        holder.close()
        waiter.close()


def test_while_the_daemon_is_down_requests_fail_after_their_bounds(daemon):
    c = keylock.Client(daemon.address, request_timeout=0.3, backoff_initial=0.02, backoff_max=0.1)
    try:
        c.ping()
        daemon.stop()
        wait_for(lambda: c._state != "ready", what="the client to notice the drop")
        with pytest.raises(keylock.ConnectionError):
            c.ping()
        # A wait that runs out while disconnected is an outage, not contention (issue 14).
        with pytest.raises(keylock.ConnectionError):
            c.acquire("down", wait=0.2)
        daemon.restart()
        wait_for(lambda: _pings(c), what="the client to reconnect")
    finally:
        c.close()


def _pings(c):
    try:
        c.ping()
        return True
    except keylock.ConnectionError:
        return False


def _fork_and_report(child):
    """Runs child() in a forked process; returns the JSON it reported. Bounded, and the child
    is killed if it does not exit."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        try:
            result = child()
        except BaseException as e:  # report everything: the parent asserts
            result = {"error": repr(e)}
        os.write(w, json.dumps(result).encode())
        os._exit(0)
    os.close(w)
    data = b""
    deadline = time.monotonic() + 10
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([r], [], [], 0.1)
            if ready:
                chunk = os.read(r, 65536)
                if not chunk:
                    break
                data += chunk
    finally:
        os.close(r)
        for _ in range(100):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    return json.loads(data.decode())


@pytest.mark.parametrize("hooks", [True, False], ids=["at_fork_hook", "pid_check_only"])
def test_a_forked_child_uses_its_own_connection_and_not_the_parents_leases(daemon, hooks):
    from keylock import client as client_module

    c = keylock.Client(daemon.address)
    try:
        parent_lease = c.acquire("fork:parent")
        parent_peer = c.inspect("fork:parent").holders[0].peer
        if not hooks:
            # As under uWSGI, which forks workers without running Python's fork hooks.
            client_module._clients.discard(c)

        def child():
            out = {"inherited_valid": parent_lease.valid}
            parent_lease.release()  # not the child's: does nothing
            with c.lock("fork:child") as mine:
                out["child_peer"] = c.inspect("fork:child").holders[0].peer
                out["child_token"] = mine.token
            info = c.inspect("fork:parent")
            out["parent_still_held"] = info.held
            c.close()
            return out

        out = _fork_and_report(child)
        assert "error" not in out, out
        assert out["inherited_valid"] is False
        assert out["child_peer"] != parent_peer
        assert out["child_token"] > parent_lease.token
        assert out["parent_still_held"] is True
        # The child's exit closed nothing of ours.
        assert parent_lease.valid
        assert c.inspect("fork:parent").holders[0].token == parent_lease.token
        parent_lease.release()
    finally:
        c.close()


def test_a_hung_daemon_fails_requests_after_request_timeout_and_leases_run_out_locally(daemon):
    c = keylock.Client(daemon.address, request_timeout=0.5)
    lost = []
    event = threading.Event()

    def on_lost(info):
        lost.append(info)
        event.set()

    try:
        lease = c.acquire("hung", ttl=0.6, on_lost=on_lost)
        daemon.proc.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(keylock.ConnectionError):
                c.ping()
            # No renewal can be confirmed: the client gives the lease up at its ttl.
            assert event.wait(10)
            assert lost[0].reason == "expired" and not lease.valid
        finally:
            daemon.proc.send_signal(signal.SIGCONT)
        assert c.ping() >= 0
    finally:
        c.close()
