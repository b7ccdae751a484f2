"""``emotrain export RUN``: a run's trained weights as one plain ``model.safetensors`` + ``config.yaml``.

DeepSpeed checkpoints are sharded per rank and need DeepSpeed to read; the export loads on one
process with plain torch (``model.load_state_dict(safetensors.torch.load_file(...))``), for
evaluation, the demo, or starting a new run on another world size.
"""

from __future__ import annotations

from pathlib import Path

import torch

from emotrain.files import atomic_output, write_atomic
from emotrain.training.rundir import RunDir
from emotrain.training.checkpoint import choose_tag
from emotrain.training.master_weights import fp32_state_dict

WEIGHTS, CONFIG = "model.safetensors", "config.yaml"


def export_weights(run_dir: str | Path, out_dir: str | Path, tag: str | None = None, last: bool = False) -> Path:
    """Write ``out_dir/model.safetensors`` (fp32) and a copy of the run's ``config.yaml``; return the weights path.

    The checkpoint: ``tag``, else the best one when the run has one (``last``: the newest)."""
    run, out_dir = RunDir(run_dir).require(), Path(out_dir)
    config = run.config_path
    tag, kind = choose_tag(run.checkpoints, tag, last)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / WEIGHTS
    save_weights(fp32_state_dict(run.root, tag), target, {"checkpoint": tag, "checkpoint_kind": kind})
    if config.resolve() != (out_dir / CONFIG).resolve():
        write_atomic(out_dir / CONFIG, config.read_bytes())
    return target


def save_weights(weights: dict[str, torch.Tensor], target: Path, metadata: dict[str, str]) -> None:
    """A state dict as one safetensors file (tied weights written as copies: safetensors refuses shared memory)."""
    from safetensors.torch import save_file

    weights = dict(weights)
    seen: set[int] = set()
    for name, tensor in weights.items():
        if tensor.data_ptr() in seen:
            weights[name] = tensor.clone()
        seen.add(tensor.data_ptr())
    with atomic_output(target) as tmp:
        save_file({name: t.contiguous() for name, t in weights.items()}, str(tmp), metadata=metadata)
