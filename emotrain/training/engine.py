"""One training loop for every model: DeepSpeed ZeRO (bf16), checkpoints, resume, preemption.

The caller builds the model (same seed on every rank; DeepSpeed also broadcasts rank 0's weights),
a loss ``loss_fn(logits, labels)`` and a loader factory ``batches_from(resume_state)``, then calls
:func:`fit`. A batch is the dict of the batch contract; the model receives only
:func:`emotrain.models.inputs.model_inputs` of it, so neither the label nor the keys reach it.

Stopping: the run ends when ``cfg.total_steps`` optimizer steps are done (``completed``), when
``cfg.early_stopping`` says validation stopped improving (``completed``, ``early_stopped`` set), when
the caller's ``on_validation`` hook asks to stop after a validation (``completed``, ``hook_stopped`` set), when
SIGTERM or SIGUSR1 reached any rank (``preempted``: all ranks agree at the next step, save, and
return), or after ``cfg.max_consecutive_nonfinite`` optimizer steps in a row skipped for a non-finite
loss (``nonfinite``). A step with a non-finite loss on any rank is skipped on every rank; the ranks
agree on that, on stopping and on the logged loss in one all-reduce per optimizer step
(:mod:`emotrain.training.step_sync`): no micro-batch makes the host wait for the device.
A checkpoint is written in every case. :data:`EXIT_CODES` is what ``launch/train.py`` should exit
with: 0 for completed and preempted (a requeued job resumes from the checkpoint), 3 for nonfinite.
The stop reasons are the words of the run's ``status.json`` (:mod:`emotrain.training.rundir`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from emotrain.training import checkpoint
from emotrain.training.checkpoint import ResumeState
from emotrain.training.distributed import (
    DistEnv,
    broadcast_from_main,
    init_distributed,
    read_accelerate_settings,
)
from emotrain.training.deepspeed_config import TrainConfig, deepspeed_config
from emotrain.models.inputs import model_inputs
from emotrain.training.rundir import COMPLETED, NONFINITE, PREEMPTED
from emotrain.training.best import BestState, observe
from emotrain.training.optim import build_optimizer
from emotrain.log import get_logger
from emotrain.signals import StopRequest
from emotrain.training.rng import seed_all
from emotrain.training.runlog import RunLog, write_run_metadata
from emotrain.errors import UserError
from emotrain.training.step_sync import StepAccumulator, StepSkip

RUN_GONE = "run folder removed"  # a stop reason only inside fit: it raises a UserError


def _folder_id(path: Path) -> tuple[int, int] | None:
    """(device, inode) of a folder, None when it is not there."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def same_folder(path: Path, identity: tuple[int, int] | None) -> bool:
    """The run folder is still the one this launch began in: not removed, and not removed and made again (a
    checkpoint save after the removal would recreate the path, and the run would go on writing into it)."""
    return identity is not None and _folder_id(path) == identity

EXIT_CODES = {COMPLETED: 0, PREEMPTED: 0, NONFINITE: 3}

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Predict = Callable[[Mapping[str, Any]], torch.Tensor]
EvaluateFn = Callable[[Predict, int], Mapping[str, float]]
# Called on rank 0 after each periodic validation with (step, metrics); True stops the run on every rank
# at this step, as early stopping does (a search prunes a trial this way: emotrain.training.hooks).
ValidationHook = Callable[[int, Mapping[str, float]], bool]

logger = get_logger(__name__)


@dataclass
class TrainResult:
    step: int
    samples_seen: int
    stop_reason: str
    resumed_from: int | None
    checkpoint: Path | None
    nonfinite: int
    best_step: int | None = None  # the step of the best checkpoint (train.best_metric), if any
    best_value: float | None = None  # train.best_metric at that step
    early_stopped: bool = False
    hook_stopped: bool = False  # the validation hook asked to stop
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, mean loss over ranks), this process only
    evaluations: dict[int, dict[str, float]] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.stop_reason]


