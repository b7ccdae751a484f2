"""A toy model and toy batches driven through the real engine; what the multi-process tests launch.

The model has the real models' shape: it takes a batch dict of the batch contract (distinct token
rows and the row of each utterance slot, a waveform per utterance, metadata ids) and returns
logits, and its pretrained-encoder parameters sit under ``text_encoder.`` / ``audio_encoder.`` so
the engine gives them their own LR.
The label is a fixed function of the tokens, so the loss must fall. Batches are a pure function of
(seed, rank, micro-batch index), so a resumed run sees exactly the batches the interrupted one would.

    torchrun --nproc_per_node 2 tests/toy_train.py --run-dir RUN --total-samples 512
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import yaml
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emotrain.training import distributed as dist  # noqa: E402
from emotrain.training.checkpoint import ResumeState, save  # noqa: E402
from emotrain.config import apply_overrides, from_dict, to_dict  # noqa: E402
from emotrain.models.inputs import model_inputs  # noqa: E402
from emotrain.training.engine import TrainResult, build_engine, fit  # noqa: E402
from emotrain.training.deepspeed_config import TrainConfig  # noqa: E402
from emotrain.training.optim import optimizer_state_bytes  # noqa: E402
from sync_counter import SyncCounter  # noqa: E402

NUM_CLASSES, VOCAB, UTTS, TOKENS, SAMPLES, META_FIELDS, META_VOCAB = 7, 64, 3, 6, 32, 4, 5


class ToyModel(nn.Module):
    def __init__(self, num_classes: int = NUM_CLASSES, hidden: int = 64) -> None:
        super().__init__()
        self.text_encoder = nn.EmbeddingBag(VOCAB, hidden, mode="sum")
        self.audio_encoder = nn.Sequential(nn.Linear(SAMPLES, hidden), nn.GELU())
        self.meta = nn.ModuleList(nn.Embedding(META_VOCAB, 8) for _ in range(META_FIELDS))
        self.head = nn.Sequential(nn.Linear(2 * hidden + 8 * META_FIELDS, hidden), nn.GELU(), nn.LayerNorm(hidden),
                                  nn.Linear(hidden, num_classes))

    def forward(self, batch: dict) -> torch.Tensor:
        # The mean token embedding over all of a turn's utterances: each distinct row is summed
        # once, then the turn adds up the sums and token counts of the rows its slots read.
        row, present = batch["utt_row"].clamp(min=0), (batch["utt_row"] >= 0).unsqueeze(-1)
        weights = batch["utt_token_mask"].to(self.text_encoder.weight.dtype)
        sums = self.text_encoder(batch["utt_token_ids"], per_sample_weights=weights)
        counts = weights.sum(dim=1, keepdim=True)
        text = (sums[row] * present).sum(1) / (counts[row] * present).sum(1).clamp_min(1)
        audio = (self.audio_encoder(batch["audio"]) * batch["audio_present"].unsqueeze(-1).to(text.dtype)).mean(dim=1)
        meta = torch.cat([emb(batch["meta_ids"][:, i]) for i, emb in enumerate(self.meta)], dim=-1)
        return self.head(torch.cat([text, audio, meta], dim=-1))


def toy_batch(seed: int, rank: int, index: int, size: int, nan: bool = False) -> dict:
    """Micro-batch ``index`` of ``rank``: the label is the class most of the current utterance's tokens point at."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + rank * 10_007 + index)
    labels = torch.randint(0, NUM_CLASSES, (size,), generator=gen)
    ids = torch.randint(NUM_CLASSES, VOCAB, (size, UTTS, TOKENS), generator=gen)
    signal = torch.rand(size, TOKENS, generator=gen) < 0.6
    ids[:, -1] = torch.where(signal, labels[:, None], ids[:, -1])
    audio = torch.randn(size, UTTS, SAMPLES, generator=gen)
    if nan:
        audio[0, 0, 0] = float("nan")
    return {
        "keys": [f"toy{rank}_{index}_{i}" for i in range(size)],
        "labels": labels,
        "utt_token_ids": ids.reshape(size * UTTS, TOKENS),  # random rows: each utterance distinct
        "utt_token_mask": torch.ones(size * UTTS, TOKENS, dtype=torch.long),
        "utt_row": torch.arange(size * UTTS).reshape(size, UTTS),
        "utt_mask": torch.ones(size, UTTS, dtype=torch.bool),
        "num_utts": torch.full((size,), UTTS),
        "meta_ids": torch.randint(0, META_VOCAB, (size, META_FIELDS), generator=gen),
        "audio": audio,
        "audio_present": torch.ones(size, UTTS, dtype=torch.bool),
    }


