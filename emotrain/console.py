"""Quiet by default: emotrain prints its own progress bars and results, not the libraries' chatter.

:func:`quiet_libraries` runs once where a process starts (``emotrain.cli.main``, which every
command, ``launch/train.py`` and every torchrun child go through). It silences only messages
known to be harmless here, each matched narrowly, so a new warning still shows:

- torch's "No CUDA runtime is found" (``torch.utils.cpp_extension``, logged when DeepSpeed builds
  its CPU shared-memory op on a machine without a GPU);
- the FutureWarning about ``all_gather_into_tensor`` that DeepSpeed's ZeRO-2 triggers inside torch
  (with the ``return func(*args, **kwargs)`` source line the warnings module prints under it).

:func:`library_output` swallows what libraries ``print`` to the console (DeepSpeed's "built
successfully" per rank, and ``zero_to_fp32``'s "Processing zero checkpoint ... Reconstructed fp32
state dict" per rank per model); an exception still propagates.

``emotrain --verbose COMMAND`` or ``EMOTRAIN_VERBOSE=1`` (inherited by child processes) shows everything.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Iterator

VERBOSE_ENV = "EMOTRAIN_VERBOSE"


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def set_verbose() -> None:
    """Show everything, here and in every process this one starts."""
    os.environ[VERBOSE_ENV] = "1"


def quiet_libraries() -> None:
    """Install the filters (a no-op when verbose). Safe to call more than once."""
    if verbose():
        return
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.all_gather_into_tensor` is deprecated",
                            category=FutureWarning)


@contextlib.contextmanager
def library_output() -> Iterator[None]:
    """Swallow what the enclosed library code prints to stdout/stderr, unless verbose."""
    if verbose():
        yield
        return
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield
