"""``emotrain predict BUNDLE --avamerg DIR | --shards DIR | --media FILE --out OUT``: apply a bundle to new data.

Reads an AvaMERG-layout folder directly (``--avamerg``, with ``--json``, ``--audio-dir``, ``--video-dir`` as
``pack`` takes them; the official ``test.json`` layout included) or packed shards (``--shards``, ``--split``).
Runs on one process, or under torchrun / srun like ``evaluate`` (every turn predicted once across ranks,
gathered on rank 0). Writes ``OUT/predictions.jsonl`` (``--csv``: also ``predictions.csv``) and
``OUT/summary.json`` (see :mod:`emotrain.inference.outputs`); bad records and clips are listed there with
their reason and never stop the run.

``--media FILE`` (and/or ``--audio FILE``): a person's own recording, with ``--transcript`` (SRT, WebVTT,
JSON cues or text) or ``--asr`` (Whisper); see :mod:`emotrain.inference.media` and its ``write`` module for
what is written.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from emotrain.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path, help="a bundle folder (`emotrain bundle --out`)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--avamerg", type=Path, help="an AvaMERG-layout folder, read directly")
    source.add_argument("--shards", type=Path, help="packed shards (the folder `emotrain pack --out` wrote)")
    source.add_argument("--media", type=Path, help="your own recording: a video (mp4, mov, mkv, webm; with or "
                        "without its audio track) or an audio file (wav, flac, mp3, ogg)")
    media = parser.add_argument_group("your own recording (--media and/or --audio)")
    media.add_argument("--audio", type=Path, help="the recording's audio as a separate file (wav, flac, mp3, ogg)")
    media.add_argument("--transcript", type=Path, help="SRT or WebVTT subtitles (a speaker by <v Name> or 'Name: '), "
                       "a JSON list of {start, end, speaker, text}, or plain text for one utterance")
    media.add_argument("--asr", help="without a transcript: a Whisper model (hub name or local folder) for speech "
                       "recognition; its segments become the utterances")
    media.add_argument("--speaker", help="whose emotion is predicted (default: the first speaker named)")
    media.add_argument("--explain", action="store_true", help="per turn, each model's attention over its "
                       "utterances and its share in the fused decision")
    media.add_argument("--max-media-mb", type=float, default=16384.0, help="larger files are refused (default: %(default)s)")
    media.add_argument("--max-minutes", type=float, default=240.0, help="longer recordings are refused (default: %(default)s)")
    media.add_argument("--no-plot", action="store_true", help="no timeline.png")
    parser.add_argument("--json", default="test.json", help="--avamerg: the JSON file in it (default: %(default)s)")
    parser.add_argument("--audio-dir", type=Path, help="--avamerg: the wav folder (default: DIR/audio_v5_0, else DIR)")
    parser.add_argument("--video-dir", type=Path, help="--avamerg: the mp4 folder (default: DIR/video_v5_0, else DIR)")
    parser.add_argument("--max-clip-mb", type=float, default=64.0, help="--avamerg: larger clips are refused")
    parser.add_argument("--split", default="test", help="--shards: the split folder (default: %(default)s)")
    parser.add_argument("--workers", type=int, help="--shards: loader workers per rank (default: the model's)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--csv", action="store_true", help="also write predictions.csv")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _check(args: argparse.Namespace) -> None:
    media = args.media is not None or args.audio is not None
    if sum((args.avamerg is not None, args.shards is not None, media)) != 1:
        raise UserError("pass one of --avamerg DIR, --shards DIR or --media FILE (and/or --audio FILE)")
    if not media and any(v is not None for v in (args.transcript, args.asr, args.speaker)):
        raise UserError("--transcript, --asr and --speaker go with --media / --audio")
    if args.max_media_mb <= 0 or args.max_minutes <= 0:
        raise UserError("--max-media-mb and --max-minutes must be > 0")
    if args.avamerg is not None:
        if not args.avamerg.is_dir():
            raise UserError(f"AvaMERG folder not found: {args.avamerg}")
        if Path(args.json).name != args.json:
            raise UserError(f"--json {args.json!r} must be a file name inside --avamerg")
    if args.workers is not None and args.workers < 0:
        raise UserError("--workers must be >= 0")
    if args.max_clip_mb <= 0:
        raise UserError("--max-clip-mb must be > 0")
    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out {args.out} is a file")


def run(args: argparse.Namespace) -> int:
    import contextlib

    from emotrain.files import replaced_folder
    from emotrain.training import distributed as dist

    _check(args)
    if args.media is not None or args.audio is not None:  # one process: a recording is one conversation
        with replaced_folder(args.out) as staging:
            _run_media(args, staging)
        return 0
    env = dist.read_env()
    # Rank 0 writes: its output folder is checked (and a fresh one made beside it) before any work.
    with replaced_folder(args.out) if env.rank == 0 else contextlib.nullcontext(None) as staging:
        _predict(args, env, staging)
    if env.rank == 0:
        print(f"predictions: {args.out / 'predictions.jsonl'}{'  ' + str(args.out / 'predictions.csv') if args.csv else ''}"
              f"  summary: {args.out / 'summary.json'}")
    return 0


def _predict(args: argparse.Namespace, env, staging: Path | None) -> None:  # noqa: ANN001 - a DistEnv
    from emotrain.data.avamerg import MediaDirs
    from emotrain.inference.outputs import PredictOutput
    from emotrain.inference.predict import Predictor
    from emotrain.inference.sources import predict_folder, predict_shards
    from emotrain.training import distributed as dist

    device = dist.init_distributed(env) if env.world_size > 1 else dist.device_for(env)
    progress = not args.no_progress
    try:
        predictor = Predictor.load(args.bundle, device)
        if args.avamerg is not None:
            media = MediaDirs.locate(args.avamerg, args.audio_dir, args.video_dir)
            result = predict_folder(predictor, args.avamerg / args.json, media, env.rank, env.world_size, device,
                                    progress, int(args.max_clip_mb * 2**20))
        else:
            result = predict_shards(predictor, args.shards, args.split, env.rank, env.world_size, device, progress,
                                    args.workers)
    finally:
        dist.shutdown()
    if result is not None and staging is not None:
        turns, summary = result
        PredictOutput(staging).write(turns, predictor.classes, summary, args.csv)
        print(summary.line())


def _run_media(args: argparse.Namespace, staging: Path) -> None:
    """One process: a recording is one conversation, its turns depend on their history."""
    from emotrain.inference.media import MediaLimits
    from emotrain.inference.media.write import MediaOutput
    from emotrain.inference.predict import Predictor

    predictor = Predictor.load(args.bundle)
    limits = MediaLimits(max_bytes=int(args.max_media_mb * 2**20), max_seconds=args.max_minutes * 60.0)
    result = predictor.predict_media(args.media, audio=args.audio, transcript=args.transcript, asr=args.asr,
                                     speaker=args.speaker, explain=args.explain, limits=limits)
    MediaOutput(staging).write_media(result, with_csv=args.csv, plot=not args.no_plot)
    for note in result.notes:
        print(f"note: {note}")
    print(result.line())
    print("wrote: " + "  ".join(str(p) for p in MediaOutput(args.out).files(args.csv, not args.no_plot)))
