"""keylockd's TLS listener (listen_tls), end to end with Python's ssl module as the client.

The certificates are made for each run by the openssl command in a temporary directory (no
key is ever committed): a CA, a second CA the daemon does not trust, a server certificate for
localhost and 127.0.0.1, a second one for the reload test, and client certificates (good,
expired, from the other CA). Every daemon a test starts is stopped by that test (fixture).
"""
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import tempfile
import time

import pytest

KEYLOCKD = os.environ.get("KEYLOCKD", "keylockd")
BOUND = 10.0  # seconds: the generous bound of every wait for an observable event


def run(*args, cwd):
    subprocess.run(args, cwd=cwd, check=True, capture_output=True)


def make_key_and_csr(cwd, name, subject):
    run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", name + ".key", "-out", name + ".csr", "-subj", subject, cwd=cwd)


def sign(cwd, name, ca, days="2", extensions=None):
    args = ["openssl", "x509", "-req", "-in", name + ".csr", "-CA", ca + ".pem", "-CAkey",
            ca + ".key", "-CAcreateserial", "-out", name + ".pem", "-days", days]
    if extensions:
        with open(os.path.join(cwd, name + ".ext"), "w") as f:
            f.write(extensions)
        args += ["-extfile", name + ".ext"]
    run(*args, cwd=cwd)


@pytest.fixture(scope="module")
def certs():
    with tempfile.TemporaryDirectory(prefix="keylock-tls-") as d:
        for ca in ("ca", "other_ca"):
            run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                "-nodes", "-keyout", ca + ".key", "-out", ca + ".pem", "-days", "2", "-subj",
                "/CN=keylock test " + ca, cwd=d)
        server_ext = "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
        for name in ("server", "server2"):
            make_key_and_csr(d, name, "/CN=" + name)
            sign(d, name, "ca", extensions=server_ext)
        client_ext = "extendedKeyUsage=clientAuth\n"
        make_key_and_csr(d, "client", "/CN=client")
        sign(d, "client", "ca", extensions=client_ext)
        make_key_and_csr(d, "expired", "/CN=expired")
        sign(d, "expired", "ca", days="-1", extensions=client_ext)
        make_key_and_csr(d, "stranger", "/CN=stranger")
        sign(d, "stranger", "other_ca", extensions=client_ext)
        yield lambda name: os.path.join(d, name)


class Daemon:
    def __init__(self, args):
        self.log_file = tempfile.NamedTemporaryFile(prefix="keylockd-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [KEYLOCKD, "--listen", "127.0.0.1:0", "--metrics-listen", "", *args],
            stdout=subprocess.DEVNULL, stderr=self.log_file)
        try:
            self.port = int(self.wait_log(r"listening on 127\.0\.0\.1:(\d+)").group(1))
            self.tls_port = int(self.wait_log(r"TLS on [0-9.]+:(\d+)").group(1))
        except BaseException:  # never leave it running
            self.proc.kill()
            self.proc.wait()
            os.unlink(self.log_file.name)
            raise

    def log(self):
        with open(self.log_file.name, errors="replace") as f:
            return f.read()

    def wait_log(self, pattern, after=0):
        deadline = time.monotonic() + BOUND
        while time.monotonic() < deadline:
            m = re.compile(pattern).search(self.log(), after)
            if m:
                return m
            if self.proc.poll() is not None:
                raise AssertionError("keylockd exited: " + self.log())
            time.sleep(0.02)
        raise AssertionError("no log line matching %r in: %s" % (pattern, self.log()))

    def stop(self):
        """Stops the daemon with SIGTERM; it must exit 0, with no sanitizer report."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(BOUND)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        log = self.log()
        os.unlink(self.log_file.name)
        assert "Sanitizer" not in log and "runtime error:" not in log, log
        assert self.proc.returncode == 0, log


@pytest.fixture
def daemon(certs):
    started = []

    def start(*extra, ca=False, cert="server"):
        args = ["--listen-tls", "127.0.0.1:0", "--tls-cert-file", certs(cert + ".pem"),
                "--tls-key-file", certs(cert + ".key"), *extra]
        if ca:
            args += ["--tls-ca-file", certs("ca.pem")]
        d = Daemon(args)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


def client_context(certs, ca="ca", cert=None):
    ctx = ssl.create_default_context(cafile=certs(ca + ".pem"))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert:
        ctx.load_cert_chain(certs(cert + ".pem"), certs(cert + ".key"))
    return ctx


class Conn:
    def __init__(self, sock):
        self.sock = sock
        self.sock.settimeout(BOUND)
        self.buf = b""

    def call(self, request):
        self.sock.sendall((json.dumps(request) + "\n").encode())
        return self.line()

    def line(self):
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("closed by the daemon")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def close(self):
        self.sock.close()


def tls_connect(port, ctx, server_hostname="localhost"):
    raw = socket.create_connection(("127.0.0.1", port), timeout=BOUND)
    try:
        return Conn(ctx.wrap_socket(raw, server_hostname=server_hostname))
    except BaseException:
        raw.close()
        raise


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
