"""Many processes with many threads on one key never overlap."""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def test_many_processes_with_many_threads_on_one_key_never_overlap(daemon, tmp_path):
    (tmp_path / "counter").write_text("0")
    procs, threads, rounds = 4, 4, 20
    workers = [
        subprocess.Popen(
            [sys.executable, os.path.join(HERE, "overlap_worker.py"), daemon.address,
             str(tmp_path), str(threads), str(rounds)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for _ in range(procs)
    ]
    outputs = []
    try:
        for w in workers:
            out, _ = w.communicate(timeout=60)
            outputs.append((w.returncode, out))
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait(10)
    assert all(rc == 0 for rc, _ in outputs), outputs
    assert (tmp_path / "counter").read_text() == str(procs * threads * rounds)
    assert not (tmp_path / "inside").exists()
