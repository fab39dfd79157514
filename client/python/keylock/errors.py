"""Exceptions of the keylock client.

Every error the client reports derives from :class:`keylock.Error`, which carries the daemon's
error code (``error.code``, the wire string such as ``"timeout"``) when the daemon sent one, and
``None`` for the client's own failures (connection, decoding). The classes mirror the C++
client's (include/keylock/client.hpp).

``keylock.ConnectionError`` and ``keylock.Timeout`` deliberately do not derive from the builtin
``ConnectionError``/``TimeoutError``: catch ``keylock.Error`` to catch everything keylock raises.
"""
from __future__ import annotations

from typing import Optional

__all__ = [
    "Error",
    "Timeout",
    "NotHeld",
    "ConnectionError",
    "ProtocolError",
    "AuthError",
    "Denied",
    "LimitExceeded",
    "Conflict",
    "ReentrancyError",
    "error_from_reply",
]


class Error(Exception):
    """Base class of every keylock error. ``code`` is the daemon's error code, or None."""

    def __init__(self, message: str, code: Optional[str] = None) -> None:
        super().__init__(message)
        self.code = code


class Timeout(Error):
    """acquire() was not granted within its ``wait`` (daemon code ``timeout``)."""


class NotHeld(Error):
    """release()/extend() of a lease that is no longer held: it expired, its renewal was
    refused, or its connection dropped (daemon code ``not_held``, or the client's own
    knowledge)."""


class ConnectionError(Error):  # noqa: A001 - the public name mirrors the C++ client
    """The daemon could not be reached, the connection dropped while the request was in flight,
    no reply came within ``request_timeout``, or the Client is closed."""


class ProtocolError(Error):
    """The daemon rejected the request as malformed (``bad_request``, ``unknown_op``,
    ``frame_too_large``; e.g. a key longer than the daemon's max_key_bytes), or sent a frame the
    client could not decode."""


class AuthError(Error):
    """The daemon requires a secret and refused ours, or does not know our ``user``
    (``unauthenticated``)."""


class Denied(Error):
    """The daemon knows who we are (``hello`` with ``user``) and that user lacks the permission
    this op needs on one of its keys, or on the server for ``stats`` and ``top`` (``denied``).
    Nothing was done; the connection stays open and usable."""


class LimitExceeded(Error):
    """A daemon limit was hit: keys, waiters per key, waiting acquires per connection
    (``limit_exceeded``)."""


class Conflict(Error):
    """acquire() named a ``limit`` other than the live key's limit (``conflict``)."""


class Cancelled(Error):
    """A waiting acquire was cancelled through its ``cancel`` token (CancelToken.cancel() from
    another thread). Nothing is held: the request was withdrawn on the daemon, and a grant that
    crossed the cancel is released at once. ``code`` is None."""


class ReentrancyError(Error):
    """A reentrant acquire (``reentrant=True``) that cannot nest inside what this thread already
    holds through this client: the same key in the other mode (shared inside exclusive or the
    reverse), or a set of keys that overlaps a held set without being equal to it. Nothing was
    sent to the daemon; ``code`` is None. Queueing instead would wait on ourselves."""


_BY_CODE = {
    "timeout": Timeout,
    "not_held": NotHeld,
    "conflict": Conflict,
    "limit_exceeded": LimitExceeded,
    "unauthenticated": AuthError,
    "denied": Denied,
    "bad_request": ProtocolError,
    "unknown_op": ProtocolError,
    "frame_too_large": ProtocolError,
    "shutting_down": ConnectionError,
}


def error_from_reply(reply: dict) -> Error:
    """The typed exception for an error reply. Unknown codes (a newer daemon) give a plain
    Error, as PROTOCOL.md asks."""
    code = reply.get("error")
    code = code if isinstance(code, str) else None
    message = reply.get("message")
    if not isinstance(message, str) or not message:
        message = "keylockd answered " + (code or "an error")
    return _BY_CODE.get(code or "", Error)(message, code)
