"""What ``emotrain predict`` writes: ``predictions.jsonl`` (one turn a line), ``predictions.csv`` on request,
and ``summary.json`` (counts by path, everything skipped with its reason).

A JSONL line: ``key``, ``conversation_id``, ``turn_id``, ``label`` (the fused system's), ``path`` (which system
gave the fused column: ``fused``, ``fused_text_only``, ``audio`` or ``video``), ``present`` (per model, whether its
medium was there) and ``probs`` (``fused`` and each model's calibrated probabilities, by class). The CSV holds
the same, one column per system and class (``fused_happy``, ``audio_happy``, ...).
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from emotrain.files import atomic_output, write_atomic
from emotrain.inference.predict import TurnPrediction
from emotrain.inference.sources import PredictSummary


@dataclass(frozen=True)
class PredictOutput:
    """The output folder of one ``predict`` run."""

    root: Path

    @property
    def jsonl(self) -> Path:
        return self.root / "predictions.jsonl"

    @property
    def csv(self) -> Path:
        return self.root / "predictions.csv"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    def write(self, turns: list[TurnPrediction], classes: list[str], summary: PredictSummary, with_csv: bool) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomic(self.jsonl, "".join(json.dumps(t.row(classes), ensure_ascii=False) + "\n" for t in turns))
        if with_csv:
            self._write_csv(turns, classes)
        write_atomic(self.summary, json.dumps(asdict(summary), indent=1, ensure_ascii=False) + "\n")

    def _write_csv(self, turns: list[TurnPrediction], classes: list[str]) -> None:
        systems = list(turns[0].probs) if turns else ["fused"]
        models = list(turns[0].present) if turns else []
        header = (["key", "conversation_id", "turn_id", "label", "path"] + [f"{m}_present" for m in models]
                  + [f"{system}_{c}" for system in systems for c in classes])
        with atomic_output(self.csv) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            for t in turns:
                writer.writerow([t.key, t.conversation_id, t.turn_id, t.label, t.path]
                                + [int(t.present[m]) for m in models]
                                + [f"{float(p):.6g}" for system in systems for p in t.probs[system]])


def read_predictions(path: Path) -> list[dict]:
    """The rows of a ``predictions.jsonl`` (tests, the benchmark)."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
