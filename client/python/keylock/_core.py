"""The client's pure pieces: no sockets, no threads, no clock of their own.

Client (client.py) is the glue: it feeds what it reads to a FrameReader, keeps its requests in
a CallTable (the multiplexer: request ids, frames, what is on the wire and what waits for a
connection, and what becomes of each when a connection ends), keeps its leases in a LeaseBook
(the lease and renewal manager: when each is renewed and when it runs out here, over a
DeadlineHeap, and the reentrant holds), and asks a Backoff how long to wait before
reconnecting. Each is unit-tested without a daemon in tests/test_core.py.
"""

import heapq
import itertools
import json
import math
import random
from typing import Any, Callable, Dict, FrozenSet, Iterable, Iterator, List, Optional, Tuple

from .errors import NotHeld, ReentrancyError

_decode = json.JSONDecoder().decode
# One encoder for every frame: json.dumps with arguments builds a new one per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"))
json_str = json.encoder.encode_basestring_ascii  # a str as a JSON string, in C


def encode(msg: Dict[str, Any]) -> bytes:
    """A frame: ``msg`` as one line of compact JSON."""
    return (_ENCODER.encode(msg) + "\n").encode("ascii")


def members(fields: Dict[str, Any]) -> str:
    """``fields`` as the members of a JSON object, without the braces."""
    return _ENCODER.encode(fields)[1:-1]


def one_key_members(key: str, ttl_ms: int, limit: int, shared: bool) -> str:
    """The members of a one-key acquire without its wait, encoded by hand (the hot path); the
    same text as members() of those fields. The default mode is not sent: older daemons know
    no mode."""
    body = f'"key":{json_str(key)},"ttl_ms":{ttl_ms},"limit":{limit}'
    return body + ',"mode":"shared"' if shared else body


def noreply_release(key: str, token: int, rid: int) -> bytes:
    """The frame of a release with noreply, as request ``rid``."""
    return (
        f'{{"op":"release","id":{rid},"key":{json_str(key)},"token":{int(token)},'
        '"noreply":true}\n'.encode("ascii")
    )


class FrameReader:
    """Splits the daemon's byte stream into its newline-delimited JSON frames (PROTOCOL.md
    "Framing"). Empty lines are skipped and a trailing CR is stripped."""

    def __init__(self, max_frame_bytes: int) -> None:
        self._max = max_frame_bytes
        self._buf = b""

    def feed(self, data: bytes) -> Tuple[List[dict], Optional[str]]:
        """Returns the frames completed by ``data``, decoded, and an error that breaks the
        stream (None if none). On an error, the frames before the bad one are still returned:
        they were sent, and the caller acts on them before it drops the connection."""
        lines = (self._buf + data).split(b"\n")
        self._buf = lines.pop()
        frames: List[dict] = []
        for line in lines:
            line = line.strip(b"\r")
            if not line:
                continue
            try:
                frame = _decode(line.decode("utf-8"))  # UnicodeDecodeError is a ValueError
                if not isinstance(frame, dict):
                    raise ValueError("not an object")
            except ValueError as e:
                return frames, f"undecodable frame from the daemon: {e}"
            frames.append(frame)
        if len(self._buf) > self._max:
            return frames, f"reply frame longer than {self._max} bytes"
        return frames, None

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def clear(self) -> None:
        self._buf = b""


