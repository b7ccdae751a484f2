"""The demo's tiny model A trained in-process for a few steps (plain AdamW, fp32, no DeepSpeed), and bundled
alone: what the explanation test and ``benchmarks/attention_focus.py`` compare with the same model untrained."""

from __future__ import annotations

from pathlib import Path

import torch

from emotrain.cli import main as cli
from emotrain.data.manifest import Manifest
from emotrain.data.schema import meta_vocab_sizes
from emotrain.data.stream import Modalities, as_tensors, build_loader
from emotrain.evaluation.export import WEIGHTS, save_weights
from emotrain.models import build_model
from emotrain.models.inputs import model_inputs
from emotrain.training.rundir import RunDir
from emotrain.training.run_config import load_run_config

REPO = Path(__file__).resolve().parents[1]


def bundle_of(model: torch.nn.Module, cfg, root: Path) -> Path:  # noqa: ANN001
    """An export-style run folder of ``model`` (config + weights) bundled alone (``root/bundle``)."""
    run = RunDir(root / "run")
    run.write_config(cfg)
    save_weights(model.state_dict(), run.root / WEIGHTS, {})
    assert cli(["bundle", "--audio", str(run.root), "--out", str(root / "bundle")]) == 0
    return root / "bundle"


def train_model_a(shards: Path, root: Path, steps: int, lr: float = 1e-3, batch: int = 16,
                  seed: int = 0) -> dict[str, object]:
    """Bundles ``untrained`` (the seeded initial weights) and ``trained`` (after ``steps`` steps on the train
    split) under ``root``; ``loss``: the last step's loss."""
    cfg = load_run_config(REPO / "configs" / "demo" / "audio_text.yaml",
                          [f"data.shards={shards}", "train.bf16=false", "data.num_workers=0"])
    manifest = Manifest.load(shards, "train")
    torch.manual_seed(seed)
    model = build_model(cfg.model, len(manifest.classes), meta_vocab_sizes(manifest.vocab), load_weights=False)
    untrained = bundle_of(model.eval(), cfg, root / "untrained")
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    step, loss = 0, torch.tensor(float("nan"))
    model.train()
    while step < steps:
        loader, _ = build_loader(cfg.data, "train", Modalities(audio=True, video=False), batch, train=True)
        for b in loader:
            b = as_tensors(b)
            loss = torch.nn.functional.cross_entropy(model(model_inputs(b, torch.device("cpu"))), b["labels"])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step >= steps:
                break
    trained = bundle_of(model.eval(), cfg, root / "trained")
    return {"untrained": untrained, "trained": trained, "loss": float(loss.detach())}
