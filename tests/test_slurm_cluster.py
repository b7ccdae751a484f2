"""The local SLURM (slurm/local/start.sh) answers: a ping of the harness, not of the project.

One job on both nodes, one task each, no Python: srun numbers the tasks and names the nodes, and the
rendezvous of slurm_util.RENDEZVOUS_SH gives every task the same address and port. When this fails,
the cluster is at fault, not the code under test. What the launch code relies on beyond that
(gloo across the two nodes, requeue and its restart count, submitit and the accounting it polls)
is what tests/test_slurm_train.py and tests/test_slurm_sweep.py exercise with real training jobs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from slurm_util import (  # noqa: F401  (slurm_cluster is a fixture)
    RENDEZVOUS_SH,
    SlurmCluster,
    sbatch,
    slurm_cluster,
    wait_job,
    write_batch_script,
)

pytestmark = pytest.mark.slurm


def test_two_nodes_run_one_task_each_and_agree_on_the_rendezvous(slurm_cluster: SlurmCluster, tmp_path: Path):
    assert len(slurm_cluster.nodes) >= 2, slurm_cluster
    script = write_batch_script(
        tmp_path / "ping.sbatch",
        RENDEZVOUS_SH + "srun bash -c 'echo \"task $SLURM_PROCID $SLURM_NTASKS $SLURMD_NODENAME $MASTER_ADDR:$MASTER_PORT\"'\n",
    )
    result = wait_job(sbatch(script, options=["--time=2", "--nodes=2", "--ntasks-per-node=1"]), timeout=120)
    assert result.ok, result.describe()
    rows = sorted(line.split()[1:] for line in result.stdout.splitlines() if line.startswith("task "))
    assert [(rank, world) for rank, world, *_ in rows] == [("0", "2"), ("1", "2")], result.describe()
    assert len({node for *_, node, _ in rows}) == 2 and {node for *_, node, _ in rows} <= set(slurm_cluster.nodes)
    assert len({master for *_, master in rows}) == 1 and rows[0][-1].startswith("127.0.0.1:"), result.describe()
