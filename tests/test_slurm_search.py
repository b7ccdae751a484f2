"""`emotrain sweep run --slurm` of a search file on the local SLURM: 2 array tasks run the trials of one
study. During the first two trials, one task is preempted (submitit's SIGUSR2: checkpoint, requeue) and
the other task's process is killed with SIGKILL (no word to anyone; its lease names a process that is
gone). Every trial ends once and completed, none is left RUNNING, the preempted trial resumes from the
checkpoint it wrote at the signal and the killed one from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from slurm_util import job_info, poll_until, release_requeued, slurm, slurm_cluster  # noqa: F401 (the fixture)
from helpers import study_trials

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]
CPU_ENV = {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
STEPS, EVERY, TRIALS = 12, 2, 3


def lease(out: Path, number: int) -> dict | None:
    path = out / "points" / f"trial-{number:04d}" / "seed0" / "lease.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def checkpointed(out: Path, number: int) -> bool:
    return (out / "points" / f"trial-{number:04d}" / "seed0" / "run" / "checkpoints" / f"step{EVERY:08d}"
            / "complete").is_file()


@pytest.mark.usefixtures("slurm_cluster")
def test_search_as_a_job_array_survives_preemption_and_kill_9(split_shards, tmp_path):
    file, out = tmp_path / "search.yaml", tmp_path / "search"
    file.write_text(yaml.safe_dump({
        "train_config": "demo/video_text", "shards": str(split_shards), "seeds": [0],
        "overrides": [f"train.total_samples={16 * STEPS}", "train.eval_every_steps=0", "train.log_every_steps=2",
                      f"train.checkpoint_every_steps={EVERY}", "train.warmup_samples=0", "data.num_workers=0",
                      "eval_batch_size=8"],
        "search": {"space": {"train.lr": {"log_uniform": [1e-4, 1e-2]}}, "n_trials": TRIALS,
                   "pruner": {"name": "none"}, "sampler": {"seed": 3}, "lease_s": 900},
    }))
    cmd = [sys.executable, "-m", "emotrain.cli", "sweep", "run", str(file), "--out", str(out), "--slurm", "--wait",
           "--max-parallel", "2", "--cluster", "slurm", "--nodes", "1", "--tasks-per-node", "1", "--cpus-per-task", "1",
           "--partition", "debug", "--time", "10"]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **CPU_ENV}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    # The array tasks start apart on a busy machine (seconds to minutes): a trial that has checkpointed is held
    # (SIGSTOP; its lease outlives the wait) until the other has too, or it could end before the other begins.
    held: dict[int, dict] = {}

    def both_checkpointed() -> bool:
        for number in (0, 1):
            owner = lease(out, number)
            if number not in held and owner and checkpointed(out, number):
                os.kill(owner["pid"], signal.SIGSTOP)
                held[number] = owner
        return len(held) == 2

    try:
        poll_until(both_checkpointed, 600, "the first checkpoint of trials 0 and 1")
    finally:
        for owner in held.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(owner["pid"], signal.SIGCONT)
    assert proc.poll() is None
    preempted, killed = held[0], held[1]
    assert preempted["task"] != killed["task"], (preempted, killed)  # two tasks, one trial each
    os.kill(killed["pid"], signal.SIGKILL)  # the trial's process dies without a word
    slurm("scancel", "--signal=USR2", preempted["task"])  # what SLURM sends a submitit job before preemption
    release_requeued(preempted["task"], timeout=120)
    output, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, output[-5000:]
    assert int(job_info(preempted["task"]).get("Restarts", "0")) == 1, job_info(preempted["task"])
    assert len(set(re.findall(r"search task \d: array task (\S+)", output))) == 2, output[-3000:]

    trials = study_trials(out / "search" / "study.journal")
    assert [t["number"] for t in trials] == list(range(TRIALS))  # none lost, none duplicated
    assert [t["state"] for t in trials] == ["COMPLETE"] * TRIALS  # none left RUNNING
    resumed = {}
    for number in range(TRIALS):
        pdir = out / "points" / f"trial-{number:04d}" / "seed0"
        assert json.loads((pdir / "point.json").read_text())["status"] == "completed"
        status = json.loads((pdir / "run" / "status.json").read_text())
        assert (status["status"], status["step"], status["launcher"]) == ("completed", STEPS, "submitit"), status
        assert (pdir / "run" / "eval" / "test" / "report.json").is_file()
        assert not (pdir / "lease.json").exists()
        resumed[number] = status["resumed_from"]
    assert EVERY <= resumed[0] < STEPS and EVERY <= resumed[1] < STEPS, resumed  # from their checkpoints
    assert resumed[2] is None  # the third trial ran once, from the start
    assert (out / "report" / "search.md").is_file() and "| trial-0002 | complete |" in (out / "report" / "search.md").read_text()
    again = subprocess.run(cmd, cwd=REPO, env={**os.environ, **CPU_ENV}, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "nothing to run" in again.stdout, again.stdout + again.stderr
    print(f"trial 0 preempted in task {preempted['task']}, resumed from step {resumed[0]}; trial 1 killed (pid "
          f"{killed['pid']}), resumed from step {resumed[1]}")
