"""The local SLURM (slurm/local/start.sh) does what the launch code relies on.

Run as a script (`python test_slurm_cluster.py`), this file is the srun task of the gloo jobs:
each rank joins a gloo group through the rendezvous of slurm_util.RENDEZVOUS_SH, all-reduces
rank + 1 and prints one JSON line.
"""

from __future__ import annotations

import datetime
import json
import operator
import os
import socket
import sys
from pathlib import Path

import pytest

from slurm_util import (  # noqa: F401  (slurm_cluster is a fixture)
    RENDEZVOUS_SH,
    SlurmCluster,
    poll_until,
    requeue,
    sbatch,
    slurm_cluster,
    wait_job,
    write_batch_script,
)

pytestmark = pytest.mark.slurm

THIS = Path(__file__).resolve()


def _gloo_job(tmp_path: Path, sbatch_options: list[str]) -> list[dict]:
    """Run this file under srun in a batch job; return the JSON line of each rank."""
    script = write_batch_script(
        tmp_path / "gloo.sbatch",
        RENDEZVOUS_SH + f'export GLOO_SOCKET_IFNAME=lo\nsrun "{sys.executable}" "{THIS}"\n',
    )
    result = wait_job(sbatch(script, options=["--time=5", *sbatch_options]), timeout=180)
    assert result.ok, result.describe()
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert rows, result.describe()
    return sorted(rows, key=operator.itemgetter("rank"))


def test_two_tasks_on_one_node_all_reduce(slurm_cluster: SlurmCluster, tmp_path: Path):
    rows = _gloo_job(tmp_path, ["--nodes=1", "--ntasks=2"])
    assert [r["rank"] for r in rows] == [0, 1]
    assert {r["world"] for r in rows} == {2}
    assert len({r["node"] for r in rows}) == 1
    assert {r["sum"] for r in rows} == {1.0 + 2.0}


def test_two_nodes_one_task_each(slurm_cluster: SlurmCluster, tmp_path: Path):
    assert len(slurm_cluster.nodes) >= 2, slurm_cluster
    rows = _gloo_job(tmp_path, ["--nodes=2", "--ntasks-per-node=1"])
    assert [r["rank"] for r in rows] == [0, 1]
    assert {r["world"] for r in rows} == {2}
    assert len({r["node"] for r in rows}) == 2
    assert {r["node"] for r in rows} <= set(slurm_cluster.nodes)
    assert {r["sum"] for r in rows} == {1.0 + 2.0}


def test_submitit_single_and_multi_task(slurm_cluster: SlurmCluster, tmp_path: Path):
    import submitit

    executor = submitit.AutoExecutor(folder=tmp_path / "one", cluster="slurm")
    executor.update_parameters(timeout_min=5, slurm_partition="debug")
    assert executor.submit(operator.add, 2, 3).result() == 5

    executor = submitit.AutoExecutor(folder=tmp_path / "multi", cluster="slurm")
    executor.update_parameters(timeout_min=5, slurm_partition="debug", nodes=2, tasks_per_node=1)
    job = executor.submit(os.getenv, "SLURMD_NODENAME")
    nodes = job.results()
    assert len(nodes) == 2 and len(set(nodes)) == 2, nodes
    # submitit's view of the state comes from sacct, i.e. from accounting.
    poll_until(lambda: job.get_info(mode="force").get("State") == "COMPLETED", 30, "sacct to show COMPLETED")


def test_requeued_job_runs_again_with_restart_count(slurm_cluster: SlurmCluster, tmp_path: Path):
    runs = tmp_path / "runs.txt"
    script = write_batch_script(
        tmp_path / "requeue.sbatch",
        f"""
        echo "restart=${{SLURM_RESTART_COUNT:-0}}" >> "{runs}"
        if [[ "${{SLURM_RESTART_COUNT:-0}}" == 0 ]]; then sleep 120; fi
        """,
        directives=["--requeue", "--open-mode=append", "--time=5"],
    )
    job = sbatch(script)
    poll_until(lambda: runs.is_file() and "restart=0" in runs.read_text(), 60, "the first run to start")
    requeue(job.job_id)
    result = wait_job(job, timeout=120)
    assert result.ok, result.describe()
    assert runs.read_text().split() == ["restart=0", "restart=1"]
    assert result.restarts == 1


def _gloo_rank() -> None:
    """One srun task: join the group at MASTER_ADDR:MASTER_PORT and all-reduce rank + 1."""
    import torch
    import torch.distributed as dist

    rank, world = int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"])
    addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    # Rank 0 binds the store to the master address itself: the default would listen on all addresses.
    listen_fd = socket.create_server((addr, port)).detach() if rank == 0 else None
    store = dist.TCPStore(addr, port, world, rank == 0, datetime.timedelta(seconds=60), master_listen_fd=listen_fd)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
    value = torch.tensor([rank + 1.0])
    dist.all_reduce(value)
    print(json.dumps({"rank": rank, "world": world, "node": os.environ["SLURMD_NODENAME"], "sum": value.item()}))
    dist.destroy_process_group()


if __name__ == "__main__":
    _gloo_rank()
