"""Worker processes that die with their parent, however the parent dies (kill -9 included).

A process pool's workers wait on a queue whose pipe they hold both ends of, so when the
parent is killed they never see it close: each stays, with its memory (a backbone, half a
gigabyte), for as long as nobody kills it by hand. :func:`die_with_parent`, called first thing
in a worker (a pool's ``initializer``), ends it with its parent: on Linux the kernel sends it
SIGKILL when the parent dies (``prctl(PR_SET_PDEATHSIG)``); everywhere, a watchdog thread
checks the parent's pid once a second and exits when it has changed (the worker was adopted).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
WATCH_S = 1.0


def die_with_parent(parent: int | None = None, every_s: float = WATCH_S) -> None:
    """End this process when its parent dies. Pass ``parent``, the pid of the process that
    started this one (a pool's ``initargs``): a worker that starts after its parent was killed
    is then ended too (by default the current parent, which may already be its adopter)."""
    parent = os.getppid() if parent is None else parent
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):  # no libc to ask: the watchdog alone
            pass
    if os.getppid() != parent:  # the parent died before the signal was asked for
        os._exit(1)
    threading.Thread(target=_watch, args=(parent, every_s), name="parent-watchdog", daemon=True).start()


def _watch(parent: int, every_s: float) -> None:
    while True:
        time.sleep(every_s)
        if os.getppid() != parent:
            os._exit(1)
