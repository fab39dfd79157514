"""This process's pid without a system call per question.

The client asks "am I still the process that made this?" several times per lock call: a
forked child must not use its parent's connection or leases, and uWSGI forks its workers
without running Python's fork hooks, so only the pid can tell. os.getpid() is a system call
(glibc does not cache it), which costs about a microsecond on a virtual machine.

Instead, the answer is cached beside a flag in one private anonymous page marked
MADV_WIPEONFORK: the kernel gives a forked child that page zeroed, however the fork was made
(os.fork, a C library, uWSGI's master). A set flag means the cached pid is this process's.
Where the kernel or Python cannot mark the page, current_pid() is os.getpid().
"""
from __future__ import annotations

import mmap
import os
import sys

_MADV_WIPEONFORK = 18  # linux/mman.h; Python's mmap module names it only from 3.12


def _wipe_on_fork_page():
    if not sys.platform.startswith("linux"):
        return None
    try:
        page = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except (AttributeError, OSError, ValueError):
        return None
    try:
        page.madvise(getattr(mmap, "MADV_WIPEONFORK", _MADV_WIPEONFORK))
    except (AttributeError, OSError, ValueError):  # a kernel before 4.14
        page.close()
        return None
    return page


_page = _wipe_on_fork_page()
_pid = os.getpid()
if _page is not None:
    _page[0] = 1


def current_pid() -> int:
    """os.getpid(), read from memory while this process has not forked since it last asked."""
    global _pid
    if _page is None:
        return os.getpid()
    if _page[0]:
        return _pid
    pid = os.getpid()  # a fork child, asking for the first time: its page came zeroed
    _pid = pid
    _page[0] = 1  # after _pid: a thread that sees the flag set reads this process's pid
    return pid
