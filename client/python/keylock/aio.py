"""keylock for asyncio: the same client, awaited instead of blocked on.

    import keylock.aio

    client = keylock.aio.Client("127.0.0.1:7400")
    async with client.lock("report:monthly", ttl=30, wait=5) as lease:
        await write_report(lease.token)
    lease = await client.acquire("job", wait=0)

Acquires are native: the request goes out at once and the task awaits its answer, no thread
per waiter. Cancelling the awaiting task (``task.cancel()``, ``asyncio.wait_for`` running out,
``asyncio.timeout``) withdraws the acquire on the daemon before CancelledError propagates, and
a grant that crossed the cancel is released at once: no lease is held that no Lease owns. The
calls that are one round trip (ping, inspect, locked, stats, extend, release of a key's token)
are native too, bounded by request_timeout; a cancelled one's answer is dropped.

A Lease is keylock.Lease: ``async with`` releases it without a round trip (noreply), and
renewals run on the client's I/O thread, not on the event loop. ``reentrant`` holds belong to
the task (tasks of one loop share a thread but not their holds).
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from .client import Client as _SyncClient
from .client import KeyInfo, Lease, LeaseLost, _holder_id, _key_info
from .errors import Timeout

__all__ = ["Client"]


class _AsyncLockContext:
    """What Client.lock and Client.lock_all return: ``async with`` acquires on enter and
    releases (noreply) on exit. One object may be entered by several tasks at once; each exit
    releases its own entry's lease."""

    __slots__ = ("_acquire", "_key", "_kwargs", "_leases")

    def __init__(self, acquire, key, kwargs: Dict[str, Any]) -> None:
        self._acquire = acquire
        self._key = key
        self._kwargs = kwargs
        self._leases: Dict[Tuple[int, Any], List[Lease]] = {}

    async def __aenter__(self) -> Lease:
        lease = await self._acquire(self._key, **self._kwargs)
        self._leases.setdefault(_holder_id(), []).append(lease)
        return lease

    async def __aexit__(self, exc_type, exc, tb) -> None:
        holder = _holder_id()
        stack = self._leases.get(holder)
        lease = stack.pop() if stack else None
        if stack is not None and not stack:
            del self._leases[holder]
        if lease is not None:
            lease.__exit__(exc_type, exc, tb)