def toy_batches(state: ResumeState, seed: int, rank: int, size: int, nan_at: set[int], delay: float) -> Iterator[dict]:
    index = state.micro_batches
    while True:
        if delay:
            time.sleep(delay)
        yield toy_batch(seed, rank, index, size, nan=index in nan_at)
        index += 1


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--result-json", type=Path, help="rank 0 writes the TrainResult here")
    parser.add_argument("--train", action="append", default=[], metavar="KEY=VALUE", help="TrainConfig field (YAML value)")
    parser.add_argument("--nan-at", default="", help="comma-separated micro-batch indices whose rank-1 batch holds a NaN")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds to sleep before each batch (to kill mid-run)")
    parser.add_argument("--scripted-val", default="", metavar="STEP:F1,...",
                        help="val/macro_f1 reported at these steps (rank 0 only, as a gathered metric is), "
                        "instead of measuring; for best-checkpoint and early-stopping tests")
    parser.add_argument("--count-syncs", type=Path, metavar="JSON",
                        help="count the engine's collectives and host reads (tests/sync_counter.py); each rank "
                        "writes them to JSON with .rankN inserted before the suffix")
    parser.add_argument("--dump-fp32", type=Path, metavar="SAFETENSORS",
                        help="only build the engine, step three times, save a checkpoint and write the optimizer's "
                        "fp32 master weights (what an exact export must hold) here; --result-json gets each rank's "
                        "optimizer bytes")
    args = parser.parse_args(dist.strip_launcher_args(argv))

    values = {"total_samples": 256, "global_batch_size": 16, "micro_batch_size": 8, "lr": 3e-3, "encoder_lr": 1e-3,
              "log_every_steps": 2, "checkpoint_every_steps": 4}
    cfg = from_dict(TrainConfig, apply_overrides(values, args.train))
    env = dist.read_env()
    if args.dump_fp32:
        report = {"optimizer_bytes": dump_fp32_after_save(cfg, env, args.run_dir, args.dump_fp32)}
        if env.is_main and args.result_json:
            args.result_json.parent.mkdir(parents=True, exist_ok=True)
            args.result_json.write_text(json.dumps(report))
        dist.shutdown()
        return 0
    if env.is_main:  # what the real launch/train.py writes: the resolved config
        args.run_dir.mkdir(parents=True, exist_ok=True)
        (args.run_dir / "config.yaml").write_text(yaml.safe_dump({"train": to_dict(cfg)}))
    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    model = ToyModel()
    nan_at = {int(i) for i in args.nan_at.split(",") if i} if env.rank == 1 or env.world_size == 1 else set()
    counter = SyncCounter().install() if args.count_syncs else None
    result = fit(
        model, nn.CrossEntropyLoss(),
        lambda state: toy_batches(state, cfg.seed, env.rank, cfg.micro_batch_size, nan_at, args.delay),
        cfg, args.run_dir, env,
        evaluate_fn=(scripted_val(args.scripted_val, env) if args.scripted_val
                     else lambda predict, step: {"val/accuracy": _accuracy(predict, cfg.seed)}),
        data_stats=lambda: {"skipped_samples": env.rank},
    )
    if counter is not None:
        path = args.count_syncs.with_suffix(f".rank{env.rank}{args.count_syncs.suffix}")
        path.write_text(json.dumps({**counter.counts, "steps": result.step, "nonfinite": result.nonfinite}))
    if env.is_main and args.result_json:
        args.result_json.write_text(json.dumps(_report(result, env), indent=1))
    dist.shutdown()
    return result.exit_code


