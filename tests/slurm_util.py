"""Helpers for tests that run real jobs on the local SLURM of slurm/local/start.sh.

Why real jobs: what the launch code must get right (SLURM_* variables under srun, requeue,
accounting states that submitit polls) only shows on a real slurmctld. These helpers keep the
tests short: submit a script with arguments and environment, wait with a timeout, and get back
the final state with the contents of the job's stdout and stderr files.

Use: ``from slurm_util import slurm_cluster  # noqa: F401`` in a test module whose tests are marked
``@pytest.mark.slurm``. The fixture fails (never skips) when the cluster is down, because CI always
starts it; deselect with ``-m "not slurm"`` to run without it.
"""

from __future__ import annotations

import os
import re
import subprocess
import textwrap
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

DEFAULT_DIR = Path("/tmp/emotrain-slurm")
START_HINT = "start it with slurm/local/start.sh"

# States after which a job will not run again without outside help.
TERMINAL_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "TIMEOUT",
    }
)

# Rendezvous for a batch script: the first node's address and a port derived from the job id.
# The address is the node's NodeAddr rather than its name, because the local cluster's emulated
# nodes (node1, node2) are not resolvable hostnames; on a real cluster NodeAddr defaults to the name.
RENDEZVOUS_SH = r"""
first_node="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
MASTER_ADDR="$(scontrol show node "$first_node" -o | sed -n 's/.* NodeAddr=\([^ ]*\).*/\1/p')"
export MASTER_ADDR="${MASTER_ADDR:-$first_node}"
export MASTER_PORT="$((20000 + SLURM_JOB_ID % 10000))"
"""


class ClusterDown(RuntimeError):
    """The local SLURM is not reachable; the message says how to start it."""


@dataclass(frozen=True)
class SlurmCluster:
    """A reachable cluster: its config, the folder start.sh used, and its nodes."""

    conf: Path
    folder: Path
    nodes: tuple[str, ...]

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment for SLURM commands: this process's, pointed at this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf), **(extra or {})}


@dataclass(frozen=True)
class SubmittedJob:
    job_id: int
    stdout_path: Path
    stderr_path: Path


@dataclass(frozen=True)
class JobResult:
    job_id: int
    state: str
    exit_code: str
    restarts: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.state == "COMPLETED" and self.exit_code == "0:0"

    def describe(self) -> str:
        """A readable summary for assertion messages."""
        return (
            f"job {self.job_id}: {self.state} exit={self.exit_code} restarts={self.restarts}\n"
            f"--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr}"
        )


