"""A validation hook for a run, named by the environment: how a caller outside training (a search that
prunes its trials) sees each periodic validation and may stop the run there, without training knowing who.

``EMOTRAIN_VALIDATION_HOOK=package.module:factory`` names a function ``factory(run_dir)`` that returns a
:data:`emotrain.training.engine.ValidationHook` for this run (or None). Rank 0 alone builds and calls it;
the engine broadcasts its answer, so every rank stops at the same step, saves its checkpoint and the run
ends ``completed`` with the detail :data:`HOOK_STOPPED` in ``status.json``. Only emotrain's own modules
may be named: the variable must not become a way to run arbitrary code.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from emotrain.errors import UserError
from emotrain.training.engine import ValidationHook

HOOK_ENV = "EMOTRAIN_VALIDATION_HOOK"
HOOK_STOPPED = "stopped by the validation hook"


def validation_hook(run_dir: str | Path) -> ValidationHook | None:
    """The hook ``EMOTRAIN_VALIDATION_HOOK`` asks for this run, or None when it is unset."""
    spec = os.environ.get(HOOK_ENV, "").strip()
    if not spec:
        return None
    module, _, name = spec.partition(":")
    if not module.startswith("emotrain.") or not name.isidentifier():
        raise UserError(f"{HOOK_ENV}={spec!r}: expected emotrain.<module>:<function>")
    try:
        factory = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise UserError(f"{HOOK_ENV}={spec!r}: {err}") from None
    return factory(Path(run_dir))
