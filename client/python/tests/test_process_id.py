"""keylock._process.current_pid: this process's pid, also in a fork child that ran no hooks."""
import os
import sys

import pytest

from keylock import _process
from test_connection import _fork_and_report


def test_current_pid_is_this_processs_pid():
    assert _process.current_pid() == os.getpid()
    assert _process.current_pid() == os.getpid()  # asked again: from memory


def test_a_fork_child_gets_its_own_pid_and_so_do_its_children():
    parent = _process.current_pid()  # cached before the fork

    def grandchild():
        return {"pid": os.getpid(), "current": _process.current_pid()}

    def child():
        first = _process.current_pid()
        return {
            "pid": os.getpid(),
            "first": first,
            "again": _process.current_pid(),
            "grandchild": _fork_and_report(grandchild),
        }

    out = _fork_and_report(child)
    assert "error" not in out, out
    assert out["pid"] != parent
    assert out["first"] == out["pid"]
    assert out["again"] == out["pid"]
    grandchild_out = out["grandchild"]
    assert grandchild_out["pid"] not in (parent, out["pid"])
    assert grandchild_out["current"] == grandchild_out["pid"]
    assert _process.current_pid() == parent == os.getpid()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="MADV_WIPEONFORK is Linux's")
def test_on_linux_the_pid_is_read_from_memory():
    # Linux >= 4.14 and Python >= 3.8 have what the cache needs; Debian 12 has both.
    assert _process._page is not None  # else current_pid() asks the kernel every time


def test_without_the_page_it_asks_the_kernel_each_time(monkeypatch):
    monkeypatch.setattr(_process, "_page", None)
    monkeypatch.setattr(_process, "_pid", -1)  # a stale cache would show
    assert _process.current_pid() == os.getpid()
