#!/usr/bin/env python3
"""Chaos run and history checker for keylock's mutual exclusion (see tests/chaos/README.md).

  chaos.py run --keylockd PATH --worker PATH [--seconds S] [--workers N] [--keys K] [--seed X]
               [--out DIR] [--tls]
                                start keylockd and N workers (each through its own TCP
                                relay), inject faults, then check; with --tls every worker
                                connection is TLS, to keylockd's listen_tls port
  chaos.py check DIR            check the logs of an earlier run
  chaos.py selftest             the checker on made-up correct and broken histories

Exit status: 0 when the check found no anomaly, 1 on anomalies, 2 when the run itself failed.
"""
import argparse
import bisect
import collections
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

MS = 1_000_000  # ns


def mono_ns():
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


# ---------------------------------------------------------------------------------------------
# Driver


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _die_with_parent():
    """In a child before exec: SIGKILL it when the driver dies, even by SIGKILL (a ctest
    timeout), so that no daemon, etcd member or worker outlives the run."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def spawn_child(argv, log, **kw):
    """Popen with stderr appended to `log` and the child tied to the driver's life."""
    err = open(log, "ab")
    try:
        return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err,
                                preexec_fn=_die_with_parent, **kw)
    finally:
        err.close()


class Daemon:
    """keylockd on a fixed port, restarted on the same port. `args` are its mode's arguments
    (standalone: --state-dir; cluster mode: etcd endpoints, node name, metrics port)."""

    def __init__(self, path, port, out, args, tag="keylockd", metrics_port=None):
        self.path, self.port, self.out, self.args, self.tag = path, port, out, args, tag
        self.metrics_port = metrics_port
        self.proc = None
        self.starts = 0

    def start(self, ready_within=None):
        """Starts it and waits until it listens; with ready_within, also until /readyz answers
        200 (cluster mode: it has an etcd lease and a synced mirror)."""
        self.starts += 1
        metrics = "127.0.0.1:%d" % self.metrics_port if self.metrics_port else ""
        self.proc = spawn_child(
            [self.path, "--listen", "127.0.0.1:%d" % self.port, "--metrics-listen", metrics]
            + self.args, os.path.join(self.out, "%s.%d.log" % (self.tag, self.starts)))
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                break
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError("%s exited with %s" % (self.tag, self.proc.returncode))
                if time.monotonic() > deadline:
                    raise RuntimeError("%s did not start listening" % self.tag)
                time.sleep(0.02)
        if ready_within is not None:
            deadline = time.monotonic() + ready_within
            while not self.ready():
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("%s did not become ready (/readyz)" % self.tag)
                time.sleep(0.05)

    def ready(self):
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/readyz" % self.metrics_port,
                                        timeout=1) as r:
                return r.status == 200
        except (OSError, ValueError):
            return False

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def send(self, sig):
        if self.alive():
            os.kill(self.proc.pid, sig)

    def stop(self, sig=signal.SIGTERM):
        """Stops the daemon; False when a SIGTERM did not end it cleanly (exit status 0)."""
        if self.alive():
            self.proc.send_signal(sig)
            if sig == signal.SIGTERM:
                self.send(signal.SIGCONT)  # a SIGSTOPped daemon must see its SIGTERM
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return False
            return sig != signal.SIGTERM or self.proc.returncode == 0
        return True


class Etcd:
    """A cluster of etcd members (Debian's etcd-server) on free loopback ports, data under
    /dev/shm (fsync on disk costs milliseconds here). A member is killed with SIGKILL and
    started again on its data dir and ports."""

    def __init__(self, members, out):
        base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        self.dir = tempfile.mkdtemp(prefix="keylock-chaos-etcd-", dir=base)
        self.out = out
        self.members = [{"name": "e%d" % i, "client": free_port(), "peer": free_port(),
                         "proc": None} for i in range(members)]
        self.initial = ",".join("%s=http://127.0.0.1:%d" % (m["name"], m["peer"])
                                for m in self.members)

    def endpoints(self):
        return ",".join("http://127.0.0.1:%d" % m["client"] for m in self.members)

    def start(self, i):
        m = self.members[i]
        client, peer = "http://127.0.0.1:%d" % m["client"], "http://127.0.0.1:%d" % m["peer"]
        m["proc"] = spawn_child(
            ["etcd", "--name", m["name"], "--data-dir", os.path.join(self.dir, m["name"]),
             "--listen-client-urls", client, "--advertise-client-urls", client,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", self.initial, "--initial-cluster-state", "new",
             "--initial-cluster-token", os.path.basename(self.dir), "--log-level", "error"],
            os.path.join(self.out, "etcd.%s.log" % m["name"]))
        return m["proc"].pid

    def wait_ready(self, within=30):
        """Until a put through etcdctl succeeds (the cluster has a leader)."""
        deadline = time.monotonic() + within
        env = dict(os.environ, ETCDCTL_API="3")
        while time.monotonic() < deadline:
            r = subprocess.run(["etcdctl", "--endpoints", self.endpoints(),
                                "--command-timeout=1s", "put", "/keylock-chaos", "ok"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
            if r.returncode == 0:
                return
            if any(m["proc"].poll() is not None for m in self.members):
                raise RuntimeError("an etcd member exited at start (see etcd.*.log)")
            time.sleep(0.2)
        raise RuntimeError("etcd did not accept a put within %d s" % within)

    def kill(self, i):
        p = self.members[i]["proc"]
        if p is not None and p.poll() is None:
            p.kill()
            p.wait()

    def stop(self):
        for i in range(len(self.members)):
            self.kill(i)
        shutil.rmtree(self.dir, ignore_errors=True)


class Relay:
    """TCP relays, one listening port per name (a worker, or a daemon's path to one etcd member),
    each to its own upstream port, so that one worker's connection (or one daemon's path to etcd)
    can be cut, refused, or stalled like a network partition, while the others are untouched.
    Each relayed connection is a pair of threads copying bytes one way each."""

    class Link:
        def __init__(self, client, upstream):
            self.socks = (client, upstream)
            self.cut = False
            self.pumps = 2

    def __init__(self):
        self.lock = threading.Lock()
        self.listeners = {}  # name -> listening socket
        self.upstreams = {}  # name -> upstream port
        self.links = collections.defaultdict(list)  # name -> [Link]
        self.flowing = {}  # name -> Event, cleared while the name is partitioned
        self.refusing = set()  # names whose new connections are closed at once

    def listen(self, name, upstream_port):
        ls = socket.socket()
        ls.bind(("127.0.0.1", 0))
        ls.listen(16)
        self.listeners[name] = ls
        self.upstreams[name] = upstream_port
        self.flowing[name] = threading.Event()
        self.flowing[name].set()
        threading.Thread(target=self._accept, args=(name, ls), daemon=True).start()
        return ls.getsockname()[1]

    def _accept(self, name, ls):
        while True:
            try:
                client, _ = ls.accept()
            except OSError:
                return  # closed by close()
            if name in self.refusing:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstreams[name]),
                                                    timeout=2)
                upstream.settimeout(None)
            except OSError:
                client.close()  # the upstream is down: the client sees its connection end
                continue
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link = Relay.Link(client, upstream)
            with self.lock:
                self.links[name].append(link)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(name, link, src, dst),
                                 daemon=True).start()

    def _pump(self, name, link, src, dst):
        flowing = self.flowing[name]
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                while not flowing.wait(0.05):  # partitioned: hold the bytes back
                    if link.cut:
                        raise OSError("cut")
                dst.sendall(data)
        except OSError:
            pass
        self._cut(name, link)
        with self.lock:
            link.pumps -= 1
            last = link.pumps == 0
        if last:
            for s in link.socks:
                s.close()

    def _cut(self, name, link):
        with self.lock:
            if link.cut:
                return False
            link.cut = True
            self.links[name].remove(link)
        for s in link.socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return True

    def cut(self, name):
        """Ends both sides of the name's relayed connections; how many there were."""
        with self.lock:
            links = list(self.links[name])
        return sum(self._cut(name, link) for link in links)

    def partition(self, name, on):
        """Holds back (on) or lets through again every byte of the name's connections."""
        if on:
            self.flowing[name].clear()
        else:
            self.flowing[name].set()

    def refuse(self, name, on):
        """Cuts the name's connections and closes new ones at once (on), or accepts again."""
        if on:
            self.refusing.add(name)
            self.cut(name)
        else:
            self.refusing.discard(name)

    def close(self, name):
        """Stops listening for a name that is gone (its accept thread ends)."""
        ls = self.listeners.pop(name)
        ls.shutdown(socket.SHUT_RDWR)  # wakes its accept() (Linux); close() alone would not
        ls.close()

    def stop(self):
        for name in list(self.listeners):
            self.close(name)
        for name in list(self.links):
            self.flowing[name].set()
            self.cut(name)


