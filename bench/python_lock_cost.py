#!/usr/bin/python3
"""Cost of one uncontended lock call from Python: keylock against redis-py's Lock.

    /usr/bin/python3 bench/python_lock_cost.py [--calls N] [--rounds R] [--threads T]

Starts keylockd (build/release, or $KEYLOCKD) and redis-server on free loopback ports, both
pinned to CPU 1 (taskset), pins this process to CPU 0, and times, per call, in one run:
  keylock        with client.lock(key): ...            (blocking client)
  keylock.aio    async with client.lock(key): ...      (asyncio client, one task)
  redis-py       with redis.lock(key, timeout=30): ... (redis-py's Lock: SET NX PX, Lua release)
each on one key nobody else uses, N calls per round, R rounds; prints the median round's
µs per call and the ratio to redis-py. With --threads T, the blocking targets run in T threads
that share one client (keylock: one Client, one connection; redis-py: one Redis, its pool
gives each thread a connection), each thread on its own key, N calls each; µs per call is the
round's time over all T x N calls, and keylock.aio is left out. Stops what it started. Numbers
only: nothing is asserted.
"""
import argparse
import asyncio
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "client", "python"))

import keylock  # noqa: E402
import keylock.aio  # noqa: E402


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_until(predicate, what, bound=30.0):
    deadline = time.monotonic() + bound
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"python_lock_cost: timed out waiting for {what}")
        time.sleep(0.05)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--server-cpu", default="1")
    ap.add_argument("--client-cpu", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import redis  # Debian's python3-redis

    keylockd = os.environ.get("KEYLOCKD", os.path.join(ROOT, "build", "release", "src", "keylockd"))
    log = tempfile.NamedTemporaryFile(prefix="keylockd-", suffix=".log", delete=False)
    procs = []
    try:
        kport = free_port()
        procs.append(subprocess.Popen(
            ["taskset", "-c", args.server_cpu, keylockd, "--listen", f"127.0.0.1:{kport}",
             "--metrics-listen", ""], stdout=subprocess.DEVNULL, stderr=log))
        rport = free_port()
        procs.append(subprocess.Popen(
            ["taskset", "-c", args.server_cpu, "redis-server", "--port", str(rport), "--bind",
             "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        with open(log.name) as f:
            wait_until(lambda: re.search(r"listening on", f.read() or "") or f.seek(0), "keylockd")
        r = redis.Redis(host="127.0.0.1", port=rport)

        def redis_up():
            try:
                return r.ping()
            except redis.exceptions.ConnectionError:
                return False

        wait_until(redis_up, "redis-server")
        os.sched_setaffinity(0, {args.client_cpu})

        client = keylock.Client(f"127.0.0.1:{kport}", health_check_interval=5)
        aio_client = keylock.aio.Client(client=client)

        def in_threads(one):  # one(n, key): the calls of one thread
            def run(n):
                if args.threads == 1:
                    return one(n, "bench:py")
                ts = [threading.Thread(target=one, args=(n, f"bench:py:{t}"))
                      for t in range(args.threads)]
                for t in ts:
                    t.start()
                for t in ts:
                    t.join()
            return run

        @in_threads
        def run_keylock(n, key):
            for _ in range(n):
                with client.lock(key, ttl=30):
                    pass

        @in_threads
        def run_redis(n, key):
            for _ in range(n):
                with r.lock(key, timeout=30):
                    pass

        def run_aio(n):
            async def go():
                for _ in range(n):
                    async with aio_client.lock("bench:py-aio", ttl=30):
                        pass

            asyncio.run(go())

        targets = [("keylock", run_keylock), ("keylock.aio", run_aio), ("redis-py", run_redis)]
        if args.threads > 1:
            targets.pop(1)  # one asyncio task per thread would measure something else
        for _, fn in targets:
            fn(500)  # warm-up: connections, code paths
        per_call = {name: [] for name, _ in targets}
        for _ in range(args.rounds):  # interleaved, so drift on the machine hits all alike
            for name, fn in targets:
                calls = args.calls * (1 if fn is run_aio else args.threads)
                t0 = time.perf_counter()
                fn(args.calls)
                per_call[name].append((time.perf_counter() - t0) / calls * 1e6)
        client.close()
        base = statistics.median(per_call["redis-py"])
        print(f"python_lock_cost: servers on CPU {args.server_cpu}, Python on CPU "
              f"{args.client_cpu}; {args.rounds} rounds x {args.calls} uncontended calls"
              + (f" in each of {args.threads} threads" if args.threads > 1 else "")
              + f"; redis-py {redis.__version__}, Python {sys.version.split()[0]}")
        print(f"{'target':<14}{'µs/call (median round)':>24}{'min':>8}{'max':>8}{'vs redis-py':>13}")
        for name, _ in targets:
            m = statistics.median(per_call[name])
            print(f"{name:<14}{m:>24.1f}{min(per_call[name]):>8.1f}{max(per_call[name]):>8.1f}"
                  f"{m / base:>12.2f}x")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        os.unlink(log.name)


if __name__ == "__main__":
    main()
