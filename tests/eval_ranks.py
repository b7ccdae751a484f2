"""What the multi-process evaluation test runs on every rank (``torchrun --nproc_per_node N``).

Every rank builds the same tiny model A from one seed, scores the split through
:func:`emotrain.evaluation.scoring.evaluate_model`, and rank 0 writes the predictions and metrics to OUT.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emotrain.config import load_config  # noqa: E402
from emotrain.data.schema import meta_vocab_sizes  # noqa: E402
from emotrain.data.manifest import Manifest  # noqa: E402
from emotrain.data.stream import DataConfig, Modalities  # noqa: E402
from emotrain.data.media import AudioConfig  # noqa: E402
from emotrain.data.text import TextConfig  # noqa: E402
from emotrain.evaluation.scoring import evaluate_model, write_evaluation  # noqa: E402
from emotrain.models import ModelConfig, build_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shards", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=1, help="loader workers per rank")
    args = parser.parse_args()
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    manifest = Manifest.load(args.shards, "train")
    model_cfg = load_config(ModelConfig, REPO / "configs" / "model" / "audio_text_tiny.yaml")
    model = build_model(model_cfg, 7, meta_vocab_sizes(manifest.vocab), load_weights=False)
    data = DataConfig(shards=args.shards, text=TextConfig(tokenizer=str(REPO / "configs" / "tokenizers" / "tiny-wordpiece")),
                      audio=AudioConfig(max_seconds=1.0), num_workers=args.workers)
    # Batches of one turn: every turn then runs through the same tensor shapes at any world
    # size, so logits (not just the argmax) can be compared bit for bit across rank counts.
    scored = evaluate_model(model, data, Modalities(True, False), "train", 1, torch.device("cpu"), False,
                            dist.get_rank(), dist.get_world_size(), 7)
    if dist.get_rank() == 0:
        metrics = write_evaluation(args.out, "train", scored, manifest.classes, {}, 0)
        (args.out / "metrics.json").write_text(json.dumps(metrics))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
