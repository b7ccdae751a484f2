"""Forward + backward time of one training step of each model on the CPU.

Batch of ``--batch-size`` turns of ``--utterances`` utterances (``--seconds`` of audio per
utterance for model A, the config's frames for model B), tiny configs by default; prints the
median and the fastest of ``--runs`` timed steps after ``--warmup`` untimed ones, for:

- fp32;
- bf16 autocast over fp32 parameters (how evaluation runs);
- bf16 parameters (how DeepSpeed's bf16 training runs);

the two bf16 modes both with the models' convolutions as built (float32 where they would run in
bf16 on a CPU: ``emotrain.models.cpu_convs``) and with plain convolutions, and the ratio.
Threads: ``--threads`` (default 1, like one loader-free training rank on a shared machine).
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
from emotrain.models.cpu_convs import use_float32_cpu_convs, use_plain_convs
from emotrain.models.example_batch import example_batch
from emotrain.models.inputs import model_inputs

ROOT = Path(__file__).resolve().parents[1]
NUM_CLASSES = 7


def step_times(model: torch.nn.Module, batch: dict, runs: int, warmup: int, autocast: bool) -> list[float]:
    times = []
    for i in range(warmup + runs):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = model(model_inputs(batch, torch.device("cpu")))
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
        print(f"{cfg.kind} ({Path(path).name}, {params:,} params): forward+backward, median (min) ms")
        print(f"  {'fp32':<16} {timing(step_times(model, batch, args.runs, args.warmup, False))}")
        for mode in ("bf16 autocast", "bf16 parameters"):
            model.to(torch.bfloat16 if mode == "bf16 parameters" else torch.float32)
            autocast = mode == "bf16 autocast"
            fast = step_times(model, batch, args.runs, args.warmup, autocast)
            use_plain_convs(model)
            plain = step_times(model, batch, args.runs, args.warmup, autocast)
            use_float32_cpu_convs(model)
            print(f"  {mode:<16} {timing(fast)} with float32 CPU convs, {timing(plain)} with plain convs: "
                  f"{statistics.median(plain) / statistics.median(fast):.2f}x")


def timing(times: list[float]) -> str:
    return f"{statistics.median(times) * 1000:7.1f} ({min(times) * 1000:.1f})"


if __name__ == "__main__":
    main()
