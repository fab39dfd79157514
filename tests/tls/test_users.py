"""Users and key ACLs (users_file) end to end: logins, denials, SIGHUP reloads that close the
connections of removed users, client certificates that log in as a user, and secrets that
never reach the log. Certificates, the daemon and the line client come from conftest.py.
"""
import json
import signal
import socket
import subprocess

import pytest

from conftest import BOUND, KEYLOCKD, Conn, Daemon, client_context, tls_connect

SECRETS = {"billing": "bill-Secret-7f3a9c", "reports": "rep-Secret-0d2e41", "ops": "ops-Secret-55aa10"}


def hashed(secret):
    """The users_file form of `secret`, made by the daemon itself (--hash-secret reads stdin)."""
    out = subprocess.run([KEYLOCKD, "--hash-secret", "--hash-iterations", "1000"],
                         input=secret + "\n", capture_output=True, text=True, timeout=BOUND,
                         check=True)
    assert secret not in out.stdout
    return out.stdout.strip()


def write_users(path, users):
    path.write_text(json.dumps({"users": users}))


def billing(cert_subject=None):
    user = {"name": "billing", "secret": hashed(SECRETS["billing"]),
            "rules": [{"prefix": "billing:", "allow": ["lock", "inspect"]}]}
    if cert_subject:
        user["cert_subject"] = cert_subject
    return user


def reports():
    return {"name": "reports", "secret": hashed(SECRETS["reports"]),
            "rules": [{"pattern": "rep:*:monthly", "allow": ["lock"]}]}


def ops():
    return {"name": "ops", "secret": hashed(SECRETS["ops"]),
            "rules": [{"prefix": "", "allow": ["admin"]}]}


def connect(port):
    return Conn(socket.create_connection(("127.0.0.1", port), timeout=BOUND))


def login(port, user):
    c = connect(port)
    reply = c.call({"op": "hello", "id": 1, "user": user, "auth": SECRETS[user]})
    assert reply["ok"] is True, reply
    return c


@pytest.fixture
def users_daemon(tmp_path):
    started = []

    def start(users, *extra):
        path = tmp_path / "users.json"
        write_users(path, users)
        d = Daemon(["--users-file", str(path), *extra])
        started.append(d)
        return d, path

    yield start
    for d in started:
        d.stop()


def test_users_log_in_and_are_held_to_their_rules(users_daemon):
    d, _ = users_daemon([billing(), reports(), ops()])
    anonymous = connect(d.port)
    try:
        refused = anonymous.call({"op": "acquire", "id": 1, "key": "billing:1"})
        assert refused["error"] == "unauthenticated"
    finally:
        anonymous.close()
    b = login(d.port, "billing")
    r = login(d.port, "reports")
    o = login(d.port, "ops")
    try:
        grant = b.call({"op": "acquire", "id": 2, "key": "billing:1"})
        assert grant["ok"] is True
        no = b.call({"op": "acquire", "id": 3, "key": "rep:eu:monthly"})
        assert no["error"] == "denied" and "may not lock 'rep:eu:monthly'" in no["message"]
        assert b.call({"op": "stats", "id": 4})["error"] == "denied"
        assert r.call({"op": "acquire", "id": 5, "key": "rep:eu:monthly"})["ok"] is True
        assert r.call({"op": "acquire", "id": 6, "key": "rep:eu:daily"})["error"] == "denied"
        # Another user's lease: reports may not release billing's, ops (admin) may.
        release = {"op": "release", "id": 7, "key": "billing:1", "token": grant["token"]}
        assert r.call(release)["error"] == "denied"
        assert o.call(release)["ok"] is True
        top = o.call({"op": "top", "id": 8})
        assert [q["key"] for q in top["oldest"]] == ["rep:eu:monthly"]
    finally:
        for c in (b, r, o):
            c.close()


def test_a_removed_user_is_closed_on_sighup_and_changed_rules_apply_to_the_next_op(
        users_daemon):
    d, path = users_daemon([billing(), reports()])
    b = login(d.port, "billing")
    r = login(d.port, "reports")
    try:
        grant = b.call({"op": "acquire", "id": 2, "key": "billing:1"})
        assert grant["ok"] is True
        assert r.call({"op": "acquire", "id": 3, "key": "rep:eu:monthly"})["ok"] is True
        # reports is removed; billing keeps its lease but may now only inspect.
        changed = billing()
        changed["rules"] = [{"prefix": "billing:", "allow": ["inspect"]}]
        write_users(path, [changed])
        mark = len(d.log())
        d.proc.send_signal(signal.SIGHUP)
        d.wait_log(r"SIGHUP: re-read users_file .*: 1 users; 1 connections of removed users "
                   r"closed", after=mark)
        d.wait_log("user 'reports' is no longer in users_file; closing", after=mark)
        closing = r.line()
        assert closing["error"] == "unauthenticated" and "removed" in closing["message"]
        with pytest.raises((EOFError, ConnectionError)):
            r.line()
        assert b.call({"op": "acquire", "id": 5, "key": "billing:2"})["error"] == "denied"
        # billing's own connection stayed, and so did its lease.
        assert b.call({"op": "inspect", "id": 6, "key": "billing:1"})["holders"][0]["token"] == \
            grant["token"]
        # A new login of the removed user fails.
        gone = connect(d.port)
        try:
            reply = gone.call({"op": "hello", "id": 1, "user": "reports",
                               "auth": SECRETS["reports"]})
            assert reply["error"] == "unauthenticated"
        finally:
            gone.close()
    finally:
        b.close()
        r.close()


