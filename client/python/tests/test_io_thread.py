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
    # A web worker: a lock call, some other work, again. The caller reads each answer itself;
    # the I/O thread must not take the socket back between two calls (it would have to be
    # woken, and fight the caller for the GIL, on every call). Its idle lag is made 50 ms and
    # the work 10 ms, ten times the real ones, so that a loaded machine's preemptions of a few
    # milliseconds do not count.
    monkeypatch.setattr(client_module, "_IDLE_WATCH_LAG", 0.05)
    calls, gap = 150, 0.01
    with keylock.Client(daemon.address) as c:
        c.ping()
        with c.lock("io:warm"):
            pass
        count = _count_wakes(monkeypatch, c)
        for i in range(calls):
            with c.lock(f"io:{i}"):
                pass
            time.sleep(gap)
        # Counting the lag from the I/O thread's own last look, not the caller's, woke it
        # about once per lag (~30 times here). A loaded machine's odd long stall may let it
        # take the socket back: far fewer than that.
        assert count[0] <= calls // 15, count[0]


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


def _threads_calling(c, threads, calls, work):
    """Runs ``threads`` threads on ``c``, each taking its own keys ``calls`` times with ``work``
    seconds of Python work (the GIL held) between two calls, as a threaded web worker does;
    returns the errors they raised."""
    errors = []

    def worker(t):
        try:
            for i in range(calls):
                with c.lock(f"io:t{t}:{i}"):
                    pass
                end = time.perf_counter() + work
                while time.perf_counter() < end:
                    pass
        except BaseException as e:  # noqa: B036 - reported by the test
            errors.append(e)

    ts = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not any(t.is_alive() for t in ts), "calls still running after 60 s"
    return errors


def test_threads_sharing_a_client_hand_the_reading_on_to_each_other(daemon, monkeypatch):
    # Four threads of a web worker share the client. A caller that stops reading while
    # others wait for answers hands the reading to one of them: the I/O thread is not woken
    # to read their answers and then wake each of them (two thread hops per call). The I/O
    # thread's idle lag is made 50 ms so that a loaded machine's preemptions do not count.
    monkeypatch.setattr(client_module, "_IDLE_WATCH_LAG", 0.05)
    threads, calls = 4, 100
    with keylock.Client(daemon.address) as c:
        c.ping()
        count = _count_wakes(monkeypatch, c)
        assert _threads_calling(c, threads, calls, 0.0003) == []
        # Waking the I/O thread at each such hand-over woke it for about one call in four
        # (91 and 102 times in two runs); a loaded machine's odd preemption may still need it.
        assert count[0] <= threads * calls // 40, count[0]


def _quiet_client(daemon, monkeypatch):
    """A client whose I/O thread leaves the socket to the callers for a minute after a caller
    read it (its idle lag made that long), so that only callers read answers promptly; a
    caller has just read one. Another thread is made to look as if it read the socket now."""
    monkeypatch.setattr(client_module, "_IDLE_WATCH_LAG", 60.0)
    c = keylock.Client(daemon.address, health_check_interval=0)
    c.ping()
    c.ping()  # read by this thread: the I/O thread now leaves the socket for the lag
    with c._mu:
        c._leader = -1  # another thread reads: a caller's _lead returns at once
    return c


def _acquire_in_thread(c, key):
    """Starts c.acquire(key) on a thread; returns the thread and the list that gets its
    result (a Lease, or what it raised)."""
    done = []

    def call():
        try:
            done.append(c.acquire(key, wait=30))
        except BaseException as e:  # noqa: B036 - reported by the test
            done.append(e)

    t = threading.Thread(target=call)
    t.start()
    return t, done


def _assert_acquired(t, done):
    t.join(20)
    assert not t.is_alive(), "the answer was left unread"
    assert len(done) == 1 and isinstance(done[0], keylock.Lease), done
    done[0].release()


def test_a_reader_that_stops_hands_the_reading_to_a_waiting_caller(daemon, monkeypatch):
    # A caller waits for its answer while another thread reads. That reader stops before the
    # answer came: it must hand the reading to the waiting caller (or wake the I/O thread).
    # Nothing else reads the answer within the minute.
    c = _quiet_client(daemon, monkeypatch)
    try:
        t, done = _acquire_in_thread(c, "io:follower")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # until the caller waits on its latch
            with c._mu:
                if c._followers:
                    break
            time.sleep(0.001)
        with c._mu:  # the other reader stops now, with the caller's answer due
            assert len(c._followers) == 1
            c._leader = None
            c._after_lead_locked(False)
        _assert_acquired(t, done)
    finally:
        c.close()


def test_a_caller_whose_reader_stops_as_it_begins_to_wait_reads_its_own_answer(
    daemon, monkeypatch
):
    # The moment between a caller finding another thread reading (so it will wait on its
    # latch) and its starting to wait: if the reader stops just then, it finds nobody to hand
    # the reading to, and the caller must read its answer itself.
    c = _quiet_client(daemon, monkeypatch)
    try:
        between = threading.Event()
        go_on = threading.Event()
        real_lead = client_module.Client._lead

        def lead_then_pause(self, call, until):
            real_lead(self, call, until)
            if not between.is_set():
                between.set()
                assert go_on.wait(20)

        monkeypatch.setattr(client_module.Client, "_lead", lead_then_pause)
        t, done = _acquire_in_thread(c, "io:between")
        assert between.wait(20)
        with c._mu:  # the other reader stops now, with the call's answer due
            c._leader = None
            c._after_lead_locked(False)
        go_on.set()
        _assert_acquired(t, done)
    finally:
        c.close()
