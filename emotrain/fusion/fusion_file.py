"""``fusion.json``: what one late fusion chose and measured, one typed owner.

Written by ``emotrain fuse`` (:func:`emotrain.fusion.outputs.write_outputs`); read by bundles (the chosen
strategy, its parameters, each model's temperature and the runs it was fitted on), sweep summaries (the
chosen system's val and test metrics) and the demo's table. Nothing else reads its keys: a malformed
file is one line naming it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from emotrain.config import ConfigError, from_dict
from emotrain.errors import UserError
from emotrain.files import write_atomic
from emotrain.fusion.pipeline import FusionConfig, FusionResult
from emotrain.names import FUSION_ROLES, TEST, VAL, fused_row

FUSION_FILE = "fusion.json"
CHOSEN_ON = "val macro-F1, ties by val NLL"


@dataclass
class FusionSummary:
    audio_run: str
    video_run: str
    classes: list[str]
    chosen: str  # the strategy picked on val
    chosen_on: str
    val_scores: dict[str, dict[str, float]]  # strategy -> its val macro-F1 and NLL (what the choice compared)
    params: dict[str, dict[str, Any]]  # strategy or model role -> fitted parameters
    counts: dict[str, dict[str, int]]  # split -> keys both / only one model scored, unlabelled
    config: dict[str, Any]  # the FusionConfig, as data
    test: dict[str, dict[str, Any]]  # system row -> test metrics
    val: dict[str, dict[str, Any]]  # the chosen row on val, where it was fitted (in-sample)

    @property
    def chosen_row(self) -> str:
        return fused_row(self.chosen)

    def chosen_metrics(self, split: str) -> dict[str, Any]:
        """The chosen strategy's metrics on ``val`` (in-sample) or ``test``."""
        rows = {VAL: self.val, TEST: self.test}.get(split)
        if rows is None or self.chosen_row not in rows:
            raise UserError(f"{FUSION_FILE} holds no {split} metrics of {self.chosen_row!r}")
        return rows[self.chosen_row]

    def temperature(self, role: str) -> float:
        return float(self.params[role]["temperature"])

    def fitted_on(self, role: str) -> Path:
        return Path(self.audio_run if role == FUSION_ROLES[0] else self.video_run)

    @property
    def chosen_params(self) -> dict[str, Any]:
        return self.params[self.chosen]

    @property
    def chosen_val_scores(self) -> dict[str, float]:
        return dict(self.val_scores[self.chosen])

    def fusion_config(self) -> FusionConfig:
        return from_dict(FusionConfig, self.config)

    @classmethod
    def from_result(cls, result: FusionResult, config: FusionConfig, audio: Path, video: Path) -> FusionSummary:
        from emotrain.config import to_dict

        return cls(audio_run=str(audio), video_run=str(video), classes=result.classes, chosen=result.chosen,
                   chosen_on=CHOSEN_ON, val_scores=result.val_scores, params=result.params, counts=result.counts,
                   config=to_dict(config), test=result.rows, val={result.chosen_row: result.chosen_val})

    def save(self, folder: Path) -> Path:
        path = Path(folder) / FUSION_FILE
        write_atomic(path, json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, folder: Path) -> FusionSummary:
        """``FOLDER/fusion.json``, checked: every field present and the chosen strategy's parameters, val
        scores, temperatures and config readable."""
        path = Path(folder) / FUSION_FILE
        if not path.is_file():
            raise UserError(f"no {FUSION_FILE} in {folder}: run `emotrain fuse --out {folder}` first")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            summary = cls(**data)
            summary.chosen_params, summary.chosen_val_scores, summary.fusion_config()
            for role in FUSION_ROLES:
                summary.temperature(role)
        except (OSError, ValueError, KeyError, TypeError, AttributeError, ConfigError) as err:
            raise UserError(f"{path}: not a fusion report ({type(err).__name__}: {err})") from None
        return summary
