#!/usr/bin/env python3
"""Chaos run and history checker for keylock's mutual exclusion (see tests/chaos/README.md).

  chaos.py run --keylockd PATH --worker PATH [--seconds S] [--workers N] [--keys K] [--seed X]
               [--out DIR]      start keylockd and N workers (each through its own TCP
                                relay), inject faults, then check
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


class Daemon:
    def __init__(self, path, port, state_dir, out):
        self.path, self.port, self.state_dir, self.out = path, port, state_dir, out
        self.proc = None
        self.starts = 0

    def start(self):
        self.starts += 1
        err = open(os.path.join(self.out, "keylockd.%d.log" % self.starts), "wb")
        self.proc = subprocess.Popen(
            [self.path, "--listen", "127.0.0.1:%d" % self.port, "--metrics-listen", "",
             "--state-dir", self.state_dir, "--log-level", "warn"],
            stdout=subprocess.DEVNULL, stderr=err)
        err.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError("keylockd exited with %s" % self.proc.returncode)
                time.sleep(0.02)
        raise RuntimeError("keylockd did not start listening")

    def stop(self, sig=signal.SIGTERM):
        """Stops the daemon; False when a SIGTERM did not end it cleanly (exit status 0)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return False
            return sig != signal.SIGTERM or self.proc.returncode == 0
        return True


class Relay:
    """A TCP relay between each worker and keylockd, one listening port per worker, so that one
    worker's connection can be cut, or stalled like a network partition, while the others' are
    untouched. Each relayed connection is a pair of threads copying bytes one way each."""

    class Link:
        def __init__(self, client, upstream):
            self.socks = (client, upstream)
            self.cut = False
            self.pumps = 2

    def __init__(self, upstream_port):
        self.upstream = upstream_port
        self.lock = threading.Lock()
        self.listeners = {}  # worker -> listening socket
        self.links = collections.defaultdict(list)  # worker -> [Link]
        self.flowing = {}  # worker -> Event, cleared while the worker is partitioned

    def listen(self, worker):
        ls = socket.socket()
        ls.bind(("127.0.0.1", 0))
        ls.listen(16)
        self.listeners[worker] = ls
        self.flowing[worker] = threading.Event()
        self.flowing[worker].set()
        threading.Thread(target=self._accept, args=(worker, ls), daemon=True).start()
        return ls.getsockname()[1]

    def _accept(self, worker, ls):
        while True:
            try:
                client, _ = ls.accept()
            except OSError:
                return  # closed by close()
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream), timeout=2)
                upstream.settimeout(None)
            except OSError:
                client.close()  # keylockd is down: the client sees its connection end
                continue
            for s in (client, upstream):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link = Relay.Link(client, upstream)
            with self.lock:
                self.links[worker].append(link)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(worker, link, src, dst),
                                 daemon=True).start()

    def _pump(self, worker, link, src, dst):
        flowing = self.flowing[worker]
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
        self._cut(worker, link)
        with self.lock:
            link.pumps -= 1
            last = link.pumps == 0
        if last:
            for s in link.socks:
                s.close()

    def _cut(self, worker, link):
        with self.lock:
            if link.cut:
                return False
            link.cut = True
            self.links[worker].remove(link)
        for s in link.socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return True

    def cut(self, worker):
        """Ends both sides of the worker's relayed connections; how many there were."""
        with self.lock:
            links = list(self.links[worker])
        return sum(self._cut(worker, link) for link in links)

    def partition(self, worker, on):
        """Holds back (on) or lets through again every byte of the worker's connections."""
        if on:
            self.flowing[worker].clear()
        else:
            self.flowing[worker].set()

    def close(self, worker):
        """Stops listening for a worker that is gone (its accept thread ends)."""
        ls = self.listeners.pop(worker)
        ls.shutdown(socket.SHUT_RDWR)  # wakes its accept() (Linux); close() alone would not
        ls.close()

    def stop(self):
        for worker in list(self.listeners):
            self.close(worker)
        for worker in list(self.links):
            self.flowing[worker].set()
            self.cut(worker)