class Workers:
    """The chaos_worker processes, each through its own relay to the daemon of its slot, and
    the faults of one worker (kill, stop, cut, partition)."""

    def __init__(self, args, out, rng, relay, fault, end):
        self.args, self.out, self.rng, self.relay, self.fault = args, out, rng, relay, fault
        self.end = end
        self.procs = {}  # index -> Popen
        self.slot_of = {}  # index -> slot (a replacement takes the slot of the one killed)
        self.next_index = 0
        self.ongoing = {}  # index -> (monotonic time to end the fault, "stop" or "partition")
        self.counts = collections.Counter()

    env = None  # the workers' environment (None: the driver's)

    def spawn(self, slot, port, daemon=None):
        i = self.next_index
        self.next_index += 1
        left = max(500, int((self.end - time.monotonic()) * 1000))
        relayed = self.relay.listen(i, port)
        if daemon is not None:
            self.fault("WORKER", "%d %d" % (i, daemon))
        self.procs[i] = spawn_child(
            [self.args.worker, "127.0.0.1:%d" % relayed, os.path.join(self.out, "worker.%d.log" % i),
             str(self.rng.getrandbits(32)), str(left), str(self.args.keys)],
            os.path.join(self.out, "worker.%d.err" % i), env=self.env)
        self.slot_of[i] = slot
        return i

    def live(self):
        return [i for i, p in self.procs.items() if p.poll() is None and i not in self.ongoing]

    def end_due(self, now=None):
        for i in [i for i, (t, _) in self.ongoing.items() if now is None or now >= t]:
            _, kind = self.ongoing.pop(i)
            p = self.procs[i]
            if kind == "stop":
                if p.poll() is None:
                    os.kill(p.pid, signal.SIGCONT)
                self.fault("CONT", "%d %d" % (i, p.pid))
            else:
                self.relay.partition(i, False)
                self.fault("HEAL", "%d %d" % (i, p.pid))

    def inject(self, kind, i, respawn):
        p = self.procs[i]
        if kind == "kill":
            self.fault("KILL", "%d %d" % (i, p.pid))
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
            self.relay.close(i)
            self.counts["kill"] += 1
            respawn(self.slot_of[i])
        elif kind == "stop":
            # Longer than any ttl (<= 800 ms): its leases must run out meanwhile.
            self.ongoing[i] = (time.monotonic() + self.rng.uniform(1.0, 2.0), "stop")
            self.fault("STOP", "%d %d" % (i, p.pid))
            os.kill(p.pid, signal.SIGSTOP)
            self.counts["stop"] += 1
        elif kind == "cut":
            # Cut one worker's connection (both ends see it end): the daemon frees its leases
            # and drops its waiters; the client reconnects and re-sends its waits.
            self.fault("CUT", "%d %d" % (i, p.pid))
            n = self.relay.cut(i)
            self.fault("CUT_DONE", "%d %d %d" % (i, p.pid, n))
            self.counts["cut"] += n > 0
        elif kind == "partition":
            # Its connection stays open but no byte passes either way for 0.3-1.5 s (shorter or
            # longer than its ttl), then the held bytes arrive late: renewals too late, a
            # release of a lease that already ran out.
            self.ongoing[i] = (time.monotonic() + self.rng.uniform(0.3, 1.5), "partition")
            self.fault("PARTITION", "%d %d" % (i, p.pid))
            self.relay.partition(i, True)
            self.counts["partition"] += 1

    def wait_all(self):
        """Waits for every worker to end by itself (they stop at the end of the run)."""
        self.end_due()
        for p in self.procs.values():
            try:
                p.wait(timeout=max(1.0, self.end - time.monotonic() + 25))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                self.counts["worker_hung"] += 1

    def kill_all(self):
        for p in self.procs.values():
            if p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
                p.kill()
                p.wait()

    def verdict(self):
        """Anomalies of the processes themselves: hung, or ended with a failure."""
        rc = 0
        if self.counts["worker_hung"]:
            print("ANOMALY: %d workers did not end by themselves" % self.counts["worker_hung"])
            rc = 1
        failed = [i for i, p in self.procs.items()
                  if p.returncode not in (0, -signal.SIGKILL)]
        if failed:
            print("ANOMALY: workers %s exited with a failure (see worker.N.err)" % failed)
            rc = 1
        return rc


def open_out(args):
    out = args.out or tempfile.mkdtemp(prefix="keylock-chaos-")
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out)
    return out


def run(args):
    # A SIGTERM (or Ctrl-C) ends the run through the `finally` blocks that stop every process.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return run_cluster(args) if args.cluster else run_standalone(args)


