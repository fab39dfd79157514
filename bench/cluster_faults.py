#!/usr/bin/env python3
"""Cluster mode under faults: seconds from each fault to recovery, measured on real processes.

Starts a three-member etcd (Debian's `etcd`, data under /dev/shm) and three keylockd in cluster
mode on free loopback ports (each daemon reaching etcd through its own TCP relay, so it can be
cut off), then, ROUNDS times each:

  kill      SIGKILL the daemon holding a contended key; a client on another daemon waits:
            seconds from the kill to that client's grant (bound: etcd lease ttl + 1 s).
  stop      SIGSTOP the holder's daemon for longer than the etcd lease ttl: seconds to the grant
            on another daemon; then SIGCONT: what the paused daemon's client is told.
  cut       cut a daemon off from etcd while its client holds a lease: seconds to the `expired`
            event, to `unavailable` on a new acquire; then heal: seconds until it grants again.
  member    SIGKILL one etcd member while leases are held and renewed: whether any lease was lost
            or any acquire failed (nothing should be visible), and the restarted member rejoining.

Usage: bench/cluster_faults.py --keylockd build/release/src/keylockd [--rounds 3]
           [--lease-ttl-ms 10000]
Prints one line per measurement and a summary. Every process it starts it stops, by PID.
"""
import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Relay:
    """Relays one listening port to an upstream port; cut() ends every connection and refuses
    new ones until heal()."""

    def __init__(self, upstream):
        self.upstream = upstream
        self.cut_on = False
        self.links = []
        self.lock = threading.Lock()
        self.srv = socket.socket()
        self.srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.srv.bind(("127.0.0.1", 0))
        self.srv.listen(64)
        self.port = self.srv.getsockname()[1]
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopped:
            try:
                c, _ = self.srv.accept()
            except OSError:
                return
            if self.cut_on:
                c.close()
                continue
            try:
                u = socket.create_connection(("127.0.0.1", self.upstream), timeout=2)
                u.settimeout(None)
            except OSError:
                c.close()
                continue
            with self.lock:
                self.links.append((c, u))
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a, b):
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self):
        self.cut_on = True
        with self.lock:
            for c, u in self.links:
                for s in (c, u):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
            self.links = []

    def heal(self):
        self.cut_on = False

    def close(self):
        self.stopped = True
        self.cut()
        self.srv.close()


class Conn:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.buf = b""

    def send(self, obj):
        self.s.sendall((json.dumps(obj) + "\n").encode())

    def recv(self, timeout=60):
        self.s.settimeout(timeout)
        while b"\n" not in self.buf:
            data = self.s.recv(65536)
            if not data:
                raise ConnectionError("closed")
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def call(self, obj):
        self.send(obj)
        return self.recv()

    def close(self):
        self.s.close()


