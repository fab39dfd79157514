"""Run by test_processes: THREADS threads x ROUNDS rounds of a read-modify-write of a counter
file under one keylock key. A marker file created with O_EXCL proves nobody else is inside."""
import os
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import keylock  # noqa: E402


def main() -> int:
    server, workdir, threads, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    marker = os.path.join(workdir, "inside")
    counter = os.path.join(workdir, "counter")
    violations = []

    @keylock.lock_decorator(key_maker=lambda: "overlap:processes", wait=30)
    def critical():
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            violations.append("overlap")
            return
        os.close(fd)
        with open(counter) as f:
            value = int(f.read() or 0)
        time.sleep(0.0005)  # widen the window a race would need
        with open(counter, "w") as f:
            f.write(str(value + 1))
        os.unlink(marker)

    def worker():
        for _ in range(rounds):
            critical()

    os.environ["KEYLOCK_SERVER"] = server
    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    print(f"violations={len(violations)}")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
