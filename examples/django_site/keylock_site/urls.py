from django.urls import path

from things import views

urlpatterns = [
    path("", views.index),
    # The seed scenario: fetch_remote_thing(name) under keylock, under django-redis's
    # cache.lock, and with no lock at all (to see the race).
    path("fetch/<str:name>", views.fetch),
    path("redis/fetch/<str:name>", views.fetch_redis),
    path("unlocked/fetch/<str:name>", views.fetch_unlocked),
    # A view decorated directly, with the default key (method and path of the request).
    path("hello/<str:name>", views.hello),
    # One call at a time whatever the arguments: a constant key_maker.
    path("stats", views.stats),
    # bench/django-overhead.sh: a trivial view with no lock, and under one shared key.
    path("bench/none", views.bench_none),
    path("bench/keylock", views.bench_keylock),
    path("bench/redis", views.bench_redis),
    # ... and under a key of its own per request (uncontended).
    path("bench/keylock-own", views.bench_keylock_own),
    path("bench/redis-own", views.bench_redis_own),
    # The floor: one round trip and nothing else (not a lock to use; see the view).
    path("bench/floor-own", views.bench_floor_own),
]
