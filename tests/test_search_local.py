"""`emotrain sweep run` of a search file here, end to end: 8 trials of model B's tiny config on the synthetic
corpus (2 learning rates searched, 6 optimizer steps, a validation every 2), the median pruner stopping
some at their validation. The first run is killed (SIGKILL to its process group) in the middle of its
first trial, once that has its step-4 checkpoint; the re-run resumes that same trial from the checkpoint, finishes
the study (each trial once), confirms the best 2 on one more seed and writes the report; a third run
does nothing new.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from helpers import BIN, REPO, child_env, study_trials

from emotrain.evaluation.report_file import EvalReport

pytestmark = pytest.mark.slow
STEPS, EVERY, TRIALS = 6, 2, 8


def search_file(tmp_path: Path, shards: Path) -> Path:
    path = tmp_path / "search.yaml"
    path.write_text(yaml.safe_dump({
        "train_config": "demo/video_text", "shards": str(shards), "seeds": [0],
        "overrides": [f"train.total_samples={16 * STEPS}", f"train.eval_every_steps={EVERY}",
                      f"train.checkpoint_every_steps={EVERY}", "train.log_every_steps=2", "train.warmup_samples=0",
                      "data.num_workers=0", "eval_batch_size=8"],
        "search": {
            "space": {"train.lr": {"log_uniform": [1e-6, 1e-2]}, "train.encoder_lr": {"log_uniform": [1e-6, 1e-2]}},
            "n_trials": TRIALS, "objective": {"metric": "nll", "direction": "minimize"},
            "sampler": {"seed": 0, "n_startup_trials": 4},
            "pruner": {"name": "median", "n_startup_trials": 2, "n_warmup_steps": EVERY},
            "confirm": {"top_k": 2, "seeds": [1]}, "lease_s": 30,
        },
    }))
    return path


def cmd(file: Path, out: Path) -> list[str]:
    return [str(BIN / "emotrain"), "sweep", "run", str(file), "--out", str(out)]


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def trials_of(out: Path) -> list[dict]:
    return study_trials(out / "search" / "study.journal")


def test_local_search_prunes_resumes_a_killed_trial_and_reruns_nothing(split_shards, tmp_path):
    file, out = search_file(tmp_path, split_shards), tmp_path / "search"
    first = subprocess.Popen(cmd(file, out), env=child_env(), cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
    killed = out / "points" / "trial-0000" / "seed0"  # the pruner's start-up trials are never pruned
    deadline = time.monotonic() + 600
    while not (killed / "run" / "checkpoints" / f"step{2 * EVERY:08d}" / "complete").is_file():
        assert first.poll() is None, first.stdout.read()[-4000:]
        assert time.monotonic() < deadline, "no step-4 checkpoint of the first trial"
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)
    first.communicate()
    assert not (killed / "point.json").exists()  # killed mid-trial
    killed_number = int(killed.parent.name.split("-")[1])
    assert [t["state"] for t in trials_of(out) if t["number"] == killed_number] == ["RUNNING"]

    second = subprocess.run(cmd(file, out), env=child_env(), cwd=REPO, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-3000:]
    assert f"trial-{killed_number:04d} (resumed)" in second.stdout
    trials = trials_of(out)
    assert [t["number"] for t in trials] == list(range(TRIALS))  # each trial once, none lost
    states = {t["number"]: t["state"] for t in trials}
    assert set(states.values()) <= {"COMPLETE", "PRUNED"}, states  # none left RUNNING
    pruned = [n for n, s in states.items() if s == "PRUNED"]
    assert pruned and len(pruned) < TRIALS, states
    resumed = read(killed / "run" / "status.json")
    assert resumed["resumed_from"] == 2 * EVERY, resumed  # from the checkpoint it was killed after
    for t in trials:
        pdir = out / "points" / f"trial-{t['number']:04d}" / "seed0"
        status, run = read(pdir / "point.json"), read(pdir / "run" / "status.json")
        if t["state"] == "PRUNED":  # stopped at a validation before the end, with its checkpoint
            assert status["status"] == "pruned" and status["step"] == run["step"] < STEPS, (status, run)
            assert run["detail"] == "stopped by the validation hook"
            assert (pdir / "run" / "checkpoints" / f"step{run['step']:08d}" / "complete").is_file()
            assert t["reported"][-1] == run["step"]
        else:
            assert status["status"] == "completed" and run["step"] == STEPS, (status, run)
            assert t["reported"] == list(range(EVERY, STEPS + 1, EVERY))
            assert t["value"] == EvalReport.load(pdir / "run" / "eval" / "val" / "report.json").metric("val", "nll")

    report = out / "report"
    markdown = (report / "search.md").read_text()
    for t in trials:
        assert f"| trial-{t['number']:04d} | {t['state'].lower()} |" in markdown
    summary = read(report / "search.json")
    assert [r["state"] for r in summary["trials"]] == [states[n].lower() for n in range(TRIALS)]
    best_two = sorted((t for t in trials if t["state"] == "COMPLETE"), key=lambda t: t["value"])[:2]
    confirmed = {c["setting"]: c for c in summary["confirm"]}
    assert set(confirmed) == {f"trial-{t['number']:04d}" for t in best_two}
    assert all(c["seeds"] == [0, 1] for c in confirmed.values())  # each trial's seed and the confirmation seed
    assert summary["chosen"] == min(confirmed, key=lambda name: confirmed[name]["val_objective"]["mean"])
    for name in ("search_history.png", "search_importance.png", "sweep.md", "sweep.png"):
        assert (report / name).stat().st_size > 0, name
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: F401

    assert len([p for p in (report / "search_tb").iterdir() if p.is_dir()]) == TRIALS  # an HParams session each

    before = {p: p.stat().st_mtime_ns for p in [*(out / "points").rglob("point.json"), out / "search" / "study.journal"]}
    third = subprocess.run(cmd(file, out), env=child_env(), cwd=REPO, capture_output=True, text=True, timeout=900)
    assert third.returncode == 0, third.stdout[-3000:] + third.stderr[-3000:]
    assert "search: 0 trial(s) run now" in third.stdout and "confirmation: 0 completed, 4 skipped" in third.stdout
    assert {p: p.stat().st_mtime_ns for p in before} == before  # nothing run, not a line added to the study
    assert len(trials_of(out)) == TRIALS
    print(f"states {states}; trial {killed_number} killed after step {2 * EVERY}, resumed from "
          f"{resumed['resumed_from']}; chosen {summary['chosen']}")