class Client:
    """keylock.Client for asyncio. Takes the same arguments (server, auth, name, user,
    ssl_context, server_hostname, timeouts, health_check_interval), or ``client=`` an existing
    keylock.Client to share its connection with blocking code. Safe to use from several event
    loops and threads."""

    def __init__(self, *args: Any, client: Optional[_SyncClient] = None, **kwargs: Any) -> None:
        if client is not None and (args or kwargs):
            raise TypeError("keylock.aio.Client: pass either client= or connection arguments")
        self._sync = client if client is not None else _SyncClient(*args, **kwargs)

    @property
    def sync(self) -> _SyncClient:
        """The blocking keylock.Client underneath (same connection)."""
        return self._sync

    @property
    def server(self) -> str:
        return self._sync.server

    async def acquire(
        self,
        key: str,
        ttl: float = 30.0,
        wait: Optional[float] = None,
        limit: int = 1,
        *,
        shared: bool = False,
        reentrant: bool = False,
        auto_extend: bool = True,
        on_lost: Optional[Callable[[LeaseLost], None]] = None,
    ) -> Lease:
        """As keylock.Client.acquire, awaited. Raises what it raises; cancelling the task
        withdraws the acquire on the daemon."""
        if not isinstance(key, str):
            raise TypeError(f"keylock: key must be a str, not {type(key).__name__}")
        return await self._sync._acquire_async(
            (key,), False, ttl, wait, limit, shared, reentrant, auto_extend, on_lost
        )

    async def acquire_all(
        self,
        keys: Iterable[str],
        ttl: float = 30.0,
        wait: Optional[float] = None,
        limit: int = 1,
        *,
        shared: bool = False,
        reentrant: bool = False,
        auto_extend: bool = True,
        on_lost: Optional[Callable[[LeaseLost], None]] = None,
    ) -> Lease:
        """As keylock.Client.acquire_all, awaited."""
        if isinstance(keys, (str, bytes)):
            raise TypeError("keylock: acquire_all takes a list of keys, not one str")
        keys = tuple(keys)
        for key in keys:
            if not isinstance(key, str):
                raise TypeError(f"keylock: keys must be str, not {type(key).__name__}")
        return await self._sync._acquire_async(
            keys, True, ttl, wait, limit, shared, reentrant, auto_extend, on_lost
        )

    async def try_acquire(
        self, key: str, ttl: float = 30.0, wait: float = 0, limit: int = 1, **kwargs: Any
    ) -> Optional[Lease]:
        """As acquire(), but None instead of Timeout; ``wait`` defaults to 0 (try once)."""
        try:
            return await self.acquire(key, ttl, wait, limit, **kwargs)
        except Timeout:
            return None

    def lock(
        self,
        key: str,
        ttl: float = 30.0,
        wait: Optional[float] = None,
        limit: int = 1,
        **kwargs: Any,
    ) -> _AsyncLockContext:
        """``async with client.lock(key) as lease:``: acquire() on enter, release (noreply) on
        exit; on a normal exit, NotHeld if the lease was lost while the body ran."""
        return _AsyncLockContext(
            self.acquire, key, dict(ttl=ttl, wait=wait, limit=limit, **kwargs)
        )

    def lock_all(
        self,
        keys: Iterable[str],
        ttl: float = 30.0,
        wait: Optional[float] = None,
        limit: int = 1,
        **kwargs: Any,
    ) -> _AsyncLockContext:
        """``async with client.lock_all([...]) as lease:``, as lock() for several keys."""
        if isinstance(keys, (str, bytes)):
            raise TypeError("keylock: lock_all takes a list of keys, not one str")
        return _AsyncLockContext(
            self.acquire_all, list(keys), dict(ttl=ttl, wait=wait, limit=limit, **kwargs)
        )

    async def ping(self) -> float:
        """Round trip of one ``ping``, in seconds. Raises ConnectionError."""
        start = time.monotonic()
        await self._sync._request_async("ping", {})
        return time.monotonic() - start

    async def inspect(self, key: str) -> KeyInfo:
        """As keylock.Client.inspect, awaited."""
        return _key_info(await self._sync._request_async("inspect", {"key": key}))

    async def locked(self, key: str) -> bool:
        """Whether anyone holds ``key`` now (one round trip)."""
        return bool((await self._sync._request_async("inspect", {"key": key})).get("held"))

    async def stats(self) -> Dict[str, int]:
        """The daemon's gauges and counters, as keylock.Client.stats."""
        rep = await self._sync._request_async("stats", {})
        return {k: v for k, v in rep.items() if k not in ("id", "ok")}

    async def release(self, key: str, token: int) -> None:
        """An operator's force release, as keylock.Client.release."""
        if isinstance(token, bool) or not isinstance(token, int):
            raise TypeError("keylock: token must be an int")
        await self._sync._request_async("release", {"key": key, "token": token})

    async def extend(self, lease: Lease, ttl: Optional[float] = None) -> None:
        """``lease.extend(ttl)`` awaited: extends the lease now, and with ``ttl`` sets the ttl
        of later renewals. Raises what Lease.extend raises (NotHeld when the lease is lost,
        keeping it held when the daemon refuses only the ttl)."""
        if lease._client is not self._sync:
            raise ValueError("keylock: extend of a lease from another client")
        await self._sync._extend_async(lease._state, ttl)

    def close(self) -> None:
        self._sync.close()

    async def __aenter__(self) -> "Client":
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        self.close()
