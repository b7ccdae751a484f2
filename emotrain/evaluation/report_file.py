"""``report.json``: the metrics of evaluated splits and what they measured, one typed owner.

Written by ``emotrain evaluate`` (``RUN/eval/<split>/report.json``) and by ``emotrain fuse`` (the chosen
strategy's report); read by bundles (a model's val scores) and sweep summaries. Nothing else reads its
keys: a malformed file is one line naming it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from emotrain.errors import UserError
from emotrain.files import write_atomic

REPORT_FILE = "report.json"


@dataclass
class EvalReport:
    """``splits``: split -> the metrics dictionary of :func:`emotrain.evaluation.metrics.compute_metrics`;
    ``about``: what was measured (run, checkpoint, model, the text fields it read, ...), stored beside them."""

    splits: dict[str, dict[str, Any]]
    about: dict[str, Any] = field(default_factory=dict)

    def metrics(self, split: str) -> dict[str, Any]:
        """The metrics of ``split`` (a one-line error when the report holds none)."""
        if split not in self.splits:
            raise UserError(f"the report holds no {split} split (it has: {', '.join(self.splits) or 'none'})")
        return self.splits[split]

    def metric(self, split: str, name: str) -> float:
        value = self.metrics(split).get(name)
        if not isinstance(value, (int, float)):
            raise UserError(f"the report's {split} split holds no number {name!r}")
        return float(value)

    def save(self, path: Path) -> Path:
        """Write atomically, ``about`` first and ``splits`` last (the layout readers of old reports know)."""
        write_atomic(Path(path), json.dumps({**self.about, "splits": self.splits}, indent=2) + "\n")
        return Path(path)

    @classmethod
    def load(cls, path: Path) -> EvalReport:
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"no evaluation report at {path}: run `emotrain evaluate` first") from None
        except (OSError, ValueError) as err:
            raise UserError(f"{path}: not a readable evaluation report ({err})") from None
        splits = data.get("splits") if isinstance(data, dict) else None
        if not isinstance(splits, dict) or not all(isinstance(v, dict) for v in splits.values()):
            raise UserError(f"{path}: not an evaluation report (no 'splits' mapping of split -> metrics)")
        return cls(splits=splits, about={k: v for k, v in data.items() if k != "splits"})

    @classmethod
    def from_results(cls, results: Mapping[str, Mapping[str, Any]], about: Mapping[str, Any] | None = None) -> EvalReport:
        return cls({split: dict(metrics) for split, metrics in results.items()}, dict(about or {}))
