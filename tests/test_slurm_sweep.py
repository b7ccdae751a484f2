"""`emotrain sweep run --slurm` on the local SLURM: one submitit job array, one array task per point (each
two ranks on one node), at most 2 running at once; one array task preempted (submitit's SIGUSR2) is
requeued and resumes its training from the checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from slurm_util import job_info, poll_until, release_requeued, slurm, slurm_cluster  # noqa: F401 (the fixture)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]
CPU_ENV = {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
STEPS = {"short": 4, "long": 20}  # USR2 comes a poll (0.3 s) after long/seed0's step-5 checkpoint
EVERY = 5


@pytest.mark.usefixtures("slurm_cluster")
def test_sweep_as_a_job_array_with_a_cap_and_a_preempted_task_resumes(split_shards, tmp_path):
    file, out = tmp_path / "tiny.yaml", tmp_path / "sweep"
    file.write_text(yaml.safe_dump({
        "train_config": "demo/video_text", "shards": str(split_shards), "seeds": [0, 1],
        "overrides": [f"train.checkpoint_every_steps={EVERY}", "train.eval_every_steps=0", "train.log_every_steps=5",
                      "train.warmup_samples=0", "data.num_workers=0", "eval_batch_size=8"],
        "settings": [{"name": name, "set": {"train.total_samples": 16 * steps}} for name, steps in STEPS.items()],
    }))
    cmd = [sys.executable, "-m", "emotrain.cli", "sweep", "run", str(file), "--out", str(out), "--slurm", "--wait",
           "--max-parallel", "2", "--cluster", "slurm", "--nodes", "1", "--tasks-per-node", "2", "--cpus-per-task", "1",
           "--partition", "debug", "--time", "10"]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **CPU_ENV}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    seen: list[str] = []

    def task_of(name: str) -> str | None:
        line = proc.stdout.readline()
        if line:
            seen.append(line)
        elif proc.poll() is not None:
            raise AssertionError("".join(seen)[-5000:])
        found = [re.search(rf"{name}: array task (\S+)", text) for text in seen]
        return next((m.group(1) for m in found if m), None)

    poll_until(lambda: task_of("long/seed0") is not None, 120, "the array to be submitted", interval=0.0)
    task = task_of("long/seed0")
    array_id = task.split("_")[0]
    assert job_info(task).get("ArrayTaskThrottle") == "2", job_info(task)
    run_dir = out / "points" / "long" / "seed0" / "run"
    poll_until(lambda: (run_dir / "checkpoints" / f"step{EVERY:08d}" / "complete").is_file(), 400,
               "the first checkpoint of long/seed0")
    slurm("scancel", "--signal=USR2", task)  # what SLURM sends a submitit job before preemption
    release_requeued(task, timeout=120)
    rest, _ = proc.communicate(timeout=900)
    output = "".join(seen) + rest
    assert proc.returncode == 0, output[-5000:]
    assert int(job_info(task).get("Restarts", "0")) == 1, job_info(task)
    tasks = set(re.findall(rf"array task ({array_id}_\d+)", output))
    assert len(tasks) == 4, output[-3000:]  # one array, one task per point
    for name, steps in STEPS.items():
        for seed in (0, 1):
            pdir = out / "points" / name / f"seed{seed}"
            assert json.loads((pdir / "point.json").read_text())["status"] == "completed", output[-3000:]
            status = json.loads((pdir / "run" / "status.json").read_text())
            assert (status["status"], status["step"], status["world_size"], status["launcher"]) == (
                "completed", steps, 2, "submitit"), status
            assert (pdir / "run" / "eval" / "test" / "report.json").is_file()
    resumed = json.loads((run_dir / "status.json").read_text())["resumed_from"]
    assert EVERY <= resumed < STEPS["long"], resumed
    assert (out / "report" / "sweep.json").is_file()
    # A second submission finds every point completed and submits nothing.
    again = subprocess.run(cmd, cwd=REPO, env={**os.environ, **CPU_ENV}, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and again.stdout.count("completed before, skipped") == 4, again.stdout + again.stderr
    print(f"array {array_id}: 4 tasks, at most 2 at once; {task} preempted, requeued, resumed from step {resumed}")
