"""Django integration: the lock decorator served by keylockd, configured from settings.

    # settings.py
    KEYLOCK = {
        "SERVER": "127.0.0.1:7400",  # default: $KEYLOCK_SERVER, else 127.0.0.1:7400
                                     # a cluster: "a:7400,b:7400" or ["a:7400", "b:7400"]
        "AUTH": None,                # the daemon's secret, or USER's; default: $KEYLOCK_AUTH
        "USER": None,                # a user of the daemon's users_file; default: $KEYLOCK_USER
        "TTL": 30,                   # seconds; the lease is renewed while the function runs
        "WAIT": None,                # seconds to wait for the lock; None: until granted
        "TLS": {                     # TLS to the daemon's listen_tls port; default: $KEYLOCK_TLS_*
            "CA": "/etc/keylock/ca.pem",         # None: the system's CAs
            "CERT": "/etc/keylock/client.pem",   # mutual TLS: our certificate ...
            "KEY": "/etc/keylock/client.key",    # ... and its key
            "SERVER_NAME": "keylock.internal",   # None: the host of the SERVER address
        },
    }

    # views.py: the one-import switch from a django-redis cache.lock decorator
    from keylock.django import lock_decorator

    @lock_decorator()
    def fetch_remote_thing(name): ...

One Client per process, made on first use (so in each uWSGI/gunicorn worker, after the fork)
and shared by its threads. With several servers (a cluster's daemons) the client fails over
from one to the next as keylock.Client does. Optional settings: "NAME" (shown by ``inspect``; default
"django:HOSTNAME"), "CONNECT_TIMEOUT" and "REQUEST_TIMEOUT" (seconds), "THREAD_CONNECTIONS"
(Client's ``thread_connections``: a connection of its own for each of up to that many threads
that lock again and again; default 16, 0: none). Changing the KEYLOCK
setting (``override_settings`` in tests) closes the client; the next call makes a new one.

TLS: "TLS" (a dict of the optional keys above; ``{}`` is TLS with the system's CAs) or
"SSL_CONTEXT" (an ssl.SSLContext made by the site, with "TLS": {"SERVER_NAME": ...} beside it
if needed), not both; ``False`` for either forces plain TCP. Without them the client follows
the KEYLOCK_TLS_* environment variables, as keylock.Client does. A file that cannot be loaded,
or an unknown key in "TLS", is ImproperlyConfigured. An op the USER may not do raises
keylock.Denied.
"""
from __future__ import annotations

import os
import socket
import ssl
import threading
from typing import Any, Callable, Optional

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed

from . import decorator as _decorator
from ._tls import make_context
from .client import Client

__all__ = ["get_client", "lock_decorator", "lock", "lock_all", "reset"]

_KNOWN = {
    "SERVER", "AUTH", "USER", "TTL", "WAIT", "NAME", "CONNECT_TIMEOUT", "REQUEST_TIMEOUT", "TLS",
    "SSL_CONTEXT", "THREAD_CONNECTIONS",
}
_KNOWN_TLS = {"CA", "CERT", "KEY", "SERVER_NAME"}
_UNSET: Any = object()

_client: Optional[Client] = None
_client_lock = threading.Lock()


def _config() -> dict:
    cfg = getattr(settings, "KEYLOCK", None) or {}
    if not isinstance(cfg, dict):
        raise ImproperlyConfigured("settings.KEYLOCK must be a dict")
    unknown = set(cfg) - _KNOWN
    if unknown:
        raise ImproperlyConfigured(
            f"settings.KEYLOCK has unknown keys {sorted(unknown)}; known: {sorted(_KNOWN)}"
        )
    return cfg


def _tls_kwargs(cfg: dict) -> dict:
    """Client's ssl_context and server_hostname from "TLS" and "SSL_CONTEXT"; {} when neither
    is set (the environment decides). Raises ImproperlyConfigured."""
    tls, context = cfg.get("TLS"), cfg.get("SSL_CONTEXT")
    if tls is None and context is None:
        return {}
    if tls is False or context is False:
        return {"ssl_context": False}
    tls = tls if tls is not None else {}
    if not isinstance(tls, dict):
        raise ImproperlyConfigured('settings.KEYLOCK["TLS"] must be a dict')
    unknown = set(tls) - _KNOWN_TLS
    if unknown:
        raise ImproperlyConfigured(
            f'settings.KEYLOCK["TLS"] has unknown keys {sorted(unknown)}; '
            f"known: {sorted(_KNOWN_TLS)}"
        )
    if context is not None:
        if not isinstance(context, ssl.SSLContext):
            raise ImproperlyConfigured('settings.KEYLOCK["SSL_CONTEXT"] must be an ssl.SSLContext')
        if set(tls) - {"SERVER_NAME"}:
            raise ImproperlyConfigured(
                'settings.KEYLOCK: give "SSL_CONTEXT" or the files of "TLS", not both'
            )
    else:
        try:
            context = make_context(tls.get("CA"), tls.get("CERT"), tls.get("KEY"))
        except ValueError as e:
            raise ImproperlyConfigured(f"settings.KEYLOCK: {e}") from e
    return {"ssl_context": context, "server_hostname": tls.get("SERVER_NAME")}


