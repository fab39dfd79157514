"""WSGI entry point: ``uwsgi --module keylock_site.wsgi:application`` (see uwsgi.ini)."""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# The keylock package straight from the source tree when it is not installed.
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "client", "python"))
sys.path.insert(0, os.path.join(HERE, ".."))

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "keylock_site.settings")

from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()
