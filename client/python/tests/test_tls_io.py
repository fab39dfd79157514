"""keylock._tls without a daemon: the non-blocking TLS reads and writes over a socket pair,
the context made from the environment, and the error classes of the new codes."""
import select
import socket
import ssl
import threading

import pytest

import keylock
from keylock._tls import context_from_env, recv_available, send_all
from keylock.errors import error_from_reply
from harness import reader_thread
from tlsutil import client_context


@pytest.fixture
def tls_pair(certs):
    """(client SSLSocket, non-blocking; server SSLSocket, blocking) over a socket pair."""
    a, b = socket.socketpair()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(certs("server.pem"), certs("server.key"))
    server = []
    t = threading.Thread(
        target=lambda: server.append(server_ctx.wrap_socket(b, server_side=True))
    )
    t.start()
    a.settimeout(10)
    client = client_context(certs).wrap_socket(a, server_hostname="localhost")
    t.join(10)
    client.setblocking(False)
    server[0].settimeout(10)
    yield client, server[0]
    client.close()
    server[0].close()


def wait_readable(sock):
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    assert poller.poll(10_000), "nothing to read within 10 s"


def test_recv_available_takes_everything_openssl_decrypted(tls_pair):
    client, server = tls_pair
    lock = threading.Lock()
    with pytest.raises(BlockingIOError):
        recv_available(client, lock)  # nothing sent yet
    payload = b"".join(b'{"id":%d,"ok":true}\n' % i for i in range(5000))  # several records
    server.sendall(payload)
    got = b""
    while len(got) < len(payload):
        wait_readable(client)
        try:
            data, eof = recv_available(client, lock)
        except BlockingIOError:
            continue
        assert not eof
        got += data
        assert client.pending() == 0  # nothing left where poll cannot see it
    assert got == payload
    server.close()
    wait_readable(client)
    assert recv_available(client, lock) == (b"", True)


def test_send_all_writes_more_than_the_socket_buffers_hold(tls_pair):
    client, server = tls_pair
    payload = bytes(range(256)) * 16384  # 4 MB: the writer must wait for the reader
    received = []
    t = reader_thread(server, len(payload), received)
    send_all(client, payload, threading.Lock(), 30)
    t.join(30)
    assert b"".join(received) == payload


def test_send_all_to_a_peer_that_never_reads_times_out(tls_pair):
    client, _server = tls_pair
    with pytest.raises(socket.timeout):
        send_all(client, b"x" * (16 << 20), threading.Lock(), 0.2)


def test_the_environment_turns_tls_on_only_when_asked(certs):
    assert context_from_env({}) == (None, None)
    assert context_from_env({"KEYLOCK_TLS": "0", "KEYLOCK_TLS_SERVER_NAME": "x"}) == (None, None)
    ctx, name = context_from_env({"KEYLOCK_TLS": "1"})
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname and name is None
    ctx, name = context_from_env({
        "KEYLOCK_TLS_CA": certs("ca.pem"), "KEYLOCK_TLS_CERT": certs("client.pem"),
        "KEYLOCK_TLS_KEY": certs("client.key"), "KEYLOCK_TLS_SERVER_NAME": "lock.example",
    })
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2 and name == "lock.example"
    with pytest.raises(ValueError, match="missing.pem"):
        context_from_env({"KEYLOCK_TLS_CA": certs("missing.pem")})


def test_denied_has_its_class_and_unknown_codes_stay_generic():
    denied = error_from_reply({"id": 1, "ok": False, "error": "denied", "message": "no"})
    assert type(denied) is keylock.Denied and denied.code == "denied" and str(denied) == "no"
    other = error_from_reply({"id": 1, "ok": False, "error": "from_the_future"})
    assert type(other) is keylock.Error and other.code == "from_the_future"
