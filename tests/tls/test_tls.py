"""keylockd's TLS listener (listen_tls), end to end with Python's ssl module as the client.

Certificates, the daemon and the line client come from conftest.py.
"""
import http.client
import re
import signal
import socket
import ssl
import subprocess

import pytest

from conftest import BOUND, KEYLOCKD, Conn, Daemon, client_context, tls_connect


def test_lock_calls_over_tls_with_the_server_verified(daemon, certs):
    d = daemon()
    c = tls_connect(d.tls_port, client_context(certs))
    try:
        assert c.call({"op": "ping", "id": 1})["ok"] is True
        grant = c.call({"op": "acquire", "id": 2, "key": "k", "ttl_ms": 10000})
        assert grant["ok"] is True and grant["token"] > 0
        info = c.call({"op": "inspect", "id": 3, "key": "k"})
        assert info["holders"][0]["token"] == grant["token"]
        assert c.call({"op": "release", "id": 4, "key": "k", "token": grant["token"]})["ok"]
        assert c.sock.version() in ("TLSv1.2", "TLSv1.3")
    finally:
        c.close()


def test_a_client_that_trusts_another_ca_refuses_the_server(daemon, certs):
    d = daemon()
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_connect(d.tls_port, client_context(certs, ca="other_ca"))


def test_a_wrong_server_name_is_refused_by_the_client(daemon, certs):
    d = daemon()
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_connect(d.tls_port, client_context(certs), server_hostname="not-the-server.example")


def handshake_and_ping(port, ctx):
    """Ping over TLS; with TLS 1.3 a refused client certificate shows on the first read."""
    c = tls_connect(port, ctx)
    try:
        return c.call({"op": "ping", "id": 1})
    finally:
        c.close()


@pytest.mark.parametrize("cert, reason", [
    (None, "peer did not return a certificate"),
    ("stranger", "certificate verify failed"),
    ("expired", "certificate verify failed"),
])
def test_mutual_tls_refuses_a_missing_foreign_or_expired_client_certificate(daemon, certs, cert,
                                                                             reason):
    d = daemon(ca=True)
    with pytest.raises((ssl.SSLError, EOFError, ConnectionError)):
        handshake_and_ping(d.tls_port, client_context(certs, cert=cert))
    d.wait_log("TLS handshake failed: " + re.escape(reason))


def test_mutual_tls_serves_a_client_certificate_the_ca_signed(daemon, certs):
    d = daemon(ca=True)
    assert handshake_and_ping(d.tls_port, client_context(certs, cert="client"))["ok"] is True


def test_mutual_tls_allows_a_public_bind_without_the_shared_secret(certs):
    base = ["--listen-tls", "0.0.0.0:0", "--tls-cert-file", certs("server.pem"),
            "--tls-key-file", certs("server.key")]
    refused = subprocess.run([KEYLOCKD, "--listen", "127.0.0.1:0", "--metrics-listen", "", *base],
                             capture_output=True, text=True, timeout=BOUND)
    assert refused.returncode == 2
    assert "without auth or client certificates" in refused.stdout + refused.stderr
    d = Daemon(base + ["--tls-ca-file", certs("ca.pem")])
    try:
        assert handshake_and_ping(d.tls_port, client_context(certs, cert="client"))["ok"] is True
    finally:
        d.stop()


def test_a_plaintext_client_on_the_tls_port_gets_a_clear_refusal(daemon):
    d = daemon()
    c = Conn(socket.create_connection(("127.0.0.1", d.tls_port), timeout=BOUND))
    try:
        reply = c.call({"op": "ping", "id": 1})
        assert reply["ok"] is False and "speaks TLS" in reply["message"]
        with pytest.raises(EOFError):
            c.line()
    finally:
        c.close()
    d.wait_log("sent plain text to the TLS lock port")


def test_a_tls_client_on_the_plain_port_is_closed_with_a_log_line(daemon, certs):
    d = daemon()
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        tls_connect(d.port, client_context(certs))
    d.wait_log("sent a TLS handshake to the plain-TCP lock port")


