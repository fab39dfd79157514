"""keylock.aio and lock_decorator on coroutine and generator functions (issue 14)."""
import asyncio
import concurrent.futures

import pytest
from harness import Daemon, SilentRelay

import keylock
import keylock.aio


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_async_with_lock_holds_the_key_and_releases_it(daemon):
    async def main():
        async with keylock.aio.Client(daemon.address) as client:
            async with client.lock("report", ttl=10) as lease:
                info = await client.inspect("report")
                assert info.held and info.holders[0].token == lease.token
            assert not await client.locked("report")
            lease = await client.acquire("report", wait=0)
            assert lease.valid
            assert await client.try_acquire("report") is None
            lease.release()

    run(main())


def test_waiters_are_granted_in_order_without_blocking_the_loop(daemon):
    async def main():
        client = keylock.aio.Client(daemon.address)
        try:
            order = []
            first = await client.acquire("k", ttl=10)

            async def waiter(n):
                async with client.lock("k", ttl=10):
                    order.append(n)

            tasks = []
            for n in range(3):
                tasks.append(asyncio.create_task(waiter(n)))
                while (await client.inspect("k")).waiters < n + 1:
                    await asyncio.sleep(0.01)  # the loop runs while they wait
            first.release()
            await asyncio.gather(*tasks)
            assert order == [0, 1, 2]
        finally:
            client.close()

    run(main())


def test_cancelling_the_task_withdraws_the_acquire_on_the_daemon(daemon):
    async def main():
        client = keylock.aio.Client(daemon.address)
        try:
            held = await client.acquire("k", ttl=30)
            task = asyncio.create_task(client.acquire("k", ttl=5))
            while (await client.inspect("k")).waiters < 1:
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            while (await client.inspect("k")).waiters:
                await asyncio.sleep(0.01)  # withdrawn (bounded by run()'s 30 s)
            held.release()
            info = await client.inspect("k")
            assert not info.held and info.waiters == 0
            # asyncio.wait_for running out is a cancellation too.
            held = await client.acquire("k", ttl=30)
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(client.acquire("k", ttl=5), 0.3)
            while (await client.inspect("k")).waiters:
                await asyncio.sleep(0.01)
            held.release()
            assert not await client.locked("k")
        finally:
            client.close()

    run(main())


def test_an_async_wait_that_runs_out_is_timeout(daemon):
    async def main():
        client = keylock.aio.Client(daemon.address)
        try:
            held = await client.acquire("k", ttl=30)  # noqa: F841 - held while it waits
            with pytest.raises(keylock.Timeout):
                await client.acquire("k", wait=0.2)
        finally:
            client.close()

    run(main())


class _NoThreads(concurrent.futures.ThreadPoolExecutor):
    """A default executor that refuses work: a call that hid a thread behind asyncio.to_thread
    (or run_in_executor) fails under it."""

    def submit(self, fn, *args, **kwargs):
        raise AssertionError(f"keylock.aio ran {fn!r} in a worker thread")


def test_every_aio_call_is_native_not_a_worker_thread(daemon):
    async def main():
        asyncio.get_running_loop().set_default_executor(_NoThreads())
        client = keylock.aio.Client(daemon.address)
        try:
            assert await client.ping() >= 0
            lease = await client.acquire("k", ttl=5)
            assert await client.locked("k")
            assert (await client.inspect("k")).holders[0].token == lease.token
            await client.extend(lease, 20)
            assert (await client.inspect("k")).holders[0].ttl_ms_left > 5000
            assert (await client.stats())["held"] == 1
            await client.release("k", lease.token)  # an operator's force release
            assert not await client.locked("k")
            with pytest.raises(keylock.NotHeld):
                await client.release("k", lease.token)
            with pytest.raises(keylock.NotHeld):
                await client.extend(lease)  # force-released under it: lost, not held
            assert not lease.valid
        finally:
            client.close()

    run(main())


def test_an_async_extend_refused_for_its_ttl_keeps_the_lease():
    daemon = Daemon("--max-ttl-ms", "10000", "--default-ttl-ms", "5000").start()

    async def main():
        client = keylock.aio.Client(daemon.address)
        try:
            lease = await client.acquire("k", ttl=5)
            with pytest.raises(keylock.ProtocolError):
                await client.extend(lease, 60)
            assert lease.valid and await client.locked("k")
            await client.extend(lease, 8)
        finally:
            client.close()

    try:
        run(main())
    finally:
        daemon.cleanup()


def test_an_unanswered_async_call_is_connection_error_and_a_cancelled_one_drops_its_answer(
    daemon,
):
    relay = SilentRelay(daemon.port)

    async def main():
        client = keylock.aio.Client(
            f"127.0.0.1:{relay.port}", request_timeout=0.5, health_check_interval=0
        )
        try:
            assert not await client.locked("k")
            relay.held.set()  # the connection goes silent
            task = asyncio.create_task(client.inspect("k"))
            await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert client.sync._table.sent == {}  # withdrawn: its answer would match nothing
            with pytest.raises(keylock.ConnectionError, match="no reply"):
                await client.ping()
        finally:
            client.close()

    try:
        run(main())
    finally:
        relay.close()


def test_the_decorator_holds_the_lock_across_the_coroutines_awaits(client):
    seen = []

    @keylock.lock_decorator(client=client, key_maker=lambda n: "shared-key")
    async def work(n):
        seen.append(("in", n, client.locked("shared-key")))
        await asyncio.sleep(0.05)  # another call must not get in here
        seen.append(("out", n))
        return n * 2

    async def main():
        return await asyncio.gather(work(1), work(2), work(3))

    assert asyncio.iscoroutinefunction(work)
    assert run(main()) == [2, 4, 6]
    # One call at a time: every "in" is followed by its own "out".
    for i in range(0, len(seen), 2):
        assert seen[i][0] == "in" and seen[i][2] and seen[i + 1] == ("out", seen[i][1])
    assert not client.locked("shared-key")


def test_the_decorator_refuses_generator_functions_at_decoration_time(client):
    def gen():
        yield 1

    async def agen():
        yield 1

    for fn in (gen, agen):
        with pytest.raises(TypeError, match="generator"):
            keylock.lock_decorator(client=client)(fn)