def scripted_val(spec: str, env: dist.DistEnv):
    """A validation whose macro-F1 follows a script by step; like the real one, only rank 0 gets metrics."""
    scores = {int(step): float(value) for step, value in (item.split(":") for item in spec.split(","))}

    def evaluate(predict, step: int) -> dict[str, float]:
        if not env.is_main or step not in scores:
            return {}
        return {"val/macro_f1": scores[step], "val/nll": 1.0}

    return evaluate


def _accuracy(predict, seed: int) -> float:
    batch = toy_batch(seed + 999, 0, 0, 64)
    return (predict(batch).argmax(dim=-1).cpu() == batch["labels"]).float().mean().item()


def _report(result: TrainResult, env: dist.DistEnv) -> dict:
    return {
        "step": result.step, "samples_seen": result.samples_seen, "stop_reason": result.stop_reason,
        "resumed_from": result.resumed_from, "checkpoint": str(result.checkpoint), "nonfinite": result.nonfinite,
        "losses": result.losses, "evaluations": result.evaluations, "exit_code": result.exit_code,
        "best_step": result.best_step, "best_value": result.best_value, "early_stopped": result.early_stopped,
        "world_size": env.world_size, "num_nodes": env.num_nodes, "launcher": env.launcher,
    }


def _stepped_engine(cfg: TrainConfig, env: dist.DistEnv, steps: int):
    """A real engine on the toy model after ``steps`` optimizer steps (Adam moments exist only after the first)."""
    dist.init_distributed(env)
    torch.manual_seed(cfg.seed)
    engine, optimizer, _ = build_engine(ToyModel(), cfg, env)
    loss_fn = nn.CrossEntropyLoss()
    for index in range(steps * engine.gradient_accumulation_steps()):
        batch = toy_batch(cfg.seed, env.rank, index, cfg.micro_batch_size)
        inputs = model_inputs(batch, torch.device("cpu"), torch.bfloat16 if cfg.bf16 else torch.float32)
        engine.backward(loss_fn(engine(inputs).float(), batch["labels"]))
        engine.step()
    return engine, optimizer


def dump_fp32_after_save(cfg: TrainConfig, env: dist.DistEnv, run_dir: Path, out: Path, steps: int = 3) -> list[int]:
    """Checkpoint a stepped engine into ``run_dir``, then write the optimizer's own fp32 master weights to ``out``;
    returns the optimizer's bytes on each rank.

    ``safe_get_full_fp32_param`` asks a ZeRO or bf16 optimizer for its high-precision copy; plain data
    parallel in bf16 keeps per-parameter copies beside the module's (``fp32_groups``). After a few
    steps these differ from the bf16 module weights in their low bits.
    """
    from deepspeed.utils import safe_get_full_fp32_param
    from safetensors.torch import save_file

    engine, optimizer = _stepped_engine(cfg, env, steps)
    optimizer_bytes = [0] * env.world_size
    torch.distributed.all_gather_object(optimizer_bytes, optimizer_state_bytes(optimizer))
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump({"train": to_dict(cfg)}))
    save(engine, run_dir, ResumeState(step=steps), env, keep=2)
    optimizer = engine.optimizer
    copies = {id(low): high for lows, highs in zip(getattr(optimizer, "fp16_groups", []), getattr(optimizer, "fp32_groups", []))
              for low, high in zip(lows, highs)}
    masters = {}
    for name, param in engine.module.named_parameters():
        full = safe_get_full_fp32_param(param)  # collective under ZeRO-3
        if full is None:
            full = copies.get(id(param), param.detach())
        masters[name] = full.float().cpu().contiguous()
    if env.is_main:
        save_file(masters, str(out))
    return optimizer_bytes


if __name__ == "__main__":
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    sys.exit(main(sys.argv[1:]))