def test_a_handshake_that_stalls_is_cut_at_the_deadline(daemon):
    d = daemon("--tls-handshake-timeout-ms", "300")
    s = socket.create_connection(("127.0.0.1", d.tls_port), timeout=BOUND)
    try:
        s.sendall(b"\x16\x03\x01")  # the start of a ClientHello, then nothing
        assert s.recv(100) == b""   # closed by the daemon, well within BOUND
    finally:
        s.close()
    d.wait_log("TLS handshake not done within tls_handshake_timeout_ms")


def test_sighup_reloads_the_certificate_without_dropping_a_connection(daemon, certs, tmp_path):
    cert, key = tmp_path / "live.pem", tmp_path / "live.key"
    cert.write_bytes(open(certs("server.pem"), "rb").read())
    key.write_bytes(open(certs("server.key"), "rb").read())
    d = Daemon(["--listen-tls", "127.0.0.1:0", "--tls-cert-file", str(cert),
                "--tls-key-file", str(key)])
    try:
        holder = tls_connect(d.tls_port, client_context(certs))
        grant = holder.call({"op": "acquire", "id": 1, "key": "k", "ttl_ms": 30000})
        assert grant["ok"] is True
        first = holder.sock.getpeercert()
        cert.write_bytes(open(certs("server2.pem"), "rb").read())
        key.write_bytes(open(certs("server2.key"), "rb").read())
        mark = len(d.log())
        d.proc.send_signal(signal.SIGHUP)
        d.wait_log("SIGHUP: re-read tls_cert_file", after=mark)
        newcomer = tls_connect(d.tls_port, client_context(certs))
        try:
            assert dict(x[0] for x in newcomer.sock.getpeercert()["subject"])["commonName"] == \
                "server2"
            busy = newcomer.call({"op": "acquire", "id": 1, "key": "k", "wait_ms": 0})
            assert busy["ok"] is False and busy["error"] == "timeout"  # still held
        finally:
            newcomer.close()
        assert dict(x[0] for x in first["subject"])["commonName"] == "server"
        # The holder's connection went on: its lease is still its own to release.
        assert holder.call({"op": "release", "id": 2, "key": "k",
                            "token": grant["token"]})["ok"] is True
        holder.close()
    finally:
        d.stop()


def metrics_daemon(certs, *extra):
    return Daemon(["--metrics-tls", "1", "--tls-cert-file", certs("server.pem"),
                   "--tls-key-file", certs("server.key"), *extra], metrics="127.0.0.1:0")


def get_metrics(port, ctx):
    conn = http.client.HTTPSConnection("localhost", port, timeout=BOUND, context=ctx)
    try:
        conn.request("GET", "/metrics")
        res = conn.getresponse()
        return res.status, res.read().decode()
    finally:
        conn.close()


def test_the_metrics_port_serves_https_with_metrics_tls(certs):
    d = metrics_daemon(certs)
    try:
        d.wait_log(r"metrics on https://")
        status, body = get_metrics(d.metrics_port, client_context(certs))
        assert status == 200 and "keylock_connections" in body
        # Plain HTTP on that port gets no HTTP answer.
        plain = http.client.HTTPConnection("127.0.0.1", d.metrics_port, timeout=BOUND)
        try:
            with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
                plain.request("GET", "/metrics")
                plain.getresponse().read()
        finally:
            plain.close()
        # The lock port is untouched: plain, as configured.
        c = Conn(socket.create_connection(("127.0.0.1", d.port), timeout=BOUND))
        try:
            assert c.call({"op": "ping", "id": 1})["ok"] is True
        finally:
            c.close()
    finally:
        d.stop()


def test_metrics_over_https_asks_scrapers_for_a_certificate_with_tls_ca_file(certs):
    d = metrics_daemon(certs, "--tls-ca-file", certs("ca.pem"))
    try:
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
            get_metrics(d.metrics_port, client_context(certs))
        status, _ = get_metrics(d.metrics_port, client_context(certs, cert="client"))
        assert status == 200
    finally:
        d.stop()

