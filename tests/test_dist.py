"""emotrain.training.distributed: which launcher variables win, and what each launcher's environment turns into."""

from __future__ import annotations

import pytest

from emotrain.training import distributed as dist

TORCHRUN = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "GROUP_WORLD_SIZE": "2",
            "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29400", "TORCHELASTIC_RUN_ID": "x",
            "TORCHELASTIC_USE_AGENT_STORE": "True"}
SRUN = {"SLURM_JOB_ID": "4711", "SLURM_STEP_ID": "0", "SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1",
        "SLURM_NODEID": "1", "SLURM_STEP_NUM_TASKS": "6", "SLURM_STEP_NUM_NODES": "2", "SLURM_NNODES": "2",
        "SLURM_STEP_TASKS_PER_NODE": "4,2", "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_STEP_NODELIST": "gpu[07-08]"}


def fake_scontrol(*args: str) -> str:
    """What `scontrol` answers on a cluster whose first node gpu07 has NodeAddr 10.1.2.7."""
    if args[:2] == ("show", "hostnames"):
        assert args[2] == "gpu[07-08]"
        return "gpu07\ngpu08\n"
    if args[:2] == ("show", "node"):
        return f"NodeName={args[2]} Arch=x86_64 CoresPerSocket=8 NodeAddr=10.1.2.7 NodeHostName={args[2]} Version=22.05"
    raise AssertionError(args)


def no_scontrol(*args: str) -> str:
    raise AssertionError(f"scontrol must not be called: {args}")


def test_torchrun_variables_win_over_slurm() -> None:
    env = dist.read_env({**SRUN, **TORCHRUN}, scontrol=no_scontrol)
    assert (env.rank, env.world_size, env.local_rank, env.local_world_size) == (3, 4, 1, 2)
    assert (env.master_addr, env.master_port, env.num_nodes) == ("10.0.0.1", 29400, 2)
    assert env.launcher == dist.TORCHRUN and env.agent_store


def test_srun_only() -> None:
    env = dist.read_env(SRUN, scontrol=fake_scontrol)
    assert (env.rank, env.world_size, env.local_rank) == (5, 6, 1)  # the step's 6 tasks, not the job's 8
    assert env.local_world_size == 2  # node 1 of "4,2"
    assert env.num_nodes == 2
    assert env.master_addr == "10.1.2.7"
    assert env.master_port == dist.SLURM_PORT_BASE + 4711 % dist.SLURM_PORT_SPAN
    assert env.launcher == dist.SLURM and not env.agent_store


def test_srun_master_overrides() -> None:
    env = dist.read_env({**SRUN, "MASTER_ADDR": "node-a", "MASTER_PORT": "23456"}, scontrol=no_scontrol)
    assert (env.master_addr, env.master_port) == ("node-a", 23456)
    env = dist.read_env({**SRUN, "MASTER_ADDR": "node-a", dist.MASTER_ADDR_OVERRIDE: "127.0.0.1"}, scontrol=no_scontrol)
    assert env.master_addr == "127.0.0.1"


def test_srun_compressed_tasks_per_node() -> None:
    env = dist.read_env({**SRUN, "SLURM_STEP_TASKS_PER_NODE": "2(x3)", "SLURM_NODEID": "2", "SLURM_LOCALID": "1",
                         "SLURM_PROCID": "5"}, scontrol=fake_scontrol)
    assert env.local_world_size == 2


def test_batch_script_outside_srun_is_one_process() -> None:
    """An sbatch script has SLURM_PROCID=0 and SLURM_NTASKS=N but is a single process (no SLURM_STEP_ID)."""
    batch_step = {k: v for k, v in SRUN.items() if not k.startswith("SLURM_STEP")}
    env = dist.read_env({**batch_step, "SLURM_PROCID": "0"}, scontrol=no_scontrol)
    assert (env.rank, env.world_size, env.launcher) == (0, 1, dist.SINGLE)


def test_single_process_defaults_and_export(monkeypatch: pytest.MonkeyPatch) -> None:
    env = dist.read_env({}, scontrol=no_scontrol)
    assert (env.rank, env.world_size, env.local_rank, env.local_world_size, env.num_nodes) == (0, 1, 0, 1, 1)
    assert env.master_addr == "127.0.0.1" and env.launcher == dist.SINGLE
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    dist.export_torch_env(env)
    import os

    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == ("0", "1", "0")
    assert os.environ["MASTER_ADDR"] == "127.0.0.1" and int(os.environ["MASTER_PORT"]) == env.master_port


