"""keylockd and systemd's notify protocol (Type=notify, WatchdogSec), with a datagram socket of
the test standing in for $NOTIFY_SOCKET. Every daemon a test starts is stopped by that test.
"""
import os
import re
import signal
import socket
import subprocess
import tempfile
import time

import pytest

KEYLOCKD = os.environ.get("KEYLOCKD", "keylockd")
BOUND = 10.0  # seconds: the generous bound of every wait for an observable event


class Notified:
    """A keylockd whose sd_notify messages arrive at this test's socket."""

    def __init__(self, tmp_path, watchdog_usec=None, extra=()):
        self.path = str(tmp_path / "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(BOUND)
        env = dict(os.environ, NOTIFY_SOCKET=self.path)
        env.pop("WATCHDOG_USEC", None)
        env.pop("WATCHDOG_PID", None)
        if watchdog_usec is not None:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        self.log = tempfile.NamedTemporaryFile(prefix="keylockd-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [KEYLOCKD, "--listen", "127.0.0.1:0", "--metrics-listen", "", *extra],
            stdout=subprocess.DEVNULL, stderr=self.log, env=env)

    def next_message(self):
        """The next datagram, as a dict of its KEY=VALUE lines."""
        data = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.splitlines() if "=" in line)

    def wait_for(self, key, value):
        deadline = time.monotonic() + BOUND
        while time.monotonic() < deadline:
            msg = self.next_message()
            if msg.get(key) == value:
                return msg
        raise AssertionError("no %s=%s from keylockd" % (key, value))

    def port(self):
        with open(self.log.name) as f:
            return int(re.search(r"listening on 127\.0\.0\.1:(\d+)", f.read()).group(1))

    def stop(self):
        try:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(BOUND)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            self.sock.close()
            os.unlink(self.log.name)


@pytest.fixture
def notified(tmp_path):
    started = []

    def start(**kw):
        d = Notified(tmp_path, **kw)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


def test_ready_comes_once_the_daemon_serves_and_stopping_at_sigterm(notified):
    d = notified()
    ready = d.wait_for("READY", "1")
    assert ready["MAINPID"] == str(d.proc.pid)
    # READY means serving: the lock port answers at once.
    with socket.create_connection(("127.0.0.1", d.port()), timeout=BOUND) as c:
        c.sendall(b'{"op":"ping","id":1}\n')
        assert b'"ok":true' in c.recv(100)
    d.proc.send_signal(signal.SIGTERM)
    d.wait_for("STOPPING", "1")
    assert d.proc.wait(BOUND) == 0


def test_the_watchdog_is_fed_from_the_event_loop(notified):
    d = notified(watchdog_usec=200_000)  # pings every 100 ms
    d.wait_for("READY", "1")
    for _ in range(3):
        d.wait_for("WATCHDOG", "1")
    # A stopped (wedged) daemon stops feeding it; pings resume when it runs again.
    d.proc.send_signal(signal.SIGSTOP)
    try:
        d.sock.settimeout(0.05)
        try:
            while True:  # drain what was sent before the stop
                d.sock.recv(4096)
        except socket.timeout:
            pass
        d.sock.settimeout(0.5)
        with pytest.raises(socket.timeout):
            d.sock.recv(4096)
    finally:
        d.proc.send_signal(signal.SIGCONT)
        d.sock.settimeout(BOUND)
    d.wait_for("WATCHDOG", "1")


def test_sighup_reports_reloading_then_ready(notified, tmp_path):
    secret = tmp_path / "auth"
    secret.write_text("s3cret\n")
    d = notified(extra=("--auth-file", str(secret)))
    d.wait_for("READY", "1")
    d.proc.send_signal(signal.SIGHUP)
    d.wait_for("RELOADING", "1")
    d.wait_for("READY", "1")


def test_without_a_watchdog_no_pings_are_sent(notified):
    d = notified()
    d.wait_for("READY", "1")
    d.sock.settimeout(0.5)
    with pytest.raises(socket.timeout):
        d.sock.recv(4096)