def slurm(*cmd: str, env: Mapping[str, str] | None = None, timeout: float = 30.0, check: bool = True) -> str:
    """Run a SLURM command and return its stdout; on failure raise with its stderr."""
    proc = subprocess.run(
        list(cmd), env=dict(env) if env is not None else None, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def find_cluster(folder: Path | None = None) -> SlurmCluster:
    """Locate the running local cluster (SLURM_CONF, else the start.sh folder) or raise ClusterDown."""
    folder = folder or Path(os.environ.get("EMOTRAIN_SLURM_DIR", DEFAULT_DIR))
    conf = Path(os.environ.get("SLURM_CONF") or folder / "etc" / "slurm.conf")
    if not conf.is_file():
        raise ClusterDown(f"no SLURM config at {conf}: {START_HINT}")
    env = {**os.environ, "SLURM_CONF": str(conf)}
    try:
        ping = slurm("scontrol", "ping", env=env, timeout=15, check=False).strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ClusterDown(f"scontrol ping failed ({exc}): {START_HINT}") from exc
    if "UP" not in ping:
        first_line = ping.splitlines()[0] if ping else ""
        raise ClusterDown(f"slurmctld of {conf} is not answering ({first_line}): {START_HINT}")
    try:
        rows = [line.split() for line in slurm("sinfo", "-h", "-N", "-o", "%N %T", env=env).splitlines()]
        slurm("sacct", "-n", "-X", "-P", "-o", "JobID", "-S", "now", env=env, timeout=15)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        raise ClusterDown(f"local SLURM at {conf} is not usable ({exc}): {START_HINT}") from exc
    usable = sorted({name for name, state in rows if state.rstrip("*~#") in {"idle", "mixed", "allocated"}})
    if not usable:
        raise ClusterDown(f"no usable node in {rows} (see {folder / 'log'}): {START_HINT}")
    return SlurmCluster(conf=conf, folder=folder, nodes=tuple(usable))


@pytest.fixture(scope="session")
def slurm_cluster() -> SlurmCluster:
    """The running local cluster; exports SLURM_CONF so that submitit and subprocesses use it."""
    try:
        cluster = find_cluster()
    except ClusterDown as exc:
        down = exc  # fail outside the except block: pytest would print the message twice
    else:
        os.environ["SLURM_CONF"] = str(cluster.conf)
        return cluster
    pytest.fail(str(down), pytrace=False)


def write_batch_script(path: Path, body: str, directives: Iterable[str] = ()) -> Path:
    """Write an executable bash batch script with strict mode and optional #SBATCH lines
    (`body` may be an indented triple-quoted string)."""
    header = ["#!/bin/bash", *(f"#SBATCH {d}" for d in directives), "set -euo pipefail"]
    lines = [*header, textwrap.dedent(body).strip(), ""]
    path.write_text("\n".join(lines))
    path.chmod(0o755)
    return path


def sbatch(
    script: Path,
    *args: str,
    options: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> SubmittedJob:
    """Submit `script args...` with sbatch options; output goes to cwd/slurm-%j.{out,err} unless
    options (or the script's #SBATCH lines) say otherwise. `env` is added to this process's
    environment, which sbatch exports to the job."""
    cwd = Path(cwd or script.parent)
    defaults = []
    if not any(o.startswith(("-o", "--output")) for o in options):
        defaults.append(f"--output={cwd}/slurm-%j.out")
    if not any(o.startswith(("-e", "--error")) for o in options):
        defaults.append(f"--error={cwd}/slurm-%j.err")
    full_env = {**os.environ, **(env or {})}
    out = slurm("sbatch", "--parsable", *defaults, *options, str(script), *args, env=full_env, timeout=60)
    job_id = int(out.strip().split(";")[0])
    info = job_info(job_id)
    return SubmittedJob(job_id, Path(info["StdOut"]), Path(info.get("StdErr", info["StdOut"])))


def job_info(job_id: int) -> dict[str, str]:
    """The fields of `scontrol show job` (empty once slurmctld has forgotten the job)."""
    out = slurm("scontrol", "show", "job", "-o", str(job_id), check=False)
    return dict(re.findall(r"(\w+)=(\S*)", out))


def accounted_state(job_id: int) -> str:
    """The job's latest state in accounting (what submitit reads), '' if not recorded yet."""
    out = slurm("sacct", "-n", "-X", "-P", "-o", "State", "-j", str(job_id), check=False).split()
    return out[-1] if out else ""


def job_state(job_id: int) -> str:
    """The job's state, from slurmctld while it remembers the job, else from accounting."""
    return job_info(job_id).get("JobState") or accounted_state(job_id)


def poll_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.3) -> None:
    """Poll `predicate` until true; TimeoutError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def wait_state(job_id: int, states: Iterable[str], timeout: float = 120.0) -> str:
    """Wait until the job is in one of `states`; a terminal state not asked for is an error."""
    wanted = frozenset(states)
    seen = ""

    def reached() -> bool:
        nonlocal seen
        seen = job_state(job_id)
        if seen in TERMINAL_STATES and seen not in wanted:
            raise AssertionError(f"job {job_id} ended {seen} while waiting for {sorted(wanted)}")
        return seen in wanted

    poll_until(reached, timeout, f"job {job_id} to reach {sorted(wanted)} (last state {seen!r})")
    return seen


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.is_file() else ""


def wait_job(job: SubmittedJob, timeout: float = 120.0) -> JobResult:
    """Wait until the job ends and return its state with its stdout and stderr contents."""
    try:
        state = wait_state(job.job_id, TERMINAL_STATES, timeout)
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}\n--- stdout ---\n{_read(job.stdout_path)}\n--- stderr ---\n{_read(job.stderr_path)}")
    info = job_info(job.job_id)
    return JobResult(
        job_id=job.job_id,
        state=state,
        exit_code=info.get("ExitCode", "?"),
        restarts=int(info.get("Restarts", "0")),
        stdout=_read(job.stdout_path),
        stderr=_read(job.stderr_path),
    )


def requeue(job_id: int, settle: float = 3.0, timeout: float = 60.0) -> None:
    """Requeue a running job and let it start again at once.

    SLURM holds a requeued job for about 120 s; releasing it with StartTime=now sooner than a few
    seconds after the requeue makes the new run fail with "Job credential revoked".
    """
    slurm("scontrol", "requeue", str(job_id))
    release_requeued(job_id, settle, timeout)


def release_requeued(job_id: int, settle: float = 3.0, timeout: float = 60.0) -> None:
    """Wait for a requeued job (by us or by the job itself) to be pending, then start it at once."""
    wait_state(job_id, {"PENDING"}, timeout)
    time.sleep(settle)
    slurm("scontrol", "update", f"JobId={job_id}", "StartTime=now")
