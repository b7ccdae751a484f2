"""SIGTERM / SIGUSR1 / SIGUSR2 turned into a flag the training loop polls.

SLURM sends SIGTERM (or ``--signal=USR1@120``) before it preempts or times out a job; submitit
asks for SIGUSR2. While training, all three only stop the loop at an agreed step with a
checkpoint; outside it, the previous handlers (submitit's requeue logic) are back in place. Saving a
DeepSpeed checkpoint inside a signal handler is impossible (the save is collective, and only the
signalled ranks would run it), so the handler only records the request; the loop agrees on it
across ranks at the next step and saves there (see ``engine.fit``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


def ignore_stop_notices(worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: the stop signals are the training process's to act on.

    At preemption, ``scancel`` or a time limit, ``slurmstepd`` sends SIGTERM (``--signal``: USR1)
    to every process of the step, loader workers included. By default it kills a worker, and the
    training process then fails on the lost worker ("DataLoader worker exited unexpectedly")
    before it can checkpoint. A worker still ends with its training process: the DataLoader shuts
    it down, and when that process dies without doing so the kernel ends it (:func:`die_with_parent`).
    """
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    # Ignoring the signals, it must still end with the fork server (and so the trainer). The server is named, not
    # taken from getppid(): a worker still starting when the trainer and its server died is already reparented.
    die_with_parent(_fork_server_pid)


@contextlib.contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """Hold the stop signals back (delivered on exit, never lost) while a helper process starts.

    A process started meanwhile inherits the blocked mask and never receives them: how the
    loader's fork server (and every worker forked from it) is kept alive through a SIGTERM sent
    to every process of the job, while this process still gets its own.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class StopRequest:
    """Context manager: while inside, the stop signals set :attr:`requested` instead of killing us."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def __enter__(self) -> StopRequest:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# Helper processes end with the process they serve.
#
# The loader's fork server and its workers ignore the stop signals by design (the training process acts on a
# SIGTERM: it checkpoints first, see StopRequest above), so a signal cannot end them, and a
# training process that dies without shutting its loader down (``kill -9``, a crash, a SIGTERM with the default
# action) would leave them behind as orphans. :func:`die_with_parent` makes the kernel kill a process when its
# parent exits (Linux ``prctl(PR_SET_PDEATHSIG, SIGKILL)``; elsewhere a daemon thread that watches the parent
# id). Applied to the fork server (parent: the training process) and to every worker (parent: the fork server),
# it leaves nothing once the training process is gone, however it went.

PR_SET_PDEATHSIG = 1
PARENT_ENV = "EMOTRAIN_LOADER_PARENT"  # the pid whose fork server this is (see stream.build_loader)
_fork_server_pid: int | None = None  # set in the loader's fork server; its workers inherit it with the fork


def die_with_parent(parent: int | None = None) -> None:
    """Be killed (SIGKILL) as soon as the parent process exits; exit now if it already has.

    ``parent`` is the process this one was started by (default: the current parent). Given, it also catches
    a parent that died before this call: the process is then someone else's child, and exits."""
    parent = os.getppid() if parent is None else parent
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


def process_alive(pid: int) -> bool:
    """Whether a process of this host with this pid exists (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def fork_server_dies_with_parent() -> None:
    """In the loader's fork server (imported with its preload): die with the training process that started it.
    Any other process importing the preload (whose parent is not the one recorded) is left alone."""
    expected = os.environ.get(PARENT_ENV)
    if expected is None:
        return
    if expected == str(os.getppid()):
        global _fork_server_pid
        _fork_server_pid = os.getpid()
        die_with_parent()
    elif not process_alive(int(expected)):  # the training process died while this server was still importing (a busy
        os._exit(1)                  # machine): it was reparented before it could ask to die with it
