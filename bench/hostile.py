#!/usr/bin/env python3
"""The attacks of issue 11, run against one keylockd binary, with the figure each one yields.

    bench/hostile.py [--keylockd build/release/src/keylockd] [--only NAME ...]

Each attack starts its own keylockd on free loopback ports (stderr to a temp file), runs, and
stops it by PID. Figures, one line each ("name: value  (what it means)"):

  halfclose_fds_left     descriptors still open 12 s after 5 clients pipelined 3 to 4.5 MiB of
                         pings over a small receive buffer, half-closed and never read (0 is
                         right; a client the daemon cut by max_output_bytes leaves none)
  auth_slowloris_served  time until a client with the secret gets its hello answered while
                         20 connections (max_connections 20) trickle a byte a second; 'never'
                         when it is refused for the whole 10 s attack
  idle_trickle_closed    seconds until a connection sending one space a second is closed with
                         idle_timeout_ms 2000 ('never' within 10 s)
  fencing_tokens_over    tokens issued at or above the stored mark after the state file could
                         no longer be written (0 is right); 'unavailable' marks that acquires
                         were refused instead
  healthz_under_flood    time for /healthz to answer while 64 connections to the metrics
                         port hold a half-sent request ('no answer' when closed unanswered)
  sighup_survives        whether the daemon is still running after SIGHUP
  top_cost               ms per `top` (n 10) with 100 and with 200,000 leases held on their own
                         keys and 1,000 keys with a waiter (median of 20, client round trip
                         included): the second should not grow with the keys not shown

Uses only the standard library; talks only to 127.0.0.1. Older builds without a flag this
script needs print 'n/a' for that attack.
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_BIN = os.path.join(HERE, "..", "build", "release", "src", "keylockd")


class Daemon:
    def __init__(self, binary, *args):
        self.log = tempfile.NamedTemporaryFile(prefix="keylockd-hostile-", suffix=".log",
                                               delete=False)
        cmd = [binary, "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", *args]
        self.proc = subprocess.Popen(cmd, stderr=self.log, stdout=subprocess.DEVNULL)
        self.port = self.metrics_port = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.proc.poll() is None:
            text = self.text()
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", text)
            h = re.search(r"metrics on http://127\.0\.0\.1:(\d+)", text)
            if m and h:
                self.port, self.metrics_port = int(m.group(1)), int(h.group(1))
                return
            time.sleep(0.02)
        text = self.text()
        self.stop()
        raise RuntimeError("keylockd did not start: " + text[-500:])

    def text(self):
        with open(self.log.name, errors="replace") as f:
            return f.read()

    def fds(self):
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        os.unlink(self.log.name)


def supports(binary, flag):
    out = subprocess.run([binary, "--help"], capture_output=True, text=True).stdout
    return flag in out


def connect(port, rcvbuf=None):
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect(("127.0.0.1", port))
    return s


def call(s, obj, timeout=2.0):
    s.settimeout(timeout)
    s.sendall((json.dumps(obj) + "\n").encode())
    buf = b""
    while b"\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return json.loads(buf.split(b"\n", 1)[0])


def halfclose_fds_left(binary):
    d = Daemon(binary, "--idle-timeout-ms", "2000")
    try:
        base = d.fds()
        frame = b'{"op":"ping","id":123456789}\n'
        attackers = []
        # Replies that fill the kernel's buffers but stay under max_output_bytes (1 MiB) once
        # queued in the daemon: which size does depends on the kernel's buffer autotuning.
        for mib in (3.0, 3.4, 3.8, 4.1, 4.5):
            s = connect(d.port, rcvbuf=4096)
            s.setblocking(False)
            payload = frame * int(mib * (1 << 20) / len(frame))
            sent, stalls = 0, 0
            try:
                while sent < len(payload) and stalls < 20:
                    try:
                        sent += s.send(payload[sent:])
                        stalls = 0
                    except BlockingIOError:
                        stalls += 1
                        time.sleep(0.05)
                s.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # cut by the output limit: that connection leaves nothing behind
            attackers.append(s)
        time.sleep(12)
        left = d.fds() - base
        for s in attackers:
            s.close()
        return str(left)
    finally:
        d.stop()


def auth_slowloris_served(binary):
    d = Daemon(binary, "--auth", "s3cret", "--max-connections", "20")
    try:
        bad = []
        for _ in range(20):
            try:
                bad.append(connect(d.port))
            except OSError:
                break
        start = time.monotonic()
        answered = None
        while time.monotonic() - start < 10 and answered is None:
            for s in bad:
                try:
                    s.send(b" ")
                except OSError:
                    pass
            try:
                g = connect(d.port)
                r = call(g, {"op": "hello", "id": 1, "auth": "s3cret"}, timeout=1.0)
                if r.get("ok"):
                    answered = time.monotonic() - start
                g.close()
            except (OSError, ValueError):
                pass
            if answered is None:
                time.sleep(1)
        for s in bad:
            s.close()
        return "never" if answered is None else f"{answered * 1000:.1f} ms"
    finally:
        d.stop()


def idle_trickle_closed(binary):
    d = Daemon(binary, "--idle-timeout-ms", "2000")
    try:
        s = connect(d.port)
        start = time.monotonic()
        while time.monotonic() - start < 10:
            try:
                s.send(b" ")
                s.settimeout(1.0)
                if s.recv(1) == b"":
                    return f"{time.monotonic() - start:.3f} s"
            except socket.timeout:
                continue
            except OSError:
                return f"{time.monotonic() - start:.3f} s"
        return "never"
    finally:
        d.stop()


def fencing_tokens_over(binary):
    if not supports(binary, "--fencing-block"):
        return fencing_tokens_over_default_block(binary)
    state = tempfile.mkdtemp(prefix="keylock-fencing-")
    d = Daemon(binary, "--state-dir", state, "--fencing-block", "64")
    try:
        s = connect(d.port)
        os.mkdir(os.path.join(state, "fencing.tmp"))  # every later reservation fails
        over, refused = 0, 0
        for i in range(1000):
            r = call(s, {"op": "acquire", "id": i, "key": "k", "wait_ms": 0})
            if not r.get("ok"):
                refused += 1
                break
            mark = int(open(os.path.join(state, "fencing")).read())
            over += r["token"] >= mark
            call(s, {"op": "release", "id": i, "key": "k", "token": r["token"]})
        return f"{over}" + (" (then unavailable)" if refused else "")
    finally:
        d.stop()
        shutil.rmtree(state, ignore_errors=True)


def fencing_tokens_over_default_block(binary):
    # Builds before fencing_block reserve 2^20 tokens per block: pipeline past one block.
    state = tempfile.mkdtemp(prefix="keylock-fencing-")
    d = Daemon(binary, "--state-dir", state)
    try:
        os.mkdir(os.path.join(state, "fencing.tmp"))
        mark = int(open(os.path.join(state, "fencing")).read())
        s = connect(d.port)
        batch = 4096
        over = 0
        for rnd in range(300):
            frames = b"".join(
                b'{"op":"acquire","id":%d,"key":"k%d","wait_ms":0}\n' % (i, i) for i in range(batch))
            s.sendall(frames)
            buf, lines = b"", []
            while len(lines) < batch:
                buf += s.recv(1 << 20)
                *lines_part, buf = buf.split(b"\n")
                lines.extend(lines_part)
            tokens = [json.loads(l)["token"] for l in lines if b'"token"' in l]
            rel = b"".join(b'{"op":"release","key":"k%d","token":%d,"noreply":true}\n' % (i, t)
                           for i, t in enumerate(tokens))
            s.sendall(rel)
            over = sum(1 for t in tokens if t >= mark)
            if over:
                # Count what the rest of this round and one more issue above the mark.
                return f">={over} in one round of {batch} (mark {mark}, still granting)"
        return "0"
    finally:
        d.stop()
        shutil.rmtree(state, ignore_errors=True)


def healthz_under_flood(binary):
    d = Daemon(binary)
    try:
        slow = []
        for _ in range(64):
            s = connect(d.metrics_port)
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            slow.append(s)
        time.sleep(0.2)
        start = time.monotonic()
        try:
            p = connect(d.metrics_port)
            p.settimeout(3)
            p.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = p.recv(4096)
            took = time.monotonic() - start
            result = f"{took * 1000:.1f} ms" if data.startswith(b"HTTP/1.1 200") else "no answer"
        except OSError:
            result = "no answer"
        for s in slow:
            s.close()
        return result
    finally:
        d.stop()


def sighup_survives(binary):
    d = Daemon(binary)
    try:
        d.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        return "yes" if d.proc.poll() is None else f"no (exit {d.proc.returncode})"
    finally:
        d.stop()


def hold_keys(port, count, prefix):
    """Acquires `count` keys on one connection (pipelined); returns the connection."""
    s = connect(port)
    batch = 5000
    for start in range(0, count, batch):
        n = min(batch, count - start)
        s.sendall(b"".join(b'{"op":"acquire","id":%d,"key":"%s%d","ttl_ms":600000}\n'
                           % (i, prefix, i) for i in range(start, start + n)))
        buf = b""
        while buf.count(b"\n") < n:
            buf += s.recv(1 << 20)
    return s


def top_cost(binary):
    d = Daemon(binary)
    try:
        def median_top_ms(c):
            times = []
            for i in range(20):
                t = time.monotonic()
                r = call(c, {"op": "top", "id": i, "n": 10}, timeout=30)
                times.append((time.monotonic() - t) * 1000)
                assert r.get("ok"), r
            times.sort()
            return times[len(times) // 2]
        probe = connect(d.port)
        small = hold_keys(d.port, 100, b"s")
        few = median_top_ms(probe)
        big = hold_keys(d.port, 200000, b"b")
        # 1,000 keys with one waiter each: the queues list has candidates to rank.
        waiter = connect(d.port)
        waiter.sendall(b"".join(b'{"op":"acquire","id":%d,"key":"b%d"}\n' % (i, i)
                                for i in range(1000)))
        call(waiter, {"op": "ping", "id": 1})
        many = median_top_ms(probe)
        for c in (probe, small, big, waiter):
            c.close()
        return f"{few:.2f} ms with 100 leases, {many:.2f} ms with 200,100 leases"
    finally:
        d.stop()


ATTACKS = [halfclose_fds_left, auth_slowloris_served, idle_trickle_closed, fencing_tokens_over,
           healthz_under_flood, sighup_survives, top_cost]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keylockd", default=DEFAULT_BIN)
    ap.add_argument("--only", nargs="*", default=None)
    args = ap.parse_args()
    for attack in ATTACKS:
        if args.only and attack.__name__ not in args.only:
            continue
        try:
            value = attack(args.keylockd)
        except Exception as e:  # a figure that could not be taken says why
            value = f"n/a ({e})"
        print(f"{attack.__name__}: {value}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
