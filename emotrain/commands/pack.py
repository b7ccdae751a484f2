"""``emotrain pack --avamerg DIR --out shards/NAME``: an AvaMERG folder into WebDataset shards + manifests."""

from __future__ import annotations

import argparse
from pathlib import Path

from emotrain.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--avamerg", type=Path, required=True, help="AvaMERG folder (JSON + audio_v5_0/ + video_v5_0/)")
    parser.add_argument("--out", type=Path, required=True, help="output folder, e.g. shards/NAME")
    parser.add_argument("--labels", default="ekman7", help="label scheme: a YAML path or a packaged name (ekman7, ed32)")
    parser.add_argument("--json", default="train.json", help="the labelled JSON inside --avamerg to carve splits from")
    parser.add_argument("--audio-dir", type=Path, help="wav folder (default: audio_v5_0/ if present, else --avamerg)")
    parser.add_argument("--video-dir", type=Path, help="mp4 folder (default: video_v5_0/ if present, else --avamerg)")
    parser.add_argument("--val-frac", type=float, default=0.1, help="share of conversations for val")
    parser.add_argument("--test-frac", type=float, default=0.1, help="share of conversations for test")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the split assignment")
    parser.add_argument("--speaker-independent", action="store_true",
                        help="keep every avatar ID in one split only; a conversation across splits is dropped")
    parser.add_argument("--workers", type=int, default=1, help="parallel shard writers")
    parser.add_argument("--shard-mb", type=float, default=256.0, help="target shard size in MiB of media")
    parser.add_argument("--max-per-shard", type=int, default=1000, help="at most this many conversations per shard")
    parser.add_argument("--max-clip-mb", type=float, default=64.0, help="a larger clip is recorded as missing")
    parser.add_argument("--max-skip-frac", type=float, default=0.2,
                        help="fail when more conversations are skipped (or dropped by --speaker-independent)")
    parser.add_argument("--prepare-video", action="store_true",
                        help="decode each mp4 once now and store JPEG frames at the model's size: the loader then "
                             "decodes a few small JPEGs per turn instead of the whole clip (see README)")
    parser.add_argument("--video-frames", type=int, default=16,
                        help="with --prepare-video: frames kept per clip, evenly spaced (default 16; the model's "
                             "video.num_frames are picked from these)")
    parser.add_argument("--video-size", type=int, default=224,
                        help="with --prepare-video: square frame side, the video encoder's image_size (default 224)")
    parser.add_argument("--jpeg-quality", type=int, default=90, help="with --prepare-video: JPEG quality (default 90)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from emotrain.data.pack import PackOptions, pack
    from emotrain.data.prepared import PreparedVideo
    from emotrain.data.splits import SplitRecipe
    from emotrain.labels import load_scheme

    if args.workers < 1 or args.shard_mb <= 0 or args.max_per_shard < 1 or args.max_clip_mb <= 0:
        raise UserError("--workers, --shard-mb, --max-per-shard and --max-clip-mb must be positive")
    recipe = SplitRecipe(args.val_frac, args.test_frac, args.split_seed, args.speaker_independent)
    video = PreparedVideo(args.video_frames, args.video_size, args.jpeg_quality) if args.prepare_video else None
    try:
        recipe.validate()
    except ValueError as err:
        raise UserError(str(err)) from None
    try:
        if video is not None:
            video.validate()
    except ValueError as err:
        raise UserError(f"--prepare-video: {err} (--video-frames, --video-size, --jpeg-quality)") from None
    opts = PackOptions(
        source=args.avamerg, out=args.out, scheme=load_scheme(args.labels), recipe=recipe, json_name=args.json,
        audio_dir=args.audio_dir, video_dir=args.video_dir, workers=args.workers, shard_mb=args.shard_mb,
        max_per_shard=args.max_per_shard, max_clip_mb=args.max_clip_mb, max_skip_frac=args.max_skip_frac,
        progress=not args.no_progress, video=video,
    )
    manifests = pack(opts)
    if video is not None:
        print(f"video: {video.describe()} (prepared; the mp4s are not stored)")
    for split, m in manifests.items():
        print(
            f"{split:>5}: {m.conversations} conversations, {m.labelled_turns} labelled turns, "
            f"{m.clips} clips, {len(m.shards)} shards, {len(m.skipped)} skipped -> {args.out / split}"
        )
    _print_dropped(manifests["train"].recipe, args.out / "train" / "manifest.json")
    return 0


def _print_dropped(recipe: dict, manifest: Path, show: int = 3) -> None:
    """What a speaker-independent split dropped and why, and how good the split is (its note)."""
    if not recipe.get("speaker_independent"):
        return
    dropped = recipe.get("dropped_cross_split", [])
    note = recipe.get("split_note", "")
    if not dropped:
        print(f"speaker-independent: {note}")
        return
    print(f"dropped: {len(dropped)} conversations, their speaker and listener avatars are in different splits; {note}")
    for entry in dropped[:show]:
        print(f"  {entry['id']}: {entry['reason']}")
    more = f"{len(dropped) - show} more, " if len(dropped) > show else ""
    print(f"  ({more}all listed under recipe.dropped_cross_split in {manifest})")
