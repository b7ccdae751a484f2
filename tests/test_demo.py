"""`emotrain demo`, reduced, end to end: both models learn, the chosen fusion beats both.

The reduced demo is the real one (`configs/demo/`) with a smaller corpus and fewer steps
(``REDUCED``), run the way a user runs it: the CLI, 2 CPU ranks, ZeRO-2, bf16. Each seed
changes the synthetic corpus, its split and the training seed. Its runs also carry the
acceptance checks of a real 2-rank torchrun training run of each model (completed, ZeRO-2 in
bf16, loss down, checkpoint kept), of 2-rank evaluation (every turn once) and of the export.

One seed runs, as a new user gets the project: ``pip install .`` (no extras) into a fresh venv, then
that venv's ``emotrain demo`` in an empty folder, which must hold nothing but the demo's outputs
afterwards; ``evaluate`` of one of its runs then runs from a third folder, reading the run's saved
config only. The install takes about 1.5 min here (the wheels come from the local package cache).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import BIN, NOISE, REPO, child_env, scalars

from emotrain.evaluation.predictions import load_predictions
from emotrain.fusion.fusion_file import FusionSummary
from emotrain.names import raw_row

pytestmark = pytest.mark.slow
NUM_CLASSES = 7
MODELS = ("audio_text", "video_text")
# The reduced demo: a smaller corpus with a stronger audio and video signal (0.8 of the turns
# informative instead of 0.65); fewer steps (global batches of 16 turns) at twice the learning
# rate, one validation and checkpoint at the end; model A on the current and previous
# utterance's 0.5 s clips; the quick fusion config (smaller CV searches).
REDUCED = ["corpus.conversations=260", "pack.max_per_shard=8", "fusion=fusion/quick",
           "corpus.spec.audio_informative=0.8", "corpus.spec.video_informative=0.8",
           'train_overrides=["train.lr=1e-3", "train.encoder_lr=1e-3"]']
STEPS = {"audio_text": 180, "video_text": 60}
MODEL_EXTRA = {"audio_text": ["data.text.max_utterances=2", "data.audio.max_seconds=0.5"], "video_text": []}


def model_overrides(seed: int) -> str:
    per_model = {
        model: [f"train.total_samples={16 * steps}", f"train.eval_every_steps={steps}",
                f"train.checkpoint_every_steps={steps}", f"train.seed={seed}", *MODEL_EXTRA[model]]
        for model, steps in STEPS.items()
    }
    return "model_overrides=" + json.dumps(per_model)


# The demo packs prepared video (pack --prepare-video: 8 JPEG frames of the tiny TimeSformer's 32 px
# per clip, 4 of them read per turn). Training on mp4 shards runs end to end in tests/test_train_runs.py.
INSTALLED = 1  # the seed of the demo, run from the pip-installed venv in an empty folder


def clean_env(venv: Path) -> dict[str, str]:
    """No launcher, cluster or Python-path variables: the venv alone decides what is imported. DeepSpeed
    builds its CPU ops into a folder of the venv's own: in the checkout's folder, a build against the
    venv's copy of DeepSpeed would make every later test (and any other checkout sharing it) rebuild."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "ACCELERATE_", "TORCHELASTIC_", "SUBMITIT_", "PYTHON", "VIRTUAL_ENV"))
           and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    return {**env, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "TORCH_EXTENSIONS_DIR": str(venv / "torch_extensions")}


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh venv with ``pip install .`` of this checkout (no extras, the pinned versions)."""
    root = tmp_path_factory.mktemp("venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, timeout=300)
    # From a copy of the checkout's sources: setuptools builds in the source folder's build/, which another
    # test worker's build of the checkout (tests/test_offline_install.py) would change under this one.
    source = tmp_path_factory.mktemp("source") / "emotrain"
    shutil.copytree(REPO, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", ".pytest_cache", "runs", "wheels"))
    pip = [str(root / "bin" / "python"), "-m", "pip", "install", "-q", "-c", str(source / "constraints.txt"), str(source)]
    proc = subprocess.run(pip, env=clean_env(root), cwd=tmp_path_factory.mktemp("pip"), capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root


@pytest.fixture(scope="module")
def demo(venv, tmp_path_factory) -> tuple[Path, str, str]:
    """The demo's work folder (EMPTY/runs/demo, the default), stdout and stderr."""
    seed = INSTALLED
    sets = [f"corpus.seed={seed}", *REDUCED, model_overrides(seed)]
    sets = [arg for item in sets for arg in ("--set", item)]
    empty = tmp_path_factory.mktemp(f"demo_seed{seed}") / "empty"
    empty.mkdir()
    work = empty / "runs" / "demo"
    cmd = [str(venv / "bin" / "emotrain"), "demo", *sets]
    proc = subprocess.run(cmd, env=clean_env(venv), cwd=empty, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return work, proc.stdout, proc.stderr


def test_both_models_trained_to_the_end_on_two_ranks_with_zero2_in_bf16(demo):
    work, *_ = demo
    for model, steps in STEPS.items():
        run_dir = work / "runs" / model
        status = json.loads((run_dir / "status.json").read_text())
        assert (status["status"], status["step"], status["total_steps"]) == ("completed", steps, steps)
        assert (status["world_size"], status["launcher"]) == (2, "torchrun")
        ds = json.loads((run_dir / "deepspeed.json").read_text())
        assert ds["zero_optimization"]["stage"] == 2 and ds["bf16"]["enabled"]
        assert (run_dir / "checkpoints" / f"step{steps:08d}").is_dir()
        losses = [value for _, value in scalars(run_dir)["train/loss"]]
        assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, (model, losses)


def test_the_shards_hold_prepared_video(demo):
    work, *_ = demo
    manifest = json.loads((work / "shards" / "demo" / "train" / "manifest.json").read_text())
    assert manifest["video"] == {"frames": 8, "size": 32, "quality": 90, "format": "jpeg"}


def test_both_models_scored_every_val_and_test_turn_once(demo):
    work, *_ = demo
    for split in ("val", "test"):
        manifest = json.loads((work / "shards" / "demo" / split / "manifest.json").read_text())
        keys = [load_predictions(work / "runs" / model / "predictions" / f"{split}.npz").keys for model in MODELS]
        assert len(keys[0]) == len(set(keys[0])) == manifest["labelled_turns"] > 0
        assert sorted(keys[0]) == sorted(keys[1])


def test_export_of_model_a_loads_without_deepspeed(demo, tmp_path):
    work, *_ = demo
    out = tmp_path / "export"
    exported = subprocess.run([str(BIN / "emotrain"), "export", str(work / "runs" / "audio_text"), "--out", str(out)],
                              env=child_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
    assert exported.returncode == 0, exported.stderr[-3000:]
    check = f"""
import json, sys
from safetensors.torch import load_file
from emotrain.data.schema import meta_vocab_sizes
from emotrain.models import build_model
from emotrain.training.run_config import load_run_config
cfg = load_run_config({str(out / 'config.yaml')!r})
manifest = json.load(open({str(work / 'shards' / 'demo' / 'train' / 'manifest.json')!r}))
model = build_model(cfg.model, 7, meta_vocab_sizes(manifest['vocab']), load_weights=False)
model.load_state_dict(load_file({str(out / 'model.safetensors')!r}), strict=True)
assert "deepspeed" not in sys.modules
print("ok", len(model.state_dict()))
"""
    loaded = subprocess.run([sys.executable, "-c", check], env=child_env(), cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert loaded.returncode == 0 and loaded.stdout.startswith("ok"), loaded.stderr[-3000:]


def test_each_model_learns_and_the_chosen_fusion_beats_both(demo):
    work, *_ = demo
    summary = FusionSummary.load(work / "fusion")
    rows = summary.test
    audio, video = rows[raw_row("audio")]["macro_f1"], rows[raw_row("video")]["macro_f1"]
    chosen = summary.chosen_metrics("test")["macro_f1"]
    assert audio >= 2 / NUM_CLASSES and video >= 2 / NUM_CLASSES, (audio, video)
    assert chosen > max(audio, video), (summary.chosen, chosen, audio, video)


def test_the_results_table_and_where_things_are_are_printed(demo):
    work, stdout, _ = demo
    summary = FusionSummary.load(work / "fusion")
    table = stdout[stdout.index("Results on the synthetic test split"):]
    for name in summary.test:
        assert name in table
    assert summary.chosen_row in next(line for line in table.splitlines() if "<- chosen on val" in line)
    assert f"tensorboard --logdir {work}" in stdout
    for model in MODELS:
        assert str(work / "runs" / model / "checkpoints") in stdout


def test_the_console_holds_no_library_noise(demo):
    _, stdout, stderr = demo
    console = stdout + stderr
    for noise in NOISE:
        assert noise not in console, (noise, console[max(0, console.find(noise) - 500):][:1500])


def tensorboard_tags(log_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return set(acc.Tags()["scalars"]) | set(acc.Tags()["images"])


def test_tensorboard_logs_hold_the_expected_tags(demo):
    work, *_ = demo
    for model in MODELS:
        tags = tensorboard_tags(work / "runs" / model / "tb")
        assert {"train/loss", "train/lr", "train/grad_norm", "train/samples_per_s", "val/accuracy",
                "val/macro_f1"} <= tags, (model, sorted(tags))
        for split in ("val", "test"):
            assert {f"eval/{split}/accuracy", f"eval/{split}/macro_f1", f"eval/{split}/ece",
                    f"eval/{split}/confusion", f"eval/{split}/reliability"} <= tags, (model, sorted(tags))
    chosen = FusionSummary.load(work / "fusion").chosen
    fusion = tensorboard_tags(work / "fusion" / "tensorboard")
    assert {"fusion/test/comparison", "eval/test/macro_f1", "eval/test/confusion", "fusion/test/audio_(raw)/macro_f1",
            "fusion/test/video_(raw)/macro_f1", f"fusion/test/fusion/{chosen}/macro_f1"} <= fusion, sorted(fusion)


def test_the_demo_ends_with_a_bundle_that_predicts_every_test_turn(demo):
    """The bundle predicts the test split; its fused labels are the fusion's on the labelled turns (scored in
    bf16 on one process here and on two ranks by evaluate, so the probabilities agree to bf16 precision)."""
    import numpy as np

    from emotrain.fusion.pipeline import restore_strategy
    from emotrain.inference.outputs import read_predictions

    work, stdout, _ = demo
    rows = {r["key"]: r for r in read_predictions(work / "predictions" / "predictions.jsonl")}
    manifest = json.loads((work / "shards" / "demo" / "test" / "manifest.json").read_text())
    assert len(rows) == manifest["turns"] and f"predicted {manifest['turns']} turns" in stdout
    assert (work / "bundle" / "bundle.json").is_file() and str(work / "bundle") in stdout
    summary = FusionSummary.load(work / "fusion")
    preds = [load_predictions(work / "runs" / model / "predictions" / "test.npz") for model in MODELS]
    strategy = restore_strategy(summary.chosen, summary.chosen_params, summary.fusion_config())
    fused = strategy.predict_proba(preds[0].logits.astype(np.float64), preds[1].logits.astype(np.float64))
    classes = summary.classes
    got = np.array([[rows[k]["probs"]["fused"][c] for c in classes] for k in preds[0].keys])
    assert np.abs(got - fused).max() < 0.1
    assert (got.argmax(1) == fused.argmax(1)).mean() > 0.9


def test_the_installed_demo_wrote_only_its_outputs_and_evaluate_runs_from_a_third_folder(demo, venv, tmp_path):
    """The plain install ran the demo (the results table, both runs completed, no library noise: the tests
    above on this seed) from an empty folder; evaluate then runs from a third folder."""
    work, *_ = demo
    emotrain = str(venv / "bin" / "emotrain")
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import emotrain; print(emotrain.__file__)"],
                           env=clean_env(venv), cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip()
    assert not Path(where).resolve().is_relative_to(REPO), where  # the installed copy, not the checkout
    empty = work.parents[1]
    assert sorted(p.name for p in empty.iterdir()) == ["runs"]  # nothing written beside its outputs
    for model in MODELS:
        assert (work / "runs" / model / "eval" / "test" / "report.json").is_file()

    third = tmp_path / "third"
    third.mkdir()
    run_dir = work / "runs" / "audio_text"
    (run_dir / "predictions" / "val.npz").unlink()
    evaluated = subprocess.run([emotrain, "evaluate", str(run_dir), "--split", "val", "--no-progress"],
                               env=clean_env(venv), cwd=third, capture_output=True, text=True, timeout=600)
    assert evaluated.returncode == 0, evaluated.stdout[-3000:] + evaluated.stderr[-3000:]
    assert "audio_text val: accuracy" in evaluated.stdout
    assert (run_dir / "predictions" / "val.npz").is_file() and not any(third.iterdir())