def make_tls_files(out):
    """A throwaway CA and a server certificate for 127.0.0.1, made by the openssl command in
    out/tls (never committed). Returns (ca, cert, key) paths."""
    d = os.path.join(out, "tls")
    os.makedirs(d)

    def openssl(*argv):
        subprocess.run(["openssl", *argv], cwd=d, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=chaos CA")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
            "server.key", "-out", "server.csr", "-subj", "/CN=chaos keylockd")
    with open(os.path.join(d, "server.ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "server.ext")
    return tuple(os.path.join(d, n) for n in ("ca.pem", "server.pem", "server.key"))


def run_standalone(args):
    out = open_out(args)
    state = os.path.join(out, "state")
    os.makedirs(state)
    rng = random.Random(args.seed)
    faults = open(os.path.join(out, "faults.log"), "w", buffering=1)

    def fault(kind, detail=""):
        faults.write("%s %d %s\n" % (kind, mono_ns(), detail))

    daemon_args = ["--state-dir", state, "--log-level", "warn"]
    worker_env = None
    if args.tls:
        # Workers reach only the TLS port: a worker that did not speak TLS would get nothing
        # done there (its client would never connect), and the check fails a run without
        # grants.
        ca, cert, key = make_tls_files(out)
        tls_port = free_port()
        daemon_args += ["--listen-tls", "127.0.0.1:%d" % tls_port, "--tls-cert-file", cert,
                        "--tls-key-file", key]
        worker_env = dict(os.environ, KEYLOCK_TLS_CA=ca)
    daemon = Daemon(args.keylockd, free_port(), out, daemon_args)
    relay = Relay()
    end = time.monotonic() + args.seconds
    workers = Workers(args, out, rng, relay, fault, end)
    workers.env = worker_env
    counts = workers.counts
    # The first five faults are one of each kind, in random order (so that even a short run
    # injects every kind); later ones are drawn with these weights.
    kinds = ["kill", "stop", "cut", "partition", "restart"]
    weights = [25, 25, 20, 15, 15]
    first = list(kinds)
    rng.shuffle(first)
    try:
        daemon.start()
        fault("DAEMON_START", str(daemon.proc.pid))
        respawn = lambda slot: workers.spawn(slot, tls_port if args.tls else daemon.port)
        for slot in range(args.workers):
            respawn(slot)
        while time.monotonic() < end - 1.0:
            time.sleep(rng.uniform(0.3, 1.2))
            workers.end_due(time.monotonic())
            if time.monotonic() >= end - 1.0:
                break
            live = workers.live()
            kind = first.pop() if first else rng.choices(kinds, weights)[0]
            if kind != "restart" and live:
                workers.inject(kind, rng.choice(live), respawn)
            else:  # "restart", or no worker free to fault
                how = signal.SIGKILL if rng.random() < 0.5 else signal.SIGTERM
                fault("DAEMON_STOP", signal.Signals(how).name)
                if not daemon.stop(how):
                    counts["daemon_unclean"] += 1
                time.sleep(rng.uniform(0.0, 0.3))
                daemon.start()
                fault("DAEMON_START", str(daemon.proc.pid))
                counts["daemon_restart"] += 1
        workers.wait_all()
    finally:
        workers.kill_all()
        fault("DAEMON_STOP", "end")
        if not daemon.stop():
            counts["daemon_unclean"] += 1
        relay.stop()
        faults.close()
    print("chaos run: %.0f s, %d workers (%d processes in all), %d keys, seed %s%s, logs in %s"
          % (args.seconds, args.workers, workers.next_index, args.keys, args.seed,
             ", over TLS" if args.tls else "", out))
    print("faults injected: %d SIGKILL of a worker, %d SIGSTOP/SIGCONT of a worker, "
          "%d connections of a worker cut, %d partitions of a worker, %d daemon restarts" % (
              counts["kill"], counts["stop"], counts["cut"], counts["partition"],
              counts["daemon_restart"]))
    rc = check(out)
    rc = max(rc, workers.verdict())
    if counts["daemon_unclean"]:
        print("ANOMALY: keylockd did not exit 0 on SIGTERM %d times (see keylockd.N.log)"
              % counts["daemon_unclean"])
        rc = max(rc, 1)
    if rc == 0 and not args.keep:
        shutil.rmtree(out)
    return rc


def run_cluster(args):
    """Three etcd members, `args.nodes` keylockd in cluster mode, workers spread over them.

    Every daemon reaches each etcd member through its own relay (a daemon has one relay per
    member: `--etcd-endpoints` lists its three relay ports), so cutting a daemon off from etcd
    touches nobody else, while killing a member is seen by every daemon. Every worker reaches
    its daemon through its own relay, as in standalone mode.

    Faults come in phases: `fault_seconds` of faults, then `quiet_seconds` without any (every
    fault still going on is ended first), and so on; the run ends with a quiet phase. The check
    requires every waiter to be served in a quiet phase, once the faults had time to heal."""
    out = open_out(args)
    rng = random.Random(args.seed)
    faults = open(os.path.join(out, "faults.log"), "w", buffering=1)

    def fault(kind, detail=""):
        faults.write("%s %d %s\n" % (kind, mono_ns(), detail))

    ttl_ms = args.etcd_lease_ttl_ms
    # The wall clock beside the monotonic one, to place the daemons' log lines (wall clock).
    fault("CLUSTER", "%d %d %d %d" % (ttl_ms, args.nodes, time.time_ns(), args.etcd_timeout_ms))
    etcd = Etcd(3, out)
    relay = Relay()
    daemons = []
    start = time.monotonic()
    end = start + args.seconds
    workers = Workers(args, out, rng, relay, fault, end)
    counts = workers.counts
    node_ongoing = {}  # daemon -> (time to end, "stop" | "down" | "cut-hold" | "cut-refuse")
    member_down = {}  # member -> time to start it again

    def noisy(now):
        """Faults are injected in [0, fault_seconds) of every cycle, and not in the last
        quiet_seconds of the run."""
        if now >= end - args.quiet_seconds:
            return False
        return (now - start) % (args.fault_seconds + args.quiet_seconds) < args.fault_seconds

    def end_node_fault(d):
        _, kind = node_ongoing.pop(d)
        dm = daemons[d]
        if kind == "stop":
            dm.send(signal.SIGCONT)
            fault("NODE_CONT", "%d %d" % (d, dm.proc.pid))
        elif kind == "down":
            dm.start()
            fault("NODE_UP", "%d %d" % (d, dm.proc.pid))
        else:
            for m in range(3):
                relay.partition(("etcd", d, m), False)
                relay.refuse(("etcd", d, m), False)
            fault("ETCD_HEAL", "%d" % d)

    def end_member_fault(m):
        member_down.pop(m)
        fault("MEMBER_START", "%d %d" % (m, etcd.start(m)))

    def end_due(now=None):
        workers.end_due(now)
        for d in [d for d, (t, _) in node_ongoing.items() if now is None or now >= t]:
            end_node_fault(d)
        for m in [m for m, t in member_down.items() if now is None or now >= t]:
            end_member_fault(m)

    def long_or_short():
        """Half of the daemon faults outlast the etcd lease ttl (its leases must be reported
        lost, another daemon takes its keys over); half do not."""
        if rng.random() < 0.5:
            return rng.uniform(0.3, 2.0)
        return ttl_ms / 1000 + rng.uniform(0.5, 3.0)

    kinds = ["kill", "stop", "cut", "partition", "node_kill", "node_stop", "etcd_cut",
             "member_kill"]
    weights = [12, 12, 10, 8, 12, 14, 14, 10]
    first = list(kinds)
    rng.shuffle(first)
    quiet = False
    try:
        for i in range(3):
            etcd.start(i)
        etcd.wait_ready()
        for d in range(args.nodes):
            endpoints = ",".join("http://127.0.0.1:%d" % relay.listen(("etcd", d, m), mm["client"])
                                 for m, mm in enumerate(etcd.members))
            daemons.append(Daemon(
                args.keylockd, free_port(), out,
                ["--etcd-endpoints", endpoints, "--node-name", "n%d" % d,
                 "--etcd-lease-ttl-ms", str(ttl_ms), "--etcd-timeout-ms",
                 str(args.etcd_timeout_ms), "--log-level", "info"],
                tag="keylockd.n%d" % d, metrics_port=free_port()))
        for d, dm in enumerate(daemons):
            dm.start(ready_within=30)
            fault("NODE_UP", "%d %d" % (d, dm.proc.pid))

        def respawn(slot):
            d = slot % args.nodes
            workers.spawn(slot, daemons[d].port, daemon=d)

        for slot in range(args.workers):
            respawn(slot)
        while time.monotonic() < end - 1.0:
            time.sleep(rng.uniform(0.3, 1.2))
            now = time.monotonic()
            end_due(now)
            if now >= end - 1.0:
                break
            if not noisy(now):
                if not quiet:
                    end_due()  # every fault ends as the quiet phase begins
                    fault("QUIET")
                    quiet = True
                continue
            if quiet:
                fault("NOISY")
                quiet = False
            kind = first.pop() if first else rng.choices(kinds, weights)[0]
            free_nodes = [d for d in range(args.nodes) if d not in node_ongoing]
            if kind in ("kill", "stop", "cut", "partition"):
                live = workers.live()
                if live:
                    workers.inject(kind, rng.choice(live), respawn)
            elif kind == "member_kill":
                if not member_down:  # one member at a time: etcd keeps its quorum
                    m = rng.randrange(3)
                    fault("MEMBER_KILL", "%d %d" % (m, etcd.members[m]["proc"].pid))
                    etcd.kill(m)
                    member_down[m] = time.monotonic() + rng.uniform(0.5, 5.0)
                    counts["member_kill"] += 1
            elif len(free_nodes) > args.nodes - 2:  # at most two daemons faulted at once
                d = rng.choice(free_nodes)
                dm = daemons[d]
                if kind == "node_kill":
                    # SIGKILL (3 in 4) or SIGTERM, then down 0-2 s; it comes back on its port
                    # with a new etcd lease.
                    how = signal.SIGKILL if rng.random() < 0.75 else signal.SIGTERM
                    fault("NODE_DOWN", "%d %s" % (d, signal.Signals(how).name))
                    if not dm.stop(how):
                        counts["daemon_unclean"] += 1
                    node_ongoing[d] = (time.monotonic() + rng.uniform(0.0, 2.0), "down")
                    counts["node_kill"] += 1
                    counts["node_kill_" + signal.Signals(how).name] += 1
                elif kind == "node_stop":
                    node_ongoing[d] = (time.monotonic() + long_or_short(), "stop")
                    fault("NODE_STOP", "%d %d" % (d, dm.proc.pid))
                    dm.send(signal.SIGSTOP)
                    counts["node_stop"] += 1
                else:  # etcd_cut: hold every byte both ways, or cut and refuse connections
                    how = "hold" if rng.random() < 0.5 else "refuse"
                    node_ongoing[d] = (time.monotonic() + long_or_short(), "cut-" + how)
                    fault("ETCD_CUT", "%d %s" % (d, how))
                    for m in range(3):
                        if how == "hold":
                            relay.partition(("etcd", d, m), True)
                        else:
                            relay.refuse(("etcd", d, m), True)
                    counts["etcd_cut"] += 1
        end_due()
        workers.wait_all()
        fault("END")  # every worker ended: the last quiet phase ends here
    finally:
        workers.kill_all()
        for d, dm in enumerate(daemons):
            if not dm.stop():
                counts["daemon_unclean"] += 1
        etcd.stop()
        relay.stop()
        faults.close()
    print("chaos run (cluster): %.0f s, %d daemons on 3 etcd members (etcd lease ttl %d ms), "
          "%d workers (%d processes in all), %d keys, seed %s, logs in %s" % (
              args.seconds, args.nodes, ttl_ms, args.workers, workers.next_index, args.keys,
              args.seed, out))
    print("faults injected: %d SIGKILL of a worker, %d SIGSTOP/SIGCONT of a worker, "
          "%d connections of a worker cut, %d partitions of a worker; %d daemon kills "
          "(%d SIGKILL, %d SIGTERM), %d daemon SIGSTOP/SIGCONT, %d daemons cut off from etcd, "
          "%d etcd member SIGKILL/restarts" % (
              counts["kill"], counts["stop"], counts["cut"], counts["partition"],
              counts["node_kill"], counts["node_kill_SIGKILL"], counts["node_kill_SIGTERM"],
              counts["node_stop"], counts["etcd_cut"], counts["member_kill"]))
    rc = check(out)
    recovery(out)
    rc = max(rc, workers.verdict())
    if counts["daemon_unclean"]:
        print("ANOMALY: keylockd did not exit 0 on SIGTERM %d times (see keylockd.nD.N.log)"
              % counts["daemon_unclean"])
        rc = max(rc, 1)
    if rc == 0 and not args.keep:
        shutil.rmtree(out)
    return rc


# ---------------------------------------------------------------------------------------------
# Checker


def limit_of(key):
    """Key ci has limit 1 + i % 3 (exclusive holders only); key mi is a read-write lock (limit
    1: one exclusive holder, or any number of shared ones)."""
    return 1 if key.startswith("m") else 1 + int(key[1:]) % 3


def keys_of(spec):
    """The keys of a log line's KEYS field: one key, or a set joined with '+'."""
    return spec.split("+")


def over_limit(modes, lim):
    """Whether holders of these modes ("X"/"S") break a key of limit lim: shared holders
    together take one slot (they may overlap each other), each exclusive holder takes one."""
    exclusive = sum(1 for m in modes if m != "S")
    return exclusive + (1 if exclusive < len(modes) else 0) > lim


def check(out):
    # Faults, as intervals of monotonic time. A cut or partition of a worker's connection lasts
    # from the driver's action until `notice` after it ended: the worker learns of a cut, or reads
    # the replies held back by a partition, only when its I/O thread next runs (1 s: the same
    # scheduling slack as for answers below, on a loaded machine).
    notice = 1000 * MS
    worker_faults = collections.defaultdict(list)  # worker index -> [(from, to)]
    restarts = []  # [(daemon stop, daemon start)] (standalone)
    kills = {}  # worker index -> time
    fault_counts = collections.Counter()
    last_stop = None
    began = {}  # (kind, worker index or daemon) -> time
    # Cluster mode (faults.log begins with CLUSTER): which daemon each worker used, and faults
    # of each daemon: its own (SIGSTOP, down after SIGKILL/SIGTERM) and those of its path to
    # etcd (cut off; any etcd member down counts for every daemon).
    cluster = None  # (etcd lease ttl in ns, daemons)
    daemon_of = collections.defaultdict(int)  # worker index -> daemon (standalone: 0)
    node_faults = collections.defaultdict(list)  # daemon -> [(from, to)]
    etcd_faults = collections.defaultdict(list)  # daemon -> [(from, to)]
    member_faults = []  # [(from, to)]: an etcd member down (every daemon may feel it)
    quiet = []  # [(from, to)]: phases without any fault
    quiet_from = None
    with open(os.path.join(out, "faults.log")) as f:
        for line in f:
            parts = line.split()
            kind, t = parts[0], int(parts[1])
            if kind in ("STOP", "CUT", "PARTITION"):
                began[(kind, int(parts[2]))] = t
            elif kind == "CONT":
                i = int(parts[2])
                worker_faults[i].append((began.pop(("STOP", i)), t))
                fault_counts["stop"] += 1
            elif kind == "CUT_DONE":
                i = int(parts[2])
                worker_faults[i].append((began.pop(("CUT", i)), t + notice))
                fault_counts["cut"] += int(parts[4]) > 0
            elif kind == "HEAL":
                i = int(parts[2])
                worker_faults[i].append((began.pop(("PARTITION", i)), t + notice))
                fault_counts["partition"] += 1
            elif kind == "KILL":
                kills[int(parts[2])] = t
            elif kind == "DAEMON_STOP":
                last_stop = t
            elif kind == "DAEMON_START" and last_stop is not None:
                restarts.append((last_stop, t))
                last_stop = None
            elif kind == "CLUSTER":
                # etcd lease ttl, daemons, [wall clock], [etcd_timeout_ms]
                cluster = (int(parts[2]) * MS, int(parts[3]),
                           int(parts[5]) * MS if len(parts) > 5 else 2000 * MS)
            elif kind == "WORKER":
                daemon_of[int(parts[2])] = int(parts[3])
            elif kind in ("NODE_STOP", "NODE_DOWN", "ETCD_CUT", "MEMBER_KILL"):
                began[(kind, int(parts[2]))] = t
                fault_counts[kind] += 1
            elif kind in ("NODE_CONT", "NODE_UP") and ((
                    "NODE_STOP" if kind == "NODE_CONT" else "NODE_DOWN", int(parts[2])) in began):
                d = int(parts[2])
                s0 = began.pop(("NODE_STOP" if kind == "NODE_CONT" else "NODE_DOWN", d))
                node_faults[d].append((s0, t + notice))
            elif kind == "ETCD_HEAL":
                d = int(parts[2])
                etcd_faults[d].append((began.pop(("ETCD_CUT", d)), t + notice))
            elif kind == "MEMBER_START":
                member_faults.append((began.pop(("MEMBER_KILL", int(parts[2]))), t + notice))
            elif kind == "QUIET":
                quiet_from = t
            elif kind in ("NOISY", "END") and quiet_from is not None:
                quiet.append((quiet_from, t))
                quiet_from = None

    restart_begins = [s for s, _ in restarts]

    def overlaps(intervals, a, b):
        return any(s <= b and c >= a for s, c in intervals)

    def faulted(i, a, b, etcd=False):
        """True when worker i was stopped, cut off or partitioned, or its daemon was down or
        stopped, at some time in [a, b]; with `etcd`, also when its daemon was cut off from
        etcd or an etcd member was down."""
        if overlaps(worker_faults.get(i, ()), a, b):
            return True
        if cluster is not None:
            d = daemon_of[i]
            return overlaps(node_faults.get(d, ()), a, b) or (etcd and (
                overlaps(etcd_faults.get(d, ()), a, b) or overlaps(member_faults, a, b)))
        # Restarts are disjoint and in time order: the last one to begin by b is the one to test.
        k = bisect.bisect_right(restart_begins, b) - 1
        return k >= 0 and restarts[k][1] >= a

    writes = collections.defaultdict(list)  # key -> [(t, token, worker, seq, spec)]
    # (worker, KEYS, token) -> [t_first_write, t_last_write, released_ok, ttl, auto, mode, t_req]
    leases = {}
    requests = []  # (worker, KEYS, t_req, wait_ms, t_answer or None, granted, mode, error)
    seen = []  # (worker, KEYS, token, t, flags): inspect of every key of a set while held
    ops = collections.Counter()
    anomalies = []
    seq = 0
    for name in sorted(os.listdir(out)):
        if not name.startswith("worker."):
            continue
        w = int(name.split(".")[1])
        open_req = None
        cur_ttl, cur_auto, cur_mode = 0, False, "X"
        with open(os.path.join(out, name)) as f:
            for line in f:
                parts = line.split()
                if len(parts) < 2:
                    continue
                kind, t = parts[0], int(parts[1])
                if kind == "REQ":
                    ops["acquire"] += 1
                    cur_mode = parts[7] if len(parts) > 7 else "X"
                    open_req = [w, parts[2], t, int(parts[4]), None, False, cur_mode, False]
                    cur_ttl = int(parts[5]) * MS
                    cur_auto = len(parts) > 6 and parts[6] == "1"
                    requests.append(open_req)
                    ops["acquire_shared"] += cur_mode == "S"
                    ops["acquire_set"] += "+" in parts[2]
                elif kind == "W":
                    spec, token = parts[2], int(parts[3])
                    for key in keys_of(spec):
                        seq += 1
                        writes[key].append((t, token, w, seq, spec))
                    ops["write"] += 1
                    lk = (w, spec, token)
                    if lk in leases:
                        leases[lk][1] = t
                    else:
                        if len(parts) > 4:  # the ttl granted (cluster mode may cap it)
                            cur_ttl = min(cur_ttl, int(parts[4]) * MS)
                        t_req = open_req[2] if open_req is not None else t
                        leases[lk] = [t, t, False, cur_ttl, cur_auto, cur_mode, t_req]
                        ops["grant"] += 1
                        if open_req is not None and open_req[4] is None:
                            open_req[4], open_req[5] = t, True
                elif kind == "SEEN":
                    seen.append((w, parts[2], int(parts[3]), t, parts[4]))
                elif kind == "REL":
                    ops["release_" + parts[4]] += 1
                    lk = (w, parts[2], int(parts[3]))
                    if lk in leases:
                        leases[lk][2] = parts[4] == "ok"
                elif kind == "TIMEOUT":
                    ops["timeout"] += 1
                    if open_req is not None and open_req[4] is None:
                        open_req[4] = t
                elif kind == "ERR":
                    ops["error"] += 1
                    ops["error_unavailable"] += len(parts) > 3 and parts[3] == "unavailable"
                    if open_req is not None and open_req[4] is None:
                        open_req[7] = True
                    if open_req is not None and open_req[4] is None:
                        open_req[4] = t

    def clean(w, key, token):
        """A lease the daemon must still have granted for all of [first write, last write]:
        released ok (the client never saw it lost), its worker never stopped, cut off or
        partitioned and the daemon never down meanwhile, and renewed or finished well inside its
        ttl."""
        a, b, ok, ttl, auto = leases[(w, key, token)][:5]
        return ok and not faulted(w, a, b) and (auto or b - a + 100 * MS < ttl)

    # 1. Fenced mutual exclusion. The resource of a key keeps the tokens it has seen. With limit
    # L > 1 (exclusive holders only) it keeps the L largest and accepts a write iff its token is
    # >= the smallest of them. With limit 1 (a mutex, or a read-write lock) an exclusive access
    # is accepted iff its token is not older than any token seen, a shared one iff it is not
    # older than any exclusive token seen (readers do not fence each other off). A lease's
    # critical section [first write, last write] counts on a key iff all its writes there were
    # accepted; at no instant may the counted ones break the key (over_limit). A set's writes go
    # to the resource of each of its keys.
    rejected = set()  # (worker, KEYS, token, key)
    fenced_overlaps = 0
    unfenced_overlaps = 0
    clean_overlaps = 0  # overlaps among leases that were neither faulted nor reported lost
    shared_overlaps = 0  # shared holders overlapping each other (fine; shows the mode is used)
    for key, ws in writes.items():
        lim = limit_of(key)
        ws.sort()
        top = []
        newest_any, newest_exclusive = 0, 0
        for t, token, w, _, spec in ws:
            mode = leases[(w, spec, token)][5]
            if lim == 1:
                accepted = token >= (newest_exclusive if mode == "S" else newest_any)
                if accepted:
                    newest_any = max(newest_any, token)
                    if mode != "S":
                        newest_exclusive = max(newest_exclusive, token)
            else:
                accepted = len(top) < lim or token >= min(top)
                if accepted and token not in top:
                    top.append(token)
                    top.sort()
                    if len(top) > lim:
                        top.pop(0)
            if not accepted:
                rejected.add((w, spec, token, key))
                ops["write_rejected"] += 1
                if lim == 1 and clean(w, spec, token):
                    # Of a limit-1 key, only a newer lease that conflicts with this one seen
                    # meanwhile (a concurrent grant, or tokens going backwards) can refuse a write
                    # of a lease that was never lost. (Of a semaphore, a long lease is legitimately
                    # outlived by L newer ones.)
                    anomalies.append("key %s: write of lease %d (worker %d, %s), never lost, "
                                     "refused: newest token %d, newest exclusive %d" % (
                                         key, token, w, mode, newest_any, newest_exclusive))
        for fenced in (True, False):
            events = []
            for (w, spec, token), (a, b, *rest) in leases.items():
                if key not in keys_of(spec) or (fenced and (w, spec, token, key) in rejected):
                    continue
                # At equal times: ends of intervals first (touching intervals do not overlap),
                # then starts, then the ends of single-write leases (a point still counts).
                events.append((a, 1, w, spec, token, rest[3]))
                events.append((b, 0 if b > a else 2, w, spec, token, rest[3]))
            events.sort(key=lambda e: (e[0], e[1]))
            holders = {}  # (worker, KEYS, token) -> mode
            for t, d, w, spec, token, mode in events:
                h = (w, spec, token)
                if d != 1:
                    holders.pop(h, None)
                    continue
                if fenced and mode == "S" and any(m == "S" for m in holders.values()):
                    shared_overlaps += 1
                holders[h] = mode
                if not over_limit(holders.values(), lim):
                    continue
                shown = sorted("%d:%d%s" % (hw, ht, "S" if hm == "S" else "")
                               for (hw, _, ht), hm in holders.items())
                if fenced:
                    fenced_overlaps += 1
                    anomalies.append("key %s: holders %s break limit %d at t=%d" % (
                        key, shown, lim, t))
                else:
                    unfenced_overlaps += 1
                    kept = {k: m for k, m in holders.items() if clean(*k)}
                    if over_limit(kept.values(), lim):
                        clean_overlaps += 1
                        anomalies.append(
                            "key %s: holders released ok, unfaulted, %s break limit %d at t=%d"
                            % (key, sorted("%d:%d%s" % (hw, ht, "S" if hm == "S" else "")
                                           for (hw, _, ht), hm in kept.items()), lim, t))

    # 2. Tokens: one token is granted once (never to two leases).
    # In cluster mode per key: each daemon makes tokens of the etcd revision it has seen, so two
    # daemons may hand out the same number on different keys.
    by_token = collections.defaultdict(set)
    for (w, spec, token) in leases:
        if cluster is None:
            by_token[token].add((w, spec))
        else:
            for key in keys_of(spec):
                by_token[(key, token)].add((w, spec))
    for token, who in by_token.items():
        if len(who) > 1:
            anomalies.append("token %s granted to %s" % (token, sorted(who)))

    # 2b. Tokens strictly increase per key: a lease whose first write (after its grant) came
    # before another lease of the same key was even requested was granted first, so its token
    # must be smaller. Exact whatever the faults: grant <= first write < request <= grant.
    token_order = 0
    per_key = collections.defaultdict(list)  # key -> [(t_first_write, t_req, token, worker)]
    for (w, spec, token), lease in leases.items():
        for key in keys_of(spec):
            per_key[key].append((lease[0], lease[6], token, w))
    for key, ls in per_key.items():
        by_write = sorted(ls)
        newest, who, i = 0, None, 0
        for a, t_req, token, w in sorted(ls, key=lambda x: x[1]):
            while i < len(by_write) and by_write[i][0] < t_req:
                if by_write[i][2] > newest:
                    newest, who = by_write[i][2], by_write[i][3]
                i += 1
            if newest >= token:
                token_order += 1
                anomalies.append("key %s: lease %d (worker %d) requested after lease %d (worker %d)"
                                 " was granted, but its token is not larger" % (
                                     key, token, w, newest, who))

    # 2c. A set is held on all its keys: `inspect` of every key of a set, right after its grant
    # (one batch), must find the lease (its one token) on each key. Only when the answers came
    # well inside the ttl and the worker was not faulted from its request on (the grant may
    # have arrived while it was stopped, and be logged only after): else the lease may have run
    # out by then (on all its keys at once, but the daemon reads its clock per request, so even
    # a mix is possible at the very instant of expiry).
    set_anomalies = 0
    for w, spec, token, t, flags in seen:
        lease = leases.get((w, spec, token))
        if lease is None or set(flags) == {"1"}:
            continue
        a, ttl, t_req = lease[0], lease[3], lease[6]
        if not faulted(w, t_req, t, etcd=True) and t - a + 250 * MS < ttl:
            set_anomalies += 1
            anomalies.append("worker %d: set %s (token %d) seen held on %s at t=%d" % (
                w, spec, token, ", ".join(k for k, f in zip(keys_of(spec), flags) if f == "1")
                or "none of its keys", t))

    # 3. No waiter past its wait without an answer. The answer is seen by the client after the
    # daemon gave it; allow 1 s of scheduling slack, and skip waits during which this worker was
    # stopped, cut off or partitioned, or the daemon was down (the client re-sends its acquire on
    # reconnect).
    slack = 1000 * MS
    end_of = {}
    for name in os.listdir(out):
        if name.startswith("worker."):
            w = int(name.split(".")[1])
            end_of[w] = kills.get(w)
    late = 0
    unanswered = 0
    for w, key, t, wait_ms, t_ans, granted, _, _ in requests:
        if wait_ms < 0:
            if t_ans is None and end_of.get(w) is None:
                pass  # ended by the end of the run while waiting: the worker logs STOP only after
            continue
        horizon = t + wait_ms * MS + slack
        if cluster is not None and wait_ms == 0:
            # Cluster mode: a try-once acquire of a key whose right is elsewhere is answered
            # once the daemon has asked etcd, within etcd_timeout_ms (PROTOCOL.md).
            horizon = t + cluster[2] + slack
        if t_ans is None:
            # Killed while waiting, or the run ended: only an anomaly if it outlived its bound.
            kt = end_of.get(w)
            if kt is not None and kt <= horizon:
                continue
            if not faulted(w, t, horizon):
                unanswered += 1
                anomalies.append("worker %d: acquire of %s at %d (wait %d ms) never answered" % (
                    w, key, t, wait_ms))
            continue
        if t_ans > horizon and not faulted(w, t, t_ans):
            late += 1
            anomalies.append("worker %d: acquire of %s (wait %d ms) answered after %d ms" % (
                w, key, wait_ms, (t_ans - t) // MS))

    # 4. FIFO, as far as client logs show it: if A asked for a key at least `gap` before B,
    # neither was faulted (stopped, cut off, partitioned, daemon restart) around its wait, and A
    # still waited (unanswered) when B was granted more than `gap` before A's answer, B jumped
    # the queue. `gap` absorbs the time from a client's log line to the daemon (and back) on a
    # loaded machine.
    gap = 250 * MS
    fifo = 0
    by_key = collections.defaultdict(list)
    for r in requests:
        if r[4] is not None and r[3] != 0:
            # Queues are FIFO per key whatever the modes (a shared request behind a waiting one
            # waits too) and a set waits in the queue of each of its keys.
            for key in keys_of(r[1]):
                by_key[key].append(r)
    for key, rs in by_key.items():
        rs.sort(key=lambda r: r[2])
        granted = [r for r in rs if r[5]]
        asked = [r[2] for r in granted]
        for a in rs:
            wa, _, ta, _, ansa, _, _, _ = a
            if faulted(wa, ta, ansa):
                continue
            # Only B asked in [ta + gap, ansa - gap) can qualify (B's answer comes after its ask).
            lo = bisect.bisect_left(asked, ta + gap)
            hi = bisect.bisect_left(asked, ansa - gap)
            for b in granted[lo:hi]:
                wb, _, tb, _, ansb, _, _, _ = b
                if wb == wa or ansb + gap >= ansa:
                    continue
                if daemon_of[wb] != daemon_of[wa]:
                    continue  # cluster mode: FIFO only among the waiters of one daemon
                if faulted(wb, tb, ansb):
                    continue
                fifo += 1
                anomalies.append("key %s: worker %d asked at %d, worker %d asked at %d and was "
                                 "granted %d ms before the first was answered" % (
                                     key, wa, ta, wb, tb, (ansa - ansb) // MS))

    # 5. Cluster mode: waiters are served once faults heal. In each quiet phase [q0, q1] (no
    # fault injected), from q0 + `recover` on (the etcd lease ttl, for the leases of a daemon
    # that died or was cut off to run out in etcd, plus 3 s), no acquire may fail (error, e.g.
    # `unavailable`), and no acquire may wait longer than its wait + 1 s, or `patience` when
    # unbounded, counting only its time inside [q0 + recover, q1].
    unserved = 0
    longest_quiet_wait = 0
    if cluster is not None:
        recover = cluster[0] + 3000 * MS
        # Cluster mode promises no bound on a wait, only that waiters are served: with sets
        # and read-write locks contended from three daemons, fault-free waits of 18 s were seen
        # (1.3 s with one daemon). 30 s: a waiter not served by then counts as stuck.
        patience = 30_000 * MS
        for q0, q1 in quiet:
            lo = q0 + recover
            for w, spec, t, wait_ms, t_ans, granted, _, error in requests:
                # A worker killed while waiting stops waiting then.
                ans = t_ans if t_ans is not None else kills.get(w, float("inf"))
                if error and lo <= ans <= q1:
                    unserved += 1
                    anomalies.append("worker %d: acquire of %s at %d failed at %d, %d ms into a "
                                     "quiet phase" % (w, spec, t, t_ans, (t_ans - q0) // MS))
                    continue
                waited = min(ans, q1) - max(t, lo)
                if waited <= 0:
                    continue
                bound = wait_ms * MS + slack if wait_ms >= 0 else patience
                if wait_ms == 0:
                    bound = cluster[2] + slack
                if wait_ms < 0 and not error:
                    longest_quiet_wait = max(longest_quiet_wait, waited)
                if waited > bound:
                    unserved += 1
                    anomalies.append("worker %d: acquire of %s at %d (wait %d ms) waited %d ms "
                                     "of a quiet phase unanswered" % (
                                         w, spec, t, wait_ms, waited // MS))

    print("operations: %d acquires (%d shared, %d of a set of keys), %d grants, %d timeouts, "
          "%d errors, %d releases ok, %d leases reported lost, %d writes (%d rejected by "
          "fencing), %d sets inspected" % (
              ops["acquire"], ops["acquire_shared"], ops["acquire_set"], ops["grant"],
              ops["timeout"], ops["error"], ops["release_ok"], ops["release_lost"], ops["write"],
              ops["write_rejected"], len(seen)))
    print("faults seen in the log: %d worker kills, %d worker stops, %d connection cuts, "
          "%d partitions, %d daemon restarts" % (
              len(kills), fault_counts["stop"], fault_counts["cut"], fault_counts["partition"],
              len(restarts) + fault_counts["NODE_DOWN"]))
    if cluster is not None:
        print("cluster: %d daemon stops, %d daemons cut off from etcd, %d etcd members killed; "
              "%d acquires answered unavailable; %d quiet phases, longest unbounded wait inside "
              "one (after recovery) %d ms" % (
                  fault_counts["NODE_STOP"], fault_counts["ETCD_CUT"],
                  fault_counts["MEMBER_KILL"], ops["error_unavailable"], len(quiet),
                  longest_quiet_wait // MS))
    print("overlaps without fencing (expected only with faults): %d" % unfenced_overlaps)
    print("of which among leases released ok and never faulted: %d" % clean_overlaps)
    print("shared holders overlapping each other (allowed): %d" % shared_overlaps)
    print("anomalies: %d (fenced over-limit %d, unfenced over-limit among never-lost leases %d, "
          "tokens out of order %d, sets not held whole %d, late answers %d, unanswered %d, "
          "FIFO %d, not served after faults healed %d, other %d)" % (
              len(anomalies), fenced_overlaps, clean_overlaps, token_order, set_anomalies, late,
              unanswered, fifo, unserved, len(anomalies) - fenced_overlaps - clean_overlaps -
              token_order - set_anomalies - late - unanswered - fifo - unserved))
    for a in anomalies[:20]:
        print("  ANOMALY " + a)
    if ops["acquire"] == 0 or ops["grant"] == 0:
        print("no operations were logged: the run did not work")
        return 2
    return 1 if anomalies else 0


def recovery(out):
    """Cluster mode: how long recovery took, measured from the logs of a run (monotonic clock;
    the daemons' log lines placed by the wall clock noted in faults.log's CLUSTER line).
    Printed, not checked:
    - takeover: from a daemon's SIGKILL (or SIGSTOP longer than the etcd lease ttl) to the
      first grant, to a worker of another daemon, of a key a worker of the faulted daemon held
      then while an unbounded waiter of another daemon wanted it (asked before, or within 1 s
      after);
    - lost: from the start of a cut from etcd longer than the ttl to the daemon's log line
      "etcd lease could not be kept alive", and to the first acquire of one of its workers
      answered `unavailable`;
    - back: from the end of a daemon fault (SIGCONT, restart, etcd reachable) to the first
      grant to one of its workers, after a restart or when the daemon had answered
      `unavailable` during the fault (or within 1 s after it), so it had to recover; not
      counted when another fault of that daemon or of etcd began before that grant."""
    events = []
    with open(os.path.join(out, "faults.log")) as f:
        for line in f:
            parts = line.split()
            events.append((parts[0], int(parts[1]), parts[2:]))
    head = [e for e in events if e[0] == "CLUSTER"]
    if not head:
        return
    ttl = int(head[0][2][0]) * MS
    wall_minus_mono = int(head[0][2][2]) - head[0][1] if len(head[0][2]) > 2 else None
    daemon_of = {int(a[0]): int(a[1]) for k, _, a in events if k == "WORKER"}
    grants = collections.defaultdict(list)  # daemon -> [(t, key)]
    held = []  # (daemon, key, first write, last write)
    asks = []  # (daemon, key, t_req, t_answer or inf)
    trouble = collections.defaultdict(list)  # daemon -> [t]: an acquire answered unavailable
    for name in os.listdir(out):
        if not name.startswith("worker.") or not name.endswith(".log"):
            continue
        w = int(name.split(".")[1])
        d = daemon_of.get(w, 0)
        first, last, ttl_of = {}, {}, {}
        req, ttl_asked = None, 0
        with open(os.path.join(out, name)) as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                kind, t, spec = parts[0], int(parts[1]), parts[2]
                if kind == "REQ":
                    req = [spec, t, float("inf"), int(parts[4])]
                    asks.append((d, req))
                    ttl_asked = int(parts[5]) * MS
                elif kind in ("TIMEOUT", "ERR") and req is not None:
                    req[2] = min(req[2], t)
                    if kind == "ERR" and len(parts) > 3 and parts[3] == "unavailable":
                        trouble[d].append(t)
                elif kind == "W":
                    lk = (spec, parts[3])
                    last[lk] = t
                    if lk not in first:
                        first[lk] = t
                        ttl_of[lk] = ttl_asked
                        if req is not None:
                            req[2] = min(req[2], t)
                        for key in keys_of(spec):
                            grants[d].append((t, key))
                elif kind == "REL":
                    lk = (spec, parts[3])
                    if lk in first:
                        # Held at least until its last write: the release is sent after it.
                        # ... and, as the daemon sees it, at most until its ttl ran out.
                        a = first.pop(lk)
                        for key in keys_of(spec):
                            held.append((d, key, a, min(last[lk], a + ttl_of[lk])))
        for lk, a in first.items():  # never released (killed): held until its ttl ran out
            for key in keys_of(lk[0]):
                held.append((d, key, a, min(last[lk], a + ttl_of[lk])))
    for g in grants.values():
        g.sort()
    for tr in trouble.values():
        tr.sort()
    daemon_lost = collections.defaultdict(list)  # daemon -> [mono t of "could not be kept alive"]
    if wall_minus_mono is not None:
        for name in os.listdir(out):
            if name.startswith("keylockd.n") and name.endswith(".log"):
                d = int(name.split(".")[1][1:])
                with open(os.path.join(out, name)) as f:
                    for line in f:
                        if "error cluster: etcd lease could not be kept alive" in line:
                            wall = time.mktime(time.strptime(line[:19], "%Y-%m-%dT%H:%M:%S"))
                            wall -= time.timezone  # the daemon logs UTC
                            ns = int(wall * 1e9) + int(line[20:23]) * MS
                            daemon_lost[d].append(ns - wall_minus_mono)
        for v in daemon_lost.values():
            v.sort()

    def first_after(ts, t0, t1=float("inf")):
        k = bisect.bisect_left(ts, t0)
        return ts[k] if k < len(ts) and ts[k] <= t1 else None

    # Fault intervals per daemon, in time order.
    faults = []  # (kind, daemon, from, to)
    open_ = {}
    for kind, t, a in events:
        if kind in ("NODE_STOP", "NODE_DOWN", "ETCD_CUT"):
            how = a[1] if len(a) > 1 else ""
            open_[int(a[0])] = (kind, t, how)
        elif kind in ("NODE_CONT", "NODE_UP", "ETCD_HEAL") and int(a[0]) in open_:
            k, t0, how = open_.pop(int(a[0]))
            faults.append((k + ("_" + how if k == "NODE_DOWN" else ""), int(a[0]), t0, t))
    fault_starts = [(int(a[0]) if kind != "MEMBER_KILL" else None, t) for kind, t, a in events
                    if kind in ("NODE_STOP", "NODE_DOWN", "ETCD_CUT", "MEMBER_KILL")]
    takeover = collections.defaultdict(list)
    lost_log, lost_client, back = [], [], collections.defaultdict(list)
    for kind, d, t0, t1 in faults:
        long_fault = t1 - t0 > ttl
        if kind == "NODE_DOWN_SIGKILL" or (kind == "NODE_STOP" and long_fault):
            for hd, key, a, b in held:
                if hd != d or not a <= t0 < b:
                    continue
                # Wanted by an unbounded waiter of another daemon (it waits until served).
                wanted = any(ad != d and r[3] < 0 and key in keys_of(r[0])
                             and r[1] <= t0 + 1000 * MS and r[2] > t0 for ad, r in asks)
                if not wanted:
                    continue
                t = min((g for od in grants if od != d
                         for g in [next((tg for tg, k in grants[od][
                             bisect.bisect_left(grants[od], (t0, "")):] if k == key), None)]
                         if g is not None), default=None)
                if t is not None:
                    takeover[kind].append(t - t0)
                    # Also apart: no other daemon or etcd fault began meanwhile.
                    if not any(t0 < s0 <= t for _, s0 in fault_starts):
                        takeover[kind + "_alone"].append(t - t0)
        if kind == "ETCD_CUT" and long_fault:
            t = first_after(daemon_lost[d], t0, t1)
            if t is not None:
                lost_log.append(t - t0)
            t = first_after(trouble[d], t0, t1)
            if t is not None:
                lost_client.append(t - t0)
        if first_after(trouble[d], t0, t1 + 1000 * MS) is not None or kind.startswith("NODE_DOWN"):
            ts = [g for g, _ in grants[d]]
            t = first_after(ts, t1)
            # Not when another fault of this daemon, or of etcd, began before that grant.
            if t is not None and not any(t1 <= s0 <= t for od, s0 in fault_starts
                                         if od in (d, None)):
                back[kind.split("_SIG")[0]].append(t - t1)

    def stats(v):
        if not v:
            return "none measured"
        v = sorted(v)
        return "n=%d, median %.2f s, p90 %.2f s, max %.2f s" % (
            len(v), v[len(v) // 2] / 1e9, v[min(len(v) - 1, int(len(v) * 0.9))] / 1e9,
            v[-1] / 1e9)

    print("recovery (etcd lease ttl %.1f s):" % (ttl / 1e9))
    for kind, what in (("NODE_DOWN_SIGKILL", "SIGKILL"), ("NODE_STOP", "SIGSTOP > ttl")):
        print("  takeover of a held, wanted key after a daemon's %s: %s; with no other daemon "
              "or etcd fault meanwhile: %s" % (what, stats(takeover[kind]),
                                              stats(takeover[kind + "_alone"])))
    print("  cut from etcd (> ttl) to the daemon's 'etcd lease could not be kept alive': %s"
          % stats(lost_log))
    print("  cut from etcd (> ttl) to the first acquire of its clients answered unavailable: %s"
          % stats(lost_client))
    for kind, what in (("NODE_STOP", "SIGCONT"), ("NODE_DOWN", "restart"),
                       ("ETCD_CUT", "etcd reachable again")):
        print("  %s to the first grant to its clients: %s" % (what, stats(back[kind])))


def selftest():
    """The checker must flag broken histories, and pass a correct one."""
    s = 1_000_000_000  # 1 s in ns

    def history(workers, faults=(), daemons=None):
        """Logs of a made-up run; with `daemons` (the daemon of each worker), of cluster mode."""
        d = tempfile.mkdtemp(prefix="keylock-chaos-selftest-")
        head = ["DAEMON_START 1 1"]
        if daemons is not None:
            head = ["CLUSTER 1 3000 3"] + ["WORKER 1 %d %d" % (i, n) for i, n in enumerate(daemons)]
        with open(os.path.join(d, "faults.log"), "w") as f:
            f.write("".join(l + "\n" for l in head + list(faults)))
        for i, lines in enumerate(workers):
            with open(os.path.join(d, "worker.%d.log" % i), "w") as f:
                f.write("".join(l + "\n" for l in lines))
        return d

    def lease(t_req, key, token, a, b, wait=-1, ttl=800, end="ok", mode="X", seen=None):
        """A lease of `key` (a key, or keys joined with '+'); `seen`: the SEEN flags of a set."""
        lines = ["REQ %d %s %d %d %d 1 %s" % (t_req, key, limit_of(keys_of(key)[0]), wait, ttl,
                                               mode),
                 "W %d %s %d" % (a, key, token)]
        if seen is not None:
            lines.append("SEEN %d %s %d %s" % (a + 1000, key, token, seen))
        return lines + ["W %d %s %d" % (b, key, token), "REL %d %s %d %s" % (b + 1, key, token, end)]

    def shared(t_req, key, token, a, b, **kw):
        return lease(t_req, key, token, a, b, mode="S", **kw)

    cases = [
        ("serial holders", 0,
         [lease(s, "c0", 5, 2 * s, 3 * s), lease(s, "c0", 6, 3 * s + 1, 4 * s)]),
        ("three holders of a limit-3 key", 0,
         [lease(s, "c2", 5, 2 * s, 5 * s), lease(s, "c2", 6, 3 * s, 5 * s),
          lease(s, "c2", 7, 4 * s, 5 * s)]),
        ("double grant of a mutex", 1,
         [lease(s, "c0", 5, 2 * s, 5 * s), lease(s, "c0", 6, 3 * s, 4 * s)]),
        ("one token granted twice", 1,
         [lease(s, "c0", 5, 2 * s, 3 * s), lease(s, "c1", 5, 2 * s, 3 * s)]),
        ("acquire answered long after its wait", 1,
         [["REQ %d c0 1 100 800 1" % s, "TIMEOUT %d c0" % (4 * s)], lease(s, "c0", 5, s, 2 * s)]),
        ("a waiter jumped", 1,
         [lease(s, "c0", 9, 8 * s, 9 * s, wait=20000), lease(2 * s, "c0", 8, 3 * s, 4 * s)]),
        # The same double grant, but the first holder's connection was cut (or partitioned)
        # inside its lease: the daemon rightly granted again; fencing refused the stale write.
        ("a cut-off holder overlapped, fenced off", 0,
         [lease(s, "c0", 5, 2 * s, 5 * s), lease(s, "c0", 6, 3 * s, 4 * s)],
         ["CUT %d 0 100" % (2 * s + s // 2), "CUT_DONE %d 0 100 1" % (2 * s + s // 2 + 1000)]),
        ("a partitioned holder overlapped, fenced off", 0,
         [lease(s, "c0", 5, 2 * s, 5 * s), lease(s, "c0", 6, 3 * s, 4 * s)],
         ["PARTITION %d 0 100" % (2 * s), "HEAL %d 0 100" % (3 * s)]),
        # A cut long before the overlap excuses nothing.
        ("a double grant well after a cut", 1,
         [lease(s, "c0", 5, 3 * s, 5 * s), lease(s, "c0", 6, 3 * s, 4 * s)],
         ["CUT %d 0 100" % s, "CUT_DONE %d 0 100 1" % (s + 1000)]),
        ("an answer held back by a partition", 0,
         [["REQ %d c0 1 100 800 1" % s, "TIMEOUT %d c0" % (4 * s)], lease(s, "c0", 5, s, 2 * s)],
         ["PARTITION %d 0 100" % (s + s // 2), "HEAL %d 0 100" % (3 * s)]),
        # Modes: shared leases of a read-write lock may overlap each other, in any token order.
        ("shared leases overlap", 0,
         [shared(s, "m0", 5, 2 * s, 5 * s), shared(s, "m0", 6, 3 * s, 4 * s),
          shared(s, "m0", 7, 3 * s, 6 * s)]),
        ("readers, then a writer, then readers", 0,
         [shared(s, "m0", 5, 2 * s, 3 * s), shared(s, "m0", 6, 2 * s, 3 * s),
          lease(s, "m0", 7, 3 * s + 1, 4 * s), shared(s, "m0", 8, 4 * s + 1, 5 * s)]),
        ("an exclusive lease overlapping a shared one", 1,
         [shared(s, "m0", 5, 2 * s, 5 * s), lease(s, "m0", 6, 3 * s, 4 * s)]),
        ("a shared lease overlapping an exclusive one", 1,
         [lease(s, "m0", 5, 2 * s, 5 * s), shared(s, "m0", 6, 3 * s, 4 * s)]),
        # Sets: one lease over several keys, excluding every other lease of each key.
        ("sets of disjoint keys, and a set beside readers of its keys in turn", 0,
         [lease(s, "m0+m1", 5, 2 * s, 3 * s, seen="11"), lease(s, "m2+m3", 6, 2 * s, 3 * s,
                                                                 seen="11"),
          shared(s, "m1", 7, 3 * s + 1, 4 * s), shared(s, "m0+m1", 8, 3 * s + 2, 4 * s,
                                                        seen="11")]),
        ("a set overlapping a lease of one of its keys", 1,
         [lease(s, "m0+m2", 5, 2 * s, 5 * s, seen="11"), lease(s, "m2", 6, 3 * s, 4 * s)]),
        ("a set seen held on one key but not another", 1,
         [lease(s, "m0+m1+m3", 5, 2 * s, 2 * s + 10 * MS, seen="101")]),
        ("a set seen held on none of its keys right after its grant", 1,
         [lease(s, "m0+m1", 5, 2 * s, 2 * s + 10 * MS, seen="00")]),
        ("a set that ran out before its inspect (worker stopped) held on none", 0,
         [lease(s, "m0+m1", 5, 2 * s, 4 * s, seen="00", end="lost")],
         ["STOP %d 0 100" % (2 * s), "CONT %d 0 100" % (3 * s)]),
        ("a set granted while its worker was stopped, inspected after, held on none", 0,
         [lease(s, "m0+m1", 5, 3 * s, 3 * s + 10 * MS, seen="00", end="lost")],
         ["STOP %d 0 100" % (s + 1000), "CONT %d 0 100" % (3 * s - 1000)]),
        # Tokens per key: a lease requested after another was granted has the larger token.
        # Two readers would not fence each other off, so only this check sees it.
        ("tokens going backwards between readers", 1,
         [shared(s, "m0", 9, 2 * s, 3 * s), shared(4 * s, "m0", 8, 5 * s, 6 * s)]),
        ("tokens going backwards on one key of a set", 1,
         [lease(s, "m1", 9, 2 * s, 3 * s), lease(4 * s, "m0+m1", 8, 5 * s, 6 * s, seen="11")]),
        # FIFO holds whatever the modes: a reader that asked later does not pass a writer.
        ("a reader jumped a waiting writer", 1,
         [lease(s, "m0", 9, 8 * s, 9 * s, wait=20000), shared(2 * s, "m0", 8, 3 * s, 4 * s)]),
        ("a set jumped by a later request for one of its keys", 1,
         [lease(s, "m0+m1", 9, 8 * s, 9 * s, wait=20000, seen="11"),
          lease(2 * s, "m1", 8, 3 * s, 4 * s)]),
    ]
    # Cluster mode: workers on daemons 0, 1, 2 (the list after the workers' histories). Tokens
    # increase per key only, FIFO holds per daemon only; everything else as in standalone.
    q0, q1 = 20 * s, 60 * s  # a quiet phase; served from q0 + ttl + 3 s = 26 s on
    cases += [
        ("cluster: the same token on two keys, from two daemons", 0,
         [lease(s, "c0", 5, 2 * s, 3 * s), lease(s, "c1", 5, 2 * s, 3 * s)], (), [0, 1]),
        ("cluster: the same token twice on one key, from two daemons", 1,
         [lease(s, "c0", 5, 2 * s, 3 * s), lease(4 * s, "c0", 5, 5 * s, 6 * s)], (), [0, 1]),
        ("cluster: a token going backwards on one key across daemons", 1,
         [lease(s, "c0", 9, 2 * s, 3 * s), lease(4 * s, "c0", 8, 5 * s, 6 * s)], (), [0, 1]),
        ("cluster: tokens going backwards between readers on two daemons", 1,
         [shared(s, "m0", 9, 2 * s, 3 * s), shared(4 * s, "m0", 8, 5 * s, 6 * s)], (), [0, 2]),
        ("cluster: an overlap of workers on two daemons, unexcused", 1,
         [lease(s, "c0", 5, 2 * s, 5 * s), lease(s, "c0", 6, 3 * s, 4 * s)], (), [0, 1]),
        ("cluster: that overlap while the first one's daemon was stopped", 0,
         [lease(s, "c0", 5, 2 * s, 5 * s), lease(s, "c0", 6, 3 * s, 4 * s)],
         ["NODE_STOP %d 0 100" % (2 * s + 1000), "NODE_CONT %d 0 100" % (6 * s)], [0, 1]),
        ("cluster: that overlap while the first one's daemon was down (SIGKILL)", 0,
         [lease(s, "c0", 5, 2 * s, 5 * s), lease(s, "c0", 6, 3 * s, 4 * s)],
         ["NODE_DOWN %d 0 SIGKILL" % (2 * s + 1000), "NODE_UP %d 0 100" % (2 * s + 2000)],
         [0, 1]),
        ("cluster: that overlap while a third daemon was stopped", 1,
         [lease(s, "c0", 5, 2 * s, 5 * s), lease(s, "c0", 6, 3 * s, 4 * s)],
         ["NODE_STOP %d 2 100" % (2 * s + 1000), "NODE_CONT %d 2 100" % (6 * s)], [0, 1]),
        # A daemon cut off from etcd must end its leases before etcd could give its keys away:
        # a cut excuses no overlap of leases still held (released ok).
        ("cluster: that overlap while the first one's daemon was cut off from etcd", 1,
         [lease(s, "c0", 5, 2 * s, 5 * s), lease(s, "c0", 6, 3 * s, 4 * s)],
         ["ETCD_CUT %d 0 hold" % (2 * s + 1000), "ETCD_HEAL %d 0" % (6 * s)], [0, 1]),
        ("cluster: a later waiter on another daemon granted first", 0,
         [lease(s, "c0", 9, 8 * s, 9 * s, wait=20000), lease(2 * s, "c0", 8, 3 * s, 4 * s)],
         (), [0, 1]),
        ("cluster: a later waiter on the same daemon granted first", 1,
         [lease(s, "c0", 9, 8 * s, 9 * s, wait=20000), lease(2 * s, "c0", 8, 3 * s, 4 * s)],
         (), [1, 1]),
        # A try-once acquire waits for the daemon's question to etcd (etcd_timeout_ms, 2 s).
        ("cluster: a try-once acquire answered within etcd_timeout_ms", 0,
         [["REQ %d c0 1 0 800 1" % s, "TIMEOUT %d c0" % (s + 2 * s)],
          lease(s, "c0", 5, s, 2 * s)], (), [0, 1]),
        ("cluster: a try-once acquire answered long after etcd_timeout_ms", 1,
         [["REQ %d c0 1 0 800 1" % s, "TIMEOUT %d c0" % (s + 4 * s)],
          lease(s, "c0", 5, s, 2 * s)], (), [0, 1]),
        ("cluster: waiters served in a quiet phase", 0,
         [lease(q0 + 2 * s, "c0", 5, q0 + 7 * s, q0 + 8 * s),
          ["REQ %d c1 2 -1 800 0 X" % (q0 + s), "ERR %d c1 unavailable" % (q0 + 2 * s)]],
         ["QUIET %d" % q0, "END %d" % q1], [0, 1]),
        ("cluster: an unbounded waiter never served in a quiet phase", 1,
         [lease(q0 + 2 * s, "c0", 5, q0 + 7 * s, q0 + 8 * s), ["REQ %d c0 1 -1 800 0 X" % q0]],
         ["QUIET %d" % q0, "END %d" % q1], [0, 1]),
        ("cluster: an acquire answered unavailable well into a quiet phase", 1,
         [lease(q0 + 2 * s, "c0", 5, q0 + 7 * s, q0 + 8 * s),
          ["REQ %d c1 2 -1 800 0 X" % (q0 + 9 * s), "ERR %d c1 unavailable" % (q0 + 9 * s)]],
         ["QUIET %d" % q0, "END %d" % q1], [0, 1]),
    ]
    failed = 0
    for name, want_anomalies, workers, *faults in cases:
        d = history(workers, *faults)
        print("--- selftest: %s" % name)
        rc = check(d)
        shutil.rmtree(d)
        if (rc != 0) != (want_anomalies != 0):
            print("SELFTEST FAILED: %s: check returned %d" % (name, rc))
            failed += 1
    print("selftest: %d of %d cases failed" % (failed, len(cases)))
    return 1 if failed else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--keylockd", required=True)
    r.add_argument("--worker", required=True)
    r.add_argument("--seconds", type=float, default=20)
    r.add_argument("--workers", type=int, default=8)
    r.add_argument("--keys", type=int, default=4)
    r.add_argument("--seed", type=int, default=int(time.time()))
    r.add_argument("--out", default=None)
    r.add_argument("--keep", action="store_true", help="keep the logs even when the check passes")
    r.add_argument("--tls", action="store_true",
                   help="standalone mode: workers connect over TLS to keylockd's listen_tls port")
    r.add_argument("--cluster", action="store_true",
                   help="3 etcd members and --nodes keylockd in cluster mode, workers spread "
                        "over them, daemon and etcd faults too")
    r.add_argument("--nodes", type=int, default=3)
    r.add_argument("--etcd-lease-ttl-ms", type=int, default=3000)
    r.add_argument("--etcd-timeout-ms", type=int, default=2000)
    r.add_argument("--fault-seconds", type=float, default=40,
                   help="cluster mode: faults for this long, then a quiet phase, and again")
    r.add_argument("--quiet-seconds", type=float, default=40,
                   help="cluster mode: quiet phases' length (the run ends with one)")
    c = sub.add_parser("check")
    c.add_argument("dir")
    v = sub.add_parser("recovery", help="cluster mode: recovery times measured from a run's logs")
    v.add_argument("dir")
    sub.add_parser("selftest", help="run the checker on made-up broken and correct histories")
    args = ap.parse_args()
    if args.cmd == "check":
        return check(args.dir)
    if args.cmd == "recovery":
        return recovery(args.dir) or 0
    if args.cmd == "selftest":
        return selftest()
    try:
        return run(args)
    except RuntimeError as e:
        print("chaos run failed: %s" % e)
        return 2


if __name__ == "__main__":
    sys.exit(main())
