"""The client's plain-TCP write without a daemon, over a socket pair: one write(2) for what
the socket buffer takes, sendall for the rest."""
import socket

import pytest

from harness import reader_thread
from keylock.client import _send_all


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.settimeout(10)  # as the client's sockets: a timeout, so non-blocking underneath
    b.settimeout(10)
    yield a, b
    a.close()
    b.close()


def test_a_frame_goes_in_one_write(pair):
    a, b = pair
    _send_all(a, b'{"op":"ping","id":1}\n')
    assert b.recv(100) == b'{"op":"ping","id":1}\n'


def test_more_than_the_socket_buffers_hold_arrives_whole_and_in_order(pair):
    a, b = pair
    payload = bytes(range(256)) * 32768  # 8 MB: the first write takes only part of it
    received = []
    t = reader_thread(b, len(payload), received)
    _send_all(a, payload)
    t.join(30)
    assert b"".join(received) == payload


def test_a_peer_that_never_reads_times_out(pair):
    a, _b = pair
    a.settimeout(0.2)
    with pytest.raises(socket.timeout):
        _send_all(a, b"x" * (32 << 20))
