"""The Python client's pure pieces, without a daemon: frame reader, deadline heap, backoff."""

import random

from keylock._core import Backoff, DeadlineHeap, FrameReader


def test_frame_reader_splits_across_reads_strips_cr_and_skips_empty_lines():
    r = FrameReader(64)
    assert r.feed(b'{"id":1}\r\n\n{"id"') == ([{"id": 1}], None)
    assert r.buffered == 5  # the partial frame waits for the next read
    assert r.feed(b':2}\n{"id":3}\n') == ([{"id": 2}, {"id": 3}], None)
    assert r.buffered == 0


def test_frame_reader_returns_the_frames_before_a_bad_one_with_the_error():
    r = FrameReader(64)
    frames, error = r.feed(b'{"id":1}\n[1,2]\n{"id":3}\n')
    assert frames == [{"id": 1}]
    assert "undecodable frame" in error and "not an object" in error
    frames, error = FrameReader(64).feed(b"{nope\n")
    assert frames == [] and "undecodable frame" in error


def test_frame_reader_refuses_a_partial_frame_over_its_limit_not_a_complete_one():
    r = FrameReader(8)
    assert r.feed(b'{"k":"' + b"x" * 20 + b'"}\n') == ([{"k": "x" * 20}], None)
    frames, error = r.feed(b"y" * 9)
    assert frames == [] and error == "reply frame longer than 8 bytes"
    r.clear()
    assert r.buffered == 0 and r.feed(b"{}\n") == ([{}], None)


def test_deadline_heap_yields_due_live_entries_in_order_and_skips_stale_ones():
    current = {"a": 10.0, "b": 30.0, "c": 20.0}  # each owner's current time
    heap = DeadlineHeap(lambda when, kind, ref: current.get(ref) == when)
    heap.push(5.0, 1, "a")  # stale: "a" has moved to 10
    heap.push(10.0, 1, "a")
    heap.push(30.0, 2, "b")
    heap.push(20.0, 1, "c")
    heap.push(20.0, 2, "c")  # same time, other kind: pushed second, comes second
    assert heap.earliest() == 10.0  # the stale top was dropped
    assert list(heap.pop_due(9.0)) == []
    assert list(heap.pop_due(25.0)) == [(10.0, 1, "a"), (20.0, 1, "c"), (20.0, 2, "c")]
    del current["b"]  # its owner went away
    assert heap.earliest() is None
    assert len(heap) == 0


def test_backoff_draws_from_the_upper_half_of_a_doubling_capped_ceiling_and_resets():
    b = Backoff(0.1, 1.0, random.Random(1234))
    for ceiling in (0.1, 0.2, 0.4, 0.8, 1.0, 1.0):
        d = b.next()
        assert ceiling / 2 <= d <= ceiling, (ceiling, d)
    b.reset()
    assert 0.05 <= b.next() <= 0.1
