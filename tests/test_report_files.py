"""The typed owners of report.json and fusion.json: round trip, atomic write, one line for a malformed file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from emotrain.errors import UserError
from emotrain.evaluation.report_file import EvalReport
from emotrain.fusion.fusion_file import FUSION_FILE, FusionSummary


def summary() -> FusionSummary:
    return FusionSummary(
        audio_run="/runs/a", video_run="/runs/v", classes=["x", "y"], chosen="mean", chosen_on="val",
        val_scores={"mean": {"macro_f1": 0.5, "nll": 1.0}},
        params={"mean": {}, "audio": {"temperature": 1.5}, "video": {"temperature": 0.5}},
        counts={"test": {"both": 3}}, config={}, val={"fusion: mean": {"macro_f1": 0.6}},
        test={"fusion: mean": {"macro_f1": 0.4}, "audio (raw)": {"macro_f1": 0.3}})


def test_fusion_summary_round_trip_and_accessors(tmp_path: Path) -> None:
    path = summary().save(tmp_path)
    assert path.name == FUSION_FILE and not list(tmp_path.glob(".*tmp"))
    back = FusionSummary.load(tmp_path)
    assert back == summary()
    assert back.chosen_row == "fusion: mean"
    assert back.chosen_metrics("test") == {"macro_f1": 0.4} and back.chosen_metrics("val") == {"macro_f1": 0.6}
    assert back.temperature("audio") == 1.5 and back.fitted_on("video") == Path("/runs/v")


@pytest.mark.parametrize("content, says", [
    ("{not json", "not a fusion report"),
    (json.dumps({"chosen": "mean"}), "not a fusion report"),
    ("missing", "run `emotrain fuse"),
])
def test_a_malformed_fusion_json_is_one_line(tmp_path: Path, content: str, says: str) -> None:
    if content != "missing":
        (tmp_path / FUSION_FILE).write_text(content)
    with pytest.raises(UserError, match=says):
        FusionSummary.load(tmp_path)


def test_a_fusion_json_without_the_chosen_parameters_is_refused(tmp_path: Path) -> None:
    broken = summary()
    broken.params.pop("mean")
    broken.save(tmp_path)
    with pytest.raises(UserError, match="not a fusion report"):
        FusionSummary.load(tmp_path)


def test_eval_report_round_trip_and_one_line_errors(tmp_path: Path) -> None:
    path = EvalReport({"val": {"macro_f1": 0.5, "n": 3}}, {"run": "r"}).save(tmp_path / "report.json")
    assert json.loads(path.read_text())["run"] == "r"  # the layout readers of older reports know
    back = EvalReport.load(path)
    assert back.metric("val", "macro_f1") == 0.5 and back.about == {"run": "r"}
    with pytest.raises(UserError, match="no test split"):
        back.metrics("test")
    path.write_text(json.dumps({"val": 1}))
    with pytest.raises(UserError, match="not an evaluation report"):
        EvalReport.load(path)
    with pytest.raises(UserError, match="run `emotrain evaluate`"):
        EvalReport.load(tmp_path / "nothing.json")


def test_an_interrupted_atomic_write_leaves_the_old_file(tmp_path: Path) -> None:
    from emotrain.files import atomic_output

    target = tmp_path / "f.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]
