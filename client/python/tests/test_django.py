"""keylock.django: settings, the lazily made per-process client, the bound decorator.

Django is a hard requirement of this suite (scripts/install-deps.sh installs
python3-django): a missing Django fails here, it is not skipped."""
import ssl

import django
from django.conf import settings

if not settings.configured:
    settings.configure(KEYLOCK={"SERVER": "127.0.0.1:1"}, INSTALLED_APPS=[], USE_TZ=True)
    django.setup()

from django.test import override_settings  # noqa: E402

import pytest  # noqa: E402

import keylock  # noqa: E402
import keylock.django as kd  # noqa: E402


def test_the_client_is_made_once_per_process_from_the_settings(daemon):
    with override_settings(KEYLOCK={"SERVER": daemon.address, "NAME": "site-a"}):
        c = kd.get_client()
        assert c is kd.get_client()
        assert c.server == daemon.address
        with kd.lock("django:cm") as lease:
            info = c.inspect("django:cm")
            assert info.holders[0].token == lease.token and info.holders[0].client == "site-a"
    # Changing the setting closed it; the next use makes a new one.
    with override_settings(KEYLOCK={"SERVER": daemon.address}):
        assert kd.get_client() is not c


@pytest.mark.parametrize("lanes", [None, 0])
def test_thread_connections_come_from_the_settings(daemon, make_client, lanes):
    cfg = {"SERVER": daemon.address}
    if lanes is not None:
        cfg["THREAD_CONNECTIONS"] = lanes
    observer = make_client(thread_connections=0)
    with override_settings(KEYLOCK=cfg):
        for _ in range(3):
            with kd.lock("django:lanes"):
                pass
        # The shared connection and the observer's, and a lane unless turned off.
        assert observer.stats()["connections"] == (3 if lanes is None else 2)


def test_the_bound_decorator_takes_ttl_and_wait_from_the_settings(daemon, make_client):
    holder = make_client()

    @kd.lock_decorator(key_maker=lambda: "django:busy")
    def f():
        return "ran"

    @kd.lock_decorator()
    def g(name):
        return kd.get_client().inspect(keylock.default_key(g.__wrapped__, name)).holders[0]

    with override_settings(KEYLOCK={"SERVER": daemon.address, "TTL": 7, "WAIT": 0.05}):
        lease = holder.acquire("django:busy")
        with pytest.raises(keylock.Timeout):
            f()
        lease.release()
        assert f() == "ran"
        holder_info = g("alpha")
        assert 6000 <= holder_info.ttl_ms_left <= 7000


def test_unknown_settings_keys_are_refused():
    from django.core.exceptions import ImproperlyConfigured

    with override_settings(KEYLOCK={"SERVR": "x"}):
        with pytest.raises(ImproperlyConfigured):
            kd.get_client()
    kd.reset()


def test_the_bound_decorator_takes_shared_reentrant_and_several_keys(daemon, make_client):
    observer = make_client()

    @kd.lock_decorator(key_maker=lambda: "django:cfg", shared=True)
    def read():
        return observer.inspect("django:cfg").holders[0].mode

    @kd.lock_decorator(key_maker=lambda a, b: [a, b])
    def transfer(a, b):
        return sorted(observer.inspect(a).holders[0].keys)

    @kd.lock_decorator(key_maker=lambda n: "django:tree", reentrant=True)
    def walk(n):
        return [observer.inspect("django:tree").holders[0].token] + (walk(n - 1) if n else [])

    with override_settings(KEYLOCK={"SERVER": daemon.address, "WAIT": 10}):
        assert read() == "shared"
        assert transfer("django:a", "django:b") == ["django:a", "django:b"]
        tokens = walk(2)
        assert len(tokens) == 3 and len(set(tokens)) == 1  # nested calls share one lease
        with kd.lock_all(["django:a", "django:b"]) as lease:
            assert lease.keys == ("django:a", "django:b")


def test_the_server_setting_takes_a_cluster_list_and_fails_over_past_a_dead_daemon(daemon):
    from django.core.exceptions import ImproperlyConfigured

    from harness import free_port

    dead = f"127.0.0.1:{free_port()}"
    for server in (f"{dead},{daemon.address}", [dead, daemon.address]):
        with override_settings(KEYLOCK={"SERVER": server}):
            c = kd.get_client()
            assert c.servers == (dead, daemon.address)
            with kd.lock("django:cluster"):
                assert c.server == daemon.address
                assert c.inspect("django:cluster").held
    with override_settings(KEYLOCK={"SERVER": f"{daemon.address},"}):
        with pytest.raises(ImproperlyConfigured):
            kd.get_client()
    kd.reset()


def test_tls_settings_make_a_tls_client(start_daemon, certs, monkeypatch):
    from tlsutil import client_context, tls_args

    for name in ("KEYLOCK_TLS", "KEYLOCK_TLS_CA", "KEYLOCK_TLS_CERT", "KEYLOCK_TLS_KEY",
                 "KEYLOCK_TLS_SERVER_NAME"):
        monkeypatch.delenv(name, raising=False)
    d = start_daemon(*tls_args(certs, mutual=True))
    files = {"CA": certs("ca.pem"), "CERT": certs("client.pem"), "KEY": certs("client.key")}
    try:
        with override_settings(KEYLOCK={"SERVER": d.tls_address, "TLS": files}):
            with kd.lock("django:tls", ttl=10) as lease:
                assert kd.get_client().inspect("django:tls").holders[0].token == lease.token
        ctx = client_context(certs, cert="client")
        with override_settings(KEYLOCK={"SERVER": f"127.0.0.1:{d.tls_port}", "SSL_CONTEXT": ctx,
                                        "TLS": {"SERVER_NAME": "localhost"}, "USER": "billing"}):
            c = kd.get_client()
            assert c._ssl_context is ctx and c._server_hostname == "localhost"
            assert c._user == "billing"
        with override_settings(KEYLOCK={"SERVER": d.tls_address,
                                        "TLS": dict(files, SERVER_NAME="wrong.example")}):
            with pytest.raises(keylock.ConnectionError, match="TLS handshake"):
                kd.get_client().ping()
    finally:
        kd.reset()


@pytest.mark.parametrize("tls_settings", [
    {"TLS": {"CAFILE": "x"}},                                  # an unknown key
    {"TLS": {"CA": "/nonexistent/ca.pem"}},                    # a file that cannot be loaded
    {"TLS": {"CA": "x"}, "SSL_CONTEXT": ssl.create_default_context()},  # both
    {"SSL_CONTEXT": "not a context"},
])
def test_bad_tls_settings_are_improperly_configured(tls_settings):
    from django.core.exceptions import ImproperlyConfigured

    with override_settings(KEYLOCK=dict(SERVER="127.0.0.1:1", **tls_settings)):
        with pytest.raises(ImproperlyConfigured):
            kd.get_client()
    kd.reset()
