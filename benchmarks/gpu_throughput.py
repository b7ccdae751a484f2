"""Training throughput of one device: turns/s of model A and model B, data-wait share, BERT tokens/s and MFU.

On a CUDA GPU: each model at full size (``configs/train/<kind>.yaml``, pretrained encoders replaced by
random weights of the same architecture: :mod:`emotrain.models.random_init`) in bf16 under the real
engine (DeepSpeed ZeRO-2 as the config says, one rank, NCCL; the config's micro-batch, ``--accumulation``
micro-batches per optimizer step), fed by the real loader: a
synthesised corpus packed with ``--prepare-video`` at the model's frame size, model B reading it with
``video.jpeg_decode: device`` (nvJPEG), ``--workers`` loader workers. Per model:

- turns/s over the timed optimizer steps (after ``--warmup-steps``);
- data-wait share: the part of that time the training loop waited for the loader's next batch;
- BERT tokens/s: the token positions BERT computes per second (distinct rows, padded) and the real ones;
- MFU: training FLOP/s (``emotrain.models.flops`` counts of the batches really fed) over the device's dense
  bf16 peak (``flops.BF16_PEAK_TFLOPS``, or ``--peak-tflops``).

``--synthetic-batches`` takes the loader out: a few real batches are moved to the device (decoded) once
and fed again and again, which shows the model's own ceiling; the gap to the loader row is the loader's.

Without CUDA it runs the tiny configs (``configs/model/*_tiny.yaml``) on the CPU with DeepSpeed's CPU
accelerator and says so: those are CPU figures of tiny models, not what a GPU does.

    python benchmarks/gpu_throughput.py [--json out.json] [--synthetic-batches]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import replace
from itertools import cycle
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

from emotrain.config import load_config  # noqa: E402
from emotrain.data.pack import PackOptions, pack  # noqa: E402
from emotrain.data.prepared import PreparedVideo  # noqa: E402
from emotrain.data.schema import meta_vocab_sizes  # noqa: E402
from emotrain.data.splits import SplitRecipe  # noqa: E402
from emotrain.data.stream import Modalities, build_loader  # noqa: E402
from emotrain.data.synthetic import SynthSpec, generate_corpus  # noqa: E402
from emotrain.data.text import TextConfig  # noqa: E402
from emotrain.labels import load_scheme  # noqa: E402
from emotrain.models import ModelConfig, build_model  # noqa: E402
from emotrain.models.flops import TurnWorkload, bf16_peak_flops, training_flops_per_turn  # noqa: E402
from emotrain.models.inputs import model_inputs  # noqa: E402
from emotrain.models.random_init import random_weights  # noqa: E402
from emotrain.training import distributed as dist  # noqa: E402
from emotrain.training.engine import build_engine  # noqa: E402
from emotrain.training.run_config import load_run_config  # noqa: E402

KINDS = {"A": "audio_text", "B": "video_text"}
TINY_TOKENIZER = str(ROOT / "configs/tokenizers/tiny-wordpiece")


def prepared_shards(tmp: Path, conversations: int, seconds: float, frames: int, size: int) -> Path:
    """A synthesised AvaMERG-layout corpus, packed with its video prepared as ``frames`` JPEGs of ``size`` px."""
    corpus = tmp / "corpus"
    spec = SynthSpec(video_size=256, min_seconds=seconds, max_seconds=seconds, video_noise=0.004)
    generate_corpus(corpus, conversations, seed=0, spec=spec, workers=min(8, os.cpu_count() or 1), progress=False)
    out = tmp / f"prepared{size}"
    pack(PackOptions(source=corpus, out=out, scheme=load_scheme("ekman7"), recipe=SplitRecipe(0.0, 0.0, 0),
                     workers=min(8, os.cpu_count() or 1), max_per_shard=4, progress=False,
                     video=PreparedVideo(frames, size)))
    return out


def _workload_flops(model_cfg: ModelConfig, batch: dict) -> tuple[float, int, int]:
    """(training FLOPs, BERT token positions computed, real BERT tokens) of one host batch."""
    turns = len(batch["keys"])
    flops = training_flops_per_turn(model_cfg, TurnWorkload.from_batch(batch)).training * turns
    masks = [batch["utt_token_mask"]] + ([batch["ctx_token_mask"]] if model_cfg.use_context else [])
    return flops, sum(m.numel() for m in masks), sum(int(m.sum()) for m in masks)


def measure(kind: str, model_cfg: ModelConfig, run_cfg, shards: Path, device: torch.device, env: dist.DistEnv,
            args: argparse.Namespace, synthetic: bool) -> dict:
    modalities = Modalities(audio=model_cfg.needs_audio, video=model_cfg.needs_video)
    video = replace(run_cfg.data.video, num_frames=model_cfg.video_frames(), image_size=model_cfg.video_image_size(),
                    jpeg_decode="device") if model_cfg.needs_video else run_cfg.data.video
    data = replace(run_cfg.data, shards=str(shards), text=TextConfig(tokenizer=TINY_TOKENIZER,
                   context_fields=run_cfg.data.text.context_fields), video=video, num_workers=args.workers)
    train = replace(run_cfg.train, micro_batch_size=args.micro_batch or run_cfg.train.micro_batch_size,
                    global_batch_size=(args.micro_batch or run_cfg.train.micro_batch_size) * args.accumulation)
    torch.manual_seed(0)
    loader, manifest = build_loader(data, "train", modalities, train.micro_batch_size, train=True)
    model = build_model(model_cfg, len(manifest.classes), meta_vocab_sizes(manifest.vocab))
    engine, _, ds = build_engine(model, train, env)
    float_dtype = torch.bfloat16 if ds["bf16"]["enabled"] else torch.float32
    batches = iter(loader)
    if synthetic:  # the loader out: a few real batches, on the device once, fed again and again
        kept = [next(batches) for _ in range(4)]
        on_device = [(b, model_inputs(b, device, float_dtype), b["labels"].to(device)) for b in kept]
        source = cycle(on_device)
    accumulation = ds["gradient_accumulation_steps"]
    stats = {"turns": 0, "flops": 0.0, "bert_positions": 0, "bert_tokens": 0, "wait": 0.0}
    start = None
    for step in range(args.warmup_steps + args.steps):
        if step == args.warmup_steps:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start, stats = time.perf_counter(), dict.fromkeys(stats, 0)
        for _ in range(accumulation):
            tick = time.perf_counter()
            if synthetic:
                batch, inputs, labels = next(source)
            else:
                batch = next(batches)
            stats["wait"] += time.perf_counter() - tick
            if not synthetic:
                inputs = model_inputs(batch, device, float_dtype)
                labels = batch["labels"].to(device, non_blocking=device.type == "cuda")
            loss = torch.nn.functional.cross_entropy(engine(inputs).float(), labels)
            engine.backward(loss)
            engine.step()
            flops, positions, tokens = _workload_flops(model_cfg, batch)
            stats["turns"] += len(batch["keys"])
            stats["flops"] += flops
            stats["bert_positions"] += positions
            stats["bert_tokens"] += tokens
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    del engine, model, batches, loader
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {
        "model": kind, "feed": "synthetic batches" if synthetic else "loader", "turns_per_s": stats["turns"] / seconds,
        "data_wait_share": stats["wait"] / seconds, "bert_positions_per_s": stats["bert_positions"] / seconds,
        "bert_tokens_per_s": stats["bert_tokens"] / seconds, "gflop_per_turn": stats["flops"] / max(stats["turns"], 1) / 1e9,
        "achieved_tflops": stats["flops"] / seconds / 1e12, "micro_batch": train.micro_batch_size,
        "accumulation": accumulation, "timed_turns": stats["turns"], "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(KINDS), default=sorted(KINDS))
    parser.add_argument("--synthetic-batches", action="store_true", help="also run without the loader (the model's ceiling)")
    parser.add_argument("--steps", type=int, default=6, help="timed optimizer steps per model")
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--micro-batch", type=int, help="turns per micro-batch (default: the train config's)")
    parser.add_argument("--accumulation", type=int, default=4, help="micro-batches per optimizer step (default 4)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="loader workers")
    parser.add_argument("--conversations", type=int, default=24, help="conversations of the synthesised corpus")
    parser.add_argument("--seconds", type=float, default=5.7, help="clip length of the synthesised corpus (s)")
    parser.add_argument("--shards", type=Path, help="prepared shards to read instead of a synthesised corpus")
    parser.add_argument("--work-dir", type=Path, help="where the synthesised corpus and shards go and stay (reused when "
                        "there; default: a temporary folder)")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak, when flops.py does not know it")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    device_name = torch.cuda.get_device_name(0) if cuda else "CPU"
    peak = args.peak_tflops * 1e12 if args.peak_tflops else (bf16_peak_flops(device_name) if cuda else None)
    env = dist.read_env()
    device = dist.init_distributed(env)
    if not cuda:
        print("no CUDA device: CPU figures of the TINY configs (configs/model/*_tiny.yaml), not what a GPU does")
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.work_dir or Path(scratch)
        def configs(kind: str):
            run_cfg = load_run_config(ROOT / "configs/train" / f"{kind}.yaml")
            tiny = ROOT / f"configs/model/{kind}_tiny.yaml"
            return run_cfg, random_weights(run_cfg.model if cuda else load_config(ModelConfig, tiny))

        video_model = configs(KINDS["B"])[1]  # one corpus for both models, its frames prepared as model B reads them
        frames, size = video_model.video_frames(), video_model.video_image_size()
        for key in args.models:
            run_cfg, model_cfg = configs(KINDS[key])
            shards = args.shards or tmp / f"s{size}" / f"prepared{size}"
            if not (shards / "train" / "manifest.json").exists() and not args.shards:
                print(f"synthesising and packing {args.conversations} conversations ({size} px frames) ...", file=sys.stderr)
                shards = prepared_shards(tmp / f"s{size}", args.conversations, args.seconds, max(16, frames), size)
            for synthetic in [False, True] if args.synthetic_batches else [False]:
                print(f"model {key}: {'synthetic batches' if synthetic else 'loader'} ...", file=sys.stderr)
                row = measure(key, model_cfg, run_cfg, shards, device, env, args, synthetic)
                row["mfu"] = row["achieved_tflops"] * 1e12 / peak if peak else None
                rows.append(row)
    print(f"device: {device_name}" + (f", dense bf16 peak {peak / 1e12:g} TFLOP/s" if peak else ", bf16 peak unknown (MFU n/a)")
          + ("" if cuda else "  [CPU figures, tiny configs]"))
    print(f"{'model':<6} {'feed':<18} {'turns/s':>9} {'data wait':>10} {'BERT tok/s':>11} {'(real)':>9} "
          f"{'GFLOP/turn':>11} {'TFLOP/s':>8} {'MFU':>6}")
    for r in rows:
        mfu = f"{r['mfu'] * 100:5.1f}%" if r["mfu"] is not None else "   n/a"
        print(f"{r['model']:<6} {r['feed']:<18} {r['turns_per_s']:9.1f} {r['data_wait_share'] * 100:9.1f}% "
              f"{r['bert_positions_per_s']:11.0f} {r['bert_tokens_per_s']:9.0f} {r['gflop_per_turn']:11.2f} "
              f"{r['achieved_tflops']:8.3f} {mfu}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"device": device_name, "cuda": cuda, "cpu_figures": not cuda,
                                         "peak_tflops": peak / 1e12 if peak else None, "rows": rows}, indent=1))
    dist.shutdown()


if __name__ == "__main__":
    main()