def test_deepspeed_launcher_variables() -> None:
    """What `deepspeed --num_gpus 2` exported on this machine (checked), plus --local_rank in argv."""
    environ = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_SIZE": "2", "CROSS_RANK": "0", "CROSS_SIZE": "1",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29611"}
    env = dist.read_env(environ, scontrol=no_scontrol)
    assert (env.rank, env.local_world_size, env.num_nodes, env.launcher) == (1, 2, 1, dist.DEEPSPEED)
    assert not env.agent_store
    assert dist.strip_launcher_args(["--local_rank=1", "cfg.yaml", "--local_rank", "0", "train.lr=1"]) == ["cfg.yaml", "train.lr=1"]


def test_submitit_inside_srun(monkeypatch: pytest.MonkeyPatch) -> None:
    """submitit's TorchDistributedEnvironment reads os.environ; the override address still wins."""
    for key, value in {**SRUN, "SUBMITIT_EXECUTOR": "slurm", "SLURM_TASKS_PER_NODE": "3(x2)", "SLURM_NTASKS": "6",
                       "SLURM_JOB_NUM_NODES": "2", dist.MASTER_ADDR_OVERRIDE: "127.0.0.1"}.items():
        monkeypatch.setenv(key, value)
    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    import os

    env = dist.read_env(os.environ, scontrol=no_scontrol)
    assert env.launcher == dist.SUBMITIT
    assert (env.rank, env.world_size, env.local_rank, env.local_world_size, env.num_nodes) == (5, 6, 1, 3, 2)
    assert env.master_addr == "127.0.0.1" and 20000 <= env.master_port <= 60000
    assert "RANK" not in os.environ  # read_env only reads; init_distributed exports
    monkeypatch.delenv(dist.MASTER_ADDR_OVERRIDE)
    assert dist.read_env(os.environ, scontrol=fake_scontrol).master_addr == "10.1.2.7"  # NodeAddr, not "gpu07"


def test_inconsistent_environment_is_rejected() -> None:
    with pytest.raises(ValueError, match="rank 4 outside world size 4"):
        dist.read_env({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(ValueError, match="not an integer"):
        dist.read_env({"RANK": "one", "WORLD_SIZE": "4"})


def test_accelerate_settings_as_exported_by_accelerate_1_15() -> None:
    """The variables `accelerate launch` exported here for a DEEPSPEED config with a config file (checked)."""
    environ = {"ACCELERATE_CONFIG_DS_FIELDS": "deepspeed_config_file,zero3_init_flag",
               "ACCELERATE_DEEPSPEED_CONFIG_FILE": "configs/deepspeed/zero2.json", "ACCELERATE_DEEPSPEED_ZERO3_INIT": "false",
               "ACCELERATE_MIXED_PRECISION": "no", "ACCELERATE_USE_DEEPSPEED": "true", **TORCHRUN}
    settings = dist.read_accelerate_settings(environ)
    assert settings.use_deepspeed and settings.deepspeed_config_file == "configs/deepspeed/zero2.json"
    assert settings.mixed_precision is None and settings.zero_stage is None
    settings = dist.read_accelerate_settings({"ACCELERATE_MIXED_PRECISION": "bf16", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3",
                                              "ACCELERATE_GRADIENT_CLIPPING": "0.5", "ACCELERATE_USE_DEEPSPEED": "true"})
    assert (settings.mixed_precision, settings.zero_stage, settings.gradient_clipping) == ("bf16", 3, 0.5)
    assert dist.read_accelerate_settings(TORCHRUN) is None
    assert dist.read_env(environ).launcher == dist.ACCELERATE


def test_forget_torch_ranks_lets_slurm_number_the_ranks() -> None:
    """Stray torch variables in a submitting shell would make every SLURM task rank 0."""
    environ = {**SRUN, "SLURM_PROCID": "1", "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_PORT": "29500"}
    assert dist.read_env(environ, scontrol=no_scontrol).world_size == 1
    assert sorted(dist.forget_torch_ranks(environ)) == ["LOCAL_RANK", "MASTER_PORT", "RANK", "WORLD_SIZE"]
    env = dist.read_env(environ, scontrol=fake_scontrol)
    # the job's own port (from its id), not the submitter's: two array tasks on one node must not share one
    assert (env.rank, env.world_size, env.launcher) == (1, 6, dist.SLURM)
    assert env.master_port == dist.SLURM_PORT_BASE + 4711 % dist.SLURM_PORT_SPAN != 29500


def test_the_sbatch_script_forgets_what_the_submitter_forgets() -> None:
    """slurm/train.sbatch drops the same stray variables as a submitit submission (a submitter's MASTER_PORT,
    maybe still bound by its own process, made every sbatch job fail with "Address already in use")."""
    from pathlib import Path

    script = (Path(__file__).resolve().parents[1] / "slurm" / "train.sbatch").read_text()
    unset = next(line for line in script.splitlines() if line.startswith("unset "))
    names = set(unset.split("#")[0].split()[1:])
    assert names == {*dist.PER_PROCESS_TORCH_VARS, *dist.RENDEZVOUS_VARS}
