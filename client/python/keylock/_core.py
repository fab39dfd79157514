"""The client's pure pieces: no sockets, no threads, no clock of their own.

Client (client.py) is the glue: its I/O thread feeds what it reads to a FrameReader, keeps the
leases' renewal and expiry times in a DeadlineHeap, and asks a Backoff how long to wait before
reconnecting. Each is unit-tested without a daemon in tests/test_core.py.
"""

import heapq
import itertools
import json
import random
from typing import Any, Callable, Iterator, List, Optional, Tuple

_decode = json.JSONDecoder().decode


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
    ``live(when, kind, ref)`` tells whether an entry is still the owner's current one."""

    def __init__(self, live: Callable[[float, int, Any], bool]) -> None:
        self._live = live
        self._heap: List[Tuple[float, int, int, Any]] = []
        self._seq = itertools.count()

    def push(self, when: float, kind: int, ref: Any) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), kind, ref))

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
