"""``emotrain bundle --audio RUN --video RUN --fusion REPORT --out BUNDLE``: a trained system in one portable folder.

The bundle holds each model's weights (safetensors), its model and data settings, tokenizer and
metadata vocabularies, the label scheme, the temperatures and the fusion strategy chosen on val
with its fitted parameters (from ``emotrain fuse --out REPORT``), and versions; see
:mod:`emotrain.inference.bundle`. One model alone (``--audio RUN`` or ``--video RUN``) makes a
bundle that predicts with that model only (calibrated when ``--fusion`` is given).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from emotrain.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--audio", type=Path, help="run (or export) folder of model A")
    parser.add_argument("--video", type=Path, help="run (or export) folder of model B")
    parser.add_argument("--fusion", type=Path, help="the `emotrain fuse --out` folder fitted on these runs "
                        "(its chosen strategy and temperatures); needed for two models")
    parser.add_argument("--out", type=Path, required=True, help="the bundle folder to create (must not exist)")
    parser.add_argument("--last", action="store_true", help="each run's newest checkpoint instead of its best")


def run(args: argparse.Namespace) -> int:
    from emotrain.inference.bundle import fusion_from_report, source_from_run, write_bundle

    from emotrain.files import replaced_folder

    runs = {name: path for name, path in (("audio", args.audio), ("video", args.video)) if path is not None}
    if not runs:
        raise UserError("give --audio RUN and/or --video RUN")
    if len(runs) == 2 and args.fusion is None:
        raise UserError("two models need --fusion REPORT (the `emotrain fuse --out` folder fitted on them)")
    if args.out.exists():
        raise UserError(f"{args.out} exists: bundle into a new folder (or remove it)")
    with replaced_folder(args.out) as staging:  # checked before the work; a half-written bundle never sits at --out
        fusion, temperatures = None, None
        if args.fusion is not None:
            bundled, temperatures = fusion_from_report(args.fusion, runs)
            fusion = bundled if len(runs) == 2 else None
        sources = {name: source_from_run(path, last=args.last) for name, path in runs.items()}
        write_bundle(staging, sources, fusion, temperatures)
    print(json.dumps({"bundle": str(args.out), "models": sorted(sources), "fusion": fusion.strategy if fusion else None}))
    return 0