class Cluster:
    def __init__(self, keylockd, lease_ttl_ms):
        self.dir = tempfile.mkdtemp(prefix="keylock-faults-", dir="/dev/shm")
        self.keylockd = keylockd
        self.lease_ttl_ms = lease_ttl_ms
        self.etcd = []   # [name, client_port, peer_port, Popen]
        self.daemons = []  # dicts
        names = ["e0", "e1", "e2"]
        ports = [(free_port(), free_port()) for _ in names]
        self.initial = ",".join("%s=http://127.0.0.1:%d" % (n, p[1]) for n, p in zip(names, ports))
        for n, (cp, pp) in zip(names, ports):
            self.etcd.append([n, cp, pp, None])
            self.start_member(len(self.etcd) - 1, "new")
        self.endpoints = ",".join("http://127.0.0.1:%d" % e[1] for e in self.etcd)
        self.wait_etcd()

    def start_member(self, i, state):
        n, cp, pp, _ = self.etcd[i]
        log = open(os.path.join(self.dir, n + ".log"), "a")
        self.etcd[i][3] = subprocess.Popen(
            ["etcd", "--name", n, "--data-dir", os.path.join(self.dir, n),
             "--listen-client-urls", "http://127.0.0.1:%d" % cp,
             "--advertise-client-urls", "http://127.0.0.1:%d" % cp,
             "--listen-peer-urls", "http://127.0.0.1:%d" % pp,
             "--initial-advertise-peer-urls", "http://127.0.0.1:%d" % pp,
             "--initial-cluster", self.initial, "--initial-cluster-state", state,
             "--initial-cluster-token", os.path.basename(self.dir), "--log-level", "error"],
            stdout=log, stderr=log)

    def wait_etcd(self):
        deadline = time.time() + 30
        while time.time() < deadline:
            r = subprocess.run(["etcdctl", "--endpoints", self.endpoints, "--command-timeout=1s",
                                "put", "/keylock-faults", "ok"],
                               env=dict(os.environ, ETCDCTL_API="3"), capture_output=True)
            if r.returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError("etcd did not start")

    def start_daemon(self, i, name):
        if i < len(self.daemons):
            d = self.daemons[i]
        else:
            # Each daemon reaches every etcd member through a relay of its own.
            relays = [Relay(e[1]) for e in self.etcd]
            d = {"name": name, "port": free_port(), "metrics": free_port(), "relays": relays,
                 "proc": None}
            self.daemons.append(d)
        eps = ",".join("http://127.0.0.1:%d" % r.port for r in d["relays"])
        log = open(os.path.join(self.dir, name + ".log"), "a")
        d["proc"] = subprocess.Popen(
            [self.keylockd, "--listen", "127.0.0.1:%d" % d["port"],
             "--metrics-listen", "127.0.0.1:%d" % d["metrics"], "--etcd-endpoints", eps,
             "--node-name", name, "--etcd-lease-ttl-ms", str(self.lease_ttl_ms)],
            stdout=log, stderr=log)
        self.wait_ready(d)
        return d

    @staticmethod
    def ready(d):
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/readyz" % d["metrics"], timeout=1) as r:
                return r.status == 200
        except Exception:
            return False

    @staticmethod
    def readyz_body(d):
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/readyz" % d["metrics"], timeout=1) as r:
                return r.read().decode()
        except urllib.error.HTTPError as e:
            return e.read().decode()
        except Exception:  # noqa: BLE001
            return ""

    def wait_ready(self, d, limit=60):
        deadline = time.time() + limit
        while time.time() < deadline:
            if self.ready(d):
                return time.time()
            time.sleep(0.02)
        raise RuntimeError("daemon %s not ready" % d["name"])

    def stop(self):
        for d in self.daemons:
            if d["proc"] and d["proc"].poll() is None:
                d["proc"].send_signal(signal.SIGCONT)
                d["proc"].kill()
                d["proc"].wait()
            for r in d["relays"]:
                r.close()
        for e in self.etcd:
            if e[3] and e[3].poll() is None:
                e[3].kill()
                e[3].wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def wait_waiting(port, key, limit=30):
    deadline = time.time() + limit
    while time.time() < deadline:
        c = Conn(port)
        r = c.call({"op": "inspect", "key": key})
        c.close()
        if r.get("daemons_waiting", 0) >= 1:
            return
        time.sleep(0.01)
    raise RuntimeError("no daemon waiting on " + key)


def fault_kill(cl, key):
    a, b = cl.daemons[0], cl.daemons[1]
    ca = Conn(a["port"])
    assert ca.call({"op": "acquire", "key": key, "ttl_ms": 60000})["ok"]
    cb = Conn(b["port"])
    cb.send({"op": "acquire", "id": 1, "key": key, "ttl_ms": 60000})
    wait_waiting(b["port"], key)
    t0 = time.time()
    a["proc"].kill()
    a["proc"].wait()
    r = cb.recv(120)
    dt = time.time() - t0
    assert r.get("ok"), r
    cb.call({"op": "release", "key": key, "token": r["token"]})
    cb.close()
    ca.close()
    cl.start_daemon(0, a["name"])
    return dt


def fault_stop(cl, key):
    a, b = cl.daemons[0], cl.daemons[1]
    ca = Conn(a["port"])
    ra = ca.call({"op": "acquire", "key": key, "ttl_ms": 60000})
    assert ra["ok"]
    cb = Conn(b["port"])
    cb.send({"op": "acquire", "id": 1, "key": key, "ttl_ms": 60000})
    wait_waiting(b["port"], key)
    t0 = time.time()
    a["proc"].send_signal(signal.SIGSTOP)
    r = cb.recv(120)
    dt = time.time() - t0
    assert r.get("ok"), r
    assert r["token"] > ra["token"]
    a["proc"].send_signal(signal.SIGCONT)
    # The paused daemon's holder: its lease ended (an expired event, or not_held on release).
    told = None
    try:
        ev = ca.recv(30)
        told = ev.get("event") or ev.get("error")
    except Exception as e:  # noqa: BLE001
        told = "connection: %s" % e
    rel = cb.call({"op": "release", "key": key, "token": r["token"]})
    assert rel["ok"], rel
    cb.close()
    ca.close()
    t1 = time.time()
    cl.wait_ready(a)
    return dt, told, time.time() - t1