class DeadlineHeap:
    """Timed work by (when, kind, ref), earliest first, ties in the order pushed.

    Entries are never removed early (lazy deletion): the owner moves its time instead, and
    ``live(when, kind, ref)`` tells whether an entry is still the owner's current one. So that
    stale entries cannot pile up (a tight acquire loop with a long ttl leaves two per lease),
    the heap drops them all whenever it has doubled since the last sweep: amortised O(1) per
    push, and never more than about twice the live entries plus ``MIN_SWEEP``."""

    MIN_SWEEP = 64

    def __init__(self, live: Callable[[float, int, Any], bool]) -> None:
        self._live = live
        self._heap: List[Tuple[float, int, int, Any]] = []
        self._seq = itertools.count()
        self._sweep_at = self.MIN_SWEEP

    def push(self, when: float, kind: int, ref: Any) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), kind, ref))
        if len(self._heap) >= self._sweep_at:
            self._heap = [e for e in self._heap if self._live(e[0], e[2], e[3])]
            heapq.heapify(self._heap)
            self._sweep_at = max(self.MIN_SWEEP, 2 * len(self._heap))

    def earliest(self) -> Optional[float]:
        """The time of the earliest live entry; stale entries on top are dropped."""
        while self._heap:
            when, _, kind, ref = self._heap[0]
            if self._live(when, kind, ref):
                return when
            heapq.heappop(self._heap)
        return None

    def pop_due(self, now: float) -> Iterator[Tuple[float, int, Any]]:
        """Takes out, in order, every live entry due at or before ``now``. An entry pushed
        while iterating is seen if it is due too."""
        while self._heap and self._heap[0][0] <= now:
            when, _, kind, ref = heapq.heappop(self._heap)
            if self._live(when, kind, ref):
                yield when, kind, ref

    def __len__(self) -> int:
        return len(self._heap)

    def clear(self) -> None:
        self._heap.clear()


class Backoff:
    """Reconnect backoff: a delay drawn from the upper half of a ceiling that starts at
    ``initial`` and doubles after each draw, up to ``maximum``."""

    def __init__(self, initial: float, maximum: float, rng: Optional[random.Random] = None) -> None:
        self._initial = initial
        self._max = maximum
        self._ceiling = initial
        self._rng = rng if rng is not None else random.Random()

    def reset(self) -> None:
        self._ceiling = self._initial

    def next(self) -> float:
        high = self._ceiling
        self._ceiling = min(high * 2, self._max)
        return self._rng.uniform(high / 2, high)


# What becomes of a call on the wire of a connection that ended (CallTable.after_drop).
RESEND = "resend"  # an acquire with wait left: the daemon dropped it; it goes out again
WAIT_OVER = "wait_over"  # an acquire whose wait ran out meanwhile: an outage, not contention
RELEASED = "released"  # a release: the daemon dropped the lease with the connection
LEASE_LOST = "lease_lost"  # an extend: its lease went with the connection
FAILED = "failed"  # any other request: its answer will never come