class _Window:
    """Sums between two log points: loss, step time, time spent waiting for data."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.steps = 0
        self.loss = 0.0
        self.data_wait = 0.0

    def add_step(self, loss: float) -> None:
        self.steps += 1
        self.loss += loss

    def report(self, samples_per_step: int) -> dict[str, float]:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        return {
            "train/loss": self.loss / max(self.steps, 1),
            "train/samples_per_s": self.steps * samples_per_step / elapsed,
            "train/data_wait_share": self.data_wait / elapsed,
        }


def _due(step: int, every: int, total_steps: int) -> bool:
    """Periodic work at every ``every`` steps and at the last step; never when ``every`` is 0."""
    return every > 0 and (step % every == 0 or step == total_steps)


def _forward_loss(engine, loss_fn: LossFn, batch: Mapping[str, Any], device: torch.device, float_dtype: torch.dtype) -> torch.Tensor:
    """fp32 loss of one micro-batch."""
    labels = batch["labels"].to(device, non_blocking=device.type == "cuda")
    return loss_fn(engine(model_inputs(batch, device, float_dtype)).float(), labels)


def _log_scalars(engine, optimizer, window: _Window, cfg: TrainConfig, state: ResumeState,
                 data_stats: Mapping[str, float]) -> dict[str, float]:
    """``data_stats``: the loader counters, already summed over ranks (by the step's all-reduce)."""
    values = window.report(cfg.global_batch_size)
    for group in optimizer.param_groups:
        if group["name"] in ("head", "encoder"):
            values["train/lr" if group["name"] == "head" else "train/lr_encoder"] = group["lr"]
    grad_norm = engine.get_global_grad_norm()
    if grad_norm is not None:
        values["train/grad_norm"] = float(grad_norm)
    values["train/nonfinite_steps"] = float(state.nonfinite)
    values.update({f"train/{k}": v for k, v in sorted(data_stats.items())})
    return values


def _evaluate(engine, evaluate_fn: EvaluateFn, step: int, device: torch.device, float_dtype: torch.dtype) -> dict[str, float]:
    def predict(batch: Mapping[str, Any]) -> torch.Tensor:
        return engine(model_inputs(batch, device, float_dtype)).float()

    engine.eval()
    with torch.no_grad():
        metrics = dict(evaluate_fn(predict, step))
    engine.train()
    return metrics


def _track_best(metrics: Mapping[str, float], state: ResumeState, cfg: TrainConfig, env: DistEnv,
                on_validation: ValidationHook | None = None) -> tuple[bool, bool, bool]:
    """Collective: rank 0 (which holds the gathered val metrics) decides whether this step is the new
    best, whether to stop early and whether the validation hook stops the run; every rank adopts its
    decision and its best-so-far state."""
    decision = None
    if env.is_main:
        is_best, stop = observe(metrics, state.step, state.best, cfg.best_metric, cfg.early_stopping)
        hooked = bool(on_validation(state.step, metrics)) if on_validation is not None else False
        decision = (is_best, stop, hooked, asdict(state.best))
    is_best, stop, hooked, best = broadcast_from_main(decision)
    state.best = BestState(**best)
    return is_best, stop, hooked


def build_engine(model: torch.nn.Module, cfg: TrainConfig, env: DistEnv):
    """DeepSpeed engine around ``model`` with AdamW + warmup-cosine; returns (engine, AdamW, DeepSpeed config).

    Needs :func:`emotrain.training.distributed.init_distributed` first. Honours ``accelerate launch`` settings.
    """
    import deepspeed

    ds_config = deepspeed_config(cfg, env.world_size, read_accelerate_settings())
    optimizer, schedule = build_optimizer(model, lr=cfg.lr, encoder_lr=cfg.encoder_lr, weight_decay=cfg.weight_decay,
                                          warmup_steps=cfg.warmup_steps, total_steps=cfg.total_steps, min_lr_ratio=cfg.min_lr_ratio)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=schedule, config=ds_config)
    return engine, optimizer, ds_config


