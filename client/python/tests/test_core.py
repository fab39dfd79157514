"""The Python client's pure pieces, without a daemon: frame reader, call table (the request
multiplexer), lease book (the lease and renewal manager), deadline heap, backoff."""

import json
import random

import pytest

from keylock._core import (
    CONFIRMED,
    LOSE,
    REFUSED_KEPT,
    RELEASE_AND_LOSE,
    EXPIRY,
    FAILED,
    HELD,
    LEASE_LOST,
    LOST,
    RELEASED,
    RENEW,
    RESEND,
    WAIT_OVER,
    Backoff,
    CallTable,
    DeadlineHeap,
    FrameReader,
    LeaseBook,
    judge_extend,
    members,
    one_key_members,
)
from keylock.errors import NotHeld, ReentrancyError


class Call:
    """What CallTable needs of a call (client.py's _Call has more)."""

    def __init__(self, op, fields, user=True, wait_until=None, lease=None):
        self.op, self.fields, self.user = op, fields, user
        self.members = None
        self.id = 0
        self.state = CallTable.QUEUED
        self.sent_at = 0.0
        self.wait_until = wait_until
        self.done = False
        self.lease = lease


def frame(data):
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    return json.loads(data)


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


def test_deadline_heap_sweeps_stale_entries_so_they_cannot_pile_up():
    current = {}
    heap = DeadlineHeap(lambda when, kind, ref: current.get(ref) == when)
    # One owner moving its time 10,000 times (a lease renewed, or a key acquired and released
    # in a loop): one live entry, and the rest stale, never due before the run ends.
    for i in range(10_000):
        current["a"] = 1000.0 + i
        heap.push(1000.0 + i, 1, "a")
    assert len(heap) <= DeadlineHeap.MIN_SWEEP
    # Live entries are all kept, in order.
    for ref in range(200):
        current[ref] = float(ref)
        heap.push(float(ref), 2, ref)
    assert len(heap) <= 2 * 201 + DeadlineHeap.MIN_SWEEP
    assert [ref for _, _, ref in heap.pop_due(199.0)] == list(range(200))
    assert heap.earliest() == 10_999.0


def test_backoff_draws_from_the_upper_half_of_a_doubling_capped_ceiling_and_resets():
    b = Backoff(0.1, 1.0, random.Random(1234))
    for ceiling in (0.1, 0.2, 0.4, 0.8, 1.0, 1.0):
        d = b.next()
        assert ceiling / 2 <= d <= ceiling, (ceiling, d)
    b.reset()
    assert 0.05 <= b.next() <= 0.1


def test_call_table_numbers_requests_and_makes_their_frames():
    t = CallTable()
    ping = Call("ping", {})
    assert frame(t.send(ping, now=5.0)) == {"op": "ping", "id": 1}
    acq = Call("acquire", {"key": "k\u00e9\"", "ttl_ms": 30000, "limit": 1}, wait_until=7.0)
    got = frame(t.send(acq, now=5.0))
    assert got == {"op": "acquire", "id": 2, "key": "k\u00e9\"", "ttl_ms": 30000, "limit": 1,
                   "wait_ms": 2000}
    assert frame(t.noreply_release("k", 9)) == {
        "op": "release", "id": 3, "key": "k", "token": 9, "noreply": True}
    assert t.sent == {1: ping, 2: acq} and ping.state == acq.state == CallTable.SENT
    # Sent again (after a drop), an acquire asks only for what is left of its wait.
    assert frame(t.send(acq, now=6.5))["wait_ms"] == 500
    assert frame(t.send(acq, now=9.0))["wait_ms"] == 0


def test_call_table_matches_answers_and_forgets_calls_given_up_on():
    t = CallTable()
    a, b, q = Call("ping", {}), Call("inspect", {"key": "k"}), Call("stats", {})
    t.send(a, 0.0)
    t.send(b, 0.0)
    t.queue(q)
    assert t.answered(a.id) is a and t.answered(a.id) is None  # an answer matches once
    t.forget(b)
    t.forget(q)
    assert t.answered(b.id) is None and t.sent == {} and t.queued == []


def test_call_table_after_a_drop_resends_acquires_with_wait_left_and_settles_the_rest():
    t = CallTable()
    earlier = Call("acquire", {"key": "q"})
    t.queue(earlier)  # waiting for a connection already
    rel = Call("release", {"key": "r", "token": 1})
    no_wait = Call("acquire", {"key": "a"})
    over = Call("acquire", {"key": "b"}, wait_until=10.0)
    left = Call("acquire", {"key": "c"}, wait_until=30.0)
    ext = Call("extend", {"key": "d"}, lease=object())
    ping = Call("ping", {})
    renewal = Call("extend", {"key": "e"}, user=False, lease=object())
    given_up = Call("acquire", {"key": "f"})
    given_up.done = True
    for c in (rel, no_wait, over, left, ext, ping, renewal, given_up):
        t.send(c, 0.0)
    outcomes = t.after_drop(now=20.0)
    assert outcomes == [
        (rel, RELEASED), (no_wait, RESEND), (over, WAIT_OVER), (left, RESEND),
        (ext, LEASE_LOST), (ping, FAILED),
    ]
    assert t.sent == {}
    # Re-sent acquires go out first, in their order, then those queued before the drop.
    assert t.queued == [no_wait, left, earlier]
    assert all(c.state == CallTable.QUEUED for c in t.queued)
    assert t.take_queued() == [no_wait, left, earlier] and t.queued == []


