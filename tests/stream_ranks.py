"""What the multi-process loader tests run on every rank (``torchrun --nproc_per_node N``).

``eval``: score every batch of the split with dummy logits and gather (key, label) on rank 0,
which writes them to ``OUT/eval.json``. ``train``: read ``--batches`` batches from the endless
train stream and write this rank's conversation keys, in order, to ``OUT/train-RANK.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emotrain.data.stream import DataConfig, Modalities, build_loader  # noqa: E402
from emotrain.data.text import TextConfig  # noqa: E402
from emotrain.evaluation.gather import Scored, gather_to_rank0  # noqa: E402

TOKENIZER = str(Path(__file__).resolve().parents[1] / "configs" / "tokenizers" / "tiny-wordpiece")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["eval", "train"])
    parser.add_argument("--shards", required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=0)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    cfg = DataConfig(shards=args.shards, text=TextConfig(tokenizer=TOKENIZER), num_workers=args.workers,
                     turns="last" if args.mode == "train" else "all", shuffle_buffer=0)
    loader, _ = build_loader(cfg, args.split, Modalities(audio=True, video=False), batch_size=2,
                             train=args.mode == "train", rank=rank, world_size=world)
    if args.mode == "eval":
        local = Scored.empty(7)
        for batch in loader:
            labels = batch["labels"].numpy()
            local.extend(batch["keys"], np.zeros((len(labels), 7), np.float32), labels)
        merged = gather_to_rank0(local)
        if rank == 0:
            (args.out / "eval.json").write_text(json.dumps({"keys": merged.keys, "labels": merged.labels.tolist()}))
    else:
        keys, batches = [], 0
        for batch in loader:
            keys.extend(k.rsplit("_", 1)[0] for k in batch["keys"])
            batches += 1
            if batches == args.batches:
                break
        counts = [torch.zeros(1) for _ in range(world)]
        dist.all_gather(counts, torch.tensor([float(batches)]))
        (args.out / f"train-{rank}.json").write_text(json.dumps({"keys": keys, "batches": [int(c) for c in counts]}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
