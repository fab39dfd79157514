import os
import sys
import tempfile

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
# $KEYLOCK_TEST_INSTALLED=1 (tests/python/wheel.sh): test the keylock package installed in the
# interpreter's environment (a venv with the wheel), never the source tree's.
INSTALLED = os.environ.get("KEYLOCK_TEST_INSTALLED") == "1"
if not INSTALLED:
    sys.path.insert(0, os.path.dirname(HERE))  # the keylock package, straight from the tree
sys.path.insert(0, HERE)

from harness import Daemon  # noqa: E402

import keylock  # noqa: E402

if INSTALLED and not os.path.abspath(keylock.__file__).startswith(sys.prefix + os.sep):
    raise RuntimeError("KEYLOCK_TEST_INSTALLED=1 but keylock was not imported from the "
                       "environment's installed packages: " + keylock.__file__)


@pytest.fixture
def daemon():
    d = Daemon().start()
    yield d
    d.cleanup()


@pytest.fixture
def metrics_daemon():
    d = Daemon(metrics=True).start()
    yield d
    d.cleanup()


@pytest.fixture(scope="session")
def certs():
    """The test PKI (tlsutil.make_certs), made once per run in a temporary directory."""
    from tlsutil import make_certs

    with tempfile.TemporaryDirectory(prefix="keylock-py-tls-") as d:
        yield make_certs(d)


@pytest.fixture
def start_daemon():
    """start_daemon(*args) -> a started Daemon; every one is stopped at the end of the test,
    also one that failed to start."""
    started = []

    def start(*args):
        d = Daemon(*args)
        started.append(d)
        return d.start()

    yield start
    for d in started:
        d.cleanup()


@pytest.fixture
def make_client(daemon):
    """Clients on the daemon fixture, closed at the end of the test."""
    clients = []

    def make(**kwargs):
        kwargs.setdefault("server", daemon.address)
        c = keylock.Client(**kwargs)
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()


@pytest.fixture
def client(make_client):
    return make_client(name="tests")
