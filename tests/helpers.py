"""Helpers shared by several test modules (no test module imports another test module).

Topics: child processes (the environment, waiting, killing process trees), the toy engine runs of
tests/toy_train.py, TensorBoard scalars, the loader's test config, the tiny model configs, synthetic
prediction runs for fusion, and AvaMERG records. Corpora and shards: tests/corpus.py; the local
SLURM: tests/slurm_util.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

from emotrain.data.schema import META_FIELDS

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
BIN = Path(sys.executable).parent
TIMEOUT = 240
TOKENIZER = str(REPO / "configs" / "tokenizers" / "tiny-wordpiece")


# ---- child processes ---------------------------------------------------------------------------

def child_env() -> dict[str, str]:
    """This environment minus anything a launcher or a cluster would have set."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "ACCELERATE_", "TORCHELASTIC_", "SUBMITIT_"))
           and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    return {**env, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"run ended before {path} appeared:\n{proc.stderr.read()[-3000:]}"
        assert time.monotonic() < deadline, f"{path} did not appear in {timeout} s"
        time.sleep(0.05)


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def descendants(pid: int) -> list[int]:
    """Every process under ``pid`` (read from /proc)."""
    found, pending = [], children(pid)
    while pending:
        found.append(pending.pop())
        pending += children(found[-1])
    return found


def kill9_tree(pid: int) -> None:
    """SIGKILL a launcher and every process under it (torchrun puts workers in sessions of their own)."""
    pending, found = [pid], []
    while pending:
        found.append(pending.pop())
        pending += children(found[-1])
    for victim in reversed(found):
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass


# Library noise a user cannot act on; the warnings filters and quiet loggers live in emotrain.cli.
NOISE = ("No CUDA runtime", "FutureWarning", "Processing zero checkpoint", "Reconstructed fp32 state dict",
         "return func(*args, **kwargs)")


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """The TensorBoard scalars of ``run_dir/tb``: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


# ---- the toy engine runs (tests/toy_train.py on 2 ranks) ----------------------------------------

TOY = TESTS / "toy_train.py"
# Two micro-batches of 8 per rank per step at 2 ranks (accumulation 2), 16 steps, checkpoints every 4.
REFERENCE = ["total_samples=512", "global_batch_size=32", "micro_batch_size=8", "checkpoint_every_steps=4",
             "keep_checkpoints=2", "eval_every_steps=8", "log_every_steps=2"]


def toy_args(run_dir: Path, *extra: str, train: list[str] = REFERENCE) -> list[str]:
    args = [str(TOY), "--run-dir", str(run_dir), "--result-json", str(run_dir / "result.json"), *extra]
    for item in train:
        args += ["--train", item]
    return args


def torchrun(run_dir: Path, *extra: str, train: list[str] = REFERENCE) -> list[str]:
    """The toy under torchrun on 2 ranks (the command line)."""
    from emotrain.training.distributed import free_port

    return [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()), *toy_args(run_dir, *extra, train=train)]


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=child_env(), cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT)


def result_of(run_dir: Path, proc: subprocess.CompletedProcess | None = None) -> dict:
    path = run_dir / "result.json"
    assert path.is_file(), f"no result; stderr tail:\n{proc.stderr[-3000:] if proc else ''}"
    return json.loads(path.read_text())


def losses(result: dict) -> dict[int, float]:
    return {step: loss for step, loss in result["losses"]}


# ---- the loader ----------------------------------------------------------------------------------

def data_config(shards, **overrides):
    """The loader config the data tests use: the tiny tokenizer, no workers, no shuffling."""
    from emotrain.data.media import AudioConfig, VideoConfig
    from emotrain.data.stream import DataConfig
    from emotrain.data.text import TextConfig

    base = dict(shards=str(shards), text=TextConfig(tokenizer=TOKENIZER), num_workers=0, shuffle_buffer=0,
                audio=AudioConfig(max_seconds=1.0), video=VideoConfig(num_frames=4, image_size=32))
    base.update(overrides)
    return DataConfig(**base)


def labelled_keys(shards_dir) -> set[str]:
    """Every labelled turn key, read straight from the tars (independent of the loader)."""
    manifest = json.loads((Path(shards_dir) / "train" / "manifest.json").read_text())
    keys = set()
    for shard in manifest["shards"]:
        with tarfile.open(Path(shards_dir) / "train" / shard["name"]) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name, data in members.items():
            if name.endswith(".labels.json"):
                conv = name[: -len(".labels.json")]
                record = json.loads(members[conv + ".json"])
                for turn, label in zip(record["turns"], json.loads(data)):
                    if label >= 0:
                        keys.add(f"{conv}_{turn['turn_id']}")
    return keys


# ---- the tiny models -------------------------------------------------------------------------------

TINY = {"audio_text": REPO / "configs/model/audio_text_tiny.yaml", "video_text": REPO / "configs/model/video_text_tiny.yaml"}
NUM_CLASSES = 7
META_SIZES = {column: 5 for column, _ in META_FIELDS}
VOCAB = 342


def tiny_config(kind: str, overrides: list[str] | None = None):
    from emotrain.config import load_config
    from emotrain.models import ModelConfig

    return load_config(ModelConfig, TINY[kind], overrides)


def make_batch(kind: str, labels: list[int], **kwargs) -> dict:
    from emotrain.models.example_batch import example_batch

    return example_batch(kind, labels, vocab_size=VOCAB, meta_vocab=5, **kwargs)


# ---- synthetic prediction runs for fusion ---------------------------------------------------------

CLASSES = ["happy", "surprised", "angry", "fear", "sad", "disgusted", "contempt"]
PRIORS = np.array([0.3, 0.15, 0.15, 0.12, 0.14, 0.08, 0.06])  # imbalanced, like AvaMERG


def model_logits(rng, labels, informative_share, scale):
    """A model that sees the class on a random share of samples only (and guesses elsewhere)."""
    n = len(labels)
    logits = rng.normal(0.0, 1.0, (n, len(CLASSES)))
    logits[np.arange(n), labels] += np.where(rng.random(n) < informative_share, 3.0, 0.0)
    return logits * scale


def make_split(rng, n):
    """Both models from one recipe; they fail on independent samples. A is over-confident, B under."""
    labels = rng.choice(len(CLASSES), n, p=PRIORS)
    return labels, model_logits(rng, labels, 0.55, 3.0), model_logits(rng, labels, 0.5, 0.7)


def make_runs(root: Path, n_val=500, n_test=500, seed=0, test_label_perm=None, b_extra=None):
    """Write RUN_A and RUN_B prediction folders; returns their paths."""
    from emotrain.evaluation.predictions import save_classes, save_predictions

    rng = np.random.default_rng(seed)
    splits = {s: make_split(rng, n) for s, n in (("val", n_val), ("test", n_test))}
    runs = []
    for name, column in (("run_a", 1), ("run_b", 2)):
        pred_dir = root / name / "predictions"
        save_classes(pred_dir, CLASSES)
        for split, data in splits.items():
            keys = [f"{i:05d}_{i % 3}" for i in range(len(data[0]))]
            labels = data[0]
            if split == "test" and test_label_perm is not None:
                labels = labels[test_label_perm]
            order = np.arange(len(keys)) if name == "run_a" else rng.permutation(len(keys))  # rows in any order
            save_predictions(pred_dir / f"{split}.npz", [keys[i] for i in order], data[column][order], labels[order])
        runs.append(root / name)
    return runs


# ---- AvaMERG records -------------------------------------------------------------------------------

def conversation(cid="00001", turns=2, speaker=3, listener=7, emotion="proud"):
    """One AvaMERG conversation record with a cumulative dialogue history."""
    history, raw_turns = [], []
    for k in range(turns):
        if k:
            history.append({"index": len(history), "role": "listener", "utterance": f"listener line {k}"})
        history.append({"index": len(history), "role": "speaker", "utterance": f"speaker line {k}"})
        raw_turns.append({
            "turn_id": k, "context": "a situation", "dialogue_history": list(history), "response": "ok",
            "chain_of_empathy": {"speaker_emotion": emotion, "event_scenario": "work", "emotion_cause": "c",
                                 "goal_to_response": "g"},
        })
    profile = lambda i: {"ID": i, "age": "young", "gender": "female", "timbre": "mid"}  # noqa: E731
    return {"conversation_id": cid, "topic": "jobs", "speaker_profile": profile(speaker),
            "listener_profile": profile(listener), "turns": raw_turns}


def write(tmp_path, records):
    """``records`` as tmp_path/train.json."""
    path = tmp_path / "train.json"
    path.write_text(json.dumps(records))
    return path
