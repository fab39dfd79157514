import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the keylock package, straight from the tree
sys.path.insert(0, HERE)

from harness import Daemon  # noqa: E402

import keylock  # noqa: E402


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
