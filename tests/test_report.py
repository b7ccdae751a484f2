
import numpy as np
import pytest

from emotrain.evaluation.report_file import EvalReport
from emotrain.evaluation.metrics import compute_metrics, softmax
from emotrain.evaluation.report import markdown_table, write_report

CLASSES = ["happy", "sad", "angry"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def metrics(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, 60)
    logits = rng.normal(0, 1, (60, 3))
    logits[np.arange(60), labels] += 1.5
    return compute_metrics(softmax(logits), labels, CLASSES, resamples=50)


def test_report_writes_json_figures_and_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    results = {"val": metrics(0), "test": metrics(1)}
    written = write_report(tmp_path / "r", results, extra={"run": "runs/x"}, tensorboard_dir=tmp_path / "tb", step=7)
    report = EvalReport.load(tmp_path / "r" / "report.json")
    assert report.about["run"] == "runs/x" and report.metric("test", "macro_f1") == results["test"]["macro_f1"]
    pngs = [p for p in written if p.suffix == ".png"]
    expected = [f"{s}_{k}.png" for s in results for k in ("confusion", "per_class", "reliability")]
    assert sorted(p.name for p in pngs) == sorted(expected)
    for png in pngs:
        assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 10_000
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0}).Reload()
    scalar = events.Scalars("eval/test/macro_f1")[0]
    assert scalar.step == 7 and scalar.value == pytest.approx(results["test"]["macro_f1"], rel=1e-6)
    assert "eval/val/confusion" in events.Tags()["images"]


def test_markdown_table_has_one_row_per_system():
    rows = {"a": metrics(2), "b": metrics(3)}
    table = markdown_table(rows, marked=["b"]).splitlines()
    assert len(table) == 2 + len(rows)
    assert table[3].startswith("| **b** | 60 |")
    lo, hi = rows["a"]["bootstrap"]["macro_f1"]
    assert f"{rows['a']['macro_f1']:.4f} [{lo:.4f}, {hi:.4f}]" in table[2]
