"""Per-user credentials: hello's ``user``, the daemon's ``denied``, users over TLS.

The tests against keylockd need one with --users-file; with an older one (no such flag in its
--help) they are skipped, saying so. The first test speaks to a scripted peer instead, to pin
down the frames the client sends whatever the daemon.
"""
import json
import os
import socket
import threading

import pytest

import keylock
from tlsutil import client_context, daemon_has_users_file, tls_args, write_users_file

needs_users_file = pytest.mark.skipif(
    not daemon_has_users_file(), reason="this keylockd's --help has no --users-file"
)

USERS = {
    "billing": {
        "secret": "billing-secret",
        "rules": [
            {"prefix": "billing:", "allow": ["lock", "inspect"]},
            {"pattern": "rep:*:x", "allow": ["inspect"]},
        ],
    },
    "ops": {"secret": "ops-secret", "rules": [{"prefix": "", "allow": ["admin"]}]},
}


@pytest.fixture(autouse=True)
def no_environment(monkeypatch):
    for name in ("KEYLOCK_USER", "KEYLOCK_AUTH", "KEYLOCK_SERVER", "KEYLOCK_TLS",
                 "KEYLOCK_TLS_CA", "KEYLOCK_TLS_CERT", "KEYLOCK_TLS_KEY",
                 "KEYLOCK_TLS_SERVER_NAME"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def users_file(tmp_path):
    return write_users_file(os.path.join(tmp_path, "users.json"), USERS)


class ScriptedPeer:
    """A one-connection stand-in for keylockd: answers hello and ping, grants acquires of
    "billing:" keys and answers others ``denied``. ``frames`` holds what the client sent."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(10)
        self.address = "127.0.0.1:%d" % self.listener.getsockname()[1]
        self.frames = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        try:
            conn, _ = self.listener.accept()
        except OSError:  # closed, or no client within the bound: nothing to serve
            return
        with conn, conn.makefile("rwb") as f:
            for line in f:
                req = json.loads(line)
                self.frames.append(req)
                rep = {"id": req.get("id"), "ok": True}
                if req["op"] == "hello":
                    rep["version"] = "scripted"
                elif req["op"] == "acquire":
                    if req["key"].startswith("billing:"):
                        rep.update(token=len(self.frames), ttl_ms=req["ttl_ms"])
                    else:
                        rep = {"id": req["id"], "ok": False, "error": "denied",
                               "message": "user billing may not lock other:1"}
                if not req.get("noreply"):
                    f.write(json.dumps(rep).encode() + b"\n")
                    f.flush()

    def close(self):
        self.listener.close()
        self.thread.join(10)


def test_hello_carries_the_user_and_denied_keeps_the_connection():
    peer = ScriptedPeer()
    try:
        with keylock.Client(peer.address, auth="billing-secret", user="billing",
                            name="t") as c:
            c.acquire("billing:1", ttl=10).release()
            with pytest.raises(keylock.Denied) as info:
                c.acquire("other:1", ttl=10)
            assert info.value.code == "denied" and "other:1" in str(info.value)
            c.acquire("billing:2", ttl=10).release()
        hellos = [f for f in peer.frames if f["op"] == "hello"]
        assert hellos == [{"op": "hello", "id": 0, "user": "billing", "auth": "billing-secret",
                           "client": "t"}]  # one connection, its hello first
        assert peer.frames[0] == hellos[0]
    finally:
        peer.close()


@needs_users_file
def test_a_user_locks_its_keys_and_is_denied_others_on_a_connection_that_stays(
    start_daemon, users_file
):
    d = start_daemon("--users-file", users_file)
    with keylock.Client(d.address, auth="billing-secret", user="billing") as c:
        c.acquire("billing:1", ttl=10).release()
        with pytest.raises(keylock.Denied) as info:
            c.acquire("other:1", ttl=10, wait=0)
        assert info.value.code == "denied"
        with pytest.raises(keylock.Denied):
            c.stats()  # admin only
        connection = c._sock
        lease = c.acquire("billing:2", ttl=10)  # the same connection goes on
        assert c._sock is connection
        assert c.inspect("billing:2").holders[0].token == lease.token
        lease.release()


@needs_users_file
def test_a_wrong_secret_or_unknown_user_is_an_auth_error(start_daemon, users_file):
    d = start_daemon("--users-file", users_file)
    for user, secret in (("billing", "ops-secret"), ("nobody", "billing-secret")):
        with keylock.Client(d.address, auth=secret, user=user) as c:
            with pytest.raises(keylock.AuthError) as info:
                c.ping()
            assert info.value.code == "unauthenticated"
            assert secret not in str(info.value)


@needs_users_file
def test_the_user_comes_from_the_environment(start_daemon, users_file, monkeypatch):
    d = start_daemon("--users-file", users_file)
    monkeypatch.setenv("KEYLOCK_USER", "billing")
    monkeypatch.setenv("KEYLOCK_AUTH", "billing-secret")
    with keylock.Client(d.address) as c:
        c.acquire("billing:env", ttl=10).release()
        with pytest.raises(keylock.Denied):
            c.acquire("other:env", ttl=10, wait=0)


@needs_users_file
def test_users_over_mutual_tls(start_daemon, users_file, certs):
    d = start_daemon("--users-file", users_file, *tls_args(certs, mutual=True))
    ctx = client_context(certs, cert="client")
    with keylock.Client(d.tls_address, auth="billing-secret", user="billing",
                        ssl_context=ctx) as billing, \
            keylock.Client(d.tls_address, auth="ops-secret", user="ops", ssl_context=ctx) as ops:
        lease = billing.acquire("billing:tls", ttl=10)
        with pytest.raises(keylock.Denied):
            billing.acquire("other:tls", ttl=10, wait=0)
        assert isinstance(ops.stats(), dict)  # admin may
        ops.release("billing:tls", lease.token)  # admin may end another user's lease
        assert not lease.owned()