class CallTable:
    """The request multiplexer's book. It numbers requests, makes their frames, and knows which
    calls are on the wire (``sent``, by request id, awaiting their answer) and which wait for a
    connection that may carry them (``queued``, in order). When a connection ends it decides
    what becomes of each call that was on it (after_drop).

    Calls are duck-typed, as client.py's _Call: ``op``, ``fields`` (and ``members``, their
    encoding, made once), ``id``, ``state``, ``sent_at``, ``wait_until``, ``done`` and ``user``
    (False for the client's own requests: renewals, cancels, heartbeats)."""

    QUEUED = "queued"
    SENT = "sent"

    def __init__(self) -> None:
        self.sent: Dict[int, Any] = {}
        self.queued: List[Any] = []
        self._next_id = 1

    def take_id(self) -> int:
        rid = self._next_id
        self._next_id += 1
        return rid

    def send(self, call: Any, now: float) -> bytes:
        """Puts ``call`` on the wire under a new id and returns its frame. An acquire with a
        wait asks only for what is left of it at ``now`` (a re-sent one waits no longer)."""
        call.id = self.take_id()
        if call.members is None:
            call.members = members(call.fields)
        body = call.members
        if call.wait_until is not None:
            wait_ms = max(0, int(math.ceil((call.wait_until - now) * 1000)))
            body = f'{body},"wait_ms":{wait_ms}' if body else f'"wait_ms":{wait_ms}'
        call.state = self.SENT
        call.sent_at = now
        self.sent[call.id] = call
        sep = "," if body else ""
        return f'{{"op":"{call.op}","id":{call.id}{sep}{body}}}\n'.encode("ascii")

    def noreply_release(self, key: str, token: int) -> bytes:
        """The frame of a release with noreply. It has an id for a daemon that predates
        noreply; that answer matches no call."""
        return noreply_release(key, token, self.take_id())

    def queue(self, call: Any) -> None:
        call.state = self.QUEUED
        self.queued.append(call)

    def answered(self, rid: Any) -> Optional[Any]:
        """The call the answer with id ``rid`` is for, taken off the wire; None for an answer
        to nothing (a call given up on, a noreply release)."""
        return self.sent.pop(rid, None)

    def forget(self, call: Any) -> None:
        """Takes ``call`` out, wherever it is: its answer, if one comes, matches nothing."""
        if call.state == self.QUEUED:
            try:
                self.queued.remove(call)
            except ValueError:
                pass
        else:
            self.sent.pop(call.id, None)

    def take_queued(self) -> List[Any]:
        queued, self.queued = self.queued, []
        return queued

    def take_all(self) -> List[Any]:
        """Every call, on the wire (in id order) then queued, and the table empty."""
        calls = [self.sent[rid] for rid in sorted(self.sent)] + self.queued
        self.sent = {}
        self.queued = []
        return calls

    def awaiting_acquire(self) -> bool:
        """Whether an acquire on the wire awaits its answer (a grant may take long)."""
        return any(
            c.op == "acquire" and c.state == self.SENT and not c.done for c in self.sent.values()
        )

    def after_drop(self, now: float) -> List[Tuple[Any, str]]:
        """The connection that carried ``sent`` ended: what becomes of each of its calls, in
        id order (RESEND, WAIT_OVER, RELEASED, LEASE_LOST, FAILED). Acquires to re-send are
        queued again ahead of the calls that were queued already, in their order; every other
        call leaves the table, and done and internal ones are not reported."""
        outcomes: List[Tuple[Any, str]] = []
        resend: List[Any] = []
        for rid in sorted(self.sent):
            call = self.sent[rid]
            if call.done or not call.user:
                continue  # given up on, or the client's own (renewals, cancels, heartbeats)
            if call.op == "acquire":
                if call.wait_until is not None and call.wait_until <= now:
                    outcomes.append((call, WAIT_OVER))
                else:
                    call.state = self.QUEUED
                    resend.append(call)
                    outcomes.append((call, RESEND))
            elif call.op == "release":
                outcomes.append((call, RELEASED))
            elif call.op == "extend" and getattr(call, "lease", None) is not None:
                outcomes.append((call, LEASE_LOST))
            else:
                outcomes.append((call, FAILED))
        self.sent = {}
        self.queued = resend + self.queued
        return outcomes


def label(keys: Iterable[str]) -> str:
    """How messages name a lock: 'k' for one key, {'a', 'b'} for a set."""
    keys = list(keys)
    if len(keys) == 1:
        return repr(keys[0])
    return "{" + ", ".join(repr(k) for k in keys) + "}"


# Lease status, and the two kinds of a lease's deadline.
HELD, RELEASED, LOST = "held", "released", "lost"
RENEW, EXPIRY = 0, 1


# What the answer to an extend (a caller's extend, or an auto renewal) means for its lease:
# the client releases the lease, or reports the error and keeps it, but never forgets a lease
# the daemon still holds. The C++ client's extend_verdict (client/core/lease_book.hpp).
CONFIRMED = "confirmed"  # extended: its expiry and next renewal move (LeaseBook.confirmed)
REFUSED_KEPT = "refused_kept"  # a caller's extend refused but not not_held: reported, kept
RELEASE_AND_LOSE = "release_and_lose"  # a renewal refused so: released on the daemon, lost here
LOSE = "lose"  # not_held: the daemon no longer holds the lease


def judge_extend(ok: bool, not_held: bool, by_caller: bool) -> str:
    if ok:
        return CONFIRMED
    if not_held:
        return LOSE
    return REFUSED_KEPT if by_caller else RELEASE_AND_LOSE