def test_an_invalid_users_file_on_sighup_keeps_the_current_users(users_daemon):
    d, path = users_daemon([billing()])
    path.write_text('{"users":[{"name":"billing","secret":"plain-text"}]}')
    mark = len(d.log())
    d.proc.send_signal(signal.SIGHUP)
    d.wait_log("keeping the current users", after=mark)
    b = login(d.port, "billing")
    b.close()


def test_secrets_never_reach_the_log(users_daemon):
    """Every way a secret can come near the daemon, at trace level: none is in its log."""
    d, path = users_daemon([billing(), ops()], "--log-level", "trace", "--auth",
                           "Shared-Secret-9b8c7d")
    attempts = [
        {"op": "hello", "id": 1, "user": "billing", "auth": SECRETS["billing"]},  # right
        {"op": "hello", "id": 1, "user": "billing", "auth": SECRETS["ops"]},      # wrong
        {"op": "hello", "id": 1, "user": "nobody", "auth": SECRETS["reports"]},   # unknown user
        {"op": "hello", "id": 1, "auth": "Shared-Secret-9b8c7d"},                 # shared, right
        {"op": "hello", "id": 1, "auth": "Wrong-Shared-4e5f"},                    # shared, wrong
    ]
    for frame in attempts:
        c = connect(d.port)
        try:
            c.call(frame)
        finally:
            c.close()
    # Malformed frames that carry a secret, before and after a login.
    for raw in (b'{"op":"hello","user":"billing","auth":"Broken-Secret-1a2b"\n',
                b'{"op":"hello","auth":Bare-Secret-3c4d}\n'):
        c = connect(d.port)
        try:
            c.sock.sendall(raw)
            c.line()
        finally:
            c.close()
    c = login(d.port, "billing")
    try:
        c.sock.sendall(b'{"op":"hello","user":"ops","auth":"Late-Secret-5e6f" "x"}\n')
        c.line()
    finally:
        c.close()
    # A client fault is logged once per connection: a fresh one for each malformed frame.
    for raw in (b'{"op":"hello","user":"ops","auth":"Escape-Secret-7a8b\\q"}\n',
                b'{"op":"hello","user":"ops","auth":"Control-Secret-9c0d\x01"}\n'):
        c = login(d.port, "billing")
        try:
            c.sock.sendall(raw)
            assert c.line()["error"] == "bad_request"
        finally:
            c.close()
    d.proc.send_signal(signal.SIGHUP)
    d.wait_log("SIGHUP: re-read users_file")
    log = d.log()
    for secret in [*SECRETS.values(), "Shared-Secret-9b8c7d", "Wrong-Shared-4e5f",
                   "Broken-Secret-1a2b", "Bare-Secret-3c4d", "Late-Secret-5e6f",
                   "Escape-Secret-7a8b", "Control-Secret-9c0d"]:
        assert secret not in log, secret


def test_a_client_certificate_logs_in_as_the_user_who_claims_its_subject(users_daemon, certs):
    # The subject as the README says to read it: openssl x509 -noout -subject -nameopt RFC2253.
    out = subprocess.run(["openssl", "x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in",
                          certs("billing.pem")], capture_output=True, text=True, check=True)
    subject = out.stdout.strip().removeprefix("subject=")
    assert subject == "CN=billing-worker,OU=payments,O=Acme"
    d, _ = users_daemon([billing(cert_subject=subject), ops()],
                        "--listen-tls", "127.0.0.1:0", "--tls-cert-file", certs("server.pem"),
                        "--tls-key-file", certs("server.key"), "--tls-ca-file", certs("ca.pem"))
    c = tls_connect(d.tls_port, client_context(certs, cert="billing"))
    try:
        # No hello: the certificate logged the connection in as billing.
        assert c.call({"op": "acquire", "id": 1, "key": "billing:1"})["ok"] is True
        assert c.call({"op": "acquire", "id": 2, "key": "other:1"})["error"] == "denied"
    finally:
        c.close()
    d.wait_log("logged in as user 'billing' by its certificate")
    # A certificate no user claims is verified, but must still log in with hello.
    c = tls_connect(d.tls_port, client_context(certs, cert="client"))
    try:
        assert c.call({"op": "acquire", "id": 1, "key": "billing:1"})["error"] == \
            "unauthenticated"
    finally:
        c.close()
    c = tls_connect(d.tls_port, client_context(certs, cert="client"))
    try:
        assert c.call({"op": "hello", "id": 1, "user": "ops", "auth": SECRETS["ops"]})["ok"]
        assert c.call({"op": "stats", "id": 2})["ok"] is True
    finally:
        c.close()


def test_a_users_file_alone_allows_a_public_bind(tmp_path):
    path = tmp_path / "users.json"
    write_users(path, [billing()])
    d = Daemon(["--users-file", str(path)], listen="0.0.0.0:0")
    d.stop()


def test_hash_secret_refuses_an_empty_secret():
    out = subprocess.run([KEYLOCKD, "--hash-secret"], input="\n", capture_output=True, text=True,
                         timeout=BOUND)
    assert out.returncode == 2 and "empty" in out.stderr
