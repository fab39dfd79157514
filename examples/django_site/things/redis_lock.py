"""The "before": the classic lock decorator on django-redis's cache.lock.

This is the pattern keylock replaces, kept here for the side-by-side comparison
(bench/django-overhead.sh). redis-py's Lock polls every 0.1 s while it waits and, taken
without a timeout, never expires if its holder dies.
"""
import functools
import hashlib

from django.core.cache import cache
from django.utils.encoding import force_bytes


def lock_decorator(key_maker=None):
    """When you want to lock a function from more than 1 call at a time."""

    def decorator(func):
        @functools.wraps(func)
        def inner(*args, **kwargs):
            if key_maker:
                key = key_maker(*args, **kwargs)
            else:
                key = str(args) + str(kwargs)
            lock_key = hashlib.md5(force_bytes(key)).hexdigest()
            with cache.lock(lock_key):
                return func(*args, **kwargs)

        return inner

    return decorator
