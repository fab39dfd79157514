"""TLS for the keylock client: the context from settings or the environment, and the
non-blocking reads and writes of a connection's SSLSocket.

The client's I/O loop polls the socket's descriptor and reads whatever is there. Over TLS the
bytes on the descriptor are records, not frames: they are read through the SSLSocket, and every
byte OpenSSL has already decrypted must be taken before polling again (poll cannot see it).
An SSL object must not be used by two threads at once, so every SSL call on a connection runs
under that connection's lock; each call is non-blocking, so no thread waits on the lock for long.
"""
from __future__ import annotations

import os
import select
import socket
import ssl
import time
from typing import Mapping, Optional, Tuple

__all__ = ["make_context", "context_from_env", "recv_available", "send_all", "ENV_NAMES"]

# The environment variables, named as for the C++ client and the CLI.
ENV_NAMES = (
    "KEYLOCK_TLS",
    "KEYLOCK_TLS_CA",
    "KEYLOCK_TLS_CERT",
    "KEYLOCK_TLS_KEY",
    "KEYLOCK_TLS_SERVER_NAME",
)

# How much one read hands on before the loop looks at its other duties again (more only when
# OpenSSL still holds decrypted bytes, which poll would not report).
_READ_BATCH = 1 << 20
# A write that needs to read first (TLS renegotiation, never with TLS 1.3) cannot tell which
# thread reads the socket: it looks again this often.
_WANT_READ_SLICE = 0.05


def make_context(
    ca: Optional[str] = None, cert: Optional[str] = None, key: Optional[str] = None
) -> ssl.SSLContext:
    """A client context that verifies the server against ``ca`` (a PEM bundle; None: the
    system's CAs) and its name, speaks TLS 1.2 or later, and presents ``cert`` (with ``key``,
    or the key inside ``cert``) when given: mutual TLS. Raises ValueError naming the file that
    could not be loaded."""
    try:
        ctx = ssl.create_default_context(cafile=ca or None)
    except (OSError, ssl.SSLError) as e:
        raise ValueError(f"keylock: cannot load the TLS CA bundle {ca!r}: {e}") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert:
        try:
            ctx.load_cert_chain(cert, key or None)
        except (OSError, ssl.SSLError) as e:
            raise ValueError(
                f"keylock: cannot load the TLS client certificate {cert!r} (key {key!r}): {e}"
            ) from None
    return ctx


def context_from_env(
    environ: Mapping[str, str] = os.environ,
) -> Tuple[Optional[ssl.SSLContext], Optional[str]]:
    """(context, server name) from the environment: a context when $KEYLOCK_TLS_CA is set or
    $KEYLOCK_TLS is "1" (make_context with $KEYLOCK_TLS_CA, $KEYLOCK_TLS_CERT,
    $KEYLOCK_TLS_KEY), else None; the server name is $KEYLOCK_TLS_SERVER_NAME, None when unset
    or empty. Raises ValueError as make_context does."""
    ca = environ.get("KEYLOCK_TLS_CA") or None
    if ca is None and environ.get("KEYLOCK_TLS") != "1":
        return None, None
    ctx = make_context(ca, environ.get("KEYLOCK_TLS_CERT"), environ.get("KEYLOCK_TLS_KEY"))
    return ctx, environ.get("KEYLOCK_TLS_SERVER_NAME") or None


def recv_available(sock: ssl.SSLSocket, lock) -> Tuple[bytes, bool]:
    """Reads what the non-blocking TLS connection has now: (bytes, eof). Takes everything
    OpenSSL already decrypted, so that the next poll of the descriptor is the whole truth.
    Raises BlockingIOError when there is nothing yet (not even the end), ssl.SSLError /
    OSError when the connection failed."""
    chunks = []
    total = 0
    while True:
        try:
            with lock:
                data = sock.recv(65536)
                left = sock.pending()
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            break
        if not data:
            return b"".join(chunks), True
        chunks.append(data)
        total += len(data)
        if total >= _READ_BATCH and not left:
            break  # the rest, if any, is still on the descriptor: poll reports it
    if not chunks:
        raise BlockingIOError("nothing to read yet")
    return b"".join(chunks), False


def send_all(sock: ssl.SSLSocket, data: bytes, lock, timeout: float) -> None:
    """Writes all of ``data`` on the non-blocking TLS connection within ``timeout`` seconds, as
    sendall does on a plain socket with a timeout. Raises socket.timeout when the daemon does
    not drain it in time, OSError / ssl.SSLError when the connection failed."""
    view = memoryview(data)
    deadline = time.monotonic() + timeout
    while view:
        try:
            with lock:
                # A write that must be retried is retried with the same bytes, as OpenSSL
                # requires (the view only moves after a write that took them).
                sent = sock.send(view)
            view = view[sent:]
            continue
        except ssl.SSLWantWriteError:
            events, slice_ = select.POLLOUT, None
        except ssl.SSLWantReadError:
            events, slice_ = select.POLLIN, _WANT_READ_SLICE
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout(f"TLS write made no progress for {timeout:g} s")
        poller = select.poll()
        poller.register(sock.fileno(), events | select.POLLERR | select.POLLHUP)
        wait = left if slice_ is None else min(left, slice_)
        poller.poll(int(wait * 1000) + 1)
