"""Small synthetic AvaMERG corpora and packed shards for tests, built once per session."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from emotrain.data.pack import PackOptions, pack
from emotrain.data.splits import SplitRecipe
from emotrain.data.synthetic import SynthSpec, generate_corpus
from emotrain.labels import load_scheme

TINY_SPEC = SynthSpec(video_size=32, fps=4, min_seconds=0.5, max_seconds=1.5)
ALL_IN_TRAIN = SplitRecipe(0.0, 0.0, seed=0)
TESTS = Path(__file__).resolve().parent


def make_corpus(root: Path, conversations: int = 12, seed: int = 0) -> Path:
    generate_corpus(root, conversations, seed, TINY_SPEC, workers=1, progress=False)
    return root


def copy_corpus(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def pack_options(source: Path, out: Path, **overrides) -> PackOptions:
    base = dict(
        source=source, out=out, scheme=load_scheme("ekman7"), recipe=SplitRecipe(0.25, 0.25, seed=0),
        workers=1, shard_mb=1.0, max_per_shard=3, progress=False,
    )
    base.update(overrides)
    return PackOptions(**base)


def make_shards(source: Path, out: Path, **overrides) -> dict:
    return pack(pack_options(source, out, **overrides))


def torchrun(nproc: int, script: str, *args: str, timeout: int = 300) -> None:
    """Run ``tests/<script>`` on ``nproc`` local ranks (``--standalone`` picks a free port)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           str(TESTS / script), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
