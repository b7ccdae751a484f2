"""Sweep settings are checked before anything runs, and a point knows the configuration it ran (issue 26).

No training: the points' work is replaced by a stand-in that writes the reports a point leaves, so what is
tested is the sweep's own bookkeeping (what it refuses, what it records, what it skips)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from emotrain.cli import main
from emotrain.errors import UserError
from emotrain.sweep.summary import METRICS, SPLITS


def write_sweep(tmp_path: Path, **fields) -> Path:
    path = tmp_path / "sweep.yaml"
    content = {"train_config": "demo/audio_text", "shards": str(tmp_path / "shards"), "seeds": [0],
               "overrides": ["train.lr=1.0e-3"], "grid": {"train.total_samples": [16, 32]}}
    content.update(fields)
    path.write_text(yaml.safe_dump(content))
    return path


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("emotrain sweep: error:"), err
    return err


@pytest.fixture()
def stand_in(monkeypatch):
    """Each point 'runs' by writing its models' val and test reports; the calls are counted."""
    from emotrain.sweep import runner

    ran = []

    def fake_run_point(cfg, point, pdir, steps):
        ran.append(point.name)
        for model in cfg.models:
            for split in SPLITS:
                report = pdir.run(model).eval_report(split)
                report.parent.mkdir(parents=True, exist_ok=True)
                report.write_text(json.dumps({"splits": {split: {m: 0.5 for m in METRICS}}}))
        return True

    monkeypatch.setattr(runner, "run_point", fake_run_point)
    return ran


@pytest.mark.parametrize("name", ["..", "."])
def test_a_setting_named_dot_or_dotdot_is_refused(tmp_path, capsys, name):
    file = write_sweep(tmp_path, grid={}, settings=[{"name": name, "set": {"train.lr": 1.0e-3}}])
    assert main(["sweep", "run", str(file), "--out", str(tmp_path / "out")]) == 2
    assert "not only dots" in one_line(capsys)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("grid, named", [({"train.no_such_key": [1]}, "train.no_such_key"),
                                         ({"train.lr": ["fast"]}, "train.lr"),
                                         ({"fusion.x": [1]}, "fusion.x")])
def test_bad_settings_are_one_line_before_any_point_runs(tmp_path, capsys, stand_in, grid, named):
    file = write_sweep(tmp_path, grid=grid)
    assert main(["sweep", "run", str(file), "--out", str(tmp_path / "out")]) == 2
    assert named.split(".")[-1] in one_line(capsys)
    assert stand_in == [] and not (tmp_path / "out" / "points").exists()


def test_an_edited_sweep_file_does_not_reuse_points_run_under_the_old_one(tmp_path, capsys, stand_in):
    file, out = write_sweep(tmp_path), tmp_path / "out"
    assert main(["sweep", "run", str(file), "--out", str(out)]) == 0
    assert len(stand_in) == 2
    point = out / "points" / "total_samples=16" / "seed0" / "point.json"
    recorded = json.loads(point.read_text())
    assert recorded["status"] == "completed" and recorded["config"]["run"]["train"]["lr"] == 1.0e-3
    before = point.read_bytes()
    capsys.readouterr()
    edited = write_sweep(tmp_path, overrides=["train.lr=5.0e-3"])
    assert main(["sweep", "run", str(edited), "--out", str(out)]) == 2
    line = one_line(capsys)
    assert "2 point(s)" in line and "train.lr (0.001 -> 0.005)" in line, line
    assert point.read_bytes() == before and len(stand_in) == 2  # nothing run, nothing lost
    assert main(["sweep", "run", str(write_sweep(tmp_path)), "--out", str(out)]) == 0  # the file as it was
    assert len(stand_in) == 2  # both skipped: completed with this configuration


def test_a_failed_step_records_the_childs_own_reason(tmp_path):
    from emotrain.recipes import workflow

    with pytest.raises(UserError) as err:
        workflow.train("demo/audio_text", tmp_path / "run", [f"data.shards={tmp_path / 'nowhere'}"], 1)
    assert "no manifest at" in str(err.value) and str(err.value).startswith("step failed (exit 2): emotrain train: error:")


def test_a_training_stopped_by_a_signal_ends_the_pass_and_the_next_run_resumes_that_point(tmp_path, monkeypatch):
    """One rank: the steps run in the sweep's process, so a SIGTERM reaches the training, which checkpoints and
    reports ``preempted`` (``train`` returns False). The pass stops there with exit 1, the point still marked
    running and no later point started; the same command then does that point and the rest."""
    from emotrain.sweep import runner

    calls: list[tuple[str, str]] = []

    class Steps:
        def __init__(self, stop_first: bool) -> None:
            self.stop_first = stop_first

        def train(self, config, run_dir, overrides, prune):
            calls.append(("train", run_dir.parent.name))
            if self.stop_first:
                self.stop_first = False
                return False
            return True

        def evaluate(self, run_dirs):
            calls.append(("evaluate", run_dirs[0].parent.name))
            for run_dir in run_dirs:
                for split in SPLITS:
                    report = run_dir / "eval" / split / "report.json"
                    report.parent.mkdir(parents=True, exist_ok=True)
                    report.write_text(json.dumps({"splits": {split: {m: 0.5 for m in METRICS}}}))

    file, out = write_sweep(tmp_path, processes=1), tmp_path / "out"
    monkeypatch.setattr(runner, "local_steps", lambda nproc: Steps(stop_first=True))
    assert main(["sweep", "run", str(file), "--out", str(out)]) == 1
    assert calls == [("train", "seed0")]  # the first point's training stopped; nothing after it ran
    first = out / "points" / "total_samples=16" / "seed0" / "point.json"
    assert json.loads(first.read_text())["status"] == "running"
    assert not (out / "points" / "total_samples=32").exists()

    calls.clear()
    monkeypatch.setattr(runner, "local_steps", lambda nproc: Steps(stop_first=False))
    assert main(["sweep", "run", str(file), "--out", str(out)]) == 0
    assert [c[0] for c in calls] == ["train", "evaluate", "train", "evaluate"]
    assert json.loads(first.read_text())["status"] == "completed"
