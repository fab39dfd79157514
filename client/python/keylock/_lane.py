"""A calling thread's own connection to keylockd: the socket side of Client's
``thread_connections`` (client.py decides when a lane is used and keeps its lease).

The shared connection serves every thread through one socket, which costs each call locks, a
hand-off between threads and a frame dispatcher. A lane carries one thread's acquire and, once
granted, that lease's release: the thread writes its request and reads its own answer
(Lane.reply), with nothing shared in between. The lease's renewals and extends go over the shared
connection (any connection may extend or release a lease: PROTOCOL.md), so the client's I/O
thread never touches a lane.

A Lane is used by its thread only, but for ``send`` (under ``wlock``: a release may come from
another thread) and ``shutdown`` (any thread ends it, so that its reader wakes).
"""
import os
import re
import socket
import struct
import threading
import time
from typing import Callable, Optional

from ._core import _decode
from .errors import ProtocolError


class LaneDead(Exception):
    """The lane's connection ended or stopped answering: the daemon dropped (or will drop, once
    it sees the close) every request and lease of it. ``str()`` says why."""


class LaneTimeout(Exception):
    """No answer to the request within its bound, while the daemon answered pings."""


# A wait longer than this counts as this much in Lane.recent (a held lock's waiter).
_WAIT_CAP = 0.05
# A grant, as keylockd writes it: decoded without the JSON decoder (the hot path).
_GRANT = re.compile(rb'\{"id":(\d+),"ok":true,"token":(\d+),"ttl_ms":(\d+)\}\r?\Z')


def _timeval(seconds: float) -> bytes:
    whole = int(seconds)
    return struct.pack("ll", whole, int((seconds - whole) * 1e6))


class Lane:
    """One thread's connection. ``lease`` is the lease acquired on it and still held (at most
    one: client.py takes a lane only while it holds none, so an acquire interrupted on a lane
    can end the lane without losing anything else). ``dead``: ended; never used again."""

    __slots__ = ("sock", "fd", "buf", "max_frame", "next_id", "wlock", "lease", "dead",
                 "recent", "unsynced", "__weakref__")

    def __init__(self, sock: socket.socket, rest: bytes, read_timeout: float,
                 write_timeout: float, max_frame: int) -> None:
        # Blocking, each read and write bounded by the kernel (SO_RCVTIMEO, SO_SNDTIMEO): a read
        # is one system call, where a socket timeout makes Python poll(2) before each.
        sock.settimeout(None)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(read_timeout))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(write_timeout))
        self.sock = sock
        self.fd = sock.fileno()
        self.buf = rest
        self.max_frame = max_frame
        self.next_id = 1
        self.wlock = threading.Lock()
        self.lease = None
        self.dead = False
        self.recent = 0.0  # moving average of the wait for an answer (capped at _WAIT_CAP)
        # The frame of the last noreply release sent here, until an answer read here shows
        # the daemon has handled it (client.py sends it again ahead of shared-connection
        # requests meanwhile).
        self.unsynced: Optional[bytes] = None

    def take_id(self) -> int:
        rid = self.next_id
        self.next_id += 1
        return rid

    def send(self, data: bytes) -> None:
        """Writes ``data`` whole. Raises OSError (a timeout too) when the connection fails."""
        with self.wlock:
            view = memoryview(data)
            while view:
                view = view[os.write(self.fd, view):]

    def frame(self) -> Optional[dict]:
        """The next whole frame read, decoded, or None. Raises ProtocolError on a frame that
        does not decode or on a line longer than the bound."""
        while True:
            end = self.buf.find(b"\n")
            if end < 0:
                if len(self.buf) > self.max_frame:
                    raise ProtocolError(
                        f"keylock: reply frame longer than {self.max_frame} bytes"
                    )
                return None
            line, self.buf = self.buf[:end], self.buf[end + 1:]
            grant = _GRANT.match(line)
            if grant is not None:
                return {"id": int(grant[1]), "ok": True, "token": int(grant[2]),
                        "ttl_ms": int(grant[3])}
            line = line.strip(b"\r")
            if not line:
                continue
            try:
                rep = _decode(line.decode("utf-8"))
            except ValueError as e:
                raise ProtocolError(f"keylock: undecodable frame from the daemon: {e}") from None
            if not isinstance(rep, dict):
                raise ProtocolError("keylock: undecodable frame from the daemon: not an object")
            return rep

    def read(self, wait: bool = True) -> bool:
        """Reads what came, waiting up to the read timeout (``wait`` False: not at all):
        whether anything did. Raises LaneDead when the daemon closed the connection or it
        failed."""
        try:
            if wait:
                data = os.read(self.fd, 65536)
            else:
                data = self.sock.recv(65536, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except OSError as e:
            raise LaneDead(f"read failed: {e}") from None
        if not data:
            raise LaneDead("closed by the daemon")
        self.buf += data
        return True

    def reply(self, rid: int, health: float, deadline: Optional[float], spin: float = 0.0,
              clock: Callable[[], float] = time.monotonic) -> dict:
        """Reads until the reply to request ``rid`` and returns it; other frames (pongs, events
        about leases released already) are skipped. With ``health`` > 0, a connection silent
        for ``health`` seconds is pinged, and one silent for another ``health`` is dead
        (LaneDead). Past ``deadline`` (monotonic; None: none), LaneTimeout.

        Spin (Client's ``spin``): while recent answers came within ``spin`` seconds, it first
        yields the CPU and reads without waiting, for up to ``spin``, before it sleeps in
        read(2): an answer from a daemon on another core is mostly there by then, and a
        sleeping thread's wake-up costs a VM about as much as the daemon's work."""
        start = heard = clock()
        got = 0.0  # when a read first brought something
        spin_until = start + spin if 0 < spin and self.recent <= spin else 0.0
        ping_out = False
        while True:
            rep = self.frame()
            while rep is not None:
                if rep.get("id") == rid:
                    took = min((got or clock()) - start, _WAIT_CAP)
                    self.recent = (7 * self.recent + took) / 8
                    return rep
                rep = self.frame()
            if spin_until:
                if clock() < spin_until:
                    os.sched_yield()
                    if self.read(wait=False):
                        got = got or clock()
                    continue
                spin_until = 0.0
            if self.read():
                heard, ping_out = clock(), False
                got = got or heard
                continue
            now = clock()
            if deadline is not None and now >= deadline:
                raise LaneTimeout()
            if health > 0 and now - heard >= health:
                if ping_out:
                    raise LaneDead(f"no reply to a health check within {health:g} s")
                try:
                    self.send(b'{"op":"ping","id":0}\n')
                except OSError as e:
                    raise LaneDead(f"write failed: {e}") from None
                heard, ping_out = now, True

    def shutdown(self) -> None:
        """Ends the connection both ways (any thread): the daemon frees what it held for it,
        and a read in progress returns."""
        self.dead = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self) -> None:
        """Ends the connection and closes the socket (its own thread, or nobody else's)."""
        self.shutdown()
        try:
            self.sock.close()
        except OSError:
            pass
