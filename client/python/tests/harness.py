"""Starts and stops a real keylockd for the tests (shared with examples/django_site/tests).

The binary is $KEYLOCKD (ctest sets it), else the first of the usual build directories that has
one. Every process started here is stopped by its owner: terminate, wait with a timeout, kill.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
from typing import List, Optional

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
LISTEN_RE = re.compile(r"listening on 127\.0\.0\.1:(\d+)")
METRICS_RE = re.compile(r"metrics on http://127\.0\.0\.1:(\d+)/")
TLS_RE = re.compile(r"TLS on 127\.0\.0\.1:(\d+)")


def keylockd_path() -> str:
    path = os.environ.get("KEYLOCKD")
    if path:
        if not os.access(path, os.X_OK):
            raise RuntimeError(f"KEYLOCKD={path} is not an executable")
        return path
    for build in ("build/py", "build/release", "build/dev", "build/asan"):
        candidate = os.path.join(REPO, build, "src", "keylockd")
        if os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError("keylockd not found: build it, or set KEYLOCKD=/path/to/keylockd")


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.01, what: str = "condition"):
    """Polls predicate() until it returns a true value (returned) or timeout seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def connections(client) -> int:
    """How many connections the daemon has open (Client.stats)."""
    return client.stats()["connections"]


def take_lane(client) -> None:
    """Two acquires on the calling thread: the second makes its own connection (a lane, see
    keylock.Client "Thread connections"), which its next acquire of one key uses."""
    for _ in range(2):
        client.acquire("lane-warm-up", ttl=5).release(noreply=True)


# How a test's waiting client reaches the daemon: the shared connection (its first acquire)
# or the thread's own (take_lane first). Tests that take this run once each way.
PATHS = ["shared", "lane"]


def reader_thread(sock, size: int, into: List[bytes]) -> threading.Thread:
    """A started thread that reads ``size`` bytes (or up to EOF) from ``sock`` into ``into``,
    for a test whose writer must wait for its reader."""

    def read_all():
        total = 0
        while total < size:
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            into.append(chunk)
            total += len(chunk)

    t = threading.Thread(target=read_all)
    t.start()
    return t


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(
    proc: Optional[subprocess.Popen], sig: int = signal.SIGTERM, timeout: float = 10.0
) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.send_signal(sig)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


class Daemon:
    """One keylockd on 127.0.0.1. ``port`` stays the same across restart(). With
    ``--listen-tls`` among the arguments, ``tls_port`` is its TLS port (the same across
    restart() only when the arguments name one)."""

    def __init__(self, *args: str, metrics: bool = False) -> None:
        self.args: List[str] = list(args)
        self.metrics = metrics
        self.port = 0
        self.metrics_port = 0
        self.tls_port = 0
        self.proc: Optional[subprocess.Popen] = None
        self._log = tempfile.NamedTemporaryFile(prefix="keylockd-", suffix=".log", delete=False)
        self._log.close()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def tls_address(self) -> str:
        return f"127.0.0.1:{self.tls_port}"

    def start(self) -> "Daemon":
        with open(self._log.name, "w"):
            pass
        cmd = [
            keylockd_path(),
            "--listen", f"127.0.0.1:{self.port}",
            "--metrics-listen", "127.0.0.1:0" if self.metrics else "",
            "--shutdown-grace-ms", "200",
            *self.args,
        ]
        err = open(self._log.name, "ab")
        try:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err
            )
        finally:
            err.close()

        def bound():
            if self.proc.poll() is not None:
                raise AssertionError(f"keylockd exited {self.proc.returncode}: {self.log()}")
            m = LISTEN_RE.search(self.log())
            return m and int(m.group(1))

        self.port = wait_for(bound, what="keylockd's 'listening on' line")
        if self.metrics:
            self.metrics_port = int(METRICS_RE.search(self.log()).group(1))
        if "--listen-tls" in self.args:
            # Logged after the plain listener's line; the daemon may still be starting.
            found = wait_for(lambda: TLS_RE.search(self.log()), what="keylockd's 'TLS on' line")
            self.tls_port = int(found.group(1))
        return self

    def log(self) -> str:
        with open(self._log.name, errors="replace") as f:
            return f.read()

    def stop(self) -> None:
        stop_process(self.proc)

    def restart(self) -> None:
        """Stops (SIGTERM) and starts again on the same port."""
        self.stop()
        wait_for(self._start_same_port, what="keylockd to start again on its port")

    def _start_same_port(self) -> bool:
        try:
            self.start()
            return True
        except AssertionError:  # the port was briefly unavailable
            return False

    def metric(self, name: str) -> float:
        """A counter or gauge from /metrics (0 when absent)."""
        with socket.create_connection(("127.0.0.1", self.metrics_port), timeout=10) as s:
            s.sendall(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        for line in data.decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def cleanup(self) -> None:
        self.stop()
        try:
            os.unlink(self._log.name)
        except OSError:
            pass


class SilentRelay:
    """A TCP relay on 127.0.0.1 to the daemon that, once ``held`` is set, keeps every
    connection open but forwards nothing: a half-open connection, as when the daemon's host
    died or a NAT dropped the flow. What it reads meanwhile is counted in ``swallowed``
    (bytes) and dropped. close() ends its threads and every connection through it."""

    def __init__(self, upstream_port):
        self.upstream = upstream_port
        self.held = threading.Event()
        self.stopped = threading.Event()
        self.swallowed = 0
        self._lock = threading.Lock()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.05)
        self.port = self.listener.getsockname()[1]
        self.socks = []
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self):
        while not self.stopped.is_set():
            try:
                client, _ = self.listener.accept()
            except socket.timeout:
                continue
            up = socket.create_connection(("127.0.0.1", self.upstream))
            self.socks += [client, up]
            for a, b in ((client, up), (up, client)):
                t = threading.Thread(target=self._pump, args=(a, b), daemon=True)
                self.threads.append(t)
                t.start()

    def _pump(self, src, dst):
        src.settimeout(0.05)
        while not self.stopped.is_set():
            try:
                data = src.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            if not data:
                return
            if self.held.is_set():
                with self._lock:  # forward nothing, close nothing
                    self.swallowed += len(data)
                continue
            try:
                dst.sendall(data)
            except OSError:
                return

    def close(self):
        self.stopped.set()
        for t in self.threads:
            t.join(10)
        for s in self.socks + [self.listener]:
            s.close()
