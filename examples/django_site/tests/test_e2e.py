"""End to end: keylockd + the example site under uWSGI (4 processes x 4 threads).

64 concurrent requests for the same new name: the slow fetch runs exactly once, one Thing row
exists, and no request fails (no IntegrityError). The same for the django-redis comparison
view. Needs Debian's python3-django, python3-django-redis, uwsgi, uwsgi-plugin-python3 and
redis-server (scripts/install-deps.sh): when one is missing this test fails, it never skips.
"""
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid

import pytest

from harness import Daemon, free_port, stop_process, wait_for

SITE = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
REQUESTS = 64
FETCH_SECONDS = 0.5


def _need(program):
    path = shutil.which(program)
    assert path, f"{program} is not installed: run scripts/install-deps.sh (as root)"
    return path


def _get(url, timeout=60.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except OSError as e:
        return None, repr(e)


class Site:
    def __init__(self, tmp):
        self.tmp = tmp
        self.db = os.path.join(tmp, "site.sqlite3")
        self.log = os.path.join(tmp, "uwsgi.log")
        self.port = 0
        self.procs = []
        self.keylock_server = ""  # keylockd's address

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def uwsgi_log(self):
        with open(self.log, errors="replace") as f:
            return f.read()

    def rows(self, sql, *params):
        with sqlite3.connect(self.db, timeout=30) as db:
            return db.execute(sql, params).fetchall()


def _stop_uwsgi(proc):
    """die-on-term: SIGTERM stops master and workers. Anything left of its process group (it
    runs in a session of its own) is killed."""
    if proc is None:
        return
    stop_process(proc, signal.SIGTERM, timeout=10)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    import django  # noqa: F401  - fails loudly when python3-django is missing
    import django_redis  # noqa: F401
    import redis  # noqa: F401

    uwsgi = _need("uwsgi")
    redis_server = _need("redis-server")
    s = Site(str(tmp_path_factory.mktemp("django_site")))

    keylockd = Daemon().start()
    s.keylock_server = keylockd.address
    redis_port = free_port()
    redis_proc = subprocess.Popen(
        [redis_server, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    uwsgi_proc = None
    try:
        env = dict(os.environ)
        env.update(
            KEYLOCK_SERVER=keylockd.address,
            REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
            KEYLOCK_SITE_DB=s.db,
            KEYLOCK_SITE_FETCH_SECONDS=str(FETCH_SECONDS),
            DJANGO_SETTINGS_MODULE="keylock_site.settings",
            PYTHONDONTWRITEBYTECODE="1",
        )
        migrate = subprocess.run(
            [sys.executable, os.path.join(SITE, "manage.py"), "migrate", "--noinput"],
            env=env, capture_output=True, text=True, timeout=60,
        )
        assert migrate.returncode == 0, migrate.stdout + migrate.stderr

        s.port = free_port()
        with open(s.log, "wb") as log:
            uwsgi_proc = subprocess.Popen(
                [uwsgi, "--plugins", "python3", "--http-socket", f"127.0.0.1:{s.port}",
                 "--chdir", SITE, "--module", "keylock_site.wsgi:application",
                 "--master", "--processes", "4", "--threads", "4", "--enable-threads",
                 "--need-app", "--die-on-term", "--disable-logging", "--listen", "100"],
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )

        def up():
            if uwsgi_proc.poll() is not None:
                raise AssertionError(f"uWSGI exited {uwsgi_proc.returncode}:\n{s.uwsgi_log()}")
            return _get(s.url + "/", timeout=2)[0] == 200

        wait_for(up, timeout=30, interval=0.1, what="the site under uWSGI")
        # Every worker must be up: the test is about 4 processes x 4 threads.
        wait_for(lambda: s.uwsgi_log().count("spawned uWSGI worker") == 4, what="4 workers")
        yield s
    finally:
        _stop_uwsgi(uwsgi_proc)
        stop_process(redis_proc)
        keylockd.cleanup()


def _storm(url):
    """REQUESTS concurrent GETs of url, released together by a barrier."""
    barrier = threading.Barrier(REQUESTS)
    results = [None] * REQUESTS

    def one(i):
        barrier.wait(30)
        results[i] = _get(url)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(REQUESTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "requests still running after 120 s"
    return results


@pytest.mark.parametrize("path", ["/fetch/", "/redis/fetch/"], ids=["keylock", "django_redis"])
def test_64_concurrent_requests_for_a_new_name_fetch_it_exactly_once(site, path):
    name = "thing-" + uuid.uuid4().hex[:12]
    results = _storm(site.url + path + name)

    failed = [(status, body[:300]) for status, body in results if status != 200]
    assert not failed, (
        f"{len(failed)} requests failed, e.g. {failed[:3]}\n{site.uwsgi_log()[-3000:]}"
    )
    bodies = {json.loads(body)["result"] for _, body in results}
    assert bodies == {f"remote value of {name}"}
    assert site.rows("SELECT COUNT(*) FROM things_fetch WHERE name = ?", name) == [(1,)]
    assert site.rows("SELECT COUNT(*) FROM things_thing WHERE name = ?", name) == [(1,)]
    log = site.uwsgi_log()
    assert "IntegrityError" not in log and "Traceback" not in log, log[-3000:]


def test_decorated_views_and_the_stats_view_answer(site):
    status, body = _get(site.url + "/hello/world")
    assert status == 200 and json.loads(body) == {"hello": "world"}
    status, body = _get(site.url + "/stats")
    assert status == 200 and "fetches" in json.loads(body)
    for variant in ("none", "keylock", "redis", "keylock-own", "redis-own"):
        assert _get(site.url + "/bench/" + variant)[0] == 200


def test_the_floor_bench_view_takes_and_releases_a_lock_per_request(site):
    # bench/django-overhead.sh's floor: one round trip and a noreply release per request, over
    # a connection of the worker thread's own.
    sys.path.insert(0, os.path.join(SITE, "..", "..", "client", "python"))
    import keylock

    client = keylock.Client(server=site.keylock_server)
    try:
        before = client.stats()
        for _ in range(8):
            assert _get(site.url + "/bench/floor-own") == (200, "ok\n")
        wait_for(
            lambda: client.stats()["releases"] - before["releases"] >= 8,
            what="the floor view's releases",
        )
        after = client.stats()
        assert after["grants"] - before["grants"] >= 8
        assert after["held"] == 0
    finally:
        client.close()
