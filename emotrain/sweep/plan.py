"""Every point of a sweep resolved and checked before any point runs, and what a point ran, recorded.

Each point's run configs (and, for a pair, its fusion config) are loaded with exactly the overrides its
training will get, so an unknown key or a value of the wrong type in ``grid``, ``settings`` or
``overrides`` stops ``sweep run`` with one line before anything is trained, instead of failing every
point's training in turn. The resolved configs, with the fingerprints of the shards they name
(:mod:`emotrain.data.provenance`), are what ``point.json`` records; a re-run whose file now resolves a point
differently (other overrides, other shards) is refused with one line naming the point and the keys: a
completed point is never reported under settings it did not run.
"""

from __future__ import annotations

from typing import Any

from emotrain.config import ConfigError, load_config, to_dict
from emotrain.errors import UserError
from emotrain.sweep.layout import SweepDir
from emotrain.sweep.spec import Point, SweepConfig, expand_points, fusion_overrides, model_overrides


def resolve_point(cfg: SweepConfig, point: Point) -> dict[str, Any]:
    """model -> its resolved run config (plain data), and ``fusion`` -> the fusion config of a pair."""
    from emotrain.fusion.pipeline import FusionConfig
    from emotrain.training.run_config import load_run_config

    resolved: dict[str, Any] = {}
    for model in cfg.models:
        try:
            resolved[model] = to_dict(load_run_config(cfg.train_config_of(model), model_overrides(cfg, point, model)))
        except ConfigError as err:
            where = f" ({model})" if cfg.pair is not None else ""
            raise UserError(f"setting {point.setting.name!r}{where}: {err}") from None
    if cfg.pair is not None:
        try:
            resolved["fusion"] = to_dict(load_config(FusionConfig, cfg.pair.fusion, fusion_overrides(cfg, point)))
        except ConfigError as err:
            raise UserError(f"setting {point.setting.name!r} (fusion): {err}") from None
    return resolved


def data_of(resolved: dict[str, Any], models: tuple[str, ...]) -> dict[str, dict[str, str]] | None:
    """The fingerprints of the shards each model of a point trains on (None where they are not packed yet)."""
    from emotrain.data.manifest import Manifest
    from emotrain.data.provenance import DataProvenance

    out = {}
    for model in models:
        shards = resolved[model]["data"]["shards"]
        if not shards or not Manifest.path_for(shards, "train").is_file():
            return None
        out[model] = DataProvenance.of(shards).splits
    return out


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict) and node:
        return {k: v for key, value in node.items() for k, v in _flat(value, f"{prefix}.{key}" if prefix else key).items()}
    return {prefix: node}


def plan(cfg: SweepConfig, sweep: SweepDir) -> dict[str, dict[str, Any]]:
    """Point name -> ``{"config": resolved configs, "data": shard fingerprints}`` for every point, after checking
    that each resolves and that no point folder holds a point run under another configuration or data."""
    plans: dict[str, dict[str, Any]] = {}
    for point in expand_points(cfg):
        resolved = resolve_point(cfg, point)
        plans[point.name] = {"config": resolved, "data": data_of(resolved, cfg.models)}
    changed = []
    for point in expand_points(cfg):
        status = sweep.point(point, cfg.models).read_status()
        if status is None or status.config is None:
            continue  # never started, or run before configs were recorded
        now = plans[point.name]
        before, after = _flat(status.config), _flat(now["config"])
        keys = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        if status.data is not None and now["data"] is not None and status.data != now["data"]:
            keys.append("the shards' content (packed again)")
        if keys:
            changed.append((point.name, keys, before, after))
    if changed:
        name, keys, before, after = changed[0]
        shown = ", ".join(f"{k} ({before.get(k)!r} -> {after.get(k)!r})" if k in before or k in after else k
                          for k in keys[:3])
        raise UserError(f"{len(changed)} point(s) in {sweep.root / 'points'} ran with another configuration than this "
                        f"sweep file gives them, e.g. {name}: {shown}{' ...' if len(keys) > 3 else ''}; use a new --out, "
                        "or remove those points' folders to run them again")
    return plans
