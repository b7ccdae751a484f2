"""``emotrain fuse``: calibrate and late-fuse an audio run and a video run, report on test.

Writes, into ``--out``: ``fusion.json``, ``fusion.md``, ``fusion.png`` and the chosen strategy's
``report.json`` with its plots (see :mod:`emotrain.fusion.outputs`). Prints the table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_CONFIG = "fusion/default"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--audio", required=True, type=Path, help="run directory of model A (holds predictions/)")
    parser.add_argument("--video", required=True, type=Path, help="run directory of model B (holds predictions/)")
    parser.add_argument("--out", type=Path, default=None,
                        help="report folder (default: reports/fuse-<audio run>-<video run>)")
    parser.add_argument("--config", default=DEFAULT_CONFIG,
                        help="fusion config: a YAML file or a packaged name, fusion/default or fusion/quick "
                        "(default: %(default)s)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set gating.hidden=32 (repeatable)")
    parser.add_argument("--tensorboard", type=Path, default=None, help="also log the test scalars and figures here")


def run(args: argparse.Namespace) -> int:
    from emotrain.config import load_config
    from emotrain.fusion.outputs import render_markdown, write_outputs
    from emotrain.fusion.pipeline import FusionConfig, fuse_runs
    from emotrain.fusion.runs import load_run

    from emotrain.files import replaced_folder

    config = load_config(FusionConfig, args.config, args.overrides)
    out = args.out or Path("reports") / f"fuse-{args.audio.resolve().name}-{args.video.resolve().name}"
    with replaced_folder(out) as staging:  # checked before the work; an earlier report's files do not stay
        audio, video = load_run(args.audio), load_run(args.video)
        result = fuse_runs(audio, video, config)
        write_outputs(result, config, args.audio, args.video, staging, args.tensorboard)
    print(render_markdown(result, args.audio, args.video))
    print(f"wrote {out / 'fusion.json'}, {out / 'fusion.md'}, {out / 'fusion.png'}")
    return 0