def test_call_table_awaiting_acquire_and_take_all():
    t = CallTable()
    assert not t.awaiting_acquire()
    ping, acq, queued = Call("ping", {}), Call("acquire", {"key": "k"}), Call("stats", {})
    t.send(ping, 0.0)
    assert not t.awaiting_acquire()
    t.send(acq, 0.0)
    assert t.awaiting_acquire()
    acq.done = True
    assert not t.awaiting_acquire()
    t.queue(queued)
    assert t.take_all() == [ping, acq, queued] and t.sent == {} and t.queued == []


class Lease:
    """What LeaseBook needs of a lease (client.py's _LeaseState has more)."""

    def __init__(self, token, ttl, keys=("k",), auto_extend=True, mode="exclusive",
                 reentrant=False):
        self.token, self.ttl, self.keys, self.mode = token, ttl, keys, mode
        self.auto_extend, self.reentrant = auto_extend, reentrant
        self.status = HELD
        self.renewing = False
        self.renew_at = self.expires_at = None
        self.depth = 1
        self.holder = None
        self.lost_message = ""


def test_lease_book_renews_at_a_third_of_the_ttl_and_expires_at_the_ttl():
    book = LeaseBook()
    a = Lease(1, ttl=30.0)
    fixed = Lease(2, ttl=6.0, auto_extend=False)
    book.add(a, since=100.0)
    book.add(fixed, since=100.0)
    assert book.earliest() == 106.0  # fixed's expiry; a is renewed at 110
    assert book.due(105.9) == []
    assert book.due(110.0) == [(EXPIRY, fixed), (RENEW, a)]
    assert a.renew_at is None  # its renewal is to be sent
    # The daemon confirms a's renewal, sent at 110: it lasts until 140, renewed again at 120.
    book.confirmed(a, since=110.0, ttl=30.0)
    assert book.due(119.9) == [] and book.earliest() == 120.0
    # The first expiry (130) was superseded by the confirmation: only the new ones come.
    assert book.due(135.0) == [(RENEW, a)]


def test_lease_book_forgets_a_lease_with_its_deadlines():
    book = LeaseBook()
    a = Lease(1, ttl=3.0)
    book.add(a, since=0.0)
    book.forget(a, RELEASED)
    assert a.status == RELEASED and book.held == {}
    assert book.due(1000.0) == [] and book.earliest() is None


def test_lease_book_counts_reentrant_holds_and_refuses_mismatched_nesting():
    book = LeaseBook()
    me, other = ("thread", 1), ("thread", 2)
    ab = frozenset({"a", "b"})
    assert book.enter_held(me, ab, "exclusive") is None  # no hold yet: the daemon is asked
    st = Lease(7, ttl=30.0, keys=("a", "b"), reentrant=True)
    book.add(st, 0.0)
    book.add_hold(me, ab, st)
    assert book.enter_held(me, ab, "exclusive") is st and st.depth == 2
    assert book.enter_held(other, ab, "exclusive") is None  # another holder queues as usual
    with pytest.raises(ReentrancyError, match="shared hold"):
        book.enter_held(me, ab, "shared")
    with pytest.raises(ReentrancyError, match="must be equal"):
        book.enter_held(me, frozenset({"a"}), "exclusive")
    assert not book.leave_held(st)  # the inner hold: the lease stays
    assert book.leave_held(st)  # the last: release it
    assert book.enter_held(me, ab, "exclusive") is None  # forgotten with its last hold


def test_lease_book_a_lost_enclosing_hold_refuses_a_nested_one():
    book = LeaseBook()
    st = Lease(3, ttl=30.0, reentrant=True)
    book.add(st, 0.0)
    book.add_hold("me", frozenset({"k"}), st)
    st.lost_message = "ttl ran out"
    book.forget(st, LOST)
    with pytest.raises(NotHeld, match="ttl ran out"):
        book.enter_held("me", frozenset({"k"}), "exclusive")


def test_an_extends_answer_keeps_or_releases_the_lease_but_never_forgets_it_while_held():
    assert judge_extend(True, False, True) == judge_extend(True, False, False) == CONFIRMED
    assert judge_extend(False, True, True) == judge_extend(False, True, False) == LOSE
    # Another refusal (a ttl above max_ttl_ms): the caller hears it and keeps the lease; a
    # renewal refused so ends the lease on the daemon before it is lost here.
    assert judge_extend(False, False, True) == REFUSED_KEPT
    assert judge_extend(False, False, False) == RELEASE_AND_LOSE


@pytest.mark.parametrize("key", ["k", "report:monthly", 'quo"te\\', "ключ", "\u2028 tab\t"])
@pytest.mark.parametrize("shared", [False, True])
def test_a_hand_encoded_acquire_is_the_json_of_its_fields(key, shared):
    fields = {"key": key, "ttl_ms": 30000, "limit": 3}
    if shared:
        fields["mode"] = "shared"
    assert one_key_members(key, 30000, 3, shared) == members(fields)
