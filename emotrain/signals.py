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
import signal
from collections.abc import Iterator
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


def ignore_stop_notices(worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: the stop signals are the training process's to act on.

    At preemption, ``scancel`` or a time limit, ``slurmstepd`` sends SIGTERM (``--signal``: USR1)
    to every process of the step, loader workers included. By default it kills a worker, and the
    training process then fails on the lost worker ("DataLoader worker exited unexpectedly")
    before it can checkpoint. A worker still ends with its training process: the DataLoader shuts
    it down, and it exits by itself when that process dies.
    """
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


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
