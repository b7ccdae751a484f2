"""What pruning saves a search: at an equal number of trials of the tiny model B, the optimizer steps the
trials spent with the median pruner against without it, and the best val objective each search reached.

Both searches are real ``emotrain sweep run`` searches (one process, trials one after another) on the
same synthetic shards, with the same seeded TPE sampler, space and objective (val NLL, minimised); only
``search.pruner`` differs. Steps are read from each trial's ``run/status.json`` (where its training
stopped), the objective from the study (a pruned trial has none).

    python benchmarks/search_budget.py --trials 10 --steps 12
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from emotrain.data.pack import PackOptions, pack
from emotrain.data.splits import SplitRecipe
from emotrain.data.synthetic import SynthSpec, generate_corpus
from emotrain.labels import load_scheme

REPO = Path(__file__).resolve().parents[1]


def make_shards(tmp: Path, conversations: int) -> Path:
    corpus = tmp / "corpus"
    generate_corpus(corpus, conversations, seed=0, spec=SynthSpec(), workers=2, progress=False)
    out = tmp / "shards" / "bench"
    pack(PackOptions(source=corpus, out=out, scheme=load_scheme("ekman7"), recipe=SplitRecipe(0.2, 0.1, 0),
                     workers=2, max_per_shard=8, progress=False))
    return out


def run_search(tmp: Path, shards: Path, pruner: dict, trials: int, steps: int, every: int) -> dict:
    name = f"prune-{pruner['name']}"
    file = tmp / f"{name}.yaml"
    file.write_text(yaml.safe_dump({
        "name": name, "train_config": "demo/video_text", "shards": str(shards), "seeds": [0],
        "overrides": [f"train.total_samples={16 * steps}", f"train.eval_every_steps={every}",
                      "train.checkpoint_every_steps=0", "train.log_every_steps=10", "train.warmup_samples=0",
                      "data.num_workers=0", "eval_batch_size=16"],
        "search": {"space": {"train.lr": {"log_uniform": [1e-6, 1e-2]},
                             "train.encoder_lr": {"log_uniform": [1e-6, 1e-2]}},
                   "n_trials": trials, "objective": {"metric": "nll", "direction": "minimize"},
                   "sampler": {"seed": 0, "n_startup_trials": 4}, "pruner": pruner},
    }))
    out = tmp / name
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "2"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "emotrain.cli", "sweep", "run", str(file), "--out", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"search failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    summary = json.loads((out / "report" / "search.json").read_text())
    spent = sum(json.loads((Path(t["folder"]) / "run" / "status.json").read_text())["step"] for t in summary["trials"])
    complete = [t["value"] for t in summary["trials"] if t["state"] == "complete"]
    return {"pruner": pruner["name"], "trials": len(summary["trials"]),
            "pruned": sum(t["state"] == "pruned" for t in summary["trials"]), "steps": spent,
            "best": min(complete), "wall": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps of a trial that is not pruned")
    parser.add_argument("--every", type=int, default=2, help="steps between validations (pruning points)")
    parser.add_argument("--conversations", type=int, default=24)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        shards = make_shards(tmp, args.conversations)
        rows = [run_search(tmp, shards, {"name": "none"}, args.trials, args.steps, args.every),
                run_search(tmp, shards, {"name": "median", "n_startup_trials": 3, "n_warmup_steps": args.every},
                           args.trials, args.steps, args.every)]
    print(f"tiny model B, {args.trials} trials of at most {args.steps} optimizer steps (validation every "
          f"{args.every}), TPE seed 0, objective val NLL (lower is better)")
    print(f"{'pruner':<8}{'trials':>8}{'pruned':>8}{'optimizer steps':>17}{'best val NLL':>14}{'wall s':>9}")
    for r in rows:
        print(f"{r['pruner']:<8}{r['trials']:>8}{r['pruned']:>8}{r['steps']:>17}{r['best']:>14.4f}{r['wall']:>9.0f}")
    print(f"pruning spent {rows[1]['steps'] / rows[0]['steps']:.0%} of the steps of the search without it")


if __name__ == "__main__":
    main()
