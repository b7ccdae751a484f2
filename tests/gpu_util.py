"""What the GPU tests (tests/test_gpu.py) build and measure, kept device-agnostic so that the CPU tests
(tests/test_gpu_kit.py) run it with tiny configs: run configs of the full-size models with random weights,
and the largest micro-batch that fits under a memory cap.
"""

from __future__ import annotations

import gc
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import yaml

from emotrain.config import load_config, to_dict
from emotrain.data.schema import META_FIELDS
from emotrain.models import ModelConfig, build_model
from emotrain.models.example_batch import example_batch
from emotrain.models.inputs import model_inputs
from emotrain.models.random_init import random_weights
from emotrain.training.run_config import load_run_config

REPO = Path(__file__).resolve().parents[1]
TINY_TOKENIZER = str(REPO / "configs" / "tokenizers" / "tiny-wordpiece")
GIB = 1024**3


def full_size_run_yaml(kind: str, shards: Path, out: Path, variant: str = "train", model_yaml: Path | None = None) -> Path:
    """``configs/<variant>/<kind>.yaml`` (``train``: the cluster configs; ``rtx3060``) on ``shards``, its
    pretrained encoders replaced by random weights of the same architecture, the offline tiny tokenizer
    (BERT's vocabulary stays full size). ``model_yaml``: another model instead (a tiny one, for the CPU)."""
    cfg = load_run_config(REPO / "configs" / variant / f"{kind}.yaml")
    model = load_config(ModelConfig, model_yaml) if model_yaml else cfg.model
    data = replace(cfg.data, shards=str(shards), text=replace(cfg.data.text, tokenizer=TINY_TOKENIZER))
    cfg = replace(cfg, model=random_weights(model), data=data)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return out


def probe_model(model_cfg: ModelConfig, device: torch.device) -> torch.nn.Module:
    """The model as a bf16 ZeRO-2 rank with its optimizer offloaded holds it on the device: bf16 weights
    (and, after backward, bf16 gradients); the fp32 masters and Adam moments live in host memory."""
    meta_sizes = {column: 8 for column, _ in META_FIELDS}
    return build_model(model_cfg, 7, meta_sizes).to(device=device, dtype=torch.bfloat16).train()


def step_memory(model: torch.nn.Module, kind: str, micro_batch: int, device: torch.device,
                frames: int | None = None, image: int | None = None) -> dict[str, float]:
    """One forward + backward of ``micro_batch`` turns of the corpus' shape (4 utterances of 6 s audio);
    peak device memory in GiB (0 on the CPU). Raises ``torch.OutOfMemoryError`` when it does not fit."""
    shape: dict[str, Any] = {"frames": frames, "image": image} if frames else {}
    batch = example_batch(kind, [i % 7 for i in range(micro_batch)], utterances=4, seconds=6.0, tokens=24, **shape)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model.zero_grad(set_to_none=True)
    logits = model(model_inputs(batch, device, torch.bfloat16))
    torch.nn.functional.cross_entropy(logits.float(), batch["labels"].to(device)).backward()
    if device.type != "cuda":
        return {"allocated_gib": 0.0, "reserved_gib": 0.0}
    torch.cuda.synchronize(device)
    return {"allocated_gib": torch.cuda.max_memory_allocated(device) / GIB,
            "reserved_gib": torch.cuda.max_memory_reserved(device) / GIB}


def largest_micro_batch(model_cfg: ModelConfig, device: torch.device, candidates: list[int]) -> tuple[int, dict[int, Any]]:
    """The largest of ``candidates`` (increasing) whose training micro-batch fits, and the peak memory of
    each tried (``"OOM"`` for the first that did not fit; the search stops there)."""
    model = probe_model(model_cfg, device)
    frames = model_cfg.video_frames() if model_cfg.needs_video else None
    image = model_cfg.video_image_size() if model_cfg.needs_video else None
    fits, tried = 0, {}
    for size in candidates:
        try:
            tried[size] = step_memory(model, model_cfg.kind, size, device, frames, image)
            fits = size
        except torch.OutOfMemoryError:
            tried[size] = "OOM"
            break
        finally:
            model.zero_grad(set_to_none=True)
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    del model
    gc.collect()
    return fits, tried


def record(name: str, data: dict[str, Any]) -> None:
    """Print a measurement, and keep it as ``<name>.json`` in ``$EMOTRAIN_GPU_REPORT`` when set (the GPU
    check's report folder: benchmarks/gpu_check.sh puts these figures in its report)."""
    import json
    import os

    print(f"{name}: {json.dumps(data)}")
    folder = os.environ.get("EMOTRAIN_GPU_REPORT")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / f"{name}.json").write_text(json.dumps(data, indent=1))
