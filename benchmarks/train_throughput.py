"""Training throughput of the tiny models: samples/s per rank and the share of time waiting for data,
for ZeRO stage 0, 1 and 2 at 1 and 2 ranks (CPU processes here, gloo).

Each cell is a real `torchrun ... launch/train.py` run on synthetic shards; the figures are the
engine's own TensorBoard scalars, averaged over the logging windows after the first (which holds
start-up). Prints one table per model.

    python benchmarks/train_throughput.py --model audio_text --steps 40
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from emotrain.data.pack import PackOptions, pack
from emotrain.data.splits import SplitRecipe
from emotrain.training.rundir import RunDir
from emotrain.data.synthetic import SynthSpec, generate_corpus
from emotrain.training.distributed import free_port
from emotrain.labels import load_scheme

REPO = Path(__file__).resolve().parents[1]


def make_shards(tmp: Path, conversations: int) -> Path:
    corpus = tmp / "corpus"
    generate_corpus(corpus, conversations, seed=0, spec=SynthSpec(), workers=2, progress=False)
    out = tmp / "shards" / "bench"
    pack(PackOptions(source=corpus, out=out, scheme=load_scheme("ekman7"), recipe=SplitRecipe(0.1, 0.1, 0),
                     workers=2, max_per_shard=8, progress=False))
    return out


def run_cell(model: str, shards: Path, run_dir: Path, stage: int, ranks: int, steps: int) -> tuple[float, float]:
    sets = [f"data.shards={shards}", f"train.deepspeed_config=deepspeed/zero{stage}.json",
            "train.global_batch_size=16", "train.micro_batch_size=8" if ranks == 2 else "train.micro_batch_size=16",
            f"train.total_samples={16 * steps}", "train.log_every_steps=5", "train.eval_every_steps=0",
            f"train.checkpoint_every_steps={steps * 10}", "data.num_workers=1"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_port",
           str(free_port()), str(REPO / "launch" / "train.py"), str(REPO / "configs" / "demo" / f"{model}.yaml"),
           "--run-dir", str(run_dir), *[a for s in sets for a in ("--set", s)]]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": str(max(1, 2 // ranks))}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"run failed:\n{proc.stderr[-3000:]}")
    acc = EventAccumulator(str(RunDir(run_dir).tensorboard))
    acc.Reload()
    rate = [e.value for e in acc.Scalars("train/samples_per_s")][1:]
    wait = [e.value for e in acc.Scalars("train/data_wait_share")][1:]
    return sum(rate) / len(rate) / ranks, sum(wait) / len(wait)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["audio_text", "video_text", "both"], default="both")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps of 16 samples per cell")
    parser.add_argument("--conversations", type=int, default=120)
    args = parser.parse_args()
    models = ["audio_text", "video_text"] if args.model == "both" else [args.model]
    with tempfile.TemporaryDirectory() as tmp:
        shards = make_shards(Path(tmp), args.conversations)
        for model in models:
            print(f"\n{model}: samples/s per rank (data-wait share), {args.steps} steps of 16 samples, bf16")
            print(f"{'ZeRO stage':<12}{'1 rank':>22}{'2 ranks':>22}")
            for stage in (0, 1, 2):
                cells = []
                for ranks in (1, 2):
                    rate, wait = run_cell(model, shards, Path(tmp) / f"{model}-z{stage}-r{ranks}", stage, ranks, args.steps)
                    cells.append(f"{rate:8.1f} ({wait:5.1%})")
                print(f"{stage:<12}" + "".join(f"{c:>22}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
