"""lock_decorator: run a function one call at a time per key, across processes and hosts.

    @keylock.lock_decorator()
    def fetch_remote_thing(name): ...          # key "myapp.things.fetch_remote_thing('alpha',){}"

    @keylock.lock_decorator(key_maker=lambda *args, **kwargs: "stats")
    def stats_view(request): ...               # one call at a time, whatever the arguments

    @keylock.lock_decorator(key_maker=lambda src, dst, amount: [f"acct:{src}", f"acct:{dst}"])
    def transfer(src, dst, amount): ...        # both accounts at once (one lease)

    @keylock.lock_decorator(key_maker=lambda: "prices", shared=True)
    def read_prices(): ...                     # readers together; an exclusive holder excludes

    @keylock.lock_decorator(key_maker=lambda node: f"tree:{node.root}", reentrant=True)
    def walk(node): ...                        # may call itself: inner calls enter at once
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import re
from typing import Any, Callable, List, Optional, Sequence, Tuple, TypeVar, Union

from .client import Client, default_client
from .errors import NotHeld

__all__ = ["lock_decorator", "default_key", "MAX_KEY_BYTES"]

# The daemon's default max_key_bytes. A default key longer than this is hashed.
MAX_KEY_BYTES = 1024

F = TypeVar("F", bound=Callable[..., Any])
ClientLike = Union[Client, Callable[[], Client], None]


def _utf8_len(text: str) -> Optional[int]:
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates: not valid UTF-8, so not a valid key
        return None


def _qualified_name(fn: Union[str, Callable[..., Any]]) -> str:
    if isinstance(fn, str):
        return fn
    module = getattr(fn, "__module__", None) or ""
    qualname = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    return f"{module}.{qualname}" if module else qualname


# What Python's default repr() puts in a str(): "<app.Thing object at 0x7f3a...>". Such a text
# differs in every process, so a key made of it locks nothing across processes.
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]{4,}")


def default_key(fn: Union[str, Callable[..., Any]], *args: Any, **kwargs: Any) -> str:
    """The key ``lock_decorator()`` uses without a key_maker: the function's qualified name
    (``f"{fn.__module__}.{fn.__qualname__}"``, or ``fn`` itself when it is a string), then
    ``str(args) + str(kwargs)``. ``default_key(fetch, "alpha")`` is
    ``"app.fetch('alpha',){}"``.

    When that is longer than MAX_KEY_BYTES of UTF-8 (or is not valid UTF-8), the key is the
    qualified name, ":" and the MD5 hex digest of the whole text instead, so that it always
    fits the daemon's default key limit. Two calls whose ``str()`` of the arguments are equal
    share a key; pass a key_maker when that is not what you want.

    The key is the same in every process for arguments whose ``repr()`` is (``str()`` of a
    tuple shows its items' ``repr()``). Raises ValueError when the text carries a memory
    address (``<Thing object at 0x7f...>``, the default ``repr()`` of an object, so of
    ``self`` in a method of a class without ``__repr__``): such a key would differ in every
    process and lock nothing; the message names the fix, a key_maker.
    """
    name = _qualified_name(fn)
    key = name + str(args) + str(kwargs)
    address = _ADDRESS.search(key)
    if address is not None:
        start = key.rfind("<", 0, address.start())
        shown = key[start if start >= 0 else address.start() : address.end() + 1]
        raise ValueError(
            f"keylock: the default key of {name} would contain a memory address ({shown}...), "
            "which differs in every process, so the lock would exclude nothing across them. "
            "Pass a key_maker to lock_decorator (for a method, one that names the instance, "
            "e.g. key_maker=lambda self, *a: f'thing:{self.id}'), or give the argument's class a "
            "__repr__ that is the same in every process (str() of the arguments' tuple shows "
            "each one's repr())."
        )
    length = _utf8_len(key)
    if length is not None and length <= MAX_KEY_BYTES:
        return key
    digest = hashlib.md5(key.encode("utf-8", "surrogatepass")).hexdigest()
    name_len = _utf8_len(name)
    if name_len is None or name_len + 1 + len(digest) > MAX_KEY_BYTES:
        return "keylock:" + digest
    return f"{name}:{digest}"


def _resolve(client: ClientLike) -> Client:
    if client is None:
        return default_client()
    if isinstance(client, Client):
        return client
    return client()


def locked_call(
    client: Client,
    key: Union[str, Sequence[str]],
    fn: Callable[..., Any],
    args: tuple,
    kwargs: dict,
    *,
    ttl: float,
    wait: Optional[float],
    limit: int,
    shared: bool = False,
    reentrant: bool = False,
) -> Any:
    """Runs fn(*args, **kwargs) holding the lock on ``key`` (a str), or on every key of a list
    or tuple of str at once (Client.acquire_all), renewed while fn runs, and releases it without
    a round trip (noreply). ``shared`` and ``reentrant`` are Client.acquire's. When fn raises,
    the lease is released (errors of the release are swallowed) and fn's exception propagates.
    Raises what Client.acquire raises, and NotHeld if the lease was lost while fn ran (fn's
    result is then discarded: part of what fn did ran without the lock)."""
    options = dict(ttl=ttl, wait=wait, limit=limit, shared=shared, reentrant=reentrant)
    if isinstance(key, str):
        lease = client.acquire(key, **options)
    else:
        lease = client.acquire_all(key, **options)
    try:
        result = fn(*args, **kwargs)
    except BaseException:
        try:
            lease.release(noreply=True)
        except NotHeld:
            pass
        raise
    lease.release(noreply=True)
    return result


async def locked_call_async(
    client: Client,
    key: Union[str, Sequence[str]],
    fn: Callable[..., Any],
    args: tuple,
    kwargs: dict,
    *,
    ttl: float,
    wait: Optional[float],
    limit: int,
    shared: bool = False,
    reentrant: bool = False,
) -> Any:
    """locked_call for a coroutine function: awaits the lock (cancelling the task withdraws
    the acquire on the daemon), then holds it across every await of ``fn``."""
    keys = (key,) if isinstance(key, str) else tuple(key)
    lease = await client._acquire_async(
        keys, not isinstance(key, str), ttl, wait, limit, shared, reentrant, True, None
    )
    try:
        result = await fn(*args, **kwargs)
    except BaseException:
        try:
            lease.release(noreply=True)
        except NotHeld:
            pass
        raise
    lease.release(noreply=True)
    return result


KeyMaker = Callable[..., Union[str, List[str], Tuple[str, ...]]]


def lock_decorator(
    key_maker: Optional[KeyMaker] = None,
    ttl: float = 30.0,
    wait: Optional[float] = None,
    limit: int = 1,
    client: ClientLike = None,
    *,
    shared: bool = False,
    reentrant: bool = False,
) -> Callable[[F], F]:
    """Makes every call of the decorated function run under a keylock lock.

    Without ``key_maker`` the key is ``default_key(fn, *args, **kwargs)``: the function's
    qualified name plus ``str(args) + str(kwargs)``, hashed when longer than the daemon's key
    limit. With it, the key is ``key_maker(*args, **kwargs)``: a str, used as is, or a list or
    tuple of str, all acquired at once as one lease (Client.acquire_all). Works on plain
    functions and Django views (for a view, ``str(request)`` names the method and path, so
    each URL gets its own lock); on methods only when ``repr(self)`` is the same in every
    process (a class with its own ``__repr__``), else the first call raises ValueError (see
    default_key): pass a key_maker.

    ``shared=True`` holds the key(s) in shared mode: shared calls run together, an exclusive
    holder of the key excludes them. ``reentrant=True``: a decorated function that, on the same
    thread, calls itself or another function decorated with ``reentrant=True`` on the same
    key(s) and client runs the inner call at once under the outer call's lease (instead of
    queueing behind itself); see Client.acquire for the rules and what it does not cover.

    ``ttl`` (seconds) is the lease's ttl, renewed at ttl/3 while the function runs, so long
    calls are fine; ``wait`` (seconds) bounds the wait for the lock (None: wait until granted,
    0: try once), then keylock.Timeout is raised; ``limit`` > 1 lets that many calls run at
    once (a counting semaphore). ``client``: a Client, a callable returning one (called on each
    call, so it may create the client lazily), or None for ``keylock.default_client()``.

    On an ``async def`` function the decorated function is a coroutine function too: each call
    awaits the lock (without blocking the event loop; cancelling the task withdraws the
    acquire on the daemon) and holds it until the coroutine returns, across its awaits. A
    generator or async generator function is refused at decoration time with TypeError: a lock
    cannot be held across yields that the caller may never resume.

    Raises what ``locked_call`` raises. Use it with parentheses: ``@lock_decorator()``.
    """
    return make_decorator(
        key_maker,
        lambda: (_resolve(client), ttl, wait, limit),
        shared=shared,
        reentrant=reentrant,
    )


def make_decorator(
    key_maker: Optional[KeyMaker],
    options: Callable[[], Tuple[Client, float, Optional[float], int]],
    *,
    shared: bool = False,
    reentrant: bool = False,
) -> Callable[[F], F]:
    """The decorator behind lock_decorator; ``options()`` is called on every call and returns
    (client, ttl, wait, limit), so that integrations (keylock.django) can read their settings
    and create their client lazily. ``shared`` and ``reentrant`` apply to every call."""
    if key_maker is not None and not callable(key_maker):
        raise TypeError("keylock: key_maker must be callable")

    def decorator(fn: F) -> F:
        if not callable(fn):
            raise TypeError("keylock: lock_decorator() decorates a callable")
        name = _qualified_name(fn)
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            raise TypeError(
                f"keylock: lock_decorator() cannot lock the generator function {name}: the "
                "lock would be held only while the generator object is created, not while it "
                "runs, and holding it across yields would keep it for as long as the consumer "
                "pleases. Decorate a function that consumes the generator, or take "
                "`with client.lock(...)` inside it."
            )

        def key_of(args: tuple, kwargs: dict) -> Union[str, List[str], Tuple[str, ...]]:
            if key_maker is None:
                return default_key(name, *args, **kwargs)
            key = key_maker(*args, **kwargs)
            if not isinstance(key, (str, list, tuple)):
                raise TypeError(
                    "keylock: key_maker must return a str or a list of str, not "
                    f"{type(key).__name__}"
                )
            return key

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def ainner(*args: Any, **kwargs: Any) -> Any:
                key = key_of(args, kwargs)
                client, ttl, wait, limit = options()
                return await locked_call_async(
                    client, key, fn, args, kwargs, ttl=ttl, wait=wait, limit=limit,
                    shared=shared, reentrant=reentrant,
                )

            return ainner  # type: ignore[return-value]

        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            key = key_of(args, kwargs)
            client, ttl, wait, limit = options()
            return locked_call(
                client, key, fn, args, kwargs, ttl=ttl, wait=wait, limit=limit,
                shared=shared, reentrant=reentrant,
            )

        return inner  # type: ignore[return-value]

    return decorator