class LeaseBook:
    """The lease and renewal manager's book. It holds the leases by token, knows when each is
    next renewed (ttl/3 after the daemon last confirmed it, for auto_extend leases) and when it
    runs out here (ttl after that), and keeps the reentrant holds by holder.

    Leases are duck-typed, as client.py's _LeaseState: ``token``, ``keys``, ``mode``,
    ``status``, ``ttl``, ``auto_extend``, ``renewing``, ``renew_at``, ``expires_at``,
    ``reentrant``, ``depth``, ``holder``, ``lost_message``."""

    def __init__(self) -> None:
        self.held: Dict[int, Any] = {}
        self._holds: Dict[Any, List[Tuple[FrozenSet[str], Any]]] = {}
        self._deadlines = DeadlineHeap(self._live)

    def _live(self, when: float, kind: int, token: int) -> bool:
        st = self.held.get(token)
        if st is None:
            return False
        return (st.renew_at if kind == RENEW else st.expires_at) == when

    def add(self, st: Any, since: float) -> None:
        """A lease granted at ``since`` (its ttl counts from there)."""
        self.held[st.token] = st
        self.confirmed(st, since, st.ttl)

    def confirmed(self, st: Any, since: float, ttl: float) -> None:
        """The daemon holds ``st`` until at least since + ttl: its local expiry moves there, and
        its next renewal to since + ttl/3."""
        st.expires_at = since + ttl
        self._deadlines.push(st.expires_at, EXPIRY, st.token)
        if st.auto_extend and not st.renewing:
            st.renew_at = since + max(ttl / 3, 0.001)
            self._deadlines.push(st.renew_at, RENEW, st.token)

    def forget(self, st: Any, status: str) -> None:
        """Takes ``st`` out: it is no longer renewed nor runs out here."""
        st.status = status
        st.renew_at = st.expires_at = None
        self.held.pop(st.token, None)

    def earliest(self) -> Optional[float]:
        return self._deadlines.earliest()

    def due(self, now: float) -> List[Tuple[int, Any]]:
        """(RENEW or EXPIRY, lease) for every deadline that came by ``now``, earliest first. A
        RENEW clears the lease's renew_at (the renewal is to be sent)."""
        out = []
        for _, kind, token in self._deadlines.pop_due(now):
            st = self.held[token]
            if kind == RENEW:
                st.renew_at = None
            out.append((kind, st))
        return out

    # ---- reentrant holds ----------------------------------------------------------------

    def enter_held(self, holder: Any, keys: FrozenSet[str], mode: str) -> Optional[Any]:
        """A reentrant acquire by ``holder``: its lease over exactly ``keys`` with one more
        hold, or None when no lease of this holder shares a key with them. Raises
        ReentrancyError on a mode or set mismatch, NotHeld when the held lease was lost."""
        for held_keys, st in self._holds.get(holder, ()):
            if held_keys == keys:
                if st.mode != mode:
                    raise ReentrancyError(
                        f"keylock: cannot nest a {mode} hold of {label(st.keys)} inside "
                        f"this thread's {st.mode} hold of it"
                    )
                if st.status == LOST:
                    raise NotHeld(
                        f"keylock: the enclosing hold of {label(st.keys)} was lost: "
                        f"{st.lost_message}"
                    )
                st.depth += 1
                return st
            if held_keys & keys:
                raise ReentrancyError(
                    f"keylock: cannot nest an acquire of {label(sorted(keys))} inside this "
                    f"thread's hold of {label(st.keys)}: nested sets of keys must be equal"
                )
        return None

    def add_hold(self, holder: Any, keys: FrozenSet[str], st: Any) -> None:
        """``st``, just granted to a reentrant acquire, is ``holder``'s first hold of it."""
        st.holder = holder
        self._holds.setdefault(holder, []).append((keys, st))

    def leave_held(self, st: Any) -> bool:
        """Ends one hold of ``st``. True when it was the last (or only) one: the lease is to be
        released. False while an enclosing hold of the same holder remains."""
        if not st.reentrant:
            return True
        st.depth -= 1
        if st.depth > 0:
            return False
        self.drop_holds(st)
        return True

    def drop_holds(self, st: Any) -> None:
        """Forgets every hold of ``st`` (its acquire was abandoned, or its last hold ended)."""
        held = self._holds.get(st.holder)
        if held is not None:
            held[:] = [entry for entry in held if entry[1] is not st]
            if not held:
                del self._holds[st.holder]
