"""The client over keylockd's TLS listener: verified servers, mutual TLS, handshake failures,
reconnects and failover, configuration from the environment.

The daemon's TLS port answers a plain-text frame with an error and closes: a call that works
there went over TLS. Certificates are made per run (conftest's ``certs``).
"""
import asyncio
import ssl
import threading

import pytest

import keylock
import keylock.aio
from harness import free_port, wait_for
from tlsutil import client_context, tls_args

TLS_ENV = ("KEYLOCK_TLS", "KEYLOCK_TLS_CA", "KEYLOCK_TLS_CERT", "KEYLOCK_TLS_KEY",
           "KEYLOCK_TLS_SERVER_NAME")


@pytest.fixture(autouse=True)
def no_tls_environment(monkeypatch):
    for name in TLS_ENV + ("KEYLOCK_USER", "KEYLOCK_AUTH", "KEYLOCK_SERVER"):
        monkeypatch.delenv(name, raising=False)


def tls_client(address, ctx, **kwargs):
    kwargs.setdefault("connect_timeout", 10)
    return keylock.Client(address, ssl_context=ctx, **kwargs)


def test_acquire_and_release_over_tls_with_the_server_verified(start_daemon, certs):
    d = start_daemon(*tls_args(certs))
    with tls_client(d.tls_address, client_context(certs), name="tls") as c:
        with c.lock("tls:k", ttl=10) as lease:
            info = c.inspect("tls:k")
            assert info.holders[0].token == lease.token and info.holders[0].client == "tls"
        assert not c.locked("tls:k")
        assert isinstance(c._sock, ssl.SSLSocket)  # not a plain socket that happened to work


def test_a_reply_longer_than_one_tls_record_arrives_whole(start_daemon, certs):
    # 64 keys of 1000 bytes: inspect names them all, about 64 KB, several TLS records (16 KB).
    d = start_daemon(*tls_args(certs))
    keys = ["%02d:" % i + "x" * 997 for i in range(64)]
    with tls_client(d.tls_address, client_context(certs)) as c:
        with c.lock_all(keys) as lease:
            info = c.inspect(keys[0])
            assert info.holders[0].token == lease.token
            assert list(info.holders[0].keys) == keys
        assert c.ping() >= 0  # nothing left over in the stream


def test_many_threads_share_one_tls_connection(start_daemon, certs):
    d = start_daemon(*tls_args(certs))
    errors = []
    with tls_client(d.tls_address, client_context(certs)) as c:

        def work(n):
            try:
                for i in range(50):
                    with c.lock(f"tls:{n}:{i % 3}", ttl=10):
                        c.ping()
            except Exception as e:  # reported below, with the thread's number
                errors.append((n, e))

        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads)
    assert errors == []


def test_mutual_tls_with_a_client_certificate_the_ca_signed(start_daemon, certs):
    d = start_daemon(*tls_args(certs, mutual=True))
    with tls_client(d.tls_address, client_context(certs, cert="client")) as c:
        c.acquire("mtls:k", ttl=10).release()


def test_mutual_tls_without_a_client_certificate_is_a_tls_connection_error(start_daemon, certs):
    d = start_daemon(*tls_args(certs, mutual=True))
    with tls_client(d.tls_address, client_context(certs)) as c:
        with pytest.raises(keylock.ConnectionError) as info:
            c.ping()
    assert "TLS" in str(info.value)


def test_a_server_certificate_from_another_ca_is_a_tls_connection_error(start_daemon, certs):
    d = start_daemon(*tls_args(certs))
    with tls_client(d.tls_address, client_context(certs, ca="other_ca")) as c:
        with pytest.raises(keylock.ConnectionError) as info:
            c.connect()
    assert "TLS handshake" in str(info.value) and d.tls_address in str(info.value)


def test_a_wrong_server_name_is_a_tls_connection_error(start_daemon, certs):
    d = start_daemon(*tls_args(certs))
    ctx = client_context(certs)
    with tls_client(d.tls_address, ctx, server_hostname="not-the-server.example") as c:
        with pytest.raises(keylock.ConnectionError) as info:
            c.acquire("tls:k")
    assert "TLS handshake" in str(info.value) and "not-the-server.example" in str(info.value)
    # The certificate's own names are accepted, given or taken from the address.
    with tls_client(f"localhost:{d.tls_port}", ctx) as c:
        assert c.ping() >= 0
    with tls_client(d.tls_address, ctx, server_hostname="localhost") as c:
        assert c.ping() >= 0


def test_tls_to_the_plain_port_is_a_tls_connection_error(start_daemon, certs):
    d = start_daemon(*tls_args(certs))
    with tls_client(d.address, client_context(certs)) as c:
        with pytest.raises(keylock.ConnectionError) as info:
            c.ping()
    assert "TLS" in str(info.value)


def test_a_reconnect_after_the_daemon_closed_the_connection_uses_tls(start_daemon, certs):
    tls_port = free_port()  # fixed, so that the restarted daemon listens there again
    d = start_daemon(*tls_args(certs, port=tls_port))
    lost = threading.Event()
    with tls_client(d.tls_address, client_context(certs), backoff_initial=0.02,
                    backoff_max=0.2) as c:
        lease = c.acquire("tls:restart", ttl=30, on_lost=lambda info: lost.set())
        first = c._sock
        d.restart()
        assert lost.wait(10)
        assert not lease.valid
        c.acquire("tls:restart", wait=10).release()  # waits for the reconnect
        assert c._sock is not first and isinstance(c._sock, ssl.SSLSocket)
    assert "plain text" not in d.log()


