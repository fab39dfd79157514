"""Shared by the TLS and users tests: certificates made per run, a daemon, a line client.

The certificates are made for each run by the openssl command in a temporary directory (no
key is ever committed): a CA, a second CA the daemon does not trust, a server certificate for
localhost and 127.0.0.1, a second one for the reload test, and client certificates (good,
expired, from the other CA, and one whose subject a user of the users tests claims). Every
daemon a test starts is stopped by that test (fixture).
"""
import json
import os
import re
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
        make_key_and_csr(d, "billing", "/O=Acme/OU=payments/CN=billing-worker")
        sign(d, "billing", "ca", extensions=client_ext)
        yield lambda name: os.path.join(d, name)


class Daemon:
    def __init__(self, args, listen="127.0.0.1:0", metrics=""):
        self.log_file = tempfile.NamedTemporaryFile(prefix="keylockd-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [KEYLOCKD, "--listen", listen, "--metrics-listen", metrics, *args],
            stdout=subprocess.DEVNULL, stderr=self.log_file)
        try:
            self.port = int(self.wait_log(r"listening on [0-9.]+:(\d+)").group(1))
            self.tls_port = None
            if "--listen-tls" in args:
                self.tls_port = int(self.wait_log(r"TLS on [0-9.]+:(\d+)").group(1))
            self.metrics_port = None
            if metrics:
                self.metrics_port = int(
                    self.wait_log(r"metrics on https?://[0-9.]+:(\d+)/").group(1))
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
