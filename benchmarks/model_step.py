"""Forward + backward time of one training step of each model on the CPU.

Batch of ``--batch-size`` turns of ``--utterances`` utterances (``--seconds`` of audio per
utterance for model A, the config's frames for model B), tiny configs by default; prints the
median and the fastest of ``--runs`` timed steps after ``--warmup`` untimed ones, in fp32 and
under bf16 autocast. Threads: ``--threads`` (default 1, like one loader-free training rank on
a shared machine).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from emotrain.config import load_config
from emotrain.data.schema import META_FIELDS
from emotrain.models import ModelConfig, build_model
from emotrain.models.example_batch import example_batch

ROOT = Path(__file__).resolve().parents[1]
NUM_CLASSES = 7


def step_times(model: torch.nn.Module, batch: dict, runs: int, warmup: int, bf16: bool) -> list[float]:
    times = []
    for i in range(warmup + runs):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(batch)
        torch.nn.functional.cross_entropy(logits.float(), batch["labels"]).backward()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--audio-config", default=str(ROOT / "configs/model/audio_text_tiny.yaml"))
    parser.add_argument("--video-config", default=str(ROOT / "configs/model/video_text_tiny.yaml"))
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--utterances", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    meta_sizes = {column: 5 for column, _ in META_FIELDS}
    print(f"batch {args.batch_size} turns x {args.utterances} utterances, {args.seconds:g} s audio per utterance; "
          f"{args.threads} thread(s); median (min) of {args.runs} runs after {args.warmup} warm-up")
    for path in (args.audio_config, args.video_config):
        cfg = load_config(ModelConfig, path)
        model = build_model(cfg, NUM_CLASSES, meta_sizes).train()
        params = sum(p.numel() for p in model.parameters())
        shape = {}
        if cfg.needs_video:
            shape = {"frames": cfg.video_frames(), "image": cfg.video_image_size()}
        labels = [i % NUM_CLASSES for i in range(args.batch_size)]
        batch = example_batch(cfg.kind, labels, utterances=args.utterances, seconds=args.seconds,
                              vocab_size=cfg.text.config.get("vocab_size", 30522), **shape)
        for bf16 in (False, True):
            times = step_times(model, batch, args.runs, args.warmup, bf16)
            print(f"{cfg.kind:<10} {Path(path).name:<24} {params:>10,} params  {'bf16 autocast' if bf16 else 'fp32':<13} "
                  f"forward+backward {statistics.median(times) * 1000:7.1f} ms ({min(times) * 1000:.1f})")


if __name__ == "__main__":
    main()
