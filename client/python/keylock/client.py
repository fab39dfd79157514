"""keylock Python client: a blocking, thread-safe API over one multiplexed connection.

One :class:`Client` is meant to be shared by every thread of a process. It owns one TCP
connection to keylockd and one private I/O thread; requests from any number of threads are
pipelined over the connection and matched to their replies by ``id``. A thread that acquires
again and again gets a connection of its own for that (see "Thread connections" in Client).
Each call blocks only its own thread. Times are in **seconds** (floats), as in redis-py's
``Lock`` (``timeout``, ``blocking_timeout``); they are sent to the daemon in whole
milliseconds.

    client = keylock.Client()            # $KEYLOCK_SERVER, else 127.0.0.1:7400; $KEYLOCK_AUTH,
                                         # $KEYLOCK_USER, $KEYLOCK_TLS_* (see Client)
    with client.lock("report:monthly", ttl=30, wait=5) as lease:
        write_report(lease.token)        # pass the fencing token on to storage
    with client.lock("config:prices", shared=True):      # readers together, writers alone
        read_prices()
    with client.lock_all(["acct:17", "acct:42"]):         # every key at once, or none
        transfer()

Invariants (the same as the C++ client's, include/keylock/client.hpp):

- A lease with ``auto_extend`` is renewed (``extend``) at a third of its ttl by the I/O thread
  until it is released or lost. No renewal is queued after ``release()`` has started.
- A lease becomes invalid, and its ``on_lost`` callback runs exactly once, when the daemon
  refuses its renewal, sends its ``expired`` event, when no renewal was confirmed within its
  ttl (the daemon is unresponsive), when the connection drops (the daemon releases every lease
  of a closed connection), or when the Client is closed. on_lost is not called for a lease
  released by its owner.
- Callbacks run on the I/O thread: they must be quick and must not call blocking Client or
  Lease methods (those raise RuntimeError there). Exceptions they raise are logged and dropped.
- A lease over several keys (``acquire_all``/``lock_all``) is one lease: one token, one ttl,
  renewed, released and lost whole.
- Reentrancy is opt-in per acquire (``reentrant=True``) and local to this Client and the calling
  thread (and, inside an asyncio event loop, the calling task): see :meth:`Client.acquire`.
  There is none on the wire.
- After a connection loss the client reconnects with exponential backoff and jitter and sends
  ``hello`` (with the secret, and the user if any) first on every connection, over TLS when
  TLS is configured: every connection is made the same way. Waiting acquires are sent again
  with the wait they have left; other requests in flight fail with ConnectionError.
- Failover (cluster mode): with several servers the client moves to the next one when its own
  is unreachable; leases held through the lost daemon are lost as on any drop (see Client).
- Fork safety: a forked child (uWSGI/gunicorn workers) never uses its parent's connection. The
  child drops the inherited socket and state, and connects on its first call. Leases the parent
  held are not the child's: in the child they are invalid, ``release()`` of them does nothing
  and ``extend()`` raises NotHeld. This works through ``os.register_at_fork`` and, for servers
  that fork without running Python's fork hooks (uWSGI), through a pid check on every call.
- The constructor does not connect: a Client may be made at import time, before the server
  forks. The first call (or :meth:`Client.connect`) connects; if that first attempt fails, the
  calls waiting for it fail at once (ConnectionError / AuthError) and the next call tries again.
  Once connected, a lost connection is retried forever in the background.
"""
from __future__ import annotations

import json
import logging
import math
import os
import select
import socket
import ssl
import sys
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass
from typing import (
    Any, Callable, Deque, Dict, FrozenSet, Iterable, List, Optional, Tuple, Type, Union,
)

from ._core import (
    CONFIRMED,
    FAILED,
    HELD,
    LEASE_LOST,
    LOST,
    REFUSED_KEPT,
    RELEASE_AND_LOSE,
    RELEASED,
    RENEW,
    RESEND,
    WAIT_OVER,
    Backoff,
    CallTable,
    FrameReader,
    LeaseBook,
    judge_extend,
    label,
)
from ._core import encode as _encode
from ._core import noreply_release as _noreply_release
from ._core import one_key_members as _one_key_members
from ._lane import Lane as _Lane
from ._lane import LaneDead as _LaneDead
from ._lane import LaneTimeout as _LaneTimeout
from ._process import current_pid as _current_pid
from ._tls import context_from_env as _tls_context_from_env
from ._tls import recv_available as _tls_recv_available
from ._tls import send_all as _tls_send_all
from .errors import (
    AuthError,
    Cancelled,
    ConnectionError,
    Error,
    NotHeld,
    ProtocolError,
    Timeout,
    error_from_reply,
)

__all__ = [
    "Client", "CancelToken", "Lease", "LeaseLost", "KeyInfo", "Holder", "default_client",
    "DEFAULT_PORT",
    "EXCLUSIVE", "SHARED",
]

DEFAULT_PORT = 7400
_log = logging.getLogger("keylock")

# A reply frame longer than this (no newline within it) is a broken stream: drop the connection.
# inspect of a key at the daemon's max_limit (1024 holders) is about 150 KB.
_MAX_REPLY_BYTES = 8 << 20
# How long a caller reads the socket for its own answer (Client._lead) before it leaves that to
# the I/O thread and waits; and how soon the I/O thread watches the socket again after a
# caller stopped reading it without waking it.
_LEAD_WINDOW = 0.05
_IDLE_WATCH_LAG = 0.005

# Lease status.
_HELD, _RELEASED, _LOST = HELD, RELEASED, LOST
# Connection state.
_IDLE = "idle"  # never connected, after a failed first attempt, or in a fresh fork child
_CONNECTING = "connecting"  # first attempt requested: callers wait for its outcome
_READY = "ready"
_RECONNECTING = "reconnecting"  # an established connection dropped: retry with backoff
# Call state.
_QUEUED, _SENT = CallTable.QUEUED, CallTable.SENT
# Deadline kinds (LeaseBook.due).
_RENEW = RENEW
# Lock modes, as on the wire.
EXCLUSIVE, SHARED = "exclusive", "shared"


@dataclass(frozen=True)
class LeaseLost:
    """What ``on_lost`` is told. ``reason`` is one of "expired" (the daemon's ``expired``
    event, or no renewal confirmed within the ttl), "not_held" (the daemon refused a renewal),
    "connection_lost" (the daemon released it with the connection), "client_closed". ``key`` is
    the lease's first key; ``keys`` all of them."""

    key: str
    token: int
    reason: str
    message: str
    keys: Tuple[str, ...] = ()


@dataclass(frozen=True)
class Holder:
    """One holder of a key, as ``inspect`` reports it. ``mode`` is "exclusive" or "shared";
    ``keys`` lists every key of a lease over several keys (empty for a single key)."""

    token: int
    ttl_ms_left: int
    client: Optional[str] = None
    peer: Optional[str] = None
    mode: str = EXCLUSIVE
    keys: Tuple[str, ...] = ()


@dataclass(frozen=True)
class KeyInfo:
    """What ``inspect`` reports: holders in grant order; ``limit`` is 0 when the key is not
    live."""

    held: bool
    holders: List[Holder]
    waiters: int
    limit: int


def _key_info(rep: dict) -> KeyInfo:
    """KeyInfo from inspect's answer."""
    holders = [
        Holder(
            h.get("token", 0),
            h.get("ttl_ms_left", 0),
            h.get("client"),
            h.get("peer"),
            h.get("mode", EXCLUSIVE),
            tuple(h.get("keys", ())),
        )
        for h in rep.get("holders", [])
    ]
    return KeyInfo(bool(rep.get("held")), holders, rep.get("waiters", 0), rep.get("limit", 0))


