"""Full fp32 weights out of a checkpoint of any ZeRO stage (or an export), on one process, without an engine.

What an exact export must hold is the optimizer's fp32 master copy, not the bf16 module the forward
pass used (the two differ in their low bits after the first step). Where DeepSpeed keeps it depends
on the stage, and only some layouts are read by DeepSpeed's own ``zero_to_fp32.py``:

- ZeRO-2/3: ``*_optim_states.pt`` in the ZeRO layout; read with DeepSpeed's ``zero_to_fp32`` reader.
- ZeRO-1 in bf16: DeepSpeed trains it with its ``BF16_Optimizer`` (fp32 gradient accumulation), whose
  ``bf16_zero_pp_rank_*_optim_states.pt`` hold each rank's slice of every group's flat fp32 copy;
  ``zero_to_fp32.py`` refuses them ("not a zero checkpoint"). Read here: the slices of a group,
  concatenated in rank order and cut at the group's parameter shapes (``param_shapes`` in the
  module file, in the optimizer's order), are the masters.
- ZeRO-0 in bf16: plain data parallel with fp32 copies per parameter in the module file's
  ``optimizer.fp32_groups``, in optimizer-group order; the parameter names come from the
  ``param_names`` each group carries (:func:`emotrain.training.optim.param_groups`).
- Without bf16 the module itself is fp32 and is the answer.

Nothing is unpickled beyond tensors and plain containers (``weights_only=True``; DeepSpeed's small
``fragment_address`` record is the one class allowed).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from emotrain.console import library_output
from emotrain.errors import UserError
from emotrain.training.rundir import RunDir
from emotrain.training.checkpoint import checkpoint_dir, choose_tag, latest_good_tag

MODULE_FILE = "mp_rank_00_model_states.pt"  # ZeRO-0/1/2: the whole module (ZeRO-3 writes one per rank instead)
log = logging.getLogger(__name__)


def initial_weights(source: str | Path) -> dict[str, torch.Tensor]:
    """Weights to start a new run from (``train.init_from``): an export folder (``model.safetensors``)
    or a run directory (its best checkpoint, else its newest good one). Never unpickles anything."""
    source = Path(source)
    if (source / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(str(source / "model.safetensors"))
    run = RunDir(source)
    if run.is_run():
        tag, _ = choose_tag(run.checkpoints)
        return fp32_state_dict(run.root, tag)
    raise UserError(f"train.init_from {source}: neither an export (model.safetensors) nor a run directory")


def fp32_state_dict(run_dir: str | Path, tag: str | None = None) -> dict[str, torch.Tensor]:
    """The fp32 master weights of checkpoint ``tag`` (default: the newest good one), every stage exact."""
    ckpt_dir = checkpoint_dir(run_dir)
    tag = tag or latest_good_tag(ckpt_dir)
    if tag is None:
        raise FileNotFoundError(f"no complete checkpoint under {ckpt_dir}")
    tag_dir = ckpt_dir / tag
    states = _load(tag_dir / MODULE_FILE) if (tag_dir / MODULE_FILE).is_file() else None
    stage = 3 if states is None else int(states["ds_config"].get("zero_optimization", {}).get("stage", 0))
    if stage >= 2:
        return _as_fp32(_zero_layout(ckpt_dir, tag))
    weights = dict(states["module"])
    if any(t.dtype == torch.bfloat16 for t in weights.values()):
        masters = _bf16_zero1_masters(tag_dir, states) if stage == 1 else _zero0_masters(states, tag_dir)
        weights.update(masters)  # buffers and frozen parameters stay as the module holds them
    return _as_fp32(weights)


def _load(path: Path) -> dict:
    from deepspeed.utils.tensor_fragment import fragment_address

    with torch.serialization.safe_globals([fragment_address]):
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def _as_fp32(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: t.float() if t.is_floating_point() else t for name, t in weights.items()}


def _zero_layout(ckpt_dir: Path, tag: str) -> dict[str, torch.Tensor]:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    with library_output():  # it prints several lines per call, on every rank that loads
        return get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)


def _bf16_zero1_masters(tag_dir: Path, states: dict) -> dict[str, torch.Tensor]:
    files = sorted(tag_dir.glob("bf16_zero_pp_rank_*_mp_rank_00_optim_states.pt"), key=_rank_of)
    world = int(states.get("dp_world_size", len(files)))
    if len(files) != world:
        raise UserError(f"{tag_dir}: {len(files)} bf16 optimizer files for {world} ranks")
    partitions = [_load(f)["optimizer_state_dict"]["single_partition_of_fp32_groups"] for f in files]
    masters: dict[str, torch.Tensor] = {}
    for group, shapes in enumerate(states["param_shapes"]):
        flat = torch.cat([rank_parts[group] for rank_parts in partitions])
        offset = 0
        for name, shape in shapes.items():
            numel = shape.numel()
            masters[name] = flat[offset:offset + numel].view(shape).clone()
            offset += numel
        if offset > flat.numel():
            raise UserError(f"{tag_dir}: group {group} holds {flat.numel()} values, its parameters need {offset}")
    return masters


def _zero0_masters(states: dict, tag_dir: Path) -> dict[str, torch.Tensor]:
    optimizer = states.get("optimizer") or {}
    groups = optimizer.get("fp32_groups")
    names = [g.get("param_names") for g in optimizer.get("optimizer_state_dict", {}).get("param_groups", [])]
    if groups is None or not names or any(n is None or len(n) != len(g) for n, g in zip(names, groups)):
        log.warning("%s: no named fp32 master weights in this checkpoint; exporting the bf16 module weights", tag_dir)
        return {}
    return {name: tensor for group_names, group in zip(names, groups) for name, tensor in zip(group_names, group)}


def _rank_of(path: Path) -> int:
    return int(path.name.split("_")[4])  # bf16_zero_pp_rank_{R}_mp_rank_00_optim_states.pt
