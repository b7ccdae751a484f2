"""Helper processes end with the process they serve.

The loader's fork server and its workers ignore the stop signals by design (the training process acts on a
SIGTERM: it checkpoints first, see :mod:`emotrain.signals`), so a signal cannot end them, and a
training process that dies without shutting its loader down (``kill -9``, a crash, a SIGTERM with the default
action) would leave them behind as orphans. :func:`die_with_parent` makes the kernel kill a process when its
parent exits (Linux ``prctl(PR_SET_PDEATHSIG, SIGKILL)``; elsewhere a daemon thread that watches the parent
id). Applied to the fork server (parent: the training process) and to every worker (parent: the fork server),
it leaves nothing once the training process is gone, however it went.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1
PARENT_ENV = "EMOTRAIN_LOADER_PARENT"  # the pid whose fork server this is (see stream.build_loader)


def die_with_parent() -> None:
    """Be killed (SIGKILL) as soon as the parent process exits; exit now if it already has."""
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            _watch(parent)
    else:
        _watch(parent)
    if os.getppid() != parent:  # the parent died before the request took hold
        os._exit(1)


def _watch(parent: int) -> None:
    def poll() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=poll, name="emotrain-parent-watch", daemon=True).start()


def fork_server_dies_with_parent() -> None:
    """In the loader's fork server (imported with its preload): die with the training process that started it.
    Any other process importing the preload (whose parent is not the one recorded) is left alone."""
    expected = os.environ.get(PARENT_ENV)
    if expected is not None and expected == str(os.getppid()):
        die_with_parent()
