"""The ``search:`` section of a sweep file: an Optuna study whose trials are ordinary sweep points.

A sweep file with ``search:`` names no ``grid`` or ``settings``: the settings are the trials Optuna
proposes. The base (``train_config`` or ``pair``, ``shards``, ``overrides``) is the sweep's; the first of
``seeds`` trains every trial, and ``confirm`` runs the best trials (on val) on more seeds. Example::

    search:
      space:                                   # dotted keys as --set takes them (audio_text./video_text./fusion. in a pair)
        train.lr: {log_uniform: [1.0e-5, 1.0e-3]}
        train.weight_decay: {float: [0.0, 0.1]}
        train.warmup_samples: {int: [0, 256]}
        data.shuffle_buffer: {choice: [32, 64]}
      n_trials: 20
      objective: {metric: macro_f1, direction: maximize}   # on val, of the run or of the fusion a pair chose
      sampler: {name: tpe, seed: 0, n_startup_trials: 5}
      pruner: {name: median, n_startup_trials: 3, n_warmup_steps: 100}
      confirm: {top_k: 3, seeds: [1, 2]}
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

OBJECTIVE_METRICS = ("accuracy", "macro_f1", "weighted_f1", "nll")
# What the engine's periodic validation reports (val/<metric>), so what a pruner can watch.
PRUNABLE_METRICS = ("accuracy", "macro_f1", "nll")
KINDS = ("log_uniform", "float", "int", "choice")
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")


@dataclass(frozen=True)
class Dimension:
    """One searched key: ``log_uniform``/``float`` [low, high], ``int`` [low, high] (inclusive), ``choice`` [values]."""

    key: str
    kind: str
    values: tuple[Any, ...]

    @classmethod
    def parse(cls, key: str, spec: Any) -> Dimension:
        where = f"search.space.{key}"
        if not _KEY.match(key):
            raise ValueError(f"{where}: keys are dotted config keys as --set takes them (train.lr)")
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
            raise ValueError(f"{where}: expected one of {{log_uniform: [low, high]}}, {{float: [low, high]}}, "
                             f"{{int: [low, high]}} or {{choice: [values]}}, got {spec!r}")
        kind, values = next(iter(spec.items()))
        if not isinstance(values, list) or not values:
            raise ValueError(f"{where}.{kind}: expected a non-empty list, got {values!r}")
        if kind == "choice":
            if len(values) < 2 or any(not isinstance(v, (bool, int, float, str)) or v is None for v in values):
                raise ValueError(f"{where}.choice: at least two numbers, strings or booleans, got {values!r}")
            return cls(key, kind, tuple(values))
        number = int if kind == "int" else (int, float)
        if len(values) != 2 or any(isinstance(v, bool) or not isinstance(v, number) for v in values):
            raise ValueError(f"{where}.{kind}: expected [low, high] ({'integers' if kind == 'int' else 'numbers'}), "
                             f"got {values!r}")
        low, high = values
        if not low < high:
            raise ValueError(f"{where}.{kind}: low must be below high, got {values!r}")
        if kind == "log_uniform" and low <= 0:
            raise ValueError(f"{where}.log_uniform: low must be > 0, got {low}")
        return cls(key, kind, (low, high))

    def suggest(self, trial: Any) -> Any:
        """The value an ``optuna.Trial`` proposes for this key."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.values))
        if self.kind == "int":
            return trial.suggest_int(self.key, self.values[0], self.values[1])
        return trial.suggest_float(self.key, float(self.values[0]), float(self.values[1]), log=self.kind == "log_uniform")


@dataclass
class Objective:
    """What a trial is scored by: a val metric of the one model, or of the fusion a pair point chose on val."""

    metric: str = "macro_f1"
    direction: Literal["maximize", "minimize"] = "maximize"

    def validate(self) -> None:
        if self.metric not in OBJECTIVE_METRICS:
            raise ValueError(f"objective.metric must be one of {', '.join(OBJECTIVE_METRICS)} (a val metric; "
                             f"test is never searched on), got {self.metric!r}")
        wanted = "minimize" if self.metric == "nll" else "maximize"
        if self.direction != wanted:
            raise ValueError(f"objective: {self.metric} is to {wanted}, not {self.direction}")


@dataclass
class SamplerSpec:
    """Optuna's TPE (default) or random sampler, seeded: the same seed proposes the same first trials."""

    name: Literal["tpe", "random"] = "tpe"
    seed: int = 0
    n_startup_trials: int = 10  # TPE: random proposals before it models the results

    def validate(self) -> None:
        if self.n_startup_trials < 0:
            raise ValueError("sampler.n_startup_trials must be >= 0")


@dataclass
class PrunerSpec:
    """The median pruner on the periodic validation (or none). ``n_warmup_steps``: optimizer steps before a
    trial may be pruned; ``n_startup_trials``: trials that finish before any is pruned. ``model``: in a pair
    search, the model whose val metric is reported during its training (the objective itself is the fusion's)."""

    name: Literal["median", "none"] = "median"
    n_startup_trials: int = 3
    n_warmup_steps: int = 0
    model: str | None = None

    def validate(self) -> None:
        if self.n_startup_trials < 0 or self.n_warmup_steps < 0:
            raise ValueError("pruner.n_startup_trials and pruner.n_warmup_steps must be >= 0")


@dataclass
class ConfirmSpec:
    """The best ``top_k`` completed trials (by their val objective) run again on ``seeds``; the report then
    chooses among them by the mean val over all their seeds."""

    top_k: int = 3
    seeds: list[int] = field(default_factory=list)

    def validate(self) -> None:
        if self.top_k < 1:
            raise ValueError("confirm.top_k must be >= 1")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"confirm.seeds must be distinct, got {self.seeds}")


@dataclass
class SearchConfig:
    """``search:`` of a sweep file."""

    space: dict[str, dict[str, Any]]
    n_trials: int = 20
    objective: Objective = field(default_factory=Objective)
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    pruner: PrunerSpec = field(default_factory=PrunerSpec)
    confirm: ConfirmSpec | None = None
    storage: str | None = None  # an RDB URL (e.g. postgresql://...); default: the journal file in the sweep folder
    lease_s: float = 120.0  # a RUNNING trial whose owner has not renewed its lease for this long is taken over

    def validate(self) -> None:
        if not self.space:
            raise ValueError("search.space needs at least one key")
        self.dimensions()  # every key parses
        if self.n_trials < 1:
            raise ValueError("search.n_trials must be >= 1")
        if self.lease_s < 3:
            raise ValueError("search.lease_s must be >= 3 (seconds)")
        if self.pruner.name != "none" and self.objective.metric not in PRUNABLE_METRICS:
            raise ValueError(f"search.pruner: the periodic validation reports {', '.join(PRUNABLE_METRICS)}, "
                             f"not {self.objective.metric}; use one of them or pruner.name: none")
        if self.storage is not None and "://" not in self.storage:
            raise ValueError(f"search.storage must be an RDB URL (dialect://...), got {self.storage!r}; "
                             "leave it out for the journal file in the sweep folder")

    def dimensions(self) -> list[Dimension]:
        return [Dimension.parse(key, spec) for key, spec in self.space.items()]
