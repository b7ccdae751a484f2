"""Train one rank under a device-memory cap, then report the peak memory and the largest micro-batch that fits.

    python tests/gpu_capped_train.py --cap-gib 12 --report mem.json -- RUN.yaml --run-dir RUN --set ...

What tests/test_gpu.py runs for the RTX 3060 configs on a larger GPU: ``torch.cuda.set_per_process_memory_fraction``
makes the allocator fail past the cap as a 12 GB card would (a little earlier: the card's own
context is not counted). The training is ``emotrain train`` in this process (one rank); the micro-batch
probe afterwards (tests/gpu_util.py) runs forward + backward of growing micro-batches on the model as the
rank holds it (bf16 weights and gradients; the optimizer is offloaded to host memory by the config).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu_util import GIB, largest_micro_batch  # noqa: E402

from emotrain.cli import main as cli_main  # noqa: E402
from emotrain.training.run_config import load_run_config  # noqa: E402


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cap-gib", type=float, default=12.0)
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--candidates", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("train", nargs=argparse.REMAINDER, help="-- then the arguments of emotrain train")
    args = parser.parse_args(argv)
    train_args = args.train[1:] if args.train[:1] == ["--"] else args.train
    device = torch.device("cuda", 0)
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, args.cap_gib * GIB / total), device)
    code = cli_main(["train", *train_args])
    report = {"cap_gib": args.cap_gib, "device": torch.cuda.get_device_name(device), "exit_code": code,
              "train_peak_allocated_gib": torch.cuda.max_memory_allocated(device) / GIB,
              "train_peak_reserved_gib": torch.cuda.max_memory_reserved(device) / GIB}
    torch.cuda.empty_cache()
    cfg = load_run_config(train_args[0])
    report["micro_batch_size"] = cfg.train.micro_batch_size
    report["largest_micro_batch"], report["probe"] = largest_micro_batch(cfg.model, device, args.candidates)
    args.report.write_text(json.dumps(report, indent=1))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
