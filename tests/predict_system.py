"""A small trained-system stand-in for the predict tests and benchmark: two tiny models (seeded random
weights, no DeepSpeed training), evaluated on val and test by ``evaluate_model``, fused by ``fuse_runs``
(the real ``fuse`` outputs), and bundled by ``emotrain bundle`` from the export-style run folders."""

from __future__ import annotations

from pathlib import Path

import torch

from emotrain.cli import main
from emotrain.data.manifest import Manifest
from emotrain.data.schema import meta_vocab_sizes
from emotrain.data.stream import Modalities
from emotrain.evaluation.export import WEIGHTS, save_weights
from emotrain.evaluation.scoring import evaluate_model, write_evaluation
from emotrain.fusion.late import ConfidenceConfig, WeightedConfig
from emotrain.fusion.learned import GatingConfig, StackingConfig
from emotrain.fusion.outputs import write_outputs
from emotrain.fusion.pipeline import FusionConfig, MetricsConfig, fuse_runs
from emotrain.fusion.runs import load_run
from emotrain.models import build_model
from emotrain.training.rundir import RunDir
from emotrain.training.run_config import load_run_config

REPO = Path(__file__).resolve().parents[1]
MODELS = {"audio": "audio_text", "video": "video_text"}
# Small searches: a tiny val split, and every strategy still fitted for real.
FUSION = FusionConfig(
    weighted=WeightedConfig(grid_steps=5), confidence=ConfidenceConfig(sharpness=[1.0, 4.0]),
    stacking=StackingConfig(folds=2, l2=[1e-2], max_iter=30),
    gating=GatingConfig(folds=2, hidden=4, epochs=[10], weight_decay=[0.0]),
    metrics=MetricsConfig(bootstrap_resamples=20), min_key_overlap=0.0)


def make_run(root: Path, kind: str, shards: Path, seed: int, batch_size: int = 4) -> Path:
    """An export-style run folder (config.yaml + model.safetensors) of a seeded, untrained tiny model,
    evaluated on val and test."""
    cfg = load_run_config(REPO / "configs" / "demo" / f"{kind}.yaml",
                          [f"data.shards={shards}", "train.bf16=false", "data.num_workers=0",
                           f"eval_batch_size={batch_size}"])
    run = RunDir(root)
    run.write_config(cfg)
    manifest = Manifest.load(shards, "train")
    torch.manual_seed(seed)
    model = build_model(cfg.model, len(manifest.classes), meta_vocab_sizes(manifest.vocab), load_weights=False).eval()
    save_weights(model.state_dict(), run.root / WEIGHTS, {})
    modalities = Modalities(audio=cfg.model.needs_audio, video=cfg.model.needs_video)
    for split in ("val", "test"):
        scored = evaluate_model(model, cfg.data, modalities, split, batch_size, torch.device("cpu"), False, 0, 1,
                                len(manifest.classes))
        write_evaluation(run, split, scored, manifest.classes, {}, 0)
    return run.root


def make_system(root: Path, shards: Path, seed: int = 0) -> dict[str, Path]:
    """Runs ``audio`` and ``video``, their fusion report ``fusion`` and the bundles ``bundle`` (both models)
    and ``bundle_audio`` (model A alone, calibrated)."""
    paths = {name: make_run(root / name, kind, shards, seed + i) for i, (name, kind) in enumerate(MODELS.items())}
    result = fuse_runs(load_run(paths["audio"]), load_run(paths["video"]), FUSION)
    paths["fusion"] = root / "fusion"
    write_outputs(result, FUSION, paths["audio"], paths["video"], paths["fusion"], None)
    paths["bundle"], paths["bundle_audio"] = root / "bundle", root / "bundle_audio"
    assert main(["bundle", "--audio", str(paths["audio"]), "--video", str(paths["video"]), "--fusion",
                 str(paths["fusion"]), "--out", str(paths["bundle"])]) == 0
    assert main(["bundle", "--audio", str(paths["audio"]), "--fusion", str(paths["fusion"]),
                 "--out", str(paths["bundle_audio"])]) == 0
    return paths


def predict(*args: str) -> None:
    """``emotrain predict ARGS --no-progress``, which must succeed."""
    assert main(["predict", *map(str, args), "--no-progress"]) == 0


def corpus_and_system(root: Path) -> dict:
    """The predict tests' setting: a 20-conversation corpus, its shards (the test split in at least two shards,
    one per rank) and the stand-in system made on them."""
    from corpus import make_corpus, make_shards
    from emotrain.data.splits import SplitRecipe

    corpus = make_corpus(root / "corpus", conversations=20, seed=5)
    shards = root / "shards" / "p"
    manifests = make_shards(corpus, shards, recipe=SplitRecipe(0.3, 0.3, seed=0), shard_mb=100.0, max_per_shard=3)
    assert len(manifests["test"].shards) >= 2
    return {"root": root, "corpus": corpus, "shards": shards, "manifests": manifests, **make_system(root / "sys", shards)}