def _split_server(server: str) -> Tuple[str, int]:
    """"host:port", "host" (port 7400), "[v6]:port" or "[v6]". Raises ValueError."""
    bad = ValueError(f"keylock: invalid server address {server!r} (expected host:port)")
    host, port = server, str(DEFAULT_PORT)
    if server.startswith("["):
        close = server.find("]")
        if close < 0:
            raise bad
        host, rest = server[1:close], server[close + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise bad
            port = rest[1:]
    elif server.count(":") == 1:
        host, port = server.split(":")
    if not host or not port.isdigit() or len(port) > 5 or not 0 < int(port) <= 65535:
        raise bad
    return host, int(port)


def _split_servers(servers) -> List[Tuple[str, str, int]]:
    """A comma-separated list of addresses (or a list/tuple of them), each as _split_server takes
    it; blanks around an element are ignored. (text, host, port) per address, in order. Raises
    ValueError for an empty list or element, or a malformed address."""
    if isinstance(servers, str):
        texts = servers.split(",")
    elif isinstance(servers, (list, tuple)) and all(isinstance(t, str) for t in servers):
        texts = [t for text in servers for t in text.split(",")] or [""]
    else:
        raise ValueError(f"keylock: server must be a str or a list of str, not {servers!r}")
    out = []
    for text in texts:
        text = text.strip(" \t")
        if not text:
            raise ValueError(
                f"keylock: invalid server list {servers!r} "
                f"(an empty address; expected host:port,host:port)"
            )
        out.append((text,) + _split_server(text))
    return out


def _ms(seconds: float, what: str, minimum: int) -> int:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError(f"keylock: {what} must be a number of seconds, not {seconds!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"keylock: {what} must be a finite number of seconds >= 0")
    ms = int(math.ceil(seconds * 1000 - 1e-9))
    if ms < minimum:
        raise ValueError(f"keylock: {what} must be at least {minimum} ms, got {seconds!r} s")
    return ms


_label = label


def _acquire_ms(ttl: float, wait: Optional[float], limit: int) -> Tuple[int, Optional[int]]:
    """Checks an acquire's limit, ttl and wait (TypeError, ValueError): (ttl, wait) in ms."""
    if isinstance(limit, bool) or not isinstance(limit, int):
        raise TypeError("keylock: limit must be an int")
    ttl_ms = _ms(ttl, "ttl", 1)
    return ttl_ms, None if wait is None else _ms(wait, "wait", 0)


def _call_keys(fields: Dict[str, Any]) -> Tuple[str, ...]:
    if "keys" in fields:
        return tuple(fields["keys"])
    return (fields["key"],)


def _holder_id() -> Tuple[int, Any]:
    """Who holds a reentrant lease: the thread, and inside an asyncio event loop the task
    (tasks of one loop share a thread but must not share holds)."""
    task = None
    aio = sys.modules.get("asyncio")
    if aio is not None:
        try:
            task = aio.current_task()
        except RuntimeError:  # no running loop in this thread
            task = None
    return threading.get_ident(), task


class _LeaseState:
    """One granted lease. keys, token, mode, reentrant and pid never change; everything else is
    guarded by the client's lock."""

    __slots__ = (
        "keys", "key", "token", "mode", "reentrant", "depth", "holder", "pid", "status", "ttl",
        "auto_extend", "renewing", "on_lost", "lost_message", "renew_at", "expires_at", "lane",
    )

    def __init__(
        self,
        keys: Tuple[str, ...],
        token: int,
        ttl: float,
        auto_extend: bool,
        on_lost,
        mode: str = EXCLUSIVE,
        reentrant: bool = False,
        *,
        pid: int,
    ) -> None:
        self.keys = keys
        self.key = keys[0]  # names the lease in release/extend (the daemon takes any member)
        self.token = token
        self.mode = mode
        self.reentrant = reentrant
        self.depth = 1  # open holds of a reentrant lease
        self.holder: Optional[Tuple[int, Any]] = None  # _holder_id() of a reentrant lease
        self.pid = pid  # the process it was granted to
        self.status = _HELD
        self.ttl = ttl
        self.auto_extend = auto_extend
        self.renewing = False  # an auto renewal is in flight
        self.on_lost = on_lost
        self.lost_message = ""
        self.renew_at: Optional[float] = None
        self.expires_at: Optional[float] = None
        self.lane: Optional[_Lane] = None  # the thread connection it was acquired on, if any


class _Call:
    """One request. ``user`` calls have a caller blocked on ``latch``; internal ones (renewals,
    cancels) have none. ``done`` is set, under the client's lock, exactly once: by the thread
    that completes the call (the I/O thread or a reading caller), or by a caller that gives up
    on it. ``latch`` is released when the call is done, or when a caller that stops reading
    the socket hands the reading to this call's caller (``signalled``: released, not yet
    taken)."""

    __slots__ = (
        "op", "fields", "user", "latch", "done", "reply", "error", "state", "id", "sent_at",
        "wait", "wait_until", "lease", "auto_extend", "on_lost", "ttl_ms", "abandoned",
        "reentrant", "notify", "members", "signalled", "led", "following",
    )

    def __init__(self, op: str, fields: Dict[str, Any], user: bool = True) -> None:
        self.op = op
        self.fields = fields
        self.user = user
        self.latch: Optional[threading.Lock] = None
        if user:
            self.latch = threading.Lock()
            self.latch.acquire()
        self.done = False
        self.reply: Optional[dict] = None
        self.error: Optional[Error] = None
        self.state = _QUEUED
        self.id = 0
        self.sent_at = 0.0
        self.wait: Optional[float] = None
        self.wait_until: Optional[float] = None
        self.lease: Optional[_LeaseState] = None
        self.auto_extend = False
        self.on_lost = None
        self.ttl_ms = 0
        self.abandoned = False  # acquire whose caller gave up: a late grant is released at once
        self.reentrant = False
        # Called (under the client's lock, on any thread) once the call is done: how an asyncio
        # caller learns it, instead of blocking on the latch.
        self.notify: Optional[Callable[[], None]] = None
        # ``fields`` encoded (_members), made once however often the call is sent.
        self.members: Optional[str] = None
        self.signalled = False
        self.led = False  # its caller has read the socket for it (_lead) at least once
        self.following = False  # in the client's _followers


class Lease:
    """A granted lock. ``token`` is its fencing token: strictly greater than every token the
    daemon granted before, across all keys and restarts; pass it to storage that must refuse
    writes from an older holder.

    A context manager: leaving the ``with`` block releases it (with ``noreply``, no round
    trip); if the body raised, release errors are swallowed and the body's exception
    propagates. A Lease dropped without release is released in the background (best effort).
    One Lease is used by one thread at a time; ``valid`` may be read from any thread.
    """

    __slots__ = ("_client", "_state", "_done", "__weakref__")

    def __init__(self, client: "Client", state: _LeaseState) -> None:
        self._client = client
        self._state = state
        self._done = False

    @property
    def key(self) -> str:
        """The key; for a lease over several keys, the first one as given."""
        return self._state.key

    @property
    def keys(self) -> Tuple[str, ...]:
        """Every key of the lease, in the order given (one for acquire())."""
        return self._state.keys

    @property
    def mode(self) -> str:
        """"exclusive" or "shared"."""
        return self._state.mode

    @property
    def shared(self) -> bool:
        return self._state.mode == SHARED

    @property
    def depth(self) -> int:
        """How many holds share this lease through reentrant acquires: 1 when held once, N
        while N nested holds are open."""
        return self._state.depth

    @property
    def token(self) -> int:
        return self._state.token

    @property
    def valid(self) -> bool:
        """True while the lease is held by this process: granted, not released, not lost."""
        return self._state.status == _HELD and self._state.pid == _current_pid()

    def owned(self) -> bool:
        """Asks the daemon (one round trip) whether it still holds this lease: its key has a
        holder with this token. ``valid`` is this process's view; owned() also sees a lease
        ended elsewhere (an operator's ``keylock release``) before the next renewal would.
        Raises ConnectionError."""
        if self._state.pid != _current_pid():
            return False
        info = self._client.inspect(self._state.key)
        return any(h.token == self._state.token for h in info.holders)

    def extend(self, ttl: Optional[float] = None) -> None:
        """Sets the lease to run out ``ttl`` seconds from now (and makes ``ttl`` the ttl of
        later auto renewals); None reuses the current ttl. Raises NotHeld if the lease is not
        held (it is then invalid and on_lost has run), ConnectionError if no reply came. Any
        other refusal (ProtocolError for a ttl above the daemon's max_ttl_ms) leaves the lease
        held and valid, renewed with its earlier ttl; a renewal refused that way releases the
        lease on the daemon, then loses it here ("expired")."""
        self._client._extend(self._state, ttl)

    def release(self, noreply: bool = False) -> None:
        """For a reentrant lease with other holds open (``depth`` > 1): ends this hold only
        (raising NotHeld if the lease was lost meanwhile); the lease stays held and renewed.

        Otherwise ends the lease and stops its renewal. Does nothing if already released, or if
        the lease was inherited from the parent process across fork.

        ``noreply=False`` waits for the daemon's answer (one round trip, bounded by
        request_timeout). ``noreply=True`` sends ``release`` with ``noreply`` and returns once
        it is queued on the connection: this client's later requests reach the daemon after
        it, while another connection may still see the key held for a moment.

        Raises NotHeld if the lease had been lost (expired, renewal refused, connection
        dropped; with noreply=False also when the daemon answers not_held) — the caller ran
        without the lock for a while — and, with noreply=False, ConnectionError if the daemon
        did not confirm in time (the lease then runs out by its ttl)."""
        if self._done:
            return
        self._done = True
        self._client._release(self._state, noreply)

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.release(noreply=True)
            return
        try:
            self.release(noreply=True)
        except Error:
            pass

    def __del__(self) -> None:
        try:
            if not self._done and self._state.status == _HELD:
                self._client._release_later(self._state)
        except Exception:  # interpreter shutdown, or a half-built object
            pass

    def __repr__(self) -> str:
        keys = f"key={self.key!r}" if len(self.keys) == 1 else f"keys={list(self.keys)!r}"
        return (
            f"<keylock.Lease {keys} mode={self.mode} token={self.token} valid={self.valid}"
            f"{' depth=%d' % self.depth if self.depth > 1 else ''}>"
        )


class _LockContext:
    """What Client.lock and Client.lock_all return: acquire on enter, release (noreply) on
    exit. One object may be entered by several threads at once, and nested in one: each
    thread keeps its entries' leases on its own stack, and each exit releases its own."""

    __slots__ = ("_acquire", "_key", "_kwargs", "_entries")

    def __init__(self, acquire: Callable[..., Lease], key, kwargs: Dict[str, Any]) -> None:
        self._acquire = acquire
        self._key = key
        self._kwargs = kwargs
        # (thread ident, lease) per open entry, oldest first. Only a thread adds or removes
        # its own entries, so one found here is still here at its remove (atomic in C).
        self._entries: List[Tuple[int, Lease]] = []

    def __enter__(self) -> Lease:
        lease = self._acquire(self._key, **self._kwargs)
        self._entries.append((threading.get_ident(), lease))
        return lease

    def __exit__(self, exc_type, exc, tb) -> None:
        me = threading.get_ident()
        for entry in reversed(self._entries):
            if entry[0] == me:
                self._entries.remove(entry)
                entry[1].__exit__(exc_type, exc, tb)
                return


class CancelToken:
    """Cancels waiting acquires from another thread: pass ``cancel=token`` to acquire (or lock,
    acquire_all, ...), then ``token.cancel()`` makes every acquire waiting with it raise
    Cancelled, after withdrawing it on the daemon (a grant that crossed the cancel is released
    at once). An acquire started with a token already cancelled raises Cancelled at once. A
    token cannot be reset."""

    __slots__ = ("_mu", "_cancelled", "_waiting")

    def __init__(self) -> None:
        self._mu = threading.Lock()
        self._cancelled = False
        self._waiting: List[Tuple["Client", "_Call"]] = []

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        with self._mu:
            self._cancelled = True
            waiting, self._waiting = self._waiting, []
        for client, call in waiting:
            client._cancel_acquire(call)

    def _register(self, client: "Client", call: "_Call") -> bool:
        """False when already cancelled."""
        with self._mu:
            if self._cancelled:
                return False
            self._waiting.append((client, call))
            return True

    def _unregister(self, call: "_Call") -> None:
        with self._mu:
            self._waiting = [entry for entry in self._waiting if entry[1] is not call]


class Client:
    """A connection to keylockd shared by any number of threads (and safe across fork).

    ``server``: "host:port", "host" or "[v6]:port"; None: $KEYLOCK_SERVER, else
    "127.0.0.1:7400". Several servers (the daemons of a cluster) may be given as one
    comma-separated string ("a:7400,b:7400", also in $KEYLOCK_SERVER) or as a list of addresses:
    see "Failover" below. ``auth``: the daemon's shared secret, sent in ``hello`` on every
    connection; None: $KEYLOCK_AUTH when set and non-empty; "" forces none. ``user``: log in as
    this user of the daemon's users_file, with ``auth`` that user's secret (sent in ``hello``
    with it); None: $KEYLOCK_USER when set and non-empty, else no user; "" forces none. A user
    may only do what the daemon's rules grant it: other ops raise Denied. ``name``: a name for
    people, shown by ``inspect``.

    TLS: ``ssl_context`` (an ssl.SSLContext) wraps every connection, the first, reconnects and
    failover to other servers alike; ``server_hostname`` is the name the server's certificate
    must carry, by default the host of the address being connected. With ``ssl_context`` None,
    the environment decides: when $KEYLOCK_TLS_CA is set or $KEYLOCK_TLS is "1", the context
    is ``ssl.create_default_context(cafile=$KEYLOCK_TLS_CA or None)`` (TLS 1.2 at least) with
    the client certificate $KEYLOCK_TLS_CERT and its key $KEYLOCK_TLS_KEY when
    $KEYLOCK_TLS_CERT is set (mutual TLS), and $KEYLOCK_TLS_SERVER_NAME, when set, is the
    server name unless ``server_hostname`` is given. ``ssl_context=False`` forces plain TCP. A
    failed handshake (a server certificate the context does not trust, a wrong name, a client
    certificate the daemon refused) is a ConnectionError that says it was TLS.

    ``connect_timeout`` bounds each connection attempt (connect + hello); ``request_timeout``
    bounds the reply to every request other than acquire, and how long such a request waits for
    a connection while reconnecting. Reconnect delays start at ``backoff_initial`` and double up
    to ``backoff_max``, each drawn uniformly from [d/2, d] (jitter). All in seconds.

    Outages: once no connection has been ready for ``connect_timeout`` since the last one
    dropped, every waiting acquire fails, and every new acquire fails at once, with
    ConnectionError until the client is connected again; an acquire whose wait runs out while
    disconnected is a ConnectionError too. Timeout (None from try_acquire) means only that the
    daemon judged the key busy for the whole wait.

    Heartbeat: while the client holds a lease or has an acquire waiting at the daemon, a
    connection that brought nothing for ``health_check_interval`` seconds gets a ping, and one
    that brings nothing for another interval is taken for dead (a crashed host, a dropped NAT
    flow): its leases are lost and its waiting acquires sent again, as on any drop. 0 turns it
    off.

    Spin: a call that reads its own answer tries to read the socket without sleeping, yielding
    the CPU before each try, for up to ``spin`` seconds (50 µs) before it sleeps in poll(2); only
    while a moving average of recent answers came within ``spin``: an answer that comes that
    fast is read without the thread being put to sleep and woken again, which on a VM costs
    about as much as the daemon's work. 0 never spins (best when the client shares a core with
    its daemon). As the C++ client's ``client_options::spin``.

    Thread connections: a thread that makes a second blocking ``acquire`` of one key (without
    ``cancel`` or ``reentrant``) gets a connection of its own (a lane), made like the shared one
    (hello, secret, user), and from then on such an acquire, while the thread holds no lease
    taken through its lane, goes over the lane: the thread writes the request and reads its own
    answer (spinning as above, then blocking in read(2)), with no lock, thread hand-off or
    dispatcher on the way. The lease's owner releases it over the lane (``noreply``); its
    renewals and extends, and releases from other threads, go over the shared connection (the
    daemon takes them from any connection). ``thread_connections`` caps the lanes of a Client
    (threads beyond it use the shared connection; 0: none). Lanes are made only over plain TCP
    to a single server, and only while the shared connection is up; a lane idle for the daemon's
    idle_timeout is closed by the daemon and made again. What the rest of this docstring says
    holds for lanes too: a lane that fails (closed, a write or read error, no pong within
    ``health_check_interval``) loses its lease, and its waiting acquire is sent again over the
    shared connection with the wait left, where the outage rules apply; an exception that
    interrupts a wait on a lane ends the lane, so the daemon drops the request, and a grant that
    crossed it, at once (the lane held no other lease); when the shared connection drops, every
    lane is ended and its lease lost with it; close() and fork end them too.

    Failover: with several servers the client uses one at a time. A connection attempt tries
    them in list order, each once (a round), until one answers ``hello``; the first connection
    starts with the first server, a reconnect after a drop with the server after the lost one
    (wrapping round), so the lost one is tried last. A failed try moves on to the next server at
    once; the backoff delay comes between rounds. Leases held through the lost daemon are lost
    (``connection_lost``) as on any drop; waiting acquires and later calls go to the daemon that
    answers next. When the first round fails, the error names every server's failure: AuthError
    if one refused the secret, else ProtocolError if one did not speak the protocol, else
    ConnectionError.

    Raises ValueError for a malformed server address or list (an empty element, a bad port),
    or a TLS file of the environment that cannot be loaded; TypeError for an ``ssl_context``
    that is not an ssl.SSLContext.
    """

    def __init__(
        self,
        server: Optional[str] = None,
        auth: Optional[str] = None,
        name: Optional[str] = None,
        *,
        user: Optional[str] = None,
        ssl_context: Union[ssl.SSLContext, bool, None] = None,
        server_hostname: Optional[str] = None,
        connect_timeout: float = 5.0,
        request_timeout: float = 10.0,
        backoff_initial: float = 0.05,
        backoff_max: float = 2.0,
        health_check_interval: float = 5.0,
        spin: float = 50e-6,
        thread_connections: int = 16,
    ) -> None:
        if server is None:
            server = os.environ.get("KEYLOCK_SERVER") or "127.0.0.1:%d" % DEFAULT_PORT
        if auth is None:
            auth = os.environ.get("KEYLOCK_AUTH") or None
        if user is None:
            user = os.environ.get("KEYLOCK_USER") or None
        if user is not None and not isinstance(user, str):
            raise TypeError(f"keylock: user must be a str, not {type(user).__name__}")
        if ssl_context is None:
            ssl_context, env_name = _tls_context_from_env()
            server_hostname = server_hostname or env_name
        elif ssl_context is False:
            ssl_context = None
        elif not isinstance(ssl_context, ssl.SSLContext):
            raise TypeError(
                f"keylock: ssl_context must be an ssl.SSLContext, not {type(ssl_context).__name__}"
            )
        self._servers = _split_servers(server)  # (text, host, port) per daemon; never changes
        self._server = ",".join(t for t, _, _ in self._servers)  # the list, for names
        self._auth = auth or None
        self._user = user or None
        self._ssl_context: Optional[ssl.SSLContext] = ssl_context
        self._server_hostname = server_hostname or None
        self._name = name
        self._connect_timeout = float(connect_timeout)
        self._request_timeout = float(request_timeout)
        self._backoff_initial = float(backoff_initial)
        self._backoff_max = float(backoff_max)
        self._health_check_interval = float(health_check_interval)
        self._spin = max(0.0, float(spin))
        if isinstance(thread_connections, bool) or not isinstance(thread_connections, int):
            raise TypeError("keylock: thread_connections must be an int")
        # Lanes only over plain TCP to a single daemon: see "Thread connections" above.
        self._max_lanes = (
            max(0, thread_connections) if ssl_context is None and len(self._servers) == 1 else 0
        )
        self._recent_answer = 0.0  # moving average of a leader's wait for its answer (_lead)
        self._closed = False
        self._server_version = ""
        self._init_state()
        _clients.add(self)

    # ---- public API ------------------------------------------------------------------------

    @property
    def server(self) -> str:
        """The address of the daemon this client uses, as configured ("host:port"): the one
        whose connection is up, or was last up (the first of the list before any)."""
        return self._servers[self._current][0]

    @property
    def servers(self) -> Tuple[str, ...]:
        """Every configured server address, in the order they are tried."""
        return tuple(t for t, _, _ in self._servers)

    @property
    def server_version(self) -> str:
        """The daemon version announced in the last successful ``hello``; "" before."""
        return self._server_version

    def connect(self) -> None:
        """Connects now (if not connected) and returns once the daemon answered ``hello``.
        Raises ConnectionError, AuthError, ProtocolError."""
        self.ping()

    def acquire(
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
        cancel: Optional["CancelToken"] = None,
    ) -> Lease:
        """Acquires ``key`` (1..max_key_bytes bytes of UTF-8) and returns its Lease.

        ``ttl``: seconds the lease lasts after its grant or last renewal (≥ 1 ms; at most the
        daemon's max_ttl_ms, default 1 h). ``wait``: seconds to wait for the key; None: until
        granted; 0: try once. Waiters are granted in FIFO order. ``limit``: how many may hold
        the key at once (1 = mutex, N = counting semaphore; every acquire of a live key must
        name the same limit). ``shared``: hold the key in shared mode (a read-write lock: shared
        holders coexist, an exclusive holder excludes everyone; needs limit 1; a shared acquire
        queues behind a waiting exclusive one, so writers never starve). ``auto_extend``: renew
        the lease at ttl/3 while it is held. ``on_lost``: called once, on the I/O thread, with a
        LeaseLost if the lease is lost.

        ``reentrant``: when this thread (in an asyncio loop: this task) already holds the same
        key through this client by an earlier reentrant acquire, return that lease again
        (``depth`` counts the holds) without asking the daemon; it is released when its last
        holder releases it (with nested ``with`` blocks, the outermost) and renewed until then.
        The nested acquire must name the same mode, else ReentrancyError; its ttl, wait, limit,
        auto_extend and on_lost are not used. If the held lease was lost, NotHeld. Not covered:
        other threads and tasks, other clients and processes (they queue as usual), and holds
        taken without ``reentrant`` (a reentrant acquire queues behind them, as on the wire).

        ``cancel``: a CancelToken; its cancel() from another thread makes this acquire raise
        Cancelled (withdrawn on the daemon; a grant that crossed it is released at once).

        Raises Timeout when not granted within ``wait``, Conflict on a limit mismatch,
        LimitExceeded, ProtocolError for an invalid key/ttl/limit (and shared with limit > 1),
        ReentrancyError, AuthError, Denied when our user may not lock the key, and
        ConnectionError when the daemon cannot be reached at first use, the Client is closed,
        or the daemon did not answer within ``wait`` + request_timeout. A waiting acquire
        survives reconnects (it is sent again with the wait it has left).
        """
        if not isinstance(key, str):
            raise TypeError(f"keylock: key must be a str, not {type(key).__name__}")
        return self._acquire(
            (key,), False, ttl, wait, limit, shared, reentrant, auto_extend, on_lost, cancel
        )

    def acquire_all(
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
        cancel: Optional["CancelToken"] = None,
    ) -> Lease:
        """Acquires every key of ``keys`` (1 to 64 distinct str) at once, or none, and returns
        one Lease over the set: one token, one ttl, renewed, extended, released and lost whole.
        The request waits in every key's queue from the same instant, so two acquire_all calls
        over overlapping sets never deadlock, in any order. Options as for acquire(); with
        ``reentrant``, a nested acquire must name exactly the held set (in any order): a set
        that overlaps a held one without being equal raises ReentrancyError.

        Raises what acquire() raises; ProtocolError for an empty set, more than 64 keys or a
        key given twice; TypeError when ``keys`` is a str (pass a list) or holds a non-str.
        """
        if isinstance(keys, (str, bytes)):
            raise TypeError("keylock: acquire_all takes a list of keys, not one str")
        keys = tuple(keys)
        for key in keys:
            if not isinstance(key, str):
                raise TypeError(f"keylock: keys must be str, not {type(key).__name__}")
        return self._acquire(
            keys, True, ttl, wait, limit, shared, reentrant, auto_extend, on_lost, cancel
        )

    def try_acquire(
        self,
        key: str,
        ttl: float = 30.0,
        wait: float = 0,
        limit: int = 1,
        **kwargs: Any,
    ) -> Optional[Lease]:
        """As acquire(), but returns None instead of raising Timeout. ``wait`` defaults to 0:
        try once. Keyword arguments as for acquire()."""
        try:
            return self.acquire(key, ttl, wait, limit, **kwargs)
        except Timeout:
            return None

    def try_acquire_all(
        self,
        keys: Iterable[str],
        ttl: float = 30.0,
        wait: float = 0,
        limit: int = 1,
        **kwargs: Any,
    ) -> Optional[Lease]:
        """As acquire_all(), but returns None instead of raising Timeout (``wait`` defaults to
        0: try once)."""
        try:
            return self.acquire_all(keys, ttl, wait, limit, **kwargs)
        except Timeout:
            return None

    def lock(
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
        cancel: Optional["CancelToken"] = None,
    ) -> _LockContext:
        """A context manager: ``with client.lock(key) as lease:`` acquires as acquire() does and
        releases on exit without a round trip (noreply). Raises what acquire() raises, and, on
        a normal exit, NotHeld if the lease was lost while the body ran (whatever it did, part
        of it ran without the lock). ``with client.lock(key, shared=True):`` holds it shared;
        ``reentrant=True`` lets a nested ``with client.lock(key, reentrant=True)`` in the same
        thread enter at once."""
        return _LockContext(
            self.acquire,
            key,
            dict(
                ttl=ttl, wait=wait, limit=limit, shared=shared, reentrant=reentrant,
                auto_extend=auto_extend, on_lost=on_lost, cancel=cancel,
            ),
        )

    def lock_all(
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
        cancel: Optional["CancelToken"] = None,
    ) -> _LockContext:
        """``with client.lock_all(["acct:17", "acct:42"]) as lease:``: acquire_all() on enter,
        release (noreply) on exit, as lock() does for one key."""
        if isinstance(keys, (str, bytes)):
            raise TypeError("keylock: lock_all takes a list of keys, not one str")
        return _LockContext(
            self.acquire_all,
            list(keys),
            dict(
                ttl=ttl, wait=wait, limit=limit, shared=shared, reentrant=reentrant,
                auto_extend=auto_extend, on_lost=on_lost, cancel=cancel,
            ),
        )

    def _acquire(
        self,
        keys: Tuple[str, ...],
        as_set: bool,
        ttl: float,
        wait: Optional[float],
        limit: int,
        shared: bool,
        reentrant: bool,
        auto_extend: bool,
        on_lost: Optional[Callable[[LeaseLost], None]],
        cancel: Optional[CancelToken] = None,
    ) -> Lease:
        if self._max_lanes and cancel is None and not reentrant and not as_set:
            lease, wait = self._lane_acquire(
                keys[0], ttl, wait, limit, shared, auto_extend, on_lost
            )
            if lease is not None:
                return lease
        call, held = self._begin_acquire(
            keys, as_set, ttl, wait, limit, shared, reentrant, auto_extend, on_lost, cancel
        )
        if held is not None:
            return held
        try:
            if not self._wait_for(call, call.wait_until):
                self._acquire_wait_ran_out(call, _label(keys))
            return self._finish_acquire(call, keys)
        except BaseException:
            # Whatever ends the wait early (KeyboardInterrupt, an exception raised by a signal
            # handler: uWSGI's harakiri, Celery's soft time limit, signal.alarm) must not leave
            # a lease that no Lease object owns.
            self._abandon_acquire(call)
            raise
        finally:
            if cancel is not None:
                cancel._unregister(call)

    # ---- thread connections (lanes) ----------------------------------------------------------

    def _lane_acquire(
        self,
        key: str,
        ttl: float,
        wait: Optional[float],
        limit: int,
        shared: bool,
        auto_extend: bool,
        on_lost: Optional[Callable[[LeaseLost], None]],
    ) -> Tuple[Optional[Lease], Optional[float]]:
        """An acquire over this thread's lane (see "Thread connections"): (its Lease, None), or
        (None, the wait left) for the shared connection to carry it, when the thread has no
        lane to use or its lane failed before an answer came. Raises as acquire() does."""
        ttl_ms, wait_ms = _acquire_ms(ttl, wait, limit)
        body = _one_key_members(key, ttl_ms, limit, shared)
        if wait_ms is not None:
            body += f',"wait_ms":{wait_ms}'
        self._check_pid()
        lane = self._take_lane()
        if lane is None:
            return None, wait
        started = time.monotonic()
        rid = lane.take_id()
        try:
            lane.send(f'{{"op":"acquire","id":{rid},{body}}}\n'.encode("ascii"))
            rep = lane.reply(
                rid,
                self._health_check_interval,
                None if wait is None else started + wait + self._request_timeout,
                self._spin,
            )
        except (_LaneDead, OSError) as e:
            # The daemon dropped the request with the connection: the shared one carries it.
            self._end_lane(lane, str(e))
            return None, None if wait is None else max(0.0, started + wait - time.monotonic())
        except _LaneTimeout:
            self._end_lane(lane, "no reply to acquire")
            raise ConnectionError(
                f"keylock: no reply to acquire of {_label((key,))} from keylockd at {self.server}"
            ) from None
        except BaseException:
            # Interrupted (a signal handler's exception), or a frame that does not decode: end
            # the lane, so that the daemon drops the request, and a grant that crossed it.
            self._end_lane(lane, "the acquire waiting on it was interrupted")
            raise
        if lane.unsynced is not None:  # answered after it: the daemon handled that release
            lane.unsynced = None
            self._unsynced.discard(lane)
        ok = rep.get("ok") is True
        token = rep.get("token")
        if ok and isinstance(token, int):
            st = _LeaseState(
                (key,),
                token,
                rep.get("ttl_ms", ttl_ms) / 1000.0,
                bool(auto_extend),
                on_lost,
                SHARED if shared else EXCLUSIVE,
                pid=self._pid,
            )
            st.lane = lane
            with self._mu:
                if not lane.dead:
                    self._leases.add(st, time.monotonic())
                    lane.lease = st
                    due = st.renew_at if st.renew_at is not None else st.expires_at
                    if due < self._io_until:
                        self._wake_locked()  # the I/O thread renews it, and sleeps longer now
                    return Lease(self, st), None
            # Ended meanwhile (the shared connection dropped, close()): the grant went with it.
            self._end_lane(lane, "ended")
            return None, None if wait is None else max(0.0, started + wait - time.monotonic())
        if ok:
            self._end_lane(lane, "grant without a token")
            raise ProtocolError("keylock: grant without a token")
        code = rep.get("error")
        if code == "shutting_down":
            self._end_lane(lane, "the daemon is shutting down")
            return None, None if wait is None else max(0.0, started + wait - time.monotonic())
        if code == "timeout":
            raise Timeout(
                f"keylock: {_label((key,))} not acquired within {wait or 0:g} s: "
                f"{rep.get('message', '')}",
                "timeout",
            )
        raise error_from_reply(rep)

    def _take_lane(self) -> Optional[_Lane]:
        """This thread's lane for an acquire, made on its second one; None when the shared
        connection is to carry it: the lane holds a lease, it is the thread's first acquire,
        the shared connection is not up, the cap is reached, or a lane could not be made for
        backoff_max."""
        local = self._local
        lane: Optional[_Lane] = getattr(local, "lane", None)
        if lane is not None:
            if not lane.dead:
                return lane if lane.lease is None else None
            lane.close()
            local.lane = None
        acquires = getattr(local, "acquires", 0) + 1
        local.acquires = acquires
        io = self._io_thread
        if (
            acquires < 2
            or self._state != _READY
            or self._outage
            or self._draining
            or len(self._lanes) >= self._max_lanes
            or time.monotonic() < self._lane_retry_at
            or (io is not None and io.ident == threading.get_ident())
        ):
            return None
        index = self._current
        try:
            sock, _, rest = self._attempt(*self._servers[index])
        except Error:
            self._lane_retry_at = time.monotonic() + self._backoff_max
            return None
        hc = self._health_check_interval
        lane = _Lane(
            sock,
            rest,
            read_timeout=min(1.0, max(0.005, hc / 2)) if hc > 0 else 1.0,
            write_timeout=self._request_timeout,
            max_frame=_MAX_REPLY_BYTES,
        )
        with self._mu:
            if self._closed or self._state != _READY or self._current != index:
                lane.dead = True
            else:
                self._lanes.add(lane)
        if lane.dead:
            lane.close()
            return None
        local.lane = lane
        return lane

    def _end_lane(self, lane: _Lane, why: str) -> None:
        """Ends this thread's ``lane``: its lease, if any, is lost (the daemon drops it with
        the connection)."""
        with self._mu:
            self._lanes.discard(lane)
            st = lane.lease
            if st is not None:
                self._lose_locked(
                    st,
                    "connection_lost",
                    f"keylock: connection to keylockd at {self.server} lost: {why}",
                )
                if self._callbacks:
                    self._wake_locked()  # on_lost runs on the I/O thread
        lane.close()
        if getattr(self._local, "lane", None) is lane:
            self._local.lane = None

    def _end_lanes_locked(self) -> List[_Lane]:
        """Takes every lane out (the shared connection dropped, or the client closes); the
        caller shuts them down once it has let go of the lock. Their leases are lost by the
        caller, with the shared connection's."""
        lanes = list(self._lanes)
        self._lanes.clear()
        self._unsynced.clear()
        for lane in lanes:
            lane.dead = True
        return lanes

    async def _acquire_async(
        self,
        keys: Tuple[str, ...],
        as_set: bool,
        ttl: float,
        wait: Optional[float],
        limit: int,
        shared: bool,
        reentrant: bool,
        auto_extend: bool,
        on_lost: Optional[Callable[[LeaseLost], None]],
    ) -> Lease:
        """The acquire of keylock.aio and of decorated coroutines: the same request, awaited
        instead of blocked on. Cancelling the awaiting task withdraws it on the daemon (and a
        grant that crossed the cancel is released at once), as any exception does."""
        import asyncio

        call, held = self._begin_acquire(
            keys, as_set, ttl, wait, limit, shared, reentrant, auto_extend, on_lost, None
        )
        if held is not None:
            return held
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def wake() -> None:  # any thread, under the client's lock
            loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))

        with self._mu:
            if call.done:
                done.set_result(None)
            else:
                call.notify = wake
                self._reader_needed_locked()
        try:
            if call.wait_until is None:
                await done
            else:
                try:
                    await asyncio.wait_for(
                        asyncio.shield(done), max(0.0, call.wait_until - time.monotonic())
                    )
                except asyncio.TimeoutError:
                    self._async_wait_ran_out(call, _label(keys))
                    try:
                        await asyncio.wait_for(asyncio.shield(done), self._request_timeout)
                    except asyncio.TimeoutError:
                        self._abandon_acquire(call)
                        raise ConnectionError(
                            f"keylock: no reply to acquire of {_label(keys)} from keylockd at "
                            f"{self.server}"
                        ) from None
            return self._finish_acquire(call, keys)
        except BaseException:
            self._abandon_acquire(call)
            raise

    def _async_wait_ran_out(self, call: _Call, label: str) -> None:
        """An awaited acquire's wait is over: one still queued for a connection fails now
        (ConnectionError: not contention); one sent waits for the daemon's own answer."""
        with self._mu:
            if not call.done and call.state == _QUEUED:
                call.done = True
                self._table.forget(call)
                raise ConnectionError(
                    f"keylock: {label} not acquired within {call.wait:g} s, and not because it "
                    f"is busy: {self._last_error or 'not connected'}"
                )

    def _begin_acquire(
        self,
        keys: Tuple[str, ...],
        as_set: bool,
        ttl: float,
        wait: Optional[float],
        limit: int,
        shared: bool,
        reentrant: bool,
        auto_extend: bool,
        on_lost: Optional[Callable[[LeaseLost], None]],
        cancel: Optional[CancelToken],
    ) -> Tuple[Optional[_Call], Optional[Lease]]:
        """Validates and sends (or queues) an acquire: (call, None), or (None, the held lease)
        for a reentrant acquire that enters a hold of this holder's."""
        mode = SHARED if shared else EXCLUSIVE
        ttl_ms, _ = _acquire_ms(ttl, wait, limit)
        if reentrant:
            held = self._enter_held(frozenset(keys), mode)
            if held is not None:
                return None, Lease(self, held)
        fields: Dict[str, Any] = {"keys": list(keys)} if as_set else {"key": keys[0]}
        fields.update(ttl_ms=ttl_ms, limit=limit)
        if shared:  # the default is not sent: older daemons know no mode
            fields["mode"] = SHARED
        call = _Call("acquire", fields)
        if not as_set:  # the common frame, encoded by hand: the hot path
            call.members = _one_key_members(keys[0], ttl_ms, limit, shared)
        call.ttl_ms = ttl_ms
        call.auto_extend = bool(auto_extend)
        call.on_lost = on_lost
        call.reentrant = bool(reentrant)
        if wait is not None:
            call.wait = float(wait)
            call.wait_until = time.monotonic() + call.wait
        if cancel is not None and not cancel._register(self, call):
            raise Cancelled(f"keylock: acquire of {_label(keys)} cancelled (CancelToken)")
        try:
            self._start(call)
        except BaseException:
            if cancel is not None:
                cancel._unregister(call)
            raise
        return call, None

    def _finish_acquire(self, call: _Call, keys: Tuple[str, ...]) -> Lease:
        """The caller's side of a done acquire: its error, or its Lease."""
        if call.error is not None:
            raise call.error
        st = call.lease
        if call.reentrant:
            holder = _holder_id()
            with self._mu:
                self._leases.add_hold(holder, frozenset(keys), st)
        return Lease(self, st)

    def _cancel_acquire(self, call: _Call) -> None:
        """CancelToken.cancel(), from any thread: withdraws the waiting acquire on the daemon
        and makes it raise Cancelled. A grant on its way finds the call done and is released."""
        with self._mu:
            if call.done:
                return
            if call.state == _QUEUED:
                self._table.forget(call)
            elif self._state == _READY:  # else the daemon dropped it with the connection
                self._write_locked(_Call("cancel", {"target": call.id}, user=False))
                self._reader_needed_locked()  # a grant that crossed the cancel goes back
            call.abandoned = True
            self._complete_locked(
                call,
                error=Cancelled(
                    f"keylock: acquire of {_label(_call_keys(call.fields))} cancelled "
                    "(CancelToken)"
                ),
            )
        self._flush()

    def _abandon_acquire(self, call: _Call) -> None:
        """The caller of an acquire is gone (an exception interrupted its wait, or it failed):
        withdraw the request on the daemon, and release a grant that got here first, at once.
        A grant still on its way finds the call done and is released when it comes."""
        with self._mu:
            if not call.done:
                call.done = True
                call.abandoned = True
                if call.state == _QUEUED:
                    self._table.forget(call)
                elif self._state == _READY:  # else the daemon dropped it with the connection
                    self._write_locked(_Call("cancel", {"target": call.id}, user=False))
                    self._reader_needed_locked()  # a grant that crossed the cancel goes back
            else:
                st = call.lease
                if st is not None and st.status == _HELD and call.error is None:
                    if st.reentrant:
                        self._leases.drop_holds(st)
                    self._forget_locked(st, _RELEASED)
                    self._send_release_locked(st.key, st.token)
        self._flush()

    def _enter_held(self, keys: FrozenSet[str], mode: str) -> Optional[_LeaseState]:
        """A reentrant acquire: this holder's lease over exactly ``keys`` with one more hold,
        or None when no lease of this holder shares a key with them. Raises ReentrancyError on
        a mode or set mismatch, NotHeld when the held lease was lost."""
        self._check_pid()
        holder = _holder_id()
        with self._mu:
            return self._leases.enter_held(holder, keys, mode)

    def _leave_held_locked(self, st: _LeaseState) -> bool:
        """Ends one hold of ``st``. True when it was the last (or only) one: the lease is to be
        released. False when an enclosing reentrant holder still holds it."""
        return self._leases.leave_held(st)

    def ping(self) -> float:
        """Round trip of one ``ping``, in seconds. Raises ConnectionError."""
        start = time.monotonic()
        self._request("ping", {})
        return time.monotonic() - start

    def inspect(self, key: str) -> KeyInfo:
        """The holders (with their mode, and every key of a lease over several keys), waiters
        and limit of ``key``. Raises ConnectionError, ProtocolError."""
        return _key_info(self._request("inspect", {"key": key}))

    def locked(self, key: str) -> bool:
        """Whether anyone holds ``key`` now (one round trip). Raises ConnectionError."""
        return bool(self._request("inspect", {"key": key}).get("held"))

    def release(self, key: str, token: int) -> None:
        """Ends the lease ``token`` on ``key``, whoever holds it: an operator's force release
        (as ``keylock release KEY TOKEN``). The holder's process learns at its next renewal,
        which the daemon answers not_held. Raises NotHeld when ``key`` has no live lease with
        that token, ConnectionError."""
        if isinstance(token, bool) or not isinstance(token, int):
            raise TypeError("keylock: token must be an int")
        self._request("release", {"key": key, "token": token})

    def stats(self) -> Dict[str, int]:
        """The daemon's gauges and counters (PROTOCOL.md ``stats``). Raises ConnectionError."""
        rep = self._request("stats", {})
        return {k: v for k, v in rep.items() if k not in ("id", "ok")}

    def close(self) -> None:
        """Closes the connection (the daemon releases every lease and drops every waiting
        acquire of it) and stops the I/O thread. Calls blocked in other threads fail with
        ConnectionError; live leases become invalid (on_lost with "client_closed").
        Idempotent. Must not be called from an on_lost callback."""
        self._check_pid()
        with self._mu:
            if self._closed:
                return
            self._closed = True
            error = "keylock: the client is closed"
            for st in list(self._leases.held.values()):
                self._lose_locked(st, "client_closed", error)
            self._fail_all_locked(lambda: ConnectionError(error))
            self._state_cv.notify_all()
            thread = self._io_thread
            lanes = self._end_lanes_locked()
        for lane in lanes:
            lane.shutdown()
        self._wake()
        if thread is not None and thread.ident != threading.get_ident():
            thread.join(self._connect_timeout + 5)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<keylock.Client server={self.server!r} state={self._state}>"

    # ---- state -----------------------------------------------------------------------------

    def _init_state(self) -> None:
        """(Re)creates every piece of per-process state: at construction and in a fork child."""
        self._pid = _current_pid()
        # Thread connections (lanes): each thread's own in _local.lane (with _local.acquires, its
        # blocking acquires so far), every live one in _lanes; none is made again before
        # _lane_retry_at after one could not be made.
        self._local = threading.local()
        self._lanes: "weakref.WeakSet[_Lane]" = weakref.WeakSet()
        self._lane_retry_at = 0.0
        self._unsynced: "set[_Lane]" = set()  # lanes whose Lane.unsynced is set
        # When the I/O thread's poll ends at the latest (monotonic; inf: no bound): a lease
        # granted on a lane with an earlier deadline wakes it.
        self._io_until = math.inf
        self._mu = threading.Lock()  # guards everything below
        self._state_cv = threading.Condition(self._mu)  # notified when a connect attempt ends
        self._wlock = threading.Lock()  # held around sendall and around closing the socket
        # Held around each read of the socket and the handling of what it brought, so that
        # frames are handled in the order they came, whichever thread reads them.
        self._rlock = threading.Lock()
        # Over TLS: held around every call into the connection's SSL object, which two threads
        # must not use at once (a reader and a writer). Each such call is non-blocking.
        self._tls_lock = threading.Lock()
        # The caller thread reading its own answer (_lead), if any: while there is one, the
        # I/O thread leaves the socket alone. _io_watches: the I/O thread's current poll
        # includes the socket (a new leader wakes it to take the socket out).
        self._leader: Optional[int] = None
        self._io_watches = False
        # When the last leader stopped reading. The I/O thread takes the socket back only once
        # no caller has read it for _IDLE_WATCH_LAG, or when something is left for it to read:
        # a caller that calls again and again (a busy web worker) then never has to wake it.
        self._lead_end = 0.0
        self._lead_poll: Optional[Tuple[socket.socket, Any]] = None  # the leader's poll object
        # Callers blocked on their latch for an answer, in the order they began to wait: a
        # leader that stops reading hands the socket to one of them (_hand_on_locked).
        self._followers: Deque[_Call] = deque()
        self._state = _IDLE
        self._sock: Optional[socket.socket] = None
        self._reader = FrameReader(_MAX_REPLY_BYTES)
        self._out: List[bytes] = []  # frames not yet handed to sendall, in order
        self._flushing = False  # some thread is draining _out
        self._table = CallTable()  # requests: on the wire, and waiting for a connection
        # Held leases by token, their renewal and local expiry times, the reentrant holds.
        self._leases = LeaseBook()
        self._draining = False  # the daemon said shutting_down: no acquire goes out
        self._reconnect_at: Optional[float] = None
        # Outages: since when no connection has been ready (set when one drops), and whether
        # that has lasted connect_timeout (then acquires fail with ConnectionError).
        self._down_since: Optional[float] = None
        self._outage = False
        # Heartbeat: when the next tick is due, whether anything was read since the last one,
        # and whether a ping of ours is unanswered.
        self._health_at: Optional[float] = None
        self._heard = False
        self._ping_out = False
        self._backoff = Backoff(self._backoff_initial, self._backoff_max)
        self._current = 0  # index in _servers of the daemon of the last successful hello
        self._next = 0  # index in _servers of the daemon the next round starts with
        self._last_error = ""
        self._last_error_cls: Type[Error] = ConnectionError
        self._last_error_code: Optional[str] = None
        self._callbacks: List[Tuple[Callable, LeaseLost]] = []  # on_lost calls to run
        self._release_later_q: Deque[_LeaseState] = deque()  # from Lease.__del__
        self._io_thread: Optional[threading.Thread] = None
        self._wake_r = -1
        self._wake_w = -1

    def _check_pid(self) -> None:
        if self._pid != _current_pid():
            with _fork_lock:
                if self._pid != _current_pid():
                    self._reset_after_fork()

    def _reset_after_fork(self) -> None:
        """In a fork child: forget the parent's connection, calls and leases. The inherited
        socket is closed without shutdown(), which would end the parent's connection too."""
        why = "keylock: inherited across fork: the lease belongs to the parent process"
        for st in self._leases.held.values():
            st.status = _LOST
            st.lost_message = why
        for lane in list(self._lanes):
            lane.dead = True
            try:
                lane.sock.close()  # the parent's connection: no shutdown
            except OSError:
                pass
        sock = self._sock
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._init_state()

    def _start(self, call: _Call) -> None:
        """Submits a user call: sends it now if connected, else queues it (and makes sure a
        connection is on its way)."""
        self._check_pid()
        if self._io_thread is not None and threading.get_ident() == self._io_thread.ident:
            raise RuntimeError(
                "keylock: blocking Client/Lease call from the client's I/O thread "
                "(an on_lost callback must not block)"
            )
        with self._mu:
            if self._closed:
                raise ConnectionError("keylock: the client is closed")
            if self._outage and call.op == "acquire":
                raise self._outage_error_locked(call)
            self._ensure_io_locked()
            self._submit_locked(call)
        self._flush()

    def _outage_error_locked(self, call: _Call) -> ConnectionError:
        down = time.monotonic() - (self._down_since or time.monotonic())
        why = f": {self._last_error}" if self._last_error else ""
        return ConnectionError(
            f"keylock: cannot acquire {_label(_call_keys(call.fields))}: no keylockd reachable "
            f"for {down:.1f} s (connect_timeout {self._connect_timeout:g} s){why}"
        )

    def _ensure_io_locked(self) -> None:
        if self._io_thread is None:
            self._wake_r, self._wake_w = os.pipe()
            os.set_blocking(self._wake_r, False)
            os.set_blocking(self._wake_w, False)
            self._io_thread = threading.Thread(
                target=self._run, name=f"keylock-io-{self._server}", daemon=True
            )
            self._io_thread.start()
        if self._state == _IDLE:
            self._state = _CONNECTING
            self._wake_locked()

    def _wake(self) -> None:
        with self._mu:
            self._wake_locked()

    def _wake_locked(self) -> None:
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"\0")
            except (BlockingIOError, OSError):
                pass  # the pipe is full: the I/O thread is waking anyway

    def _request(self, op: str, fields: Dict[str, Any], lease: Optional[_LeaseState] = None):
        """Sends a user request other than acquire and waits request_timeout for its reply."""
        call = _Call(op, fields)
        call.lease = lease
        self._start(call)
        if not self._wait_for(call, time.monotonic() + self._request_timeout):
            self._give_up_request(call, timed_out=True)
        if call.error is not None:
            raise call.error
        return call.reply

    def _wait_for(self, call: _Call, until: Optional[float]) -> bool:
        """Blocks until a user call is done or ``until`` (monotonic; None: no bound) passes;
        whether it is done. Reads the answer on this thread when no other thread reads
        (_lead); else waits on the call's latch, until the call is done or the reading
        thread hands the reading on to this one."""
        while True:
            self._lead(call, until)
            with self._mu:
                if call.done:
                    return True
                if (
                    self._leader is None
                    and not call.led
                    and call.state == _SENT
                    and self._sock is not None
                ):
                    continue  # the reader stopped since _lead looked: read it here
                self._followers.append(call)
                call.following = True
            try:
                if until is None:
                    got = call.latch.acquire()
                else:
                    got = call.latch.acquire(timeout=max(0.0, until - time.monotonic()))
            except BaseException:  # interrupted (a signal handler's exception)
                with self._mu:
                    self._unfollow_locked(call)
                    if call.signalled and not call.done and not self._hand_on_locked():
                        self._wake_locked()  # it was handed the reading: pass it on
                raise
            with self._mu:
                self._unfollow_locked(call)
                if not call.signalled:  # the wait ran out with nothing for us
                    return call.done
                if not got:
                    call.latch.acquire()  # released as the wait ran out: it is free, take it
                if call.done:
                    return True
                call.signalled = False  # handed the reading: read (or wait) again
                if until is not None and time.monotonic() >= until:
                    # No time left to read: pass the reading on rather than drop it.
                    if not self._hand_on_locked():
                        self._wake_locked()
                    return False

    def _unread_answer_due_locked(self) -> bool:
        """Whether a call on the wire has no caller thread that will read its answer: the
        client's own calls, awaited ones, given up ones, and those whose caller read for a
        while already (a held lock's waiter). A blocking caller that has not yet begun to wait
        for its answer reads it itself (_wait_for)."""
        return any(
            c.done or not c.user or c.notify is not None or c.led
            for c in self._table.sent.values()
        )

    def _unfollow_locked(self, call: _Call) -> None:
        """Takes ``call`` out of the callers waiting to be handed the reading, if it is in."""
        if call.following:
            self._followers.remove(call)
            call.following = False

    def _hand_on_locked(self) -> bool:
        """Passes the reading of the socket to a caller waiting for its own answer, which
        reads it without a hop through the I/O thread; whether there was one. Each call is
        handed the reading once at most (``led``): one waiting on a held lock then leaves it
        to the I/O thread instead of passing it round."""
        while self._followers:
            call = self._followers.popleft()
            call.following = False
            if not call.done and call.state == _SENT and not call.led:
                self._signal_locked(call)
                return True
        return False

    def _lead(self, call: _Call, until: Optional[float]) -> None:
        """Reads the answer to ``call`` on this thread, when no other thread is reading: the
        I/O thread would otherwise read it and wake this one, and that hop is most of an
        uncontended call's cost. Every frame read here is handled as the I/O thread would
        (other callers' answers, events). Reads for _LEAD_WINDOW at most (a contended acquire
        then waits on its latch and the I/O thread reads again), and gives up at once on a
        closed or failing socket, which the I/O thread then handles."""
        with self._rlock, self._mu:  # _rlock: the I/O thread is not mid-read
            sock = self._sock
            if call.done or call.state != _SENT or sock is None or self._leader is not None:
                return
            self._leader = threading.get_ident()
            call.led = True
            if self._io_watches:
                self._wake_locked()  # to take the socket out of its poll
            if self._lead_poll is None or self._lead_poll[0] is not sock:
                poller = select.poll()  # one per connection: only the leader uses it
                poller.register(sock.fileno(), select.POLLIN | select.POLLERR | select.POLLHUP)
                self._lead_poll = (sock, poller)
            poller = self._lead_poll[1]
        handed_back = False
        start = time.monotonic()
        answered: Optional[float] = None  # when a read first got something
        # Spin only while recent answers came within the bound: a daemon across a network, or
        # a held lock, answers later, and spinning would only burn CPU.
        spinning = 0 < self._spin and self._recent_answer <= self._spin
        spin_until = start + self._spin if spinning else 0.0
        try:
            end = start + _LEAD_WINDOW
            if until is not None:
                end = min(end, until)
            while not call.done:
                now = time.monotonic()
                left = end - now
                if left <= 0:
                    return
                if now < spin_until:
                    # Give the core away once (a daemon on this core runs now), then read
                    # without polling first: an answer from another core is mostly there by
                    # then, and an empty read costs no more than the poll would.
                    os.sched_yield()
                elif not poller.poll(int(math.ceil(left * 1000))):
                    continue
                with self._rlock:
                    with self._mu:
                        if self._sock is not sock:
                            return  # dropped meanwhile (fd may even be reused): not ours
                    try:
                        data, eof = self._recv(sock)
                    except BlockingIOError:
                        continue
                    except OSError:
                        handed_back = True  # the I/O thread reads the error and drops
                        return
                    if answered is None:
                        answered = time.monotonic()
                    try:
                        if data:
                            self._feed(sock, data)
                        if eof:
                            handed_back = True  # likewise for the daemon's close
                            return
                    except BaseException:
                        # Interrupted (a signal handler's exception) with frames half handled:
                        # end the connection, so that the daemon frees all it held for us and
                        # the I/O thread fails or re-sends every call, as after any drop.
                        _shutdown(sock)
                        handed_back = True
                        raise
        finally:
            with self._mu:
                self._leader = None
                self._lead_end = time.monotonic()
                # The wait until a read got something; a turn that ended
                # unanswered (a held lock, after _LEAD_WINDOW) counts at its length.
                took = min((answered or time.monotonic()) - start, _LEAD_WINDOW)
                self._recent_answer = (7 * self._recent_answer + took) / 8
                self._after_lead_locked(handed_back)

    def _after_lead_locked(self, handed_back: bool) -> None:
        """A leader stopped reading. Others waiting for answers: a caller among them reads
        next, or else the I/O thread. On_lost callbacks, a dropped socket: the I/O thread
        takes over now. Otherwise it takes the socket back within _IDLE_WATCH_LAG (events for
        held leases can wait that long)."""
        if handed_back or self._callbacks or self._release_later_q:
            self._wake_locked()
        elif self._table.sent and not self._hand_on_locked():
            if self._ping_out or self._unread_answer_due_locked():
                self._wake_locked()

    async def _request_async(
        self, op: str, fields: Dict[str, Any], lease: Optional[_LeaseState] = None
    ):
        """_request for keylock.aio: the same call, awaited. A cancelled task withdraws the
        call: its reply, when it comes, is dropped."""
        import asyncio

        call = _Call(op, fields)
        call.lease = lease
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def wake() -> None:  # any thread, under the client's lock
            loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))

        call.notify = wake
        self._start(call)
        with self._mu:
            self._reader_needed_locked()
        try:
            await asyncio.wait_for(asyncio.shield(done), self._request_timeout)
        except asyncio.TimeoutError:
            self._give_up_request(call, timed_out=True)
        except BaseException:
            self._give_up_request(call, timed_out=False)
            raise
        if call.error is not None:
            raise call.error
        return call.reply

    def _give_up_request(self, call: _Call, timed_out: bool) -> None:
        """The caller stops waiting for a request other than acquire. Unless it completed
        meanwhile, it is taken out, and a request that timed out raises: the last connection
        error if it never went out, else ConnectionError. An explicit extend with no answer
        loses its lease (the daemon may have let it go)."""
        with self._mu:
            if call.done:
                return
            call.done = True
            if call.state == _QUEUED:
                self._table.forget(call)
                if timed_out:
                    raise self._last_error_cls(
                        self._last_error or "keylock: not connected to keylockd",
                        self._last_error_code,
                    )
                return
            self._table.forget(call)
            if call.op == "extend" and call.lease is not None:
                self._lose_locked(call.lease, "expired", "extend got no reply from the daemon")
                self._wake_locked()  # on_lost runs on the I/O thread
            if timed_out:
                raise ConnectionError(
                    f"keylock: no reply from keylockd at {self.server} within "
                    f"{self._request_timeout:g} s"
                )

    def _acquire_wait_ran_out(self, call: _Call, label: str) -> None:
        """The caller's wait is over and no answer came. A queued acquire times out here; a
        sent one is given request_timeout more for the daemon's own timeout answer, then
        abandoned (cancelled; a late grant is released at once)."""
        with self._mu:
            # The first connection is part of the set-up, not of the wait for the key: an
            # acquire queued behind it is sent once it is up, with what is left of its wait
            # (at least "try once").
            deadline = time.monotonic() + self._connect_timeout * len(self._servers) + 1
            while not call.done and call.state == _QUEUED and self._state == _CONNECTING:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._state_cv.wait(left)
            if not call.done and call.state == _QUEUED:
                # Not contention (the daemon never judged the key busy): an outage.
                call.done = True
                self._table.forget(call)
                why = "not connected" if self._state != _READY else "the daemon is shutting down"
                raise ConnectionError(
                    f"keylock: {label} not acquired within {call.wait:g} s, and not because it "
                    f"is busy: {self._last_error or why}"
                )
        if self._wait_for(call, time.monotonic() + self._request_timeout):
            return
        with self._mu:
            if call.done:
                return
            call.done = True
            if call.state == _QUEUED:  # re-queued by a connection drop meanwhile
                self._table.forget(call)
                raise ConnectionError(
                    f"keylock: {label} not acquired within {call.wait:g} s, and not because it "
                    f"is busy: {self._last_error or 'not connected'}"
                )
            call.abandoned = True
            if self._state == _READY:  # else the daemon dropped it with the connection
                self._write_locked(_Call("cancel", {"target": call.id}, user=False))
        self._flush()
        raise ConnectionError(
            f"keylock: no reply to acquire of {label} from keylockd at {self.server}"
        )

    # ---- writing ---------------------------------------------------------------------------

    def _can_send(self, call: _Call) -> bool:
        return self._state == _READY and not (self._draining and call.op == "acquire")

    def _submit_locked(self, call: _Call) -> None:
        if self._can_send(call):
            self._write_locked(call)
        else:
            self._table.queue(call)

    def _write_locked(self, call: _Call) -> None:
        if self._unsynced:
            # Lanes' noreply releases not yet known handled go first, so that this request
            # reaches the daemon after them, as on the shared connection (Lease.release).
            for lane in list(self._unsynced):
                self._unsynced.discard(lane)
                frame = lane.unsynced
                if frame is not None:
                    self._out.append(frame)
        self._out.append(self._table.send(call, time.monotonic()))

    def _send_release_locked(self, key: str, token: int) -> None:
        """Queues ``release`` with noreply. Not connected: the daemon dropped the connection's
        leases itself."""
        if self._state != _READY:
            return
        self._out.append(self._table.noreply_release(key, token))

    def _flush(self) -> None:
        """Hands every queued frame to the socket, in order. One thread at a time drains the
        queue (frames queued meanwhile by others are sent by it); sendall runs outside the main
        lock so that the I/O thread keeps reading while a write blocks."""
        with self._mu:
            if self._flushing or not self._out:
                return
            self._flushing = True
            try:
                while True:
                    sock = self._sock
                    if sock is None:
                        self._out.clear()  # the connection dropped: its frames went with it
                    if not self._out:
                        return
                    data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
                    self._out.clear()
                    self._mu.release()  # sendall runs without the main lock
                    try:
                        self._send(sock, data)
                    finally:
                        self._mu.acquire()
            finally:
                self._flushing = False  # also when interrupted: the next caller flushes

    def _send(self, sock: socket.socket, data: bytes) -> None:
        with self._wlock:
            try:
                if isinstance(sock, ssl.SSLSocket):
                    _tls_send_all(sock, data, self._tls_lock, self._request_timeout)
                else:
                    _send_all(sock, data)
            except OSError:
                # Let the I/O thread notice (its read fails) and handle the drop.
                _shutdown(sock)

    def _recv(self, sock: socket.socket) -> Tuple[bytes, bool]:
        """What the connection has now: (bytes, whether the daemon closed it). Raises
        BlockingIOError when nothing came, OSError when the connection failed."""
        if isinstance(sock, ssl.SSLSocket):
            return _tls_recv_available(sock, self._tls_lock)
        # os.read, not recv: the socket has a timeout, and recv would wait for data a caller
        # may have read since the poll.
        data = os.read(sock.fileno(), 65536)
        return data, not data

    # ---- releasing and extending -----------------------------------------------------------

    def _release(self, st: _LeaseState, noreply: bool) -> None:
        if st.pid != _current_pid():
            return  # inherited from the parent: not ours to release
        if st.reentrant:
            with self._mu:
                if not self._leave_held_locked(st):
                    # An enclosing holder keeps the lease; tell this one if it ran without it.
                    if st.status == _LOST:
                        raise NotHeld(
                            f"keylock: lease on {_label(st.keys)} was lost: {st.lost_message}"
                        )
                    return
        if self._io_thread is not None and threading.get_ident() == self._io_thread.ident:
            with self._mu:  # from a callback: fire and forget
                if st.status == _HELD:
                    self._forget_locked(st, _RELEASED)
                    self._send_release_locked(st.key, st.token)
            return  # the I/O loop flushes
        with self._mu:
            if st.status == _LOST:
                raise NotHeld(f"keylock: lease on {_label(st.keys)} was lost: {st.lost_message}")
            if st.status == _RELEASED:
                return
            self._forget_locked(st, _RELEASED)
            lane = st.lane
            if noreply and (lane is None or lane.dead):
                lane = None
                self._send_release_locked(st.key, st.token)
        if noreply:
            if lane is not None:
                # Over the lane it was acquired on: the thread's next acquire there comes after.
                # Requests over the shared connection could overtake it: until the lane shows
                # it handled, _write_locked sends it again ahead of them (a release of a token
                # no longer held is refused, without an answer, and harms nothing).
                frame = _noreply_release(st.key, st.token, 0)
                try:
                    lane.send(frame)
                except OSError:
                    lane.shutdown()  # the daemon drops the lease with the connection
                    return
                lane.unsynced = frame
                self._unsynced.add(lane)
                return
            self._flush()
            return
        self._request("release", {"key": st.key, "token": st.token}, st)

    def _release_later(self, st: _LeaseState) -> None:
        """A Lease was garbage-collected while held: the I/O thread releases it. Called from
        __del__, which may run in any thread at any allocation, so it takes no lock."""
        if st.pid != _current_pid() or self._closed:
            return
        self._release_later_q.append(st)
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"\0")
            except OSError:
                pass

    def _extend(self, st: _LeaseState, ttl: Optional[float]) -> None:
        self._request("extend", self._extend_fields(st, ttl), st)

    async def _extend_async(self, st: _LeaseState, ttl: Optional[float]) -> None:
        await self._request_async("extend", self._extend_fields(st, ttl), st)

    def _extend_fields(self, st: _LeaseState, ttl: Optional[float]) -> Dict[str, Any]:
        if st.pid != _current_pid():
            raise NotHeld(f"keylock: lease on {_label(st.keys)} belongs to the parent process")
        with self._mu:
            if st.status != _HELD:
                raise self._not_held_error(st)
        fields: Dict[str, Any] = {"key": st.key, "token": st.token}
        if ttl is not None:
            fields["ttl_ms"] = _ms(ttl, "ttl", 1)
        return fields

    @staticmethod
    def _not_held_error(st: _LeaseState) -> NotHeld:
        if st.status == _LOST:
            return NotHeld(f"keylock: lease on {_label(st.keys)} was lost: {st.lost_message}")
        return NotHeld(f"keylock: lease on {_label(st.keys)} was already released")

    def _forget_locked(self, st: _LeaseState, status: str) -> None:
        """Takes the lease out of the renewal machinery: no renewal of it is queued after."""
        self._leases.forget(st, status)
        if st.lane is not None and st.lane.lease is st:
            st.lane.lease = None  # the lane may carry the next acquire

    def _lose_locked(self, st: _LeaseState, reason: str, message: str) -> None:
        if st.status != _HELD:
            return
        st.lost_message = message
        self._forget_locked(st, _LOST)
        if st.on_lost is not None:
            self._callbacks.append(
                (st.on_lost, LeaseLost(st.key, st.token, reason, message, st.keys))
            )

    def _confirmed_locked(self, st: _LeaseState, since: float, ttl: float) -> None:
        """The daemon holds the lease until at least since + ttl: move the local expiry there
        and schedule the next renewal at since + ttl/3."""
        self._leases.confirmed(st, since, ttl)

    # ---- completing calls (I/O thread, or a thread failing everything) ---------------------

    @staticmethod
    def _signal_locked(call: _Call) -> None:
        if call.latch is not None and not call.signalled:
            call.signalled = True
            call.latch.release()

    @classmethod
    def _complete_locked(cls, call: _Call, reply=None, error: Optional[Error] = None) -> None:
        if call.done:
            return
        call.done = True
        call.reply = reply
        call.error = error
        cls._signal_locked(call)
        if call.notify is not None:
            call.notify()

    def _fail_all_locked(self, make_error: Callable[[], Error]) -> None:
        for call in self._table.take_all():
            self._complete_locked(call, error=make_error())

    # ---- the I/O thread --------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException:  # pragma: no cover - a bug: make it visible, fail the callers
            _log.exception("keylock: the client's I/O thread failed")
            with self._mu:
                self._closed = True
                self._fail_all_locked(lambda: ConnectionError("keylock: I/O thread failed"))
        finally:
            with self._mu:
                sock, self._sock = self._sock, None
                callbacks, self._callbacks = self._callbacks, []
                wake_r, wake_w = self._wake_r, self._wake_w
                self._wake_r = self._wake_w = -1
            self._close_socket(sock)
            self._run_callbacks(callbacks)
            for fd in (wake_r, wake_w):
                if fd >= 0:
                    os.close(fd)

    def _loop(self) -> None:
        poller_flags = select.POLLIN | select.POLLERR | select.POLLHUP
        while True:
            with self._mu:
                if self._closed:
                    return
                now = time.monotonic()
                connect = self._state == _CONNECTING or (
                    self._state == _RECONNECTING
                    and self._reconnect_at is not None
                    and now >= self._reconnect_at
                )
                sock = self._sock
                timeout = self._next_timeout_locked(now)
                self._io_watches = sock is not None and self._wants_socket_locked(now)
                if sock is not None and not self._io_watches:
                    # A caller reads the socket (_lead), or did a moment ago; look again soon
                    # in case it stopped with nobody to wake this thread.
                    lag = self._watch_lag_locked(now)
                    timeout = lag if timeout is None else min(timeout, lag)
                self._io_until = math.inf if timeout is None or connect else now + timeout
            if connect:
                self._connect_once()
                continue
            poller = select.poll()
            poller.register(self._wake_r, select.POLLIN)
            if self._io_watches:
                poller.register(sock.fileno(), poller_flags)
            events = poller.poll(None if timeout is None else max(0, int(timeout * 1000) + 1))
            for fd, _ in events:
                if fd == self._wake_r:
                    try:
                        while os.read(self._wake_r, 4096):
                            pass
                    except (BlockingIOError, OSError):
                        pass
                elif sock is not None:
                    self._read(sock)
            self._housekeeping()

    def _wants_socket_locked(self, now: float) -> bool:
        """Whether the I/O thread's next poll includes the socket: not while a caller reads it
        (_lead); else when an answer is due that no caller is reading (calls on the wire, a
        heartbeat's pong), or once no caller has read for _IDLE_WATCH_LAG (events for held
        leases wait that long at most)."""
        if self._leader is not None:
            return False
        if self._table.sent or self._ping_out:
            return True
        return now - self._lead_end >= _IDLE_WATCH_LAG

    def _watch_lag_locked(self, now: float) -> float:
        """How long the I/O thread may leave the socket alone before it looks again."""
        if self._leader is not None:
            return _IDLE_WATCH_LAG
        return max(0.0, self._lead_end + _IDLE_WATCH_LAG - now)

    def _reader_needed_locked(self) -> None:
        """A call went out that no caller thread will read the answer to (an awaited call, a
        cancel): make sure the I/O thread polls the socket. A leader reads it, and wakes the
        I/O thread when it stops with answers still due."""
        if not self._io_watches and self._leader is None:
            self._wake_locked()

    def _next_timeout_locked(self, now: float) -> Optional[float]:
        when = self._leases.earliest()
        if self._state == _RECONNECTING and self._reconnect_at is not None:
            when = self._reconnect_at if when is None else min(when, self._reconnect_at)
        if self._down_since is not None and not self._outage:
            due = self._down_since + self._connect_timeout
            when = due if when is None else min(when, due)
        if self._state == _READY and self._health_at is not None:
            when = self._health_at if when is None else min(when, self._health_at)
        return None if when is None else max(0.0, when - now)

    def _housekeeping(self) -> None:
        with self._mu:
            while self._release_later_q:
                st = self._release_later_q.popleft()
                if st.reentrant and not self._leave_held_locked(st):
                    continue  # an enclosing holder keeps it
                if st.status == _HELD:
                    self._forget_locked(st, _RELEASED)
                    self._send_release_locked(st.key, st.token)
            now = time.monotonic()
            for kind, st in self._leases.due(now):
                if kind == _RENEW:
                    self._renew_locked(st)
                else:
                    self._send_release_locked(st.key, st.token)  # in case it was merely slow
                    self._lose_locked(
                        st,
                        "expired",
                        f"no renewal confirmed by the daemon within the lease's ttl of "
                        f"{st.ttl:g} s",
                    )
            if (
                self._down_since is not None
                and not self._outage
                and self._state != _READY
                and now >= self._down_since + self._connect_timeout
            ):
                self._begin_outage_locked()
            dead = self._health_tick_locked(now)
            callbacks, self._callbacks = self._callbacks, []
        if dead is not None:
            self._drop(
                dead,
                f"no reply to a health check within {self._health_check_interval:g} s "
                "(the connection is dead)",
            )
        self._flush()
        self._run_callbacks(callbacks)

    def _health_tick_locked(self, now: float) -> Optional[socket.socket]:
        """The heartbeat's tick, when due: the socket to drop as dead, else None."""
        if self._state != _READY or self._health_at is None or now < self._health_at:
            return None
        self._health_at = now + self._health_check_interval
        if self._heard:
            self._heard = False  # the next tick looks at what this interval brings
        elif self._ping_out:
            return self._sock
        elif self._leases.held or self._table.awaiting_acquire():
            self._ping_out = True
            self._write_locked(_Call("ping", {}, user=False))
        return None

    def _begin_outage_locked(self) -> None:
        """Disconnected for connect_timeout: every waiting acquire fails, and every new one
        fails at once, with ConnectionError until a connection is ready again."""
        self._outage = True
        keep: List[_Call] = []
        for call in self._table.queued:
            if call.op == "acquire" and call.user and not call.done:
                self._complete_locked(call, error=self._outage_error_locked(call))
            else:
                keep.append(call)
        self._table.queued = keep

    def _renew_locked(self, st: _LeaseState) -> None:
        if st.status != _HELD or st.renewing:
            return
        call = _Call(
            "extend", {"key": st.key, "token": st.token, "ttl_ms": _ms(st.ttl, "ttl", 1)}, False
        )
        call.lease = st
        st.renewing = True
        self._submit_locked(call)

    @staticmethod
    def _run_callbacks(callbacks) -> None:
        for fn, lost in callbacks:
            try:
                fn(lost)
            except Exception:
                _log.exception("keylock: on_lost callback raised (ignored)")

    def _read(self, sock: socket.socket) -> None:
        with self._rlock:
            with self._mu:
                if self._leader is not None or self._sock is not sock:
                    return  # a caller reads now (_lead), or the socket is gone
            try:
                data, eof = self._recv(sock)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self._drop(sock, f"read failed: {e}")
                return
            if data:
                self._feed(sock, data)
            if eof:
                self._drop(sock, "closed by the daemon")

    def _feed(self, sock: socket.socket, data: bytes) -> None:
        """Splits what was read into frames and handles each."""
        bad = None
        with self._mu:
            if self._sock is not sock:
                return
            self._heard, self._ping_out = True, False
            frames, bad = self._reader.feed(data)
            for rep in frames:
                self._on_frame_locked(rep)
        if bad is not None:
            self._drop(sock, bad, ProtocolError)

    def _on_frame_locked(self, rep: dict) -> None:
        if "event" in rep:
            if rep.get("event") == "expired":
                st = self._leases.held.get(rep.get("token"))
                if st is not None:
                    self._lose_locked(st, "expired", "the daemon expired the lease (ttl ran out)")
            return  # unknown events are ignored (PROTOCOL.md)
        rid = rep.get("id")
        if rid is None:
            # An error about a frame the daemon could not read: it closes next.
            if not rep.get("ok", False):
                self._last_error = "keylockd: " + str(rep.get("message", rep.get("error")))
            return
        call = self._table.sent.get(rid)
        if call is None:
            return  # reply to a call its caller gave up on, or to a noreply release
        self._on_reply_locked(call, rep)
        # Taken off the wire only once handled: a reader interrupted mid-way (_lead) leaves it
        # for the drop that follows to settle.
        if self._table.sent.get(rid) is call:
            del self._table.sent[rid]

    def _on_reply_locked(self, call: _Call, rep: dict) -> None:
        ok = rep.get("ok") is True
        op = call.op
        if op == "acquire":
            self._on_acquire_reply_locked(call, rep, ok)
        elif op == "extend":
            self._on_extend_reply_locked(call, rep, ok)
        elif op == "release":
            if ok:
                self._complete_locked(call, rep)
            elif call.lease is None:  # Client.release(key, token): no lease of ours
                self._complete_locked(call, error=error_from_reply(rep))
            elif rep.get("error") == "not_held":
                self._complete_locked(
                    call,
                    error=NotHeld(
                        f"keylock: lease on {_label(call.lease.keys)} was no longer held by the "
                        f"daemon (it expired): {rep.get('message', '')}",
                        "not_held",
                    ),
                )
            else:
                self._complete_locked(call, error=error_from_reply(rep))
        elif call.user:
            if ok:
                self._complete_locked(call, rep)
            else:
                self._complete_locked(call, error=error_from_reply(rep))

    def _on_acquire_reply_locked(self, call: _Call, rep: dict, ok: bool) -> None:
        token = rep.get("token")
        keys = _call_keys(call.fields)
        if ok and isinstance(token, int):
            if call.done:  # the caller gave up on it: give the grant back
                self._send_release_locked(keys[0], token)
                return
            ttl = rep.get("ttl_ms", call.ttl_ms) / 1000.0
            st = _LeaseState(
                keys,
                token,
                ttl,
                call.auto_extend,
                call.on_lost,
                call.fields.get("mode", EXCLUSIVE),
                call.reentrant,
                pid=self._pid,  # current: a fork child resets the client before it reads
            )
            # The grant happened at most one one-way trip ago: count the ttl from its arrival.
            self._leases.add(st, time.monotonic())
            call.lease = st
            self._complete_locked(call, rep)
            return
        if call.done:
            return
        if ok:
            self._complete_locked(call, error=ProtocolError("keylock: grant without a token"))
            return
        code = rep.get("error")
        if code == "shutting_down":
            # The daemon is stopping: wait for the next one with what is left of the wait.
            self._draining = True
            self._table.forget(call)
            self._table.queue(call)
            return
        if code == "timeout":
            self._complete_locked(
                call,
                error=Timeout(
                    f"keylock: {_label(keys)} not acquired within {call.wait or 0:g} s: "
                    f"{rep.get('message', '')}",
                    "timeout",
                ),
            )
            return
        self._complete_locked(call, error=error_from_reply(rep))

    def _on_extend_reply_locked(self, call: _Call, rep: dict, ok: bool) -> None:
        st = call.lease
        if not call.user:
            st.renewing = False
        if st.status != _HELD:
            if call.user:
                self._complete_locked(call, error=self._not_held_error(st))
            return
        not_held = rep.get("error") == "not_held"
        verdict = judge_extend(ok, not_held, call.user)
        if verdict == CONFIRMED:
            ttl = rep.get("ttl_ms", call.fields.get("ttl_ms", st.ttl * 1000)) / 1000.0
            if call.user:
                st.ttl = ttl  # an explicit extend sets the ttl of later renewals
            # The daemon extended at or after sent_at: the lease lasts until sent_at + ttl.
            self._confirmed_locked(st, call.sent_at, ttl)
            self._complete_locked(call, rep)
            return
        if verdict == REFUSED_KEPT:  # renewals go on with the ttl that worked
            self._complete_locked(call, error=error_from_reply(rep))
            return
        why = ("extend" if call.user else "renewal") + " refused by the daemon: " + str(
            rep.get("message") or rep.get("error")
        )
        if verdict == RELEASE_AND_LOSE:
            self._send_release_locked(st.key, st.token)
        self._lose_locked(st, "not_held" if not_held else "expired", why)
        if call.user:
            err = NotHeld(f"keylock: lease on {_label(st.keys)} {why}", "not_held")
            self._complete_locked(call, error=err if not_held else error_from_reply(rep))

    # ---- connecting ------------------------------------------------------------------------

    def _connect_once(self) -> None:
        """One round: tries each server once, in list order from ``_next``, until one answers
        hello. Runs on the I/O thread, without the lock; nothing else needs the thread meanwhile
        (no lease lives while disconnected)."""
        failures: List[Error] = []
        count = len(self._servers)
        for _ in range(count):
            if self._closed:
                return
            index = self._next
            self._next = (index + 1) % count
            try:
                sock, rep, rest = self._attempt(*self._servers[index])
            except Error as e:
                failures.append(e)
                continue
            self._connected(index, sock, rep, rest)
            return
        if count == 1:
            failure = failures[0]
            cls, msg = type(failure), str(failure)
        else:
            # The gravest failure names the class: a refused secret is a configuration error
            # to show, not an outage.
            failure = next(
                (f for kind in (AuthError, ProtocolError) for f in failures if isinstance(f, kind)),
                failures[-1],
            )
            cls = type(failure)
            msg = f"keylock: no keylockd of {self._server} answered: " + "; ".join(
                str(f) for f in failures
            )
        self._connect_failed(cls, msg, failure.code)

    def _attempt(self, server: str, host: str, port: int):
        """One attempt at one daemon: TCP connect, the TLS handshake when TLS is on, hello, its
        answer. Returns (socket, hello answer, bytes read past it); raises an Error."""
        sock = None
        tls = self._ssl_context is not None
        try:
            sock = socket.create_connection((host, port), self._connect_timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if tls:
                sock = self._handshake(sock, server, host)
            hello: Dict[str, Any] = {"op": "hello", "id": 0}
            if self._user:
                hello["user"] = self._user
            if self._auth:
                hello["auth"] = self._auth
            if self._name:
                hello["client"] = self._name
            sock.sendall(_encode(hello))
            deadline = time.monotonic() + self._connect_timeout
            buf = b""
            while b"\n" not in buf:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise socket.timeout("no answer to hello")
                sock.settimeout(left)
                try:
                    chunk = sock.recv(65536)
                except ssl.SSLError as e:
                    # With TLS 1.3 the daemon judges our certificate after our side of the
                    # handshake is done: its refusal comes as an alert on the first read.
                    raise ConnectionError(
                        f"keylock: TLS error from keylockd at {server} during hello (a client "
                        f"certificate the daemon refused?): {e}"
                    ) from None
                if not chunk:
                    why = " (over TLS: a client certificate the daemon refused?)" if tls else ""
                    raise ConnectionError(
                        f"keylock: keylockd at {server} closed the connection during "
                        f"hello{why}{': ' + self._last_error if self._last_error else ''}"
                    )
                buf += chunk
            if tls:
                # Frames OpenSSL decrypted with the answer: poll would not report them.
                while sock.pending():
                    buf += sock.recv(sock.pending())
            line, rest = buf.split(b"\n", 1)
            try:
                rep = json.loads(line)
            except ValueError:
                raise ProtocolError(
                    f"keylock: {server} does not speak the keylock protocol"
                ) from None
            if not isinstance(rep, dict) or rep.get("ok") is not True:
                rep = rep if isinstance(rep, dict) else {}
                code = rep.get("error")
                msg = str(rep.get("message", code))
                if code == "unauthenticated":
                    raise AuthError(
                        f"keylock: authentication refused by keylockd at {server}: {msg}",
                        code,
                    )
                if code == "limit_exceeded" or rep.get("id") is None:
                    raise ConnectionError(f"keylock: keylockd at {server}: {msg}", code)
                raise ProtocolError(f"keylock: hello refused by keylockd at {server}: {msg}")
            if tls:
                sock.setblocking(False)  # _tls.send_all bounds a write the daemon never drains
            else:
                sock.settimeout(self._request_timeout)  # bounds a sendall it never drains
        except Error:
            self._close_socket(sock)
            raise
        except (OSError, ValueError) as e:
            self._close_socket(sock)
            raise ConnectionError(f"keylock: cannot connect to keylockd at {server}: {e}") from None
        return sock, rep, rest

    def _handshake(self, sock: socket.socket, server: str, host: str) -> ssl.SSLSocket:
        """The TLS handshake on a fresh connection (bounded by connect_timeout, the socket's
        timeout). Raises ConnectionError saying it was TLS (the socket is closed then)."""
        name = self._server_hostname or host
        try:
            return self._ssl_context.wrap_socket(sock, server_hostname=name)
        except (OSError, ValueError) as e:
            if isinstance(e, ssl.SSLCertVerificationError):
                why = f"the server's certificate was refused for {name!r}: {e.verify_message}"
            elif isinstance(e, (ssl.SSLEOFError, ConnectionResetError)):
                why = f"the daemon closed the connection (is this its TLS port?): {e}"
            else:
                why = str(e) or type(e).__name__
            raise ConnectionError(
                f"keylock: TLS handshake with keylockd at {server} failed: {why}"
            ) from None

    def _connected(self, index: int, sock: socket.socket, rep: dict, rest: bytes) -> None:
        """An attempt at _servers[index] succeeded: the connection is the client's."""
        with self._mu:
            if self._closed:
                self._sock = None
            else:
                self._sock = sock
                self._reader.clear()
                self._state = _READY
                self._draining = False
                self._backoff.reset()
                self._reconnect_at = None
                self._down_since = None
                self._outage = False
                self._heard, self._ping_out = True, False
                if self._health_check_interval > 0:
                    self._health_at = time.monotonic() + self._health_check_interval
                self._current = index
                self._server_version = str(rep.get("version", ""))
                for call in self._table.take_queued():
                    self._submit_locked(call)
            self._state_cv.notify_all()
        if self._closed:
            self._close_socket(sock)
            return
        if rest:
            with self._rlock:  # before anything a caller may read after them
                self._feed(sock, rest)  # frames that came with the hello answer
        self._flush()

    def _connect_failed(self, cls: Type[Error], message: str, code: Optional[str]) -> None:
        with self._mu:
            self._last_error, self._last_error_cls = message, cls
            self._last_error_code = code
            if self._state == _CONNECTING:
                # First attempt (or first since fork / since the last failed first attempt):
                # report to everyone waiting for it, do not retry on our own.
                self._state = _IDLE
                for call in self._table.take_queued():
                    self._complete_locked(call, error=cls(message, code))
            else:
                self._schedule_reconnect_locked()
            self._state_cv.notify_all()

    def _schedule_reconnect_locked(self) -> None:
        self._reconnect_at = time.monotonic() + self._backoff.next()
        self._state = _RECONNECTING

    def _drop(self, sock: socket.socket, why: str, cls: Type[Error] = ConnectionError) -> None:
        """An established connection ended."""
        with self._mu:
            if self._sock is not sock:
                return
            self._sock = None
            self._reader.clear()
            self._out.clear()
            self._draining = False
            self._last_error = f"keylock: connection to keylockd at {self.server} lost: {why}"
            self._last_error_cls = cls
            self._last_error_code = None
            if self._down_since is None:
                self._down_since = time.monotonic()
            # The daemon released every lease of this connection. Those of lanes are lost too,
            # with their lanes: the daemon is most likely gone, and a lease that may be held
            # is one that nothing would renew or release.
            lanes = self._end_lanes_locked()
            for st in list(self._leases.held.values()):
                self._lose_locked(st, "connection_lost", self._last_error)
            for call, outcome in self._table.after_drop(time.monotonic()):
                if outcome == RESEND:
                    continue  # queued again: sent on the next connection with its wait left
                if outcome == WAIT_OVER:
                    error: Optional[Error] = ConnectionError(
                        f"keylock: {_label(_call_keys(call.fields))} not acquired within "
                        f"{call.wait:g} s, and not because it is busy: {self._last_error}"
                    )
                elif outcome == RELEASED:
                    self._complete_locked(call, {})
                    continue
                elif outcome == LEASE_LOST:
                    error = self._not_held_error(call.lease)
                else:
                    assert outcome == FAILED
                    error = cls(self._last_error)
                self._complete_locked(call, error=error)
            # Failover: the next round starts with the next daemon; the lost one comes last.
            self._next = (self._current + 1) % len(self._servers)
            if not self._closed:
                self._schedule_reconnect_locked()
        for lane in lanes:
            lane.shutdown()
        self._close_socket(sock)

    def _close_socket(self, sock: Optional[socket.socket]) -> None:
        if sock is None:
            return
        _shutdown(sock)
        with self._wlock, self._tls_lock:  # no write or SSL call uses it while it closes
            try:
                sock.close()
            except OSError:
                pass


def _send_all(sock: socket.socket, data: bytes) -> None:
    """sock.sendall(data), in one write(2) when the socket buffer takes it all, as it almost
    always does for frames: on a socket with a timeout, sendall polls before every send, a
    second system call each time. The rest, if any, goes by sendall, bounded by the socket's
    timeout (socket.timeout, an OSError, when the peer does not read)."""
    try:
        sent = os.write(sock.fileno(), data)
    except BlockingIOError:
        sent = 0
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])


def _shutdown(sock: socket.socket) -> None:
    """Ends the connection both ways, so that a thread polling or reading it sees the end. On
    an SSLSocket too this is the TCP shutdown: SSLSocket.shutdown would also detach the SSL
    object, and a later read would return the raw records as if they were frames."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass


# ---- fork safety and the default client ---------------------------------------------------

_clients: "weakref.WeakSet[Client]" = weakref.WeakSet()
_fork_lock = threading.Lock()


def _after_fork_in_child() -> None:
    global _fork_lock, _default_lock
    _fork_lock = threading.Lock()
    _default_lock = threading.Lock()
    for client in list(_clients):
        try:
            client._reset_after_fork()
        except Exception:  # pragma: no cover - never break the child's fork
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

_default: Optional[Client] = None
_default_lock = threading.Lock()


def default_client() -> Client:
    """The process-wide Client that ``lock_decorator`` uses when given none: made on first use
    from $KEYLOCK_SERVER, $KEYLOCK_AUTH, $KEYLOCK_USER and the $KEYLOCK_TLS_* variables (see
    Client). Fork-safe like every Client."""
    global _default
    client = _default
    if client is None:
        with _default_lock:
            if _default is None:
                _default = Client()
            client = _default
    return client
