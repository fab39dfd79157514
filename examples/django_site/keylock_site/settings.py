"""Settings of the keylock example site. Everything that differs between a laptop, the tests
and the benchmark comes from the environment:

- KEYLOCK_SERVER / KEYLOCK_AUTH: the keylockd to use (default 127.0.0.1:7400, no secret)
- REDIS_URL: the Redis that django-redis's cache.lock uses (default redis://127.0.0.1:6379/0)
- KEYLOCK_SITE_DB: the SQLite file (default db.sqlite3 beside manage.py)
- KEYLOCK_SITE_FETCH_SECONDS: how slow the "remote" fetch is (default 1.0)
"""
import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "keylock-example-site-not-a-secret")
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = ["things"]
# CommonMiddleware sets Content-Length, which HTTP/1.1 keep-alive (uWSGI --http11-socket) needs.
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
ROOT_URLCONF = "keylock_site.urls"
WSGI_APPLICATION = "keylock_site.wsgi.application"
TEMPLATES = []

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("KEYLOCK_SITE_DB", str(BASE_DIR / "db.sqlite3")),
        # Readers wait for the one writer instead of failing with "database is locked".
        "OPTIONS": {"timeout": 30},
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True

# keylock: the one setting of the switch (see the README's "Python and Django" section).
KEYLOCK = {
    "SERVER": os.environ.get("KEYLOCK_SERVER", "127.0.0.1:7400"),
    "AUTH": os.environ.get("KEYLOCK_AUTH") or None,
    "TTL": 30,     # seconds, renewed while the locked function runs
    "WAIT": None,  # wait until granted, as cache.lock does by default
}

# django-redis, for the comparison views (cache.lock).
CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        "OPTIONS": {"CLIENT_CLASS": "django_redis.client.DefaultClient"},
    }
}

FETCH_SECONDS = float(os.environ.get("KEYLOCK_SITE_FETCH_SECONDS", "1.0"))

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {
        "django.request": {"handlers": ["stderr"], "level": "ERROR"},
        "keylock": {"handlers": ["stderr"], "level": "WARNING"},
    },
}