def get_client() -> Client:
    """This process's Client, made from settings.KEYLOCK on first use (thread-safe). The Client
    is fork-safe: a forked worker gets its own connection on its first call."""
    global _client
    client = _client
    if client is None:
        with _client_lock:
            if _client is None:
                cfg = _config()
                kwargs = {}
                if cfg.get("CONNECT_TIMEOUT") is not None:
                    kwargs["connect_timeout"] = cfg["CONNECT_TIMEOUT"]
                if cfg.get("REQUEST_TIMEOUT") is not None:
                    kwargs["request_timeout"] = cfg["REQUEST_TIMEOUT"]
                if cfg.get("THREAD_CONNECTIONS") is not None:
                    kwargs["thread_connections"] = cfg["THREAD_CONNECTIONS"]
                kwargs.update(_tls_kwargs(cfg))
                try:
                    _client = Client(
                        server=cfg.get("SERVER"),
                        auth=cfg.get("AUTH"),
                        user=cfg.get("USER"),
                        name=cfg.get("NAME") or f"django:{socket.gethostname()}",
                        **kwargs,
                    )
                except ValueError as e:  # a malformed SERVER (address or list)
                    raise ImproperlyConfigured(f"settings.KEYLOCK: {e}") from e
            client = _client
    return client


def reset() -> None:
    """Closes this process's client; the next call makes a new one from the settings."""
    global _client
    with _client_lock:
        client, _client = _client, None
    if client is not None:
        client.close()


def _on_setting_changed(setting: str, **kwargs: Any) -> None:
    if setting == "KEYLOCK":
        reset()


setting_changed.connect(_on_setting_changed, dispatch_uid="keylock.django.reset")


def _after_fork_in_child() -> None:
    # The client itself is fork-safe; only the lock guarding its creation is renewed here.
    global _client_lock
    _client_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _ttl(ttl: Optional[float]) -> float:
    return float(_config().get("TTL", 30.0)) if ttl is None else ttl


def _wait(wait: Any) -> Optional[float]:
    return _config().get("WAIT") if wait is _UNSET else wait


def lock_decorator(
    key_maker: Optional[_decorator.KeyMaker] = None,
    ttl: Optional[float] = None,
    wait: Any = _UNSET,
    limit: int = 1,
    client: Optional[Client] = None,
    *,
    shared: bool = False,
    reentrant: bool = False,
) -> Callable:
    """``keylock.lock_decorator`` bound to this process's client, with ``ttl`` and ``wait``
    defaulting to settings.KEYLOCK["TTL"] (30 s) and ["WAIT"] (None: until granted). Settings
    are read at call time, so decorating at import time is fine. Keys are as for
    keylock.lock_decorator: the function's qualified name plus str(args) + str(kwargs) (for a
    view, str(request) names the method and path), or key_maker(*args, **kwargs) (a str, or a
    list of str acquired all at once). ``shared`` and ``reentrant`` are
    keylock.lock_decorator's."""
    return _decorator.make_decorator(
        key_maker,
        lambda: (client or get_client(), _ttl(ttl), _wait(wait), limit),
        shared=shared,
        reentrant=reentrant,
    )


def lock(key: str, ttl: Optional[float] = None, wait: Any = _UNSET, limit: int = 1, **kwargs: Any):
    """``with keylock.django.lock("report:monthly") as lease:`` — Client.lock on this
    process's client with the settings' TTL and WAIT as defaults (``shared=True``,
    ``reentrant=True`` as for Client.lock)."""
    return get_client().lock(key, ttl=_ttl(ttl), wait=_wait(wait), limit=limit, **kwargs)


def lock_all(
    keys: Any, ttl: Optional[float] = None, wait: Any = _UNSET, limit: int = 1, **kwargs: Any
):
    """``with keylock.django.lock_all(["acct:17", "acct:42"]) as lease:`` — Client.lock_all on
    this process's client with the settings' TTL and WAIT as defaults."""
    return get_client().lock_all(keys, ttl=_ttl(ttl), wait=_wait(wait), limit=limit, **kwargs)