def fit(
    model: torch.nn.Module,
    loss_fn: LossFn,
    batches_from: Callable[[ResumeState], Iterable[Mapping[str, Any]]],
    cfg: TrainConfig,
    run_dir: str | Path,
    env: DistEnv,
    evaluate_fn: EvaluateFn | None = None,
    data_stats: Callable[[], Mapping[str, int]] | None = None,
    on_validation: ValidationHook | None = None,
) -> TrainResult:
    """Train ``model`` for ``cfg.total_steps`` optimizer steps, resuming from ``run_dir`` if it holds a checkpoint.

    Collective: every rank calls it with the same config. ``batches_from(state)`` must return an
    endless iterable of micro-batches of ``cfg.micro_batch_size`` for this rank, positioned after
    ``state.micro_batches`` micro-batches. ``evaluate_fn(predict, step)`` runs on every rank every
    ``cfg.eval_every_steps`` steps; ``predict(batch)`` returns fp32 logits. ``on_validation`` (rank 0's
    matters) sees each validation's metrics and may stop the run there.
    """
    run_dir = Path(run_dir)
    device = init_distributed(env)
    seed_all(cfg.seed, env.rank)
    engine, optimizer, ds_config = build_engine(model, cfg, env)
    skipper = StepSkip(engine, optimizer)
    accumulation = ds_config["gradient_accumulation_steps"]
    float_dtype = torch.bfloat16 if ds_config["bf16"]["enabled"] else torch.float32
    state = checkpoint.resume(engine, run_dir, env)
    result = TrainResult(step=0, samples_seen=0, stop_reason=COMPLETED, resumed_from=state.step if state else None,
                         checkpoint=checkpoint.checkpoint_dir(run_dir) / checkpoint.tag_for(state.step) if state else None,
                         nonfinite=0)
    state = state or ResumeState(world_size=env.world_size)
    saved_step = result.resumed_from
    if env.is_main:
        write_run_metadata(run_dir, ds_config)
    log = RunLog(run_dir, env.is_main, state.step, cfg.total_steps)
    if result.resumed_from is not None:  # what a requeued job's log must say first: where it picked up
        log.message(f"train: resumed from step {state.step} ({result.checkpoint})")
    batches = iter(batches_from(state))
    folder_id = _folder_id(run_dir)
    window, consecutive_bad, micro_in_step, pending = _Window(), 0, 0, StepAccumulator(device)
    engine.train()

    with StopRequest() as stop:
        while state.step < cfg.total_steps:
            tick = time.perf_counter()
            batch = next(batches)
            window.data_wait += time.perf_counter() - tick
            state.micro_batches += 1
            loss = _forward_loss(engine, loss_fn, batch, device, float_dtype)
            pending.add(loss)  # on the device: no host read per micro-batch
            engine.backward(loss)  # DeepSpeed scales by 1/accumulation itself: the loss is not divided again
            micro_in_step += 1
            if micro_in_step < accumulation:
                engine.step()  # not a boundary: only DeepSpeed's micro-step counter moves
                continue
            # The step's one sync: ranks agree on skipping (a non-finite loss anywhere), stopping, the loss,
            # and on a logging step the loader counters. The run folder is looked at too: deleted under a
            # running job, every rank stops at once (a rank left writing into a missing folder would fail
            # while the others wait for it in a collective).
            logging = _due(state.step + 1, cfg.log_every_steps, cfg.total_steps)
            verdict = pending.agree(stop.requested, accumulation, env.world_size,
                                    data_stats() if logging and data_stats is not None else None,
                                    folder_gone=not same_folder(run_dir, folder_id))
            micro_in_step = 0
            if verdict.gone_votes:
                result.stop_reason = RUN_GONE
                break
            skipper.skip = verdict.bad_ranks > 0
            engine.step()  # the optimizer step; a no-op for the optimizer and schedule when skipped
            skipper.skip = False
            if verdict.bad_ranks:
                state.nonfinite += 1
                consecutive_bad += 1
                log.message(f"step {state.step + 1}: non-finite loss on {verdict.bad_ranks} rank(s), optimizer step skipped")
                if consecutive_bad >= cfg.max_consecutive_nonfinite:
                    result.stop_reason = NONFINITE
                    break
                continue
            consecutive_bad = 0
            step_loss = verdict.loss
            state.step += 1
            window.add_step(step_loss)
            result.losses.append((state.step, step_loss))
            log.advance(step_loss)
            if logging:  # every rank: the data stats were summed over ranks by the step's all-reduce
                log.scalars(state.step, _log_scalars(engine, optimizer, window, cfg, state, verdict.stats))
                window = _Window()
            is_best = stop_early = hooked = False
            if evaluate_fn is not None and _due(state.step, cfg.eval_every_steps, cfg.total_steps):
                result.evaluations[state.step] = _evaluate(engine, evaluate_fn, state.step, device, float_dtype)
                is_best, stop_early, hooked = _track_best(result.evaluations[state.step], state, cfg, env, on_validation)
                log.scalars(state.step, {**result.evaluations[state.step],
                                         **({f"best/{cfg.best_metric}": state.best.value} if is_best else {})})
            # A new best is saved at once, whether or not a periodic checkpoint is due.
            if is_best or (cfg.checkpoint_every_steps and state.step % cfg.checkpoint_every_steps == 0):
                result.checkpoint = checkpoint.save(engine, run_dir, state, env, cfg.keep_checkpoints, is_best)
                saved_step = state.step
            if stop_early:
                result.early_stopped = True
                log.message(f"early stopping at step {state.step}: {cfg.best_metric} has not improved by more than "
                            f"{cfg.early_stopping.min_delta} in {cfg.early_stopping.patience} evaluations "
                            f"(best at step {state.best.step})")
                break
            if hooked:
                result.hook_stopped = True
                log.message(f"stopped at step {state.step} by the validation hook")
                break
            if verdict.stop_votes and state.step < cfg.total_steps:
                result.stop_reason = PREEMPTED
                break
        if saved_step != state.step and result.stop_reason != RUN_GONE:  # still inside: a second SIGTERM must not kill the final save
            result.checkpoint = checkpoint.save(engine, run_dir, state, env, cfg.keep_checkpoints)

    if result.stop_reason == NONFINITE and env.is_main:
        logger.error(f"emotrain: stopped at step {state.step}: {cfg.max_consecutive_nonfinite} non-finite losses in a "
                     f"row (check the learning rate and inputs); checkpoint {result.checkpoint}")
    elif result.stop_reason == PREEMPTED:
        log.message(f"stop signal received: checkpoint at step {state.step}, exiting for requeue")
    log.close()
    if result.stop_reason == RUN_GONE:  # nothing to write into: one line, and the launch ends
        raise UserError(f"the run folder {run_dir} was removed during training: stopped at step {state.step} "
                        "(its checkpoints went with it; train again into a new --run-dir)")
    result.step, result.nonfinite = state.step, state.nonfinite
    result.best_step, result.best_value = state.best.step, state.best.value
    result.samples_seen = state.micro_batches * cfg.micro_batch_size * env.world_size
    return result
