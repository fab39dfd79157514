"""keylock: Python client for keylockd, the lock server.

    import keylock

    client = keylock.Client("127.0.0.1:7400")
    with client.lock("report:monthly", ttl=30, wait=5) as lease:
        write_report(lease.token)
    with client.lock("config:prices", shared=True):      # a read-write lock
        read_prices()
    with client.lock_all(["acct:17", "acct:42"]):         # several keys at once
        transfer()

    @keylock.lock_decorator()
    def fetch_remote_thing(name): ...

Times are seconds (floats). See the "Python and Django" section of the keylock repository's
README.md. asyncio users want ``keylock.aio``, Django users ``keylock.django``.
"""
from .client import (
    DEFAULT_PORT,
    EXCLUSIVE,
    SHARED,
    CancelToken,
    Client,
    Holder,
    KeyInfo,
    Lease,
    LeaseLost,
    default_client,
)
from .decorator import MAX_KEY_BYTES, default_key, lock_decorator, locked_call
from .errors import (
    AuthError,
    Cancelled,
    Conflict,
    ConnectionError,
    Denied,
    Error,
    LimitExceeded,
    NotHeld,
    ProtocolError,
    ReentrancyError,
    Timeout,
)

__version__ = "0.1.0"

__all__ = [
    "Client",
    "CancelToken",
    "Lease",
    "LeaseLost",
    "KeyInfo",
    "Holder",
    "default_client",
    "lock_decorator",
    "locked_call",
    "default_key",
    "MAX_KEY_BYTES",
    "DEFAULT_PORT",
    "EXCLUSIVE",
    "SHARED",
    "Error",
    "Timeout",
    "NotHeld",
    "ConnectionError",
    "ProtocolError",
    "AuthError",
    "Denied",
    "Cancelled",
    "LimitExceeded",
    "Conflict",
    "ReentrancyError",
]
