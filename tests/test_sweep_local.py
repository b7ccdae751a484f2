"""`emotrain sweep run` here, end to end, as a user runs it: 2 settings x 2 seeds of model B's tiny config
(one rank: every step in the sweep's own process), plus a setting that fails at run time (its shards are missing; a bad key would be
refused before any point runs). The first run is killed (SIGKILL to the whole process
group) in the middle of the last point's training; a re-run skips the completed points, resumes that
one from its checkpoint and completes it; a third run does nothing. The failing setting is reported
and does not stop the others.
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
from helpers import BIN, REPO, child_env


pytestmark = pytest.mark.slow
SHORT, LONG = 4, 15  # optimizer steps of 16 turns; the kill comes 0.1 s after the step-5 checkpoint
EVERY = 5


def sweep_file(tmp_path: Path, shards: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({
        "train_config": "demo/video_text", "shards": str(shards), "seeds": [0, 1],
        "overrides": [f"train.checkpoint_every_steps={EVERY}", "train.eval_every_steps=0", "train.log_every_steps=5",
                      "train.warmup_samples=0", "train.lr=2e-3", "train.encoder_lr=2e-3", "data.num_workers=0",
                      "eval_batch_size=8"],
        "settings": [{"name": "short", "set": {"train.total_samples": 16 * SHORT}},
                     {"name": "broken", "set": {"data.shards": str(tmp_path / "no_shards")}},
                     {"name": "long", "set": {"train.total_samples": 16 * LONG}}],
    }))
    return path


def sweep_cmd(file: Path, out: Path) -> list[str]:
    return [str(BIN / "emotrain"), "sweep", "run", str(file), "--out", str(out)]


def point(out: Path, setting: str, seed: int) -> Path:
    return out / "points" / setting / f"seed{seed}"


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def test_sweep_runs_skips_completed_points_and_resumes_the_killed_one(split_shards, tmp_path):
    file, out = sweep_file(tmp_path, split_shards), tmp_path / "sweep"
    killed = point(out, "long", 1)
    ckpt = killed / "run" / "checkpoints" / f"step{EVERY:08d}" / "complete"
    first = subprocess.Popen(sweep_cmd(file, out), env=child_env(), cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 600
    while not ckpt.is_file():
        assert first.poll() is None, first.stdout.read()[-4000:]
        assert time.monotonic() < deadline, "no checkpoint of the last point"
        time.sleep(0.1)
    os.killpg(first.pid, signal.SIGKILL)  # the sweep, its training and everything they started
    output = first.communicate()[0]
    stopped_at = read(killed / "run" / "status.json")["step"] if (killed / "run" / "status.json").is_file() else None
    assert stopped_at is None, stopped_at  # killed mid-training: no launch of it ever finished

    done = [point(out, "short", 0), point(out, "short", 1), point(out, "long", 0)]
    for pdir in done:
        assert read(pdir / "point.json")["status"] == "completed", output[-4000:]
    for seed in (0, 1):  # the failing setting: reported, and the sweep went on
        status = read(point(out, "broken", seed) / "point.json")
        assert status["status"] == "failed" and status["error"].startswith("no manifest at"), status  # one line
    assert "point broken/seed0 FAILED" in output
    assert read(killed / "point.json")["status"] == "running"  # started (its configs recorded), never ended
    before = {p: ((p / "point.json").stat().st_mtime_ns, (p / "run" / "status.json").stat().st_mtime_ns) for p in done}

    second = subprocess.run(sweep_cmd(file, out), env=child_env(), cwd=REPO, capture_output=True, text=True,
                            timeout=600)
    assert second.returncode == 1, second.stdout[-3000:] + second.stderr[-3000:]  # the broken points failed again
    assert "1 completed, 3 skipped (done before), 2 failed: broken/seed0, broken/seed1" in second.stdout
    for name in ("short/seed0", "short/seed1", "long/seed0"):
        assert f"{name}: completed before, skipped" in second.stdout
    assert {p: ((p / "point.json").stat().st_mtime_ns, (p / "run" / "status.json").stat().st_mtime_ns)
            for p in done} == before  # nothing of the completed points was run again
    status = read(killed / "run" / "status.json")
    assert (status["status"], status["step"]) == ("completed", LONG)
    assert EVERY <= status["resumed_from"] < LONG, status
    for split in ("val", "test"):
        assert (killed / "run" / "eval" / split / "report.json").is_file()
    assert read(killed / "point.json")["status"] == "completed"
    for pdir, steps in ((point(out, "short", 0), SHORT), (point(out, "long", 0), LONG)):
        assert read(pdir / "run" / "status.json")["step"] == steps

    summary = read(out / "report" / "sweep.json")
    by_name = {s["name"]: s for s in summary["settings"]}
    assert by_name["short"]["seeds"] == by_name["long"]["seeds"] == [0, 1] and by_name["broken"]["missing"] == [0, 1]
    val = {name: by_name[name]["stats"]["run"]["val"]["macro_f1"]["mean"] for name in ("short", "long")}
    assert summary["chosen"] == max(val, key=val.get)
    assert (out / "report" / "sweep.png").is_file() and "Chosen on val" in (out / "report" / "sweep.md").read_text()
    print(f"killed at the checkpoint of step {EVERY}, resumed from step {status['resumed_from']}; chosen on val: "
          f"{summary['chosen']} ({val})")

    third = subprocess.run(sweep_cmd(file, out), env=child_env(), cwd=REPO, capture_output=True, text=True,
                           timeout=600)
    assert "0 completed, 4 skipped (done before), 2 failed" in third.stdout, third.stdout[-3000:]