def fault_cut(cl, key):
    c = cl.daemons[2]
    cc = Conn(c["port"])
    r = cc.call({"op": "acquire", "key": key, "ttl_ms": 60000})
    assert r["ok"]
    t0 = time.time()
    for rl in c["relays"]:
        rl.cut()
    ev = cc.recv(120)
    t_expired = time.time() - t0
    assert ev.get("event") == "expired", ev
    # The expired event comes at the lease's own deadline, which is within the proof; the
    # proof's end follows: /readyz turns 503 and acquires answer unavailable.
    while "no etcd lease proven alive" not in cl.readyz_body(c):
        time.sleep(0.01)
    t_unavailable = time.time() - t0
    rr = cc.call({"op": "acquire", "key": key + "-other", "ttl_ms": 1000, "wait_ms": 0})
    assert not rr["ok"] and rr["error"] == "unavailable", rr
    t1 = time.time()
    for rl in c["relays"]:
        rl.heal()
    while True:
        rr = cc.call({"op": "acquire", "key": key, "ttl_ms": 1000, "wait_ms": 0})
        if rr["ok"]:
            cc.call({"op": "release", "key": key, "token": rr["token"]})
            break
        time.sleep(0.01)
    t_heal = time.time() - t1
    cc.close()
    return t_expired, t_unavailable, t_heal


def fault_member(cl, key, index):
    a, b = cl.daemons[0], cl.daemons[1]
    ca = Conn(a["port"])
    held = ca.call({"op": "acquire", "key": key, "ttl_ms": 3000})
    assert held["ok"]
    cb = Conn(b["port"])
    m = cl.etcd[index]
    m[3].kill()
    m[3].wait()
    failures = []
    t_end = time.time() + 2 * cl.lease_ttl_ms / 1000.0
    n = 0
    while time.time() < t_end:
        e = ca.call({"op": "extend", "key": key, "token": held["token"]})
        if not e["ok"]:
            failures.append(("extend", e))
        r = cb.call({"op": "acquire", "key": key + "-n", "ttl_ms": 2000, "wait_ms": 5000})
        if r["ok"]:
            cb.call({"op": "release", "key": key + "-n", "token": r["token"]})
        else:
            failures.append(("acquire", r))
        n += 1
        time.sleep(0.2)
    cl.start_member(index, "existing")
    ca.close()
    cb.close()
    return n, failures


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keylockd", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--lease-ttl-ms", type=int, default=10000)
    args = ap.parse_args()
    cl = Cluster(os.path.abspath(args.keylockd), args.lease_ttl_ms)
    try:
        for i, name in enumerate(["node-a", "node-b", "node-c"]):
            cl.start_daemon(i, name)
        ttl = args.lease_ttl_ms / 1000.0
        print("etcd 3 members, 3 keylockd, etcd_lease_ttl_ms %d" % args.lease_ttl_ms)
        kills, stops, cuts, members = [], [], [], []
        for rnd in range(args.rounds):
            k = fault_kill(cl, "kill-%d" % rnd)
            kills.append(k)
            print("kill   round %d: SIGKILL holder's daemon -> grant on another daemon after %.2f s "
                  "(bound ttl + 1 = %.1f s)" % (rnd, k, ttl + 1))
            s, told, ready = fault_stop(cl, "stop-%d" % rnd)
            stops.append(s)
            print("stop   round %d: SIGSTOP holder's daemon -> grant on another daemon after %.2f s; "
                  "after SIGCONT its holder was told: %s; ready again %.2f s later" % (rnd, s, told, ready))
            e, u, h = fault_cut(cl, "cut-%d" % rnd)
            cuts.append((e, u, h))
            print("cut    round %d: daemon cut off from etcd -> holder's expired event after %.2f s, "
                  "/readyz 503 and acquires unavailable after %.2f s; healed -> grants again after %.2f s" % (rnd, e, u, h))
            n, failures = fault_member(cl, "member-%d" % rnd, rnd % 3)
            members.append(len(failures))
            print("member round %d: SIGKILL etcd member %d -> %d extend+acquire cycles over %.0f s, "
                  "%d failed %s" % (rnd, rnd % 3, n, 2 * ttl, len(failures), failures[:3]))
            cl.wait_etcd()
        print("summary: kill->grant median %.2f s max %.2f s; stop->grant median %.2f s; "
              "cut->expired median %.2f s, cut->unavailable median %.2f s, heal->grant median %.2f s; "
              "member kills with a visible failure: %d of %d"
              % (statistics.median(kills), max(kills), statistics.median(stops),
                 statistics.median([c[0] for c in cuts]), statistics.median([c[1] for c in cuts]),
                 statistics.median([c[2] for c in cuts]), sum(1 for m in members if m), len(members)))
    finally:
        cl.stop()


if __name__ == "__main__":
    sys.exit(main())
