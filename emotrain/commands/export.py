"""``emotrain export RUN``: a run's trained weights as one plain ``model.safetensors`` + ``config.yaml``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=Path, help="run folder (holds config.yaml and checkpoints/)")
    parser.add_argument("--out", type=Path, help="output folder (default: RUN/export)")
    parser.add_argument("--tag", help="checkpoint tag such as step00001000 (default: the best one when the run "
                        "validated, else the newest)")
    parser.add_argument("--last", action="store_true", help="the newest checkpoint instead of the best")


def run(args: argparse.Namespace) -> int:
    from emotrain.evaluation.export import CONFIG, export_weights
    from emotrain.training.rundir import RunDir

    out = args.out or RunDir(args.run).export_dir
    target = export_weights(args.run, out, args.tag, args.last)
    print(json.dumps({"weights": str(target), "config": str(out / CONFIG)}))
    return 0
