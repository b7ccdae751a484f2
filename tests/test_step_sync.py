"""The engine's per-step agreement (emotrain.training.step_sync) and the loader's pinning default, on CPU.

The multi-rank behaviour (one all-reduce per optimizer step, skipped steps alike on every rank) is
tested end to end in tests/test_engine_runs.py."""

from __future__ import annotations

import io
import types

import pytest
import torch

from emotrain.training.optim import build_optimizer
from emotrain.training.step_sync import StepAccumulator, StepSkip


def test_accumulator_sums_finite_losses_and_flags_non_finite() -> None:
    acc = StepAccumulator(torch.device("cpu"))
    for value in (1.0, 2.0, 4.0):
        acc.add(torch.tensor(value, requires_grad=True) * 1)
    verdict = acc.agree(stop_requested=True, micro_batches=3, world_size=1, stats={"skipped_b": 2, "skipped_a": 1})
    assert (verdict.bad_ranks, verdict.stop_votes, verdict.loss) == (0, 1, pytest.approx(7 / 3))
    assert verdict.stats == {"skipped_a": 1.0, "skipped_b": 2.0}
    acc.add(torch.tensor(float("nan")))
    acc.add(torch.tensor(3.0))
    verdict = acc.agree(stop_requested=False, micro_batches=2, world_size=1)
    assert (verdict.bad_ranks, verdict.stop_votes, verdict.loss, verdict.stats) == (1, 0, 1.5, {})
    acc.add(torch.tensor(5.0))  # reset after each agreement
    assert acc.agree(False, 1, 1).loss == 5.0


def test_step_skip_leaves_weights_moments_and_schedule_untouched() -> None:
    model = torch.nn.Linear(3, 2)
    optimizer, schedule = build_optimizer(model, lr=0.1, encoder_lr=0.01, weight_decay=0.1, warmup_steps=2,
                                          total_steps=10, min_lr_ratio=0.1)
    engine = types.SimpleNamespace(lr_scheduler=schedule)
    skipper = StepSkip(engine, optimizer)

    def one_step(skip: bool) -> None:
        model(torch.ones(4, 3)).sum().backward()
        skipper.skip = skip
        optimizer.step()
        engine.lr_scheduler.step()
        skipper.skip = False
        optimizer.zero_grad()

    one_step(False)
    before = [p.detach().clone() for p in model.parameters()]
    state, lr, epoch = str(optimizer.state_dict()), optimizer.param_groups[0]["lr"], schedule.last_epoch
    one_step(True)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert (str(optimizer.state_dict()), optimizer.param_groups[0]["lr"], schedule.last_epoch) == (state, lr, epoch)
    one_step(False)
    assert schedule.last_epoch == epoch + 1 and not torch.equal(before[0], model.weight)
    torch.save(engine.lr_scheduler.state_dict(), io.BytesIO())  # what DeepSpeed checkpoints: still picklable


def test_loader_pins_memory_only_with_cuda(five_shards) -> None:
    from helpers import data_config

    from emotrain.data.stream import Modalities, build_loader

    loader, _ = build_loader(data_config(five_shards), "train", Modalities(False, False), 4, train=False)
    assert loader.pin == loader.loader.pin_memory == torch.cuda.is_available()
    batch = next(iter(loader))
    assert all(v.is_pinned() == torch.cuda.is_available() for v in batch.values() if isinstance(v, torch.Tensor))
