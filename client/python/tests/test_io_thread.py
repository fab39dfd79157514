"""The I/O thread and the callers that read their own answers (Client._lead) share the socket
without getting in each other's way."""
import asyncio
import threading
import time

import keylock
import keylock.aio
from keylock import client as client_module


def _count_wakes(monkeypatch, c):
    """Counts the times a caller thread (not c's I/O thread) wakes c's I/O thread: a write to
    its wake pipe."""
    count = [0]
    io_ident = c._io_thread.ident
    real = client_module.Client._wake_locked

    def counting(self):
        if self is c and threading.get_ident() != io_ident:
            count[0] += 1
        return real(self)

    monkeypatch.setattr(client_module.Client, "_wake_locked", counting)
    return count


def test_a_caller_calling_again_and_again_does_not_wake_the_io_thread_each_time(
    daemon, monkeypatch
):
    # A web worker: a lock call, a millisecond of other work, again. The caller reads each
    # answer itself; the I/O thread must not take the socket back between two calls (it would
    # have to be woken, and fight the caller for the GIL, on every call).
    calls, gap = 150, 0.001
    with keylock.Client(daemon.address) as c:
        c.ping()
        with c.lock("io:warm"):
            pass
        count = _count_wakes(monkeypatch, c)
        for i in range(calls):
            with c.lock(f"io:{i}"):
                pass
            time.sleep(gap)
        # Each call's wait for the I/O thread's 5 ms lag would wake it about once per 5 ms
        # (~30 here). A loaded machine's odd long sleep may let it take the socket back: far
        # fewer than that.
        assert count[0] <= calls // 10, count[0]


def test_a_daemon_gone_right_after_a_call_is_noticed_with_no_caller_reading(daemon):
    # The caller read the socket last and then stops calling: the I/O thread must take the
    # socket back (after its lag) to see the daemon's end of it, and tell the lease's owner long
    # before the lease's own ttl (30 s) would. No heartbeat and no renewal: only a read can tell.
    lost = []
    got = threading.Event()

    def on_lost(e):
        lost.append(e.reason)
        got.set()

    with keylock.Client(daemon.address, health_check_interval=0) as c:
        lease = c.acquire("io:held", ttl=30, auto_extend=False, on_lost=on_lost)
        daemon.proc.kill()  # no goodbye: the kernel closes its end, the client reads the end
        daemon.proc.wait(10)
        assert got.wait(10)
        assert lost == ["connection_lost"]
        assert not lease.valid


def test_awaited_calls_right_after_a_blocking_call_are_read_by_the_io_thread(
    daemon, monkeypatch
):
    # No caller thread reads an awaited call's answer, and a blocking call just read the
    # socket. With the I/O thread's idle lag made a minute long, an answer would wait that
    # minute unless sending the awaited call wakes the I/O thread to read it.
    monkeypatch.setattr(client_module, "_IDLE_WATCH_LAG", 60.0)
    with keylock.Client(daemon.address, health_check_interval=0) as c:
        ac = keylock.aio.Client(client=c)

        async def main():
            for i in range(5):
                with c.lock(f"io:sync:{i}"):
                    pass
                async with ac.lock(f"io:async:{i}"):
                    pass
                with c.lock(f"io:sync2:{i}"):
                    pass
                await ac.ping()

        asyncio.run(asyncio.wait_for(main(), 20))
