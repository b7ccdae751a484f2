"""One host-device synchronisation per optimizer step, not one per micro-batch.

Why: reading a loss on the host (``loss.item()``) or running a collective whose result the host
needs makes the CPU wait for the GPU to finish everything queued so far, so it cannot queue the
next micro-batch's forward while the current backward runs. The engine therefore keeps, across the
micro-batches of one optimizer step, two small tensors on the device (did any loss come out
non-finite; the sum of the finite losses) and reads them once, at the accumulation boundary, in one
all-reduce that also carries this rank's stop vote and, on a logging step, the loader's counters.

Skipping: a micro-batch's backward has already run when the step's verdict arrives, so a step with
a non-finite loss on any rank is skipped as a whole, on every rank alike: :class:`StepSkip` makes
the optimizer's and the LR schedule's ``step()`` do nothing for that step, and DeepSpeed then clears
the (non-finite) gradients as after any step. Weights, AdamW moments and the schedule are as if the
step's micro-batches had never been drawn.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from emotrain.training.distributed import sum_over_ranks


@dataclass(frozen=True)
class StepVerdict:
    """What every rank agrees on at the end of one optimizer step's micro-batches."""

    bad_ranks: int  # ranks on which some micro-batch of this step had a non-finite loss
    stop_votes: int  # ranks that received a stop signal
    loss: float  # mean loss over ranks and micro-batches (meaningful when bad_ranks == 0)
    stats: dict[str, float] = field(default_factory=dict)  # the loader counters, summed over ranks
    gone_votes: int = 0  # ranks that found the run folder removed (or replaced)


class StepAccumulator:
    """Per-step loss bookkeeping that stays on the device until :meth:`agree`."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._reset()

    def _reset(self) -> None:
        self.bad = torch.zeros((), dtype=torch.bool, device=self.device)
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)

    def add(self, loss: torch.Tensor) -> None:
        """Note one micro-batch's loss; device operations only (no host read)."""
        loss = loss.detach()
        finite = torch.isfinite(loss)
        self.bad |= ~finite
        self.loss_sum += torch.where(finite, loss, torch.zeros_like(loss)).double()

    def agree(self, stop_requested: bool, micro_batches: int, world_size: int,
              stats: Mapping[str, int] | None = None, folder_gone: bool = False) -> StepVerdict:
        """Collective: the step's one all-reduce and host read; resets for the next step."""
        names = sorted(stats) if stats else []
        host = torch.tensor([float(stop_requested), float(folder_gone), *(float(stats[n]) for n in names)],
                            dtype=torch.float64)
        vector = torch.cat([torch.stack([self.bad.double(), self.loss_sum]),
                            host.to(self.device, non_blocking=self.device.type == "cuda")])
        bad, loss_sum, stop, gone, *summed = sum_over_ranks(vector, self.device)
        self._reset()
        return StepVerdict(int(bad), int(stop), loss_sum / world_size / micro_batches, dict(zip(names, summed)),
                           int(gone))


class StepSkip:
    """Lets the engine turn one optimizer step (and its LR-schedule step) into a no-op.

    DeepSpeed's ZeRO and bf16 wrappers all end in the wrapped optimizer's ``step()``, and the engine
    then steps its ``lr_scheduler``: the optimizer's ``step`` is replaced on the instance by a guard
    (optimizer checkpoints hold its ``state_dict``, not the instance), and the engine's schedule by a
    proxy whose ``step`` is guarded (a schedule's ``state_dict`` is its ``__dict__``, so the schedule
    itself must not carry the guard into checkpoints). Both do nothing while :attr:`skip` is set; the
    engine sets it from the step's agreed verdict, so it is the same on every rank.
    """

    def __init__(self, engine, optimizer: torch.optim.Optimizer) -> None:
        self.skip = False
        step = optimizer.step

        def guarded(*args, **kwargs):
            return None if self.skip else step(*args, **kwargs)

        optimizer.step = guarded  # type: ignore[method-assign]
        if engine.lr_scheduler is not None:
            engine.lr_scheduler = _GuardedSchedule(engine.lr_scheduler, self)


class _GuardedSchedule:
    """An LR schedule whose ``step`` is skipped with the optimizer's; everything else is the schedule's."""

    def __init__(self, schedule, skipper: StepSkip) -> None:
        self._schedule, self._skipper = schedule, skipper

    def step(self, *args, **kwargs):
        return None if self._skipper.skip else self._schedule.step(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._schedule, name)
