"""The seed scenario: a slow fetch that must run once per name, whatever the concurrency.

The switch from django-redis is the import of lock_decorator:

    from things.redis_lock import lock_decorator   # before: django-redis cache.lock
    from keylock.django import lock_decorator      # after: keylockd

Both are imported here, under two names, only so that the example can serve both side by side.
"""
import itertools
import json
import os
import re
import socket
import threading
import time

from django.conf import settings
from django.http import HttpResponse, JsonResponse

from keylock.django import lock_decorator

from .models import Fetch, Thing
from .redis_lock import lock_decorator as redis_lock_decorator


def some_internet_fetching(name):
    """The slow remote call. Records that it ran (a Fetch row) before it sleeps."""
    Fetch.objects.create(name=name, pid=os.getpid())
    time.sleep(settings.FETCH_SECONDS)
    return f"remote value of {name}"


@lock_decorator()
def fetch_remote_thing(name):
    try:
        return Thing.objects.get(name=name).result
    except Thing.DoesNotExist:
        # Need to go out and fetch this
        result = some_internet_fetching(name)  # Assume this is sloooow
        Thing.objects.create(name=name, result=result)
        return result


@redis_lock_decorator()
def fetch_remote_thing_redis(name):
    return fetch_remote_thing.__wrapped__(name)  # the same body, under cache.lock


def index(request):
    return HttpResponse("keylock example site\n", content_type="text/plain")


def fetch(request, name):
    return JsonResponse({"name": name, "result": fetch_remote_thing(name)})


def fetch_redis(request, name):
    return JsonResponse({"name": name, "result": fetch_remote_thing_redis(name)})


def fetch_unlocked(request, name):
    return JsonResponse({"name": name, "result": fetch_remote_thing.__wrapped__(name)})


@lock_decorator()
def hello(request, name):
    # Without a key_maker the key is "things.views.hello" + str(args) + str(kwargs), and
    # str(request) is "<WSGIRequest: GET '/hello/NAME'>": one lock per method and URL.
    return JsonResponse({"hello": name})


@lock_decorator(key_maker=lambda *args, **kwargs: "stats")
def stats(request):
    fetches = {}
    for row in Fetch.objects.values_list("name", flat=True):
        fetches[row] = fetches.get(row, 0) + 1
    return JsonResponse({"things": Thing.objects.count(), "fetches": fetches})


def bench_none(request):
    return HttpResponse("ok\n", content_type="text/plain")


@lock_decorator(key_maker=lambda request: "bench:shared")
def bench_keylock(request):
    return HttpResponse("ok\n", content_type="text/plain")


@redis_lock_decorator(key_maker=lambda request: "bench:shared")
def bench_redis(request):
    return HttpResponse("ok\n", content_type="text/plain")


# The seed's common case: a key that differs per request (uncontended). Unique per request
# across processes and threads: the pid and a per-process counter.
_request_numbers = itertools.count()


def _own_key(request):
    return f"bench:own:{os.getpid()}:{next(_request_numbers)}"


@lock_decorator(key_maker=_own_key)
def bench_keylock_own(request):
    return HttpResponse("ok\n", content_type="text/plain")


@redis_lock_decorator(key_maker=_own_key)
def bench_redis_own(request):
    return HttpResponse("ok\n", content_type="text/plain")


# The floor, for bench/django-overhead.sh only: the least any client of keylockd can do per
# request. A thread's own connection, the acquire's one round trip and a noreply release, and
# nothing else: no renewal, no reconnect, no handling of an interrupt or an outage. Not a lock
# to use; it shows how much of a lock's cost is the round trip itself on this machine.
_floor = threading.local()
_FLOOR_GRANT = re.compile(rb'\{"id":\d+,"ok":true,"token":(\d+)')


def _floor_connection():
    sock = getattr(_floor, "sock", None)
    if sock is None:
        host, port = settings.KEYLOCK["SERVER"].rsplit(":", 1)
        sock = socket.create_connection((host, int(port)), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(None)  # blocking: with a timeout, Python would poll(2) before each read
        hello = {"op": "hello", "id": 0, "client": "floor"}
        if settings.KEYLOCK.get("AUTH"):
            hello["auth"] = settings.KEYLOCK["AUTH"]
        sock.sendall(json.dumps(hello).encode() + b"\n")
        _floor.sock, _floor.rest, _floor.id = sock, b"", 0
        try:
            ok = json.loads(_floor_line()).get("ok")
        except (OSError, ValueError):
            _floor_drop()
            raise
        if not ok:
            _floor_drop()
            raise RuntimeError("keylockd refused the floor view's hello")
    return sock


def _floor_line():
    while b"\n" not in _floor.rest:
        data = _floor.sock.recv(4096)
        if not data:
            raise ConnectionError("keylockd closed the floor view's connection")
        _floor.rest += data
    line, _floor.rest = _floor.rest.split(b"\n", 1)
    return line


def _floor_drop():
    """Closes the thread's connection (the daemon drops what it held); the next request
    makes a new one."""
    _floor.sock.close()
    _floor.sock = None


def bench_floor_own(request):
    sock = _floor_connection()
    _floor.id += 1
    key = _own_key(request)
    try:
        sock.sendall(b'{"op":"acquire","id":%d,"key":"%s","ttl_ms":30000}\n'
                     % (_floor.id, key.encode()))
        line = _floor_line()
        grant = _FLOOR_GRANT.match(line)
        if grant is None:
            return HttpResponse(line, status=500, content_type="application/json")
        sock.sendall(b'{"op":"release","key":"%s","token":%s,"noreply":true}\n'
                     % (key.encode(), grant[1]))
    except OSError:
        _floor_drop()
        raise
    return HttpResponse("ok\n", content_type="text/plain")