def test_failover_to_the_next_server_uses_tls(start_daemon, certs):
    a = start_daemon(*tls_args(certs))
    b = start_daemon(*tls_args(certs, mutual=True))  # mutual: it needs our certificate
    ctx = client_context(certs, cert="client")
    with tls_client([a.tls_address, b.tls_address], ctx, backoff_initial=0.02,
                    backoff_max=0.2) as c:
        assert c.ping() >= 0 and c.server == a.tls_address
        a.stop()
        wait_for(lambda: c.server == b.tls_address, what="failover to the second daemon")
        c.acquire("tls:failover", wait=10).release()


def test_the_environment_configures_tls(start_daemon, certs, monkeypatch):
    d = start_daemon(*tls_args(certs, mutual=True))
    monkeypatch.setenv("KEYLOCK_SERVER", d.tls_address)
    monkeypatch.setenv("KEYLOCK_TLS_CA", certs("ca.pem"))
    monkeypatch.setenv("KEYLOCK_TLS_CERT", certs("client.pem"))
    monkeypatch.setenv("KEYLOCK_TLS_KEY", certs("client.key"))
    with keylock.Client() as c:
        assert c._ssl_context.minimum_version >= ssl.TLSVersion.TLSv1_2
        c.acquire("env:k", ttl=10).release()
    # The server name comes from the environment too; a wrong one is refused.
    monkeypatch.setenv("KEYLOCK_TLS_SERVER_NAME", "not-the-server.example")
    with keylock.Client() as c:
        with pytest.raises(keylock.ConnectionError, match="TLS handshake"):
            c.ping()
    monkeypatch.setenv("KEYLOCK_TLS_SERVER_NAME", "localhost")
    with keylock.Client() as c:
        assert c.ping() >= 0
    # ssl_context=False: plain TCP whatever the environment says.
    with keylock.Client(d.address, ssl_context=False) as c:
        assert c.ping() >= 0 and c._ssl_context is None


def test_keylock_tls_1_alone_trusts_only_the_system_cas(start_daemon, certs, monkeypatch):
    d = start_daemon(*tls_args(certs))
    monkeypatch.setenv("KEYLOCK_TLS", "1")
    with keylock.Client(d.tls_address) as c:
        with pytest.raises(keylock.ConnectionError, match="TLS handshake"):
            c.ping()  # our test CA is no system CA
    monkeypatch.setenv("KEYLOCK_TLS", "0")
    with keylock.Client(d.address) as c:
        assert c.ping() >= 0 and c._ssl_context is None


def test_an_unloadable_tls_file_in_the_environment_is_a_value_error(certs, monkeypatch):
    monkeypatch.setenv("KEYLOCK_TLS_CA", certs("ca.pem"))
    monkeypatch.setenv("KEYLOCK_TLS_CERT", certs("no-such-cert.pem"))
    with pytest.raises(ValueError, match="no-such-cert.pem"):
        keylock.Client("127.0.0.1:1")
    with pytest.raises(TypeError):
        keylock.Client("127.0.0.1:1", ssl_context="yes")


def test_the_asyncio_client_speaks_tls(start_daemon, certs):
    d = start_daemon(*tls_args(certs, mutual=True))

    async def main():
        async with keylock.aio.Client(
            d.tls_address, ssl_context=client_context(certs, cert="client")
        ) as c:
            async with c.lock("aio:tls", ttl=10) as lease:
                assert (await c.inspect("aio:tls")).holders[0].token == lease.token

    asyncio.run(main())


def test_a_client_without_tls_on_the_tls_port_gets_the_daemons_refusal(start_daemon, certs):
    d = start_daemon(*tls_args(certs))
    with keylock.Client(d.tls_address, ssl_context=False) as c:
        with pytest.raises(keylock.ConnectionError, match="TLS"):
            c.ping()


@pytest.mark.parametrize("hooks", [True, False], ids=["at_fork_hook", "pid_check_only"])
def test_a_forked_child_makes_its_own_tls_connection_and_leaves_the_parents_alone(
    start_daemon, certs, hooks
):
    from keylock import client as client_module
    from test_connection import _fork_and_report

    d = start_daemon(*tls_args(certs, mutual=True))
    c = tls_client(d.tls_address, client_context(certs, cert="client"))
    try:
        parent_lease = c.acquire("tls:fork:parent", ttl=30)
        parent_peer = c.inspect("tls:fork:parent").holders[0].peer
        if not hooks:
            client_module._clients.discard(c)  # as under uWSGI: no fork hooks

        def child():
            out = {"inherited_valid": parent_lease.valid}
            with c.lock("tls:fork:child", ttl=10):
                out["child_peer"] = c.inspect("tls:fork:child").holders[0].peer
            c.close()
            return out

        out = _fork_and_report(child)
        assert "error" not in out, out
        assert out["inherited_valid"] is False and out["child_peer"] != parent_peer
        # The parent's TLS session went on untouched by the child's use and exit.
        assert c.inspect("tls:fork:parent").holders[0].token == parent_lease.token
        parent_lease.release()
    finally:
        c.close()