def run(args):
    out = args.out or tempfile.mkdtemp(prefix="keylock-chaos-")
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out)
    state = os.path.join(out, "state")
    os.makedirs(state)
    rng = random.Random(args.seed)
    faults = open(os.path.join(out, "faults.log"), "w", buffering=1)

    def fault(kind, detail=""):
        faults.write("%s %d %s\n" % (kind, mono_ns(), detail))

    daemon = Daemon(args.keylockd, free_port(), state, out)
    daemon.start()
    fault("DAEMON_START", str(daemon.proc.pid))
    relay = Relay(daemon.port)
    workers = {}  # index -> Popen
    next_index = [0]
    run_ms = int(args.seconds * 1000)
    end = time.monotonic() + args.seconds

    def spawn():
        i = next_index[0]
        next_index[0] += 1
        left = max(500, int((end - time.monotonic()) * 1000))
        p = subprocess.Popen([args.worker, "127.0.0.1:%d" % relay.listen(i),
                              os.path.join(out, "worker.%d.log" % i),
                              str(rng.getrandbits(32)), str(left), str(args.keys)],
                             stdout=subprocess.DEVNULL,
                             stderr=open(os.path.join(out, "worker.%d.err" % i), "wb"))
        workers[i] = p

    for _ in range(args.workers):
        spawn()
    counts = collections.Counter()
    ongoing = {}  # index -> (monotonic time to end the fault, "stop" or "partition")

    def end_fault(i):
        _, kind = ongoing.pop(i)
        if kind == "stop":
            if workers[i].poll() is None:
                os.kill(workers[i].pid, signal.SIGCONT)
            fault("CONT", "%d %d" % (i, workers[i].pid))
        else:
            relay.partition(i, False)
            fault("HEAL", "%d %d" % (i, workers[i].pid))

    # The first five faults are one of each kind, in random order (so that even a short run
    # injects every kind); later ones are drawn with these weights.
    kinds = ["kill", "stop", "cut", "partition", "restart"]
    weights = [25, 25, 20, 15, 15]
    first = list(kinds)
    rng.shuffle(first)
    try:
        while time.monotonic() < end - 1.0:
            time.sleep(rng.uniform(0.3, 1.2))
            now = time.monotonic()
            for i in [i for i, (t, _) in ongoing.items() if now >= t]:
                end_fault(i)
            if time.monotonic() >= end - 1.0:
                break
            live = [i for i, p in workers.items() if p.poll() is None and i not in ongoing]
            kind = first.pop() if first else rng.choices(kinds, weights)[0]
            if kind == "kill" and live:
                i = rng.choice(live)
                fault("KILL", "%d %d" % (i, workers[i].pid))
                os.kill(workers[i].pid, signal.SIGKILL)
                workers[i].wait()
                relay.close(i)
                counts["kill"] += 1
                spawn()
            elif kind == "stop" and live:
                i = rng.choice(live)
                # Longer than any ttl (<= 800 ms): its leases must run out meanwhile.
                ongoing[i] = (time.monotonic() + rng.uniform(1.0, 2.0), "stop")
                fault("STOP", "%d %d" % (i, workers[i].pid))
                os.kill(workers[i].pid, signal.SIGSTOP)
                counts["stop"] += 1
            elif kind == "cut" and live:
                # Cut one worker's connection (both ends see it end): the daemon frees its
                # leases and drops its waiters; the client reconnects and re-sends its waits.
                i = rng.choice(live)
                fault("CUT", "%d %d" % (i, workers[i].pid))
                n = relay.cut(i)
                fault("CUT_DONE", "%d %d %d" % (i, workers[i].pid, n))
                counts["cut"] += n > 0
            elif kind == "partition" and live:
                # Partition one worker: its connection stays open but no byte passes either way
                # for 0.3-1.5 s (shorter or longer than its ttl), then the held bytes arrive late:
                # renewals too late, a release of a lease that already ran out.
                i = rng.choice(live)
                ongoing[i] = (time.monotonic() + rng.uniform(0.3, 1.5), "partition")
                fault("PARTITION", "%d %d" % (i, workers[i].pid))
                relay.partition(i, True)
                counts["partition"] += 1
            else:  # "restart", or no worker free to fault
                how = signal.SIGKILL if rng.random() < 0.5 else signal.SIGTERM
                fault("DAEMON_STOP", signal.Signals(how).name)
                if not daemon.stop(how):
                    counts["daemon_unclean"] += 1
                time.sleep(rng.uniform(0.0, 0.3))
                daemon.start()
                fault("DAEMON_START", str(daemon.proc.pid))
                counts["daemon_restart"] += 1
        for i in list(ongoing):
            end_fault(i)
        for p in workers.values():
            try:
                p.wait(timeout=max(1.0, end - time.monotonic() + 10))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                counts["worker_hung"] += 1
    finally:
        for i, p in workers.items():
            if p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
                p.kill()
                p.wait()
        fault("DAEMON_STOP", "end")
        if not daemon.stop():
            counts["daemon_unclean"] += 1
        relay.stop()
        faults.close()
    print("chaos run: %.0f s, %d workers (%d processes in all), %d keys, seed %s, logs in %s"
          % (args.seconds, args.workers, next_index[0], args.keys, args.seed, out))
    print("faults injected: %d SIGKILL of a worker, %d SIGSTOP/SIGCONT of a worker, "
          "%d connections of a worker cut, %d partitions of a worker, %d daemon restarts" % (
              counts["kill"], counts["stop"], counts["cut"], counts["partition"],
              counts["daemon_restart"]))
    hung = counts["worker_hung"]
    failed = [i for i, p in workers.items() if p.returncode not in (0, -signal.SIGKILL)]
    rc = check(out)
    if hung:
        print("ANOMALY: %d workers did not end by themselves" % hung)
        rc = 1
    if failed:
        print("ANOMALY: workers %s exited with a failure (see worker.N.err)" % failed)
        rc = 1
    if counts["daemon_unclean"]:
        print("ANOMALY: keylockd did not exit 0 on SIGTERM %d times (see keylockd.N.log)"
              % counts["daemon_unclean"])
        rc = 1
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
    restarts = []  # [(daemon stop, daemon start)]
    kills = {}  # worker index -> time
    fault_counts = collections.Counter()
    last_stop = None
    began = {}  # (kind, worker index) -> time
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

    restart_begins = [s for s, _ in restarts]

    def faulted(i, a, b):
        """True when worker i was stopped, cut off or partitioned, or the daemon was down, at
        some time in [a, b]."""
        for s, c in worker_faults.get(i, []):
            if s <= b and c >= a:
                return True
        # Restarts are disjoint and in time order: the last one to begin by b is the one to test.
        k = bisect.bisect_right(restart_begins, b) - 1
        return k >= 0 and restarts[k][1] >= a

    writes = collections.defaultdict(list)  # key -> [(t, token, worker, seq, spec)]
    # (worker, KEYS, token) -> [t_first_write, t_last_write, released_ok, ttl, auto, mode, t_req]
    leases = {}
    requests = []  # (worker, KEYS, t_req, wait_ms, t_answer or None, granted, mode)
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
                    open_req = [w, parts[2], t, int(parts[4]), None, False, cur_mode]
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
    by_token = collections.defaultdict(set)
    for (w, key, token) in leases:
        by_token[token].add((w, key))
    for token, who in by_token.items():
        if len(who) > 1:
            anomalies.append("token %d granted to %s" % (token, sorted(who)))

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
        if not faulted(w, t_req, t) and t - a + 250 * MS < ttl:
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
    for w, key, t, wait_ms, t_ans, granted, _ in requests:
        if wait_ms < 0:
            if t_ans is None and end_of.get(w) is None:
                pass  # ended by the end of the run while waiting: the worker logs STOP only after
            continue
        horizon = t + wait_ms * MS + slack
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
            wa, _, ta, _, ansa, _, _ = a
            if faulted(wa, ta, ansa):
                continue
            # Only B asked in [ta + gap, ansa - gap) can qualify (B's answer comes after its ask).
            lo = bisect.bisect_left(asked, ta + gap)
            hi = bisect.bisect_left(asked, ansa - gap)
            for b in granted[lo:hi]:
                wb, _, tb, _, ansb, _, _ = b
                if wb == wa or ansb + gap >= ansa:
                    continue
                if faulted(wb, tb, ansb):
                    continue
                fifo += 1
                anomalies.append("key %s: worker %d asked at %d, worker %d asked at %d and was "
                                 "granted %d ms before the first was answered" % (
                                     key, wa, ta, wb, tb, (ansa - ansb) // MS))

    print("operations: %d acquires (%d shared, %d of a set of keys), %d grants, %d timeouts, "
          "%d errors, %d releases ok, %d leases reported lost, %d writes (%d rejected by "
          "fencing), %d sets inspected" % (
              ops["acquire"], ops["acquire_shared"], ops["acquire_set"], ops["grant"],
              ops["timeout"], ops["error"], ops["release_ok"], ops["release_lost"], ops["write"],
              ops["write_rejected"], len(seen)))
    print("faults seen in the log: %d worker kills, %d worker stops, %d connection cuts, "
          "%d partitions, %d daemon restarts" % (
              len(kills), fault_counts["stop"], fault_counts["cut"], fault_counts["partition"],
              len(restarts)))
    print("overlaps without fencing (expected only with faults): %d" % unfenced_overlaps)
    print("of which among leases released ok and never faulted: %d" % clean_overlaps)
    print("shared holders overlapping each other (allowed): %d" % shared_overlaps)
    print("anomalies: %d (fenced over-limit %d, unfenced over-limit among never-lost leases %d, "
          "tokens out of order %d, sets not held whole %d, late answers %d, unanswered %d, "
          "FIFO %d, other %d)" % (
              len(anomalies), fenced_overlaps, clean_overlaps, token_order, set_anomalies, late,
              unanswered, fifo, len(anomalies) - fenced_overlaps - clean_overlaps - token_order -
              set_anomalies - late - unanswered - fifo))
    for a in anomalies[:20]:
        print("  ANOMALY " + a)
    if ops["acquire"] == 0 or ops["grant"] == 0:
        print("no operations were logged: the run did not work")
        return 2
    return 1 if anomalies else 0


def selftest():
    """The checker must flag broken histories, and pass a correct one."""
    s = 1_000_000_000  # 1 s in ns

    def history(workers, faults=()):
        d = tempfile.mkdtemp(prefix="keylock-chaos-selftest-")
        with open(os.path.join(d, "faults.log"), "w") as f:
            f.write("".join(l + "\n" for l in ["DAEMON_START 1 1"] + list(faults)))
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
    c = sub.add_parser("check")
    c.add_argument("dir")
    sub.add_parser("selftest", help="run the checker on made-up broken and correct histories")
    args = ap.parse_args()
    if args.cmd == "check":
        return check(args.dir)
    if args.cmd == "selftest":
        return selftest()
    try:
        return run(args)
    except RuntimeError as e:
        print("chaos run failed: %s" % e)
        return 2


if __name__ == "__main__":
    sys.exit(main())
