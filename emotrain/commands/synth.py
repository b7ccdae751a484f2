"""``emotrain synth --out DIR``: a small, learnable corpus in the real AvaMERG layout."""

from __future__ import annotations

import argparse
from pathlib import Path

from emotrain.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="folder for train.json, audio_v5_0/, video_v5_0/")
    parser.add_argument("--conversations", type=int, default=200, help="number of conversations (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same corpus byte for byte (default 0)")
    parser.add_argument("--video-size", type=int, default=64, help="square frame side, even, 16-1024 (default 64)")
    parser.add_argument("--fps", type=int, default=8, help="video frame rate, 1-60 (default 8)")
    parser.add_argument("--seconds", type=float, nargs=2, metavar=("MIN", "MAX"), default=(1.0, 4.0),
                        help="clip lengths are drawn from [MIN, MAX] seconds (default 1 4; AvaMERG's are ~5.7)")
    parser.add_argument("--keyframe-interval", type=int, default=250,
                        help="at most this many frames between keyframes (x264 keyint; default 250, x264's own)")
    parser.add_argument("--workers", type=int, default=1, help="processes rendering media (default 1)")
    parser.add_argument("--overwrite", action="store_true", help="replace a corpus already in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from emotrain.data.synthetic import TARGET_SCHEME, SynthSpec, generate_corpus

    spec = SynthSpec(video_size=args.video_size, fps=args.fps, min_seconds=args.seconds[0],
                     max_seconds=args.seconds[1], keyframe_interval=args.keyframe_interval)
    try:
        spec.validate()
    except ValueError as err:
        raise UserError(str(err)) from None
    summary = generate_corpus(
        args.out, args.conversations, args.seed, spec, workers=args.workers,
        progress=not args.no_progress, overwrite=args.overwrite,
    )
    print(
        f"synth: {summary['conversations']} conversations, {summary['turns']} turns "
        f"({summary['unlabelled_turns']} unlabelled under {TARGET_SCHEME}), {summary['clips']} clips, "
        f"{summary['seconds']:.1f} s of media -> {summary['out_dir']}"
    )
    return 0
