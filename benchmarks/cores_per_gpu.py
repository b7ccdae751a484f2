"""How many CPU cores does one GPU need to be fed: loader turns/s per core, raw mp4 against prepared video.

For each clip size (``--video-size``, default 256 and 512 px) an AvaMERG-layout corpus is synthesised
(or ``--corpus DIR`` is measured: your own clips)
with clips of the real corpus's shape (``--seconds`` 5.7 s at ``--fps`` 25, x264's default keyframe
interval of 250 unless ``--keyframe-interval`` says otherwise), packed twice (mp4 as given, and
``--prepare-video`` at the model's 224 px) and read by the loaders of the full-size models' data
settings (model B: 8 frames at 224 px, jittered as in training; model A: up to 6 s of 16 kHz audio
per clip), as training streams them (steady state of an endless stream), batch ``--batch-size``,
``--workers`` workers:

- model B on raw shards (decord in the workers: today's path);
- model B on prepared shards, JPEG decoded in the workers (libjpeg-turbo);
- model B on prepared shards, JPEG left to the device (``video.jpeg_decode: device``): the workers
  move compressed bytes; what the device then does is timed here on the CPU (libjpeg-turbo, one
  thread) and on a GPU by nvJPEG when one is present;
- model A (audio is the same in both packs).

Per row: turns/s, the loader workers' CPU time per turn (from /proc: utime + stime of the worker
processes), turns/s per core (its inverse), and the cores one
GPU needs: (GPU FLOP/s / the model's training FLOPs per turn) x worker CPU seconds per turn. The
FLOPs per turn come from the model config (``emotrain.models.flops``) with the BERT rows per turn
this loader really sends. GPU throughput defaults: an H200 at 400 TFLOP/s and an RTX 3060 at 25
(``--gpu NAME=TFLOPS``). ``--profile`` prints where a worker's time goes on prepared shards.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from emotrain.data.manifest import Manifest  # noqa: E402
from emotrain.data.media import AudioConfig, VideoConfig  # noqa: E402
from emotrain.data.pack import PackOptions, pack  # noqa: E402
from emotrain.data.prepared import PreparedVideo, decode_on_device  # noqa: E402
from emotrain.data.splits import SplitRecipe  # noqa: E402
from emotrain.data.stream import DataConfig, Modalities, TurnBatches, build_loader  # noqa: E402
from emotrain.data.synthetic import SynthSpec, generate_corpus  # noqa: E402
from emotrain.data.text import TextConfig  # noqa: E402
from emotrain.config import load_config  # noqa: E402
from emotrain.labels import load_scheme  # noqa: E402
from emotrain.models import ModelConfig  # noqa: E402
from emotrain.models.flops import training_flops_per_turn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
VIDEO, AUDIO = Modalities(False, True), Modalities(True, False)
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Measured:
    turns: int
    steady: float  # turns/s after the first batch
    worker_cpu_per_turn: float  # seconds of loader-worker CPU per turn (after the first batch)
    main_cpu_per_turn: float  # seconds of the consuming process's CPU per turn
    bytes_per_turn: float  # media bytes a batch carries per turn
    bert_rows_per_turn: float  # BERT rows per turn the batches carry (each distinct text once)
    bert_copies_per_turn: float  # what they were with one row per utterance slot and a context per turn


def _cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (all its threads), None once it has exited."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS


def workers_cpu(pids: list[int]) -> float:
    readings = [_cpu_seconds(pid) for pid in pids]
    if any(r is None for r in readings):
        raise RuntimeError("a loader worker exited during the measurement")
    return sum(readings)


def measure(cfg: DataConfig, modalities: Modalities, batch_size: int, warmup: int, batches: int) -> Measured:
    """Steady state of a training loader (an endless stream, so no worker runs dry): after ``warmup``
    batches (worker start-up, and the prefetch queues filled), ``batches`` more are timed, and the
    workers' CPU time over them is read from /proc (the workers are the fork server's children, not
    this process's). The queues are as full at the end as at the start, so the CPU the workers spent
    in between is the work of exactly those batches."""
    loader, _ = build_loader(cfg, "train", modalities, batch_size, train=True)
    iterator = iter(loader.loader)
    pids = [w.pid for w in getattr(iterator, "_workers", [])]
    for _ in range(warmup):
        loader.receive(next(iterator))
    start, cpu_start, main_start = time.perf_counter(), workers_cpu(pids), time.process_time()
    turns = media = rows = copies = 0
    for _ in range(batches):
        batch = loader.receive(next(iterator))
        turns += len(batch["keys"])
        media += sum(batch[k].numel() * batch[k].element_size() for k in ("video", "video_jpeg", "audio") if k in batch)
        rows += batch["utt_token_ids"].shape[0] + batch["ctx_token_ids"].shape[0]
        copies += int(batch["utt_mask"].sum()) + len(batch["keys"])
    seconds, main_cpu = time.perf_counter() - start, time.process_time() - main_start
    worker_cpu = workers_cpu(pids) - cpu_start if pids else main_cpu
    del iterator
    return Measured(turns, turns / seconds, worker_cpu / turns, main_cpu / turns, media / turns, rows / turns,
                    copies / turns)


def device_decode_cost(cfg: DataConfig, batch_size: int) -> dict[str, float]:
    """Seconds per turn of decoding a batch's JPEGs where the model runs: CPU here, and CUDA if present."""
    loader, _ = build_loader(replace(cfg, num_workers=0), "train", VIDEO, batch_size, train=False)
    batches = [b for _, b in zip(range(8), loader)]
    costs = {}
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        decode_on_device(batches[0]["video_jpeg"], batches[0]["video_jpeg_sizes"], batches[0]["video_jpeg_side"], device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start, turns = time.perf_counter(), 0
        for batch in batches:
            decode_on_device(batch["video_jpeg"], batch["video_jpeg_sizes"], batch["video_jpeg_side"], device)
            turns += len(batch["keys"])
        if device.type == "cuda":
            torch.cuda.synchronize()
        costs[device.type] = (time.perf_counter() - start) / turns
    return costs


def profile_worker(cfg: DataConfig, batch_size: int, top: int = 18) -> None:
    """Where one worker's time goes on prepared shards (run in this process, as a worker would)."""
    manifest = Manifest.load(cfg.shards, "train")
    dataset = TurnBatches(manifest.shard_urls(), cfg, VIDEO, manifest.vocab, batch_size, False, 0, 1,
                          prepared=manifest.video)
    profiler = cProfile.Profile()
    profiler.enable()
    turns = sum(len(b["keys"]) for b in dataset)
    profiler.disable()
    stats = pstats.Stats(profiler)
    print(f"-- profile of one worker's pipeline (prepared shards, {turns} turns, "
          f"{stats.total_tt / turns * 1e3:.2f} ms per turn under the profiler), by own time --")
    stats.sort_stats("tottime").print_stats(top)


def synthesise(tmp: Path, size: int, args: argparse.Namespace) -> Path:
    corpus = tmp / f"corpus{size}"
    spec = SynthSpec(video_size=size, fps=args.fps, min_seconds=args.seconds, max_seconds=args.seconds,
                     keyframe_interval=args.keyframe_interval, video_noise=args.video_noise)
    generate_corpus(corpus, args.conversations, seed=0, spec=spec, workers=2, progress=False)
    return corpus


def build(tmp: Path, corpus: Path, size: int | str, args: argparse.Namespace) -> tuple[Path, Path, float]:
    """Raw and prepared shards of one corpus (all in train), and the prepare cost per clip (s)."""
    common = dict(source=corpus, scheme=load_scheme("ekman7"), recipe=SplitRecipe(0.0, 0.0, 0), workers=1,
                  max_per_shard=4, progress=False, json_name=args.json)
    raw = tmp / f"raw{size}"
    pack(PackOptions(out=raw, **common))
    prepared = tmp / f"prepared{size}"
    start = time.process_time()
    manifests = pack(PackOptions(out=prepared, video=PreparedVideo(args.prepare_frames, 224), **common))
    pack_cpu = time.process_time() - start
    return raw, prepared, pack_cpu / max(1, manifests["train"].clips)


def disk_per_clip(shards: Path, suffixes: tuple[str, ...]) -> float:
    import tarfile

    total = clips = 0
    for path in sorted((shards / "train").glob("*.tar")):
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                if member.name.endswith(suffixes):
                    total += member.size
                    clips += member.name.endswith((".mp4", ".frames.mjpeg"))
    return total / max(1, clips)


def _mp4s(corpus: Path, count: int) -> list[bytes]:
    folder = corpus / "video_v5_0" if (corpus / "video_v5_0").is_dir() else corpus
    return [p.read_bytes() for p in sorted(folder.glob("*.mp4"))[:count]]


def format_comparison(mp4s: list[bytes], frames: int = 16, size: int = 224, picked: int = 8) -> None:
    """Per clip: bytes kept and CPU to decode the ``picked`` frames a turn reads, for the ways a clip
    can be stored at the model's size: JPEG 4:2:0 / 4:4:4 (what ``--prepare-video`` could write), a
    short-GOP h264 re-encode (every frame, a keyframe every 4), raw frames compressed with zlib."""
    import zlib

    import decord
    import numpy as np
    import simplejpeg

    from emotrain.data.media import decode_video, frame_indices
    from emotrain.data.synthetic import write_mp4

    def frames_of(data: bytes, every: bool) -> np.ndarray:
        reader = decord.VideoReader(io.BytesIO(data), num_threads=1)
        index = np.arange(len(reader)) if every else frame_indices(len(reader), frames, False, None)
        video = torch.from_numpy(reader.get_batch(index.tolist()).asnumpy()).permute(0, 3, 1, 2).float()
        video = torch.nn.functional.interpolate(video, size=(size, size), mode="bilinear", antialias=True)
        return video.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()

    pick = frame_indices(frames, picked, False, None)
    rows: dict[str, list[tuple[int, float]]] = {}

    def timed(name: str, stored: int, decode) -> None:
        decode()
        start = time.process_time()
        for _ in range(20):
            decode()
        rows.setdefault(name, []).append((stored, (time.process_time() - start) / 20))

    cfg = VideoConfig(num_frames=picked, image_size=size)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for data in mp4s:
            timed("mp4 as given (today)", len(data), lambda: decode_video(data, cfg, False, rng))
            kept = frames_of(data, every=False)
            for sub in ("420", "444"):
                jpegs = [simplejpeg.encode_jpeg(f, quality=90, colorspace="RGB", colorsubsampling=sub) for f in kept]
                timed(f"JPEG q90 {sub[0]}:{sub[1]}:{sub[2]}", sum(map(len, jpegs)),
                      lambda: [simplejpeg.decode_jpeg(jpegs[i], colorspace="RGB") for i in pick])
            path = Path(tmp) / "short_gop.mp4"
            write_mp4(path, frames_of(data, every=True), 25, keyframe_interval=4)
            short = path.read_bytes()
            timed("h264 224 px, keyint 4", len(short), lambda: decode_video(short, cfg, False, rng))
            packed = [zlib.compress(f.tobytes(), 1) for f in kept]
            timed("raw frames, zlib level 1", sum(map(len, packed)),
                  lambda: [np.frombuffer(zlib.decompress(packed[i]), np.uint8) for i in pick])
    print(f"-- storing a clip at {size} px ({frames} frames kept, {picked} decoded per turn; "
          f"{len(mp4s)} clips, one thread) --")
    print(f"{'format':<28} {'KiB per clip':>12} {'decode ms per turn':>19}")
    for name, values in rows.items():
        print(f"{name:<28} {np.mean([v[0] for v in values]) / 1024:12.0f} {np.mean([v[1] for v in values]) * 1e3:19.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path,
                        help="an AvaMERG-layout folder to measure instead of synthesised clips (its --json is packed)")
    parser.add_argument("--json", default="train.json", help="with --corpus: the labelled JSON in it")
    parser.add_argument("--video-size", type=int, nargs="+", default=[256, 512], help="synthesised clip sides (px)")
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--seconds", type=float, default=5.7, help="clip length (s)")
    parser.add_argument("--keyframe-interval", type=int, default=250, help="x264 keyint of the synthesised mp4s")
    parser.add_argument("--video-noise", type=float, default=0.004,
                        help="pixel noise std of the synthesised clips (default 0.004: about the bitrate of "
                             "AvaMERG's mp4s, 80-260 KiB per clip; the synth default 0.03 makes x264 encode noise)")
    parser.add_argument("--conversations", type=int, default=24, help="conversations per corpus")
    parser.add_argument("--prepare-frames", type=int, default=16, help="frames kept per clip when preparing")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=12, help="batches before the timing starts")
    parser.add_argument("--batches", type=int, default=40, help="batches timed per loader")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--gpu", nargs="+", default=["H200=400", "RTX3060=25"], metavar="NAME=TFLOPS",
                        help="GPUs and the training FLOP/s each sustains (default: H200=400 RTX3060=25)")
    parser.add_argument("--profile", action="store_true", help="profile a worker on prepared shards")
    parser.add_argument("--formats", type=int, default=6, metavar="N",
                        help="compare storage formats on N clips of each corpus (0: skip; default 6)")
    args = parser.parse_args()
    try:
        gpus = {name: float(tf) * 1e12 for name, tf in (item.split("=", 1) for item in args.gpu)}
    except ValueError:
        parser.error("--gpu takes NAME=TFLOPS items, e.g. H200=400")
    flops = {kind: training_flops_per_turn(load_config(ModelConfig, ROOT / f"configs/model/{kind}.yaml")).training
             for kind in ("audio_text", "video_text")}
    print("training FLOPs per turn (full-size configs, emotrain.models.flops): "
          + ", ".join(f"{'A' if k == 'audio_text' else 'B'} {v / 1e9:.1f} GFLOP" for k, v in flops.items())
          + "; per GPU: " + ", ".join(f"{g} {tf / 1e12:g} TFLOP/s = {tf / flops['video_text']:.0f} B turns/s, "
                                      f"{tf / flops['audio_text']:.0f} A turns/s" for g, tf in gpus.items()))
    text = TextConfig(tokenizer=str(ROOT / "configs/tokenizers/tiny-wordpiece"))
    video_cfg = VideoConfig(num_frames=8, image_size=224, jitter=True)
    print(f"clips {args.seconds:g} s at {args.fps} fps, keyint {args.keyframe_interval}; training stream, batch "
          f"{args.batch_size}, {args.workers} workers; model B reads 8 frames at 224 px; {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        corpora = ({"given": args.corpus} if args.corpus else
                   {size: synthesise(Path(tmp), size, args) for size in args.video_size})
        for size, corpus in corpora.items():
            raw, prepared, pack_cost = build(Path(tmp), corpus, size, args)
            timing = (args.batch_size, args.warmup, args.batches)
            base = DataConfig(shards=str(raw), text=text, video=video_cfg, audio=AudioConfig(max_seconds=6.0),
                              num_workers=args.workers)
            rows = {
                "B raw mp4 (decord in workers)": measure(base, VIDEO, *timing),
                "B prepared, JPEG decoded in workers": measure(replace(base, shards=str(prepared)), VIDEO, *timing),
                "B prepared, JPEG decoded on the device": measure(
                    replace(base, shards=str(prepared), video=replace(video_cfg, jpeg_decode="device")), VIDEO,
                    *timing),
                "A (audio + text)": measure(base, AUDIO, *timing),
            }
            print(f"\n== {size if args.corpus else f'{size} px'} clips: mp4 {disk_per_clip(raw, ('.mp4',)) / 1024:.0f} KiB per clip; prepared "
                  f"{disk_per_clip(prepared, ('.frames.mjpeg', '.frames.json')) / 1024:.0f} KiB per clip "
                  f"({args.prepare_frames} frames), {pack_cost * 1e3:.0f} ms of CPU per clip to prepare ==")
            print(f"{'loader':<40} {'turns/s':>8} {'worker ms/turn':>15} {'turns/s/core':>13} {'KiB/turn':>9}"
                  + "".join(f" {'cores/' + g:>14}" for g in gpus))
            for name, m in rows.items():
                per_gpu = flops["audio_text" if name.startswith("A") else "video_text"]
                print(f"{name:<40} {m.steady:8.1f} {m.worker_cpu_per_turn * 1e3:15.2f} "
                      f"{1 / m.worker_cpu_per_turn:13.0f} {m.bytes_per_turn / 1024:9.0f}"
                      + "".join(f" {tf / per_gpu * m.worker_cpu_per_turn:14.1f}" for tf in gpus.values()))
            raw_b = rows["B raw mp4 (decord in workers)"]
            for name in list(rows)[1:3]:
                print(f"{name}: {rows[name].steady / raw_b.steady:.1f}x the raw loader's turns/s, "
                      f"{raw_b.worker_cpu_per_turn / rows[name].worker_cpu_per_turn:.1f}x less worker CPU per turn")
            decode = device_decode_cost(replace(base, shards=str(prepared), video=replace(video_cfg, jpeg_decode="device")),
                                        args.batch_size)
            print("device-side JPEG decode per turn: " + ", ".join(f"{d} {s * 1e3:.2f} ms" for d, s in decode.items())
                  + ("" if "cuda" in decode else " (no GPU here: nvJPEG's share of the training process not measured)"))
            b = rows["B prepared, JPEG decoded in workers"]
            print(f"BERT rows per turn: {b.bert_copies_per_turn:.2f} with a row per utterance slot and a context per "
                  f"turn, {b.bert_rows_per_turn:.2f} with each distinct text once per batch: "
                  f"{b.bert_copies_per_turn / b.bert_rows_per_turn:.2f}x fewer")
            if args.formats:
                format_comparison(_mp4s(corpus, args.formats), args.prepare_frames)
            if args.profile:
                profile_worker(replace(base, shards=str(prepared), num_workers=0), args.batch_size)


if __name__ == "__main__":
    main()
