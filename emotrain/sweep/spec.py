"""The sweep file (``configs/sweeps/*.yaml``) and the points it expands to.

A sweep names what one point trains (a single run config, or the audio and video configs plus a
fusion config), the settings to compare (a grid of values, or a list of named override sets) and the
seeds. Every (setting, seed) pair is one point: an ordinary run of the existing tools. Override keys
are run-config keys (``train.lr``); in a pair sweep a key may start with ``audio_text.`` or
``video_text.`` to reach one model only, and ``fusion.`` reaches the fusion config.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Any

from emotrain.config import path_field
from emotrain.names import MODEL_KINDS

MODELS = MODEL_KINDS
FUSION_PREFIX = "fusion."


@dataclass
class PairConfigs:
    """The two models of a pair sweep and the fusion that combines them (paths relative to the sweep file)."""

    audio_text: str = path_field("config")
    video_text: str = path_field("config")
    fusion: str = path_field("config", default="fusion/default")


@dataclass
class NamedSetting:
    """One entry of ``settings:``: a name and its overrides (``{train.lr: 1e-3}``)."""

    name: str
    set: dict[str, Any] = field(default_factory=dict)


@dataclass
class SweepConfig:
    """What a sweep file holds. Exactly one of ``train_config`` / ``pair``; ``grid`` or ``settings`` (or
    neither: one setting, the base configs as they are)."""

    seeds: list[int]
    name: str = ""
    train_config: str | None = path_field("config", default=None)
    pair: PairConfigs | None = None
    shards: str | None = path_field("path", default=None)  # data.shards of every run
    overrides: list[str] = field(default_factory=list)  # key=value for every point, before the setting's
    grid: dict[str, list[Any]] = field(default_factory=dict)  # every combination is a setting
    settings: list[NamedSetting] = field(default_factory=list)
    seed_keys: list[str] = field(default_factory=lambda: ["train.seed"])
    processes: int = 1  # local CPU ranks per training (one per GPU when there are GPUs)
    select_metric: str = "macro_f1"  # the setting chosen on val: the best mean of this metric of the headline system

    def validate(self) -> None:
        if (self.train_config is None) == (self.pair is None):
            raise ValueError("give exactly one of train_config (one model) or pair (audio_text, video_text, fusion)")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be a non-empty list of distinct integers, got {self.seeds}")
        if self.grid and self.settings:
            raise ValueError("give grid or settings, not both")
        if any(not values for values in self.grid.values()):
            raise ValueError("every grid key needs at least one value")
        names = [s.name for s in self.settings]
        if len(set(names)) != len(names) or any(not safe_name(n) == n for n in names):
            raise ValueError(f"settings need distinct names of letters, digits, '.', '_', '=', ',' and '-': {names}")
        if self.processes < 1:
            raise ValueError("processes must be >= 1")
        if self.select_metric not in ("accuracy", "macro_f1", "weighted_f1"):
            raise ValueError(f"select_metric must be accuracy, macro_f1 or weighted_f1, got {self.select_metric!r}")
        for item in self.overrides:
            if "=" not in item:
                raise ValueError(f"override {item!r} is not of the form key.sub=value")

    @property
    def models(self) -> tuple[str, ...]:
        """The models one point trains: both for a pair, else the one run (named ``run``)."""
        return MODELS if self.pair is not None else ("run",)

    def train_config_of(self, model: str) -> str:
        if self.pair is not None:
            return getattr(self.pair, model)
        assert self.train_config is not None
        return self.train_config


def safe_name(text: str) -> str:
    """``text`` as a folder name: anything but letters, digits and ``._=,-`` becomes ``_``."""
    return re.sub(r"[^A-Za-z0-9._=,-]", "_", text)


def _value_text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


@dataclass(frozen=True)
class Setting:
    """One compared configuration: its name (a folder) and its overrides."""

    name: str
    values: dict[str, Any]

    def override_items(self) -> list[str]:
        import json

        return [f"{key}={json.dumps(value) if isinstance(value, (list, dict)) else _value_text(value)}"
                for key, value in self.values.items()]


@dataclass(frozen=True)
class Point:
    """One (setting, seed): what one array task or one local step trains, evaluates and fuses."""

    setting: Setting
    seed: int

    @property
    def name(self) -> str:
        return f"{self.setting.name}/seed{self.seed}"


def expand_settings(cfg: SweepConfig) -> list[Setting]:
    """The grid's combinations (named ``key=value,...`` by the last part of each key), or the named list."""
    if cfg.settings:
        return [Setting(s.name, dict(s.set)) for s in cfg.settings]
    if not cfg.grid:
        return [Setting("base", {})]
    keys = list(cfg.grid)
    settings = []
    for combo in itertools.product(*(cfg.grid[k] for k in keys)):
        values = dict(zip(keys, combo))
        name = ",".join(f"{k.split('.')[-1]}={_value_text(v)}" for k, v in values.items())
        settings.append(Setting(safe_name(name), values))
    if len({s.name for s in settings}) != len(settings):  # two keys ending alike: spell them out
        settings = [Setting(safe_name(",".join(f"{k}={_value_text(v)}" for k, v in s.values.items())), s.values)
                    for s in settings]
    return settings


def expand_points(cfg: SweepConfig) -> list[Point]:
    return [Point(setting, seed) for setting in expand_settings(cfg) for seed in cfg.seeds]


def model_overrides(cfg: SweepConfig, point: Point, model: str) -> list[str]:
    """The ``--set`` items of one model's training at a point: shards, the sweep's overrides, the setting's
    (those for this model, or for every model), the seed."""
    items = [f"data.shards={cfg.shards}"] if cfg.shards else []
    for item in [*cfg.overrides, *point.setting.override_items()]:
        key = item.partition("=")[0]
        if key.startswith(FUSION_PREFIX):
            continue
        head, _, rest = item.partition(".")
        if head in MODELS:
            if head == model:
                items.append(rest)
        else:
            items.append(item)
    items += [f"{key}={point.seed}" for key in cfg.seed_keys]
    return items


def fusion_overrides(cfg: SweepConfig, point: Point) -> list[str]:
    """The fusion-config overrides of a point (``fusion.`` items, the prefix dropped)."""
    return [item[len(FUSION_PREFIX):] for item in [*cfg.overrides, *point.setting.override_items()]
            if item.startswith(FUSION_PREFIX)]
