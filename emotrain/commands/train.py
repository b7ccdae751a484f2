"""``emotrain train CONFIG --run-dir RUN``: one model, trained on this process's rank (launchers run ``launch/train.py``)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="run config: a YAML file, or a packaged name such as demo/audio_text "
                        "or train/video_text")
    parser.add_argument("--run-dir", type=Path, required=True, help="where checkpoints, logs and the resolved config go; "
                        "an existing run resumes from its latest checkpoint")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.lr=1e-4 or --set data.shards=shards/avamerg "
                        "(paths: relative to the working directory; repeatable)")


def run(args: argparse.Namespace) -> int:
    from emotrain.recipes.jobs import TrainRequest, train_in_process

    return train_in_process(TrainRequest(args.config, args.run_dir, args.overrides))
