"""The one place that reads the launcher's environment, starts torch.distributed and picks the device.

Every launcher describes the process group differently: torchrun, ``accelerate launch`` and the
``deepspeed`` launcher export ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; ``srun`` exports ``SLURM_*``;
submitit runs under ``srun`` and knows the rendezvous its own way; a plain ``python`` process
exports nothing. :func:`read_env` turns all of them into one :class:`DistEnv` (torch variables win
over SLURM ones, so ``srun torchrun`` and jobs inside ``salloc`` work), :func:`init_distributed`
exports the torch variables DeepSpeed expects and joins the group, and :func:`device_for` is the only
code that chooses a device. Nothing else in emotrain reads these variables.
"""

from __future__ import annotations

import datetime
import os
import re
import socket
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from emotrain.console import library_output

# Launcher names recorded in DistEnv.launcher.
TORCHRUN, ACCELERATE, DEEPSPEED, ENV, SLURM, SUBMITIT, SINGLE = (
    "torchrun", "accelerate", "deepspeed", "env", "slurm", "submitit", "single",
)

# Overrides the rendezvous host under SLURM, for clusters whose node names do not resolve
# (the local emulated cluster of slurm/local/).
MASTER_ADDR_OVERRIDE = "EMOTRAIN_MASTER_ADDR"

# Same derivation as the sbatch templates (tests/slurm_util.RENDEZVOUS_SH), so both agree.
SLURM_PORT_BASE, SLURM_PORT_SPAN = 20000, 10000

_INIT_TIMEOUT = datetime.timedelta(minutes=10)

# Set per process by torchrun-like launchers; they win over SLURM's variables in read_env.
PER_PROCESS_TORCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_WORLD_SIZE")
# A launch's rendezvous: a submitted job finds its own (the job id gives the port), never its submitter's.
RENDEZVOUS_VARS = ("MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job, whatever launched it."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master_addr: str
    master_port: int
    launcher: str
    num_nodes: int
    # torchrun's agent already serves the rendezvous store: workers must join it, not open their own.
    agent_store: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def validate(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} outside world size {self.world_size}")
        if not 0 <= self.local_rank < self.local_world_size:
            raise ValueError(f"local rank {self.local_rank} outside local world size {self.local_world_size}")
        if not 0 < self.master_port < 65536:
            raise ValueError(f"master port {self.master_port} out of range")


@dataclass(frozen=True)
class AccelerateSettings:
    """What ``accelerate launch --config_file X`` exported (accelerate 1.15, checked on this machine).

    Accelerate's own ``Accelerator`` cannot drive DeepSpeed without a GPU, so emotrain treats
    ``accelerate launch`` as a launcher and honours these settings in its own DeepSpeed config.
    ``mixed_precision`` is None when accelerate said ``no``: with a DeepSpeed config file it always
    exports ``no``, so ``no`` cannot be told apart from "not set" and is not taken as a request.
    """

    use_deepspeed: bool
    deepspeed_config_file: str | None
    mixed_precision: str | None
    zero_stage: int | None
    gradient_accumulation_steps: int | None
    gradient_clipping: float | None
    offload_optimizer_device: str | None
    offload_param_device: str | None


def _int(environ: Mapping[str, str], key: str) -> int:
    try:
        return int(environ[key])
    except ValueError:
        raise ValueError(f"environment variable {key}={environ[key]!r} is not an integer") from None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now (for single-process rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _scontrol(*args: str) -> str:
    return subprocess.run(["scontrol", *args], check=True, capture_output=True, text=True, timeout=30).stdout


def slurm_master_addr(nodelist: str, scontrol: Callable[..., str] = _scontrol) -> str:
    """The first node of ``nodelist`` as an address: its NodeAddr, which defaults to the node name."""
    first = scontrol("show", "hostnames", nodelist).split()[0]
    match = re.search(r"\bNodeAddr=(\S+)", scontrol("show", "node", first, "-o"))
    return match.group(1) if match else first


def _tasks_on_node(tasks_per_node: str, node_id: int) -> int:
    """Read SLURM's compressed ``2(x3),1`` task counts and return the one for ``node_id``."""
    counts: list[int] = []
    for part in tasks_per_node.split(","):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if not match:
            raise ValueError(f"cannot parse SLURM tasks per node {tasks_per_node!r}")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts[node_id]


def _from_torch_vars(environ: Mapping[str, str]) -> DistEnv:
    if any(key.startswith("ACCELERATE_") for key in environ):
        launcher = ACCELERATE
    elif "TORCHELASTIC_RUN_ID" in environ:
        launcher = TORCHRUN
    elif "CROSS_RANK" in environ or "LOCAL_SIZE" in environ:
        launcher = DEEPSPEED
    else:
        launcher = ENV
    world = _int(environ, "WORLD_SIZE")
    local_world = _int(environ, "LOCAL_WORLD_SIZE") if "LOCAL_WORLD_SIZE" in environ else (
        _int(environ, "LOCAL_SIZE") if "LOCAL_SIZE" in environ else world
    )
    if "GROUP_WORLD_SIZE" in environ:
        nodes = _int(environ, "GROUP_WORLD_SIZE")
    elif "CROSS_SIZE" in environ:
        nodes = _int(environ, "CROSS_SIZE")
    else:
        nodes = max(1, world // max(1, local_world))
    return DistEnv(
        rank=_int(environ, "RANK"),
        world_size=world,
        local_rank=_int(environ, "LOCAL_RANK") if "LOCAL_RANK" in environ else 0,
        local_world_size=local_world,
        master_addr=environ.get("MASTER_ADDR", "127.0.0.1"),
        master_port=_int(environ, "MASTER_PORT") if "MASTER_PORT" in environ else 29500,
        launcher=launcher,
        num_nodes=nodes,
        agent_store=environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true",
    )


def _from_slurm(environ: Mapping[str, str], scontrol: Callable[..., str]) -> DistEnv:
    node_id = _int(environ, "SLURM_NODEID") if "SLURM_NODEID" in environ else 0
    tasks_per_node = environ.get("SLURM_STEP_TASKS_PER_NODE") or environ.get("SLURM_TASKS_PER_NODE", "1")
    nodelist = environ.get("SLURM_STEP_NODELIST") or environ["SLURM_JOB_NODELIST"]
    master_addr = environ.get(MASTER_ADDR_OVERRIDE) or environ.get("MASTER_ADDR") or slurm_master_addr(nodelist, scontrol)
    if "MASTER_PORT" in environ:
        port = _int(environ, "MASTER_PORT")
    else:
        port = SLURM_PORT_BASE + _int(environ, "SLURM_JOB_ID") % SLURM_PORT_SPAN
    return DistEnv(
        rank=_int(environ, "SLURM_PROCID"),
        world_size=_int(environ, "SLURM_STEP_NUM_TASKS") if "SLURM_STEP_NUM_TASKS" in environ else _int(environ, "SLURM_NTASKS"),
        local_rank=_int(environ, "SLURM_LOCALID"),
        local_world_size=_tasks_on_node(tasks_per_node, node_id),
        master_addr=master_addr,
        master_port=port,
        launcher=SLURM,
        num_nodes=_int(environ, "SLURM_STEP_NUM_NODES") if "SLURM_STEP_NUM_NODES" in environ else _int(environ, "SLURM_NNODES"),
    )


def _from_submitit(environ: Mapping[str, str], scontrol: Callable[..., str]) -> DistEnv:
    """Submitit's own view of ranks and port (the port comes from the job id, or MASTER_PORT).

    The address is the first node's NodeAddr, as for plain srun: submitit uses the node's name,
    which only resolves where NodeAddr defaults to it (not on clusters that set NodeAddr, nor on
    the test cluster's emulated nodes).

    Reads ``os.environ`` (submitit has no other input); equivalent to
    ``TorchDistributedEnvironment().export(set_cuda_visible_devices=False)`` once exported, because
    :func:`export_torch_env` never touches ``CUDA_VISIBLE_DEVICES`` (DeepSpeed picks the GPU by
    ``LOCAL_RANK``, and a process that sees one GPU only would have to use ``cuda:0`` instead).
    """
    from submitit.helpers import TorchDistributedEnvironment

    tde = TorchDistributedEnvironment()
    return DistEnv(
        rank=tde.rank,
        world_size=tde.world_size,
        local_rank=tde.local_rank,
        local_world_size=tde.local_world_size,
        master_addr=environ.get(MASTER_ADDR_OVERRIDE) or slurm_master_addr(environ["SLURM_JOB_NODELIST"], scontrol),
        master_port=tde.master_port,
        launcher=SUBMITIT,
        num_nodes=tde.world_size // tde.local_world_size,
    )


def read_env(
    environ: Mapping[str, str] | None = None,
    scontrol: Callable[..., str] = _scontrol,
) -> DistEnv:
    """Describe this process from its environment; reads only, never writes.

    Precedence (``srun torchrun`` and runs inside ``salloc`` carry both kinds, and the torch ones
    describe this process): torch variables (``RANK`` + ``WORLD_SIZE``) from torchrun, accelerate or
    the deepspeed launcher; then submitit (``SUBMITIT_EXECUTOR=slurm`` inside an ``srun`` step); then
    plain ``srun`` (``SLURM_STEP_ID`` present: a batch script itself also has ``SLURM_PROCID`` and
    ``SLURM_NTASKS`` but is one process); else a single process on a free local port.
    """
    environ = os.environ if environ is None else environ
    if "RANK" in environ and "WORLD_SIZE" in environ:
        env = _from_torch_vars(environ)
    elif "SLURM_STEP_ID" in environ and "SLURM_PROCID" in environ:
        env = _from_submitit(environ, scontrol) if environ.get("SUBMITIT_EXECUTOR") == "slurm" else _from_slurm(environ, scontrol)
    else:
        env = DistEnv(0, 1, 0, 1, "127.0.0.1", free_port(), SINGLE, 1)
    env.validate()
    return env


def read_accelerate_settings(environ: Mapping[str, str] | None = None) -> AccelerateSettings | None:
    """The settings ``accelerate launch`` exported, or None when it did not launch this process."""
    environ = os.environ if environ is None else environ
    if not any(key.startswith("ACCELERATE_") for key in environ):
        return None

    def opt(key: str) -> str | None:
        value = environ.get(key)
        return value if value not in (None, "", "none", "None") else None

    mixed = (opt("ACCELERATE_MIXED_PRECISION") or "no").lower()
    stage, accum, clip = opt("ACCELERATE_DEEPSPEED_ZERO_STAGE"), opt("ACCELERATE_GRADIENT_ACCUMULATION_STEPS"), opt("ACCELERATE_GRADIENT_CLIPPING")
    return AccelerateSettings(
        use_deepspeed=environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true",
        deepspeed_config_file=opt("ACCELERATE_DEEPSPEED_CONFIG_FILE"),
        mixed_precision=None if mixed == "no" else mixed,
        zero_stage=int(stage) if stage is not None else None,
        gradient_accumulation_steps=int(accum) if accum is not None else None,
        gradient_clipping=float(clip) if clip is not None else None,
        offload_optimizer_device=opt("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE"),
        offload_param_device=opt("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE"),
    )


def strip_launcher_args(argv: Sequence[str]) -> list[str]:
    """Drop the ``--local_rank=N`` / ``--local_rank N`` the deepspeed launcher appends to every script's
    arguments (argparse would reject it; the rank is read from the environment instead).

    The rank is read from ``LOCAL_RANK``, which that launcher exports too, so the flag carries nothing.
    """
    out: list[str] = []
    skip_next = False
    for arg in argv:
        if skip_next:
            skip_next = False
        elif arg in ("--local_rank", "--local-rank"):
            skip_next = True
        elif not arg.startswith(("--local_rank=", "--local-rank=")):
            out.append(arg)
    return out


def forget_torch_ranks(environ: dict[str, str] | None = None) -> list[str]:
    """Drop the per-process torch variables and the rendezvous a submitting shell may carry; return the names
    dropped.

    A job submitted from inside torchrun (or after an in-process run exported them) would give every
    SLURM task the same rank, since those variables win over SLURM's (see :func:`read_env`); and every job
    or array task submitted from it the same rendezvous port, so two array tasks on one node collide
    ("Address already in use").
    """
    environ = os.environ if environ is None else environ
    return [name for name in (*PER_PROCESS_TORCH_VARS, *RENDEZVOUS_VARS) if environ.pop(name, None) is not None]


def export_torch_env(env: DistEnv) -> None:
    """Write the variables DeepSpeed and webdataset read; never CUDA_VISIBLE_DEVICES.

    Under plain ``srun`` nothing sets ``RANK``/``WORLD_SIZE``: without them DeepSpeed falls back to
    MPI discovery and webdataset splits shards as if there were one rank; even a single process
    needs them (and ``MASTER_ADDR``/``MASTER_PORT``) for DeepSpeed's process group."""
    os.environ.update(
        RANK=str(env.rank),
        WORLD_SIZE=str(env.world_size),
        LOCAL_RANK=str(env.local_rank),
        LOCAL_WORLD_SIZE=str(env.local_world_size),
        MASTER_ADDR=env.master_addr,
        MASTER_PORT=str(env.master_port),
    )


def device_for(env: DistEnv) -> torch.device:
    """The device this rank computes on: its local GPU when there is one, else the CPU."""
    if torch.cuda.is_available():
        torch.cuda.set_device(env.local_rank)
        return torch.device("cuda", env.local_rank)
    return torch.device("cpu")


def _bound_store(env: DistEnv) -> torch.distributed.TCPStore:
    """A rendezvous store whose server (rank 0) listens on the master address only.

    The default ``env://`` store listens on every address of the master node, which exposes the
    rendezvous to the whole network (and on a shared test machine, to every other job).
    """
    listen_fd = None
    if env.rank == 0:
        listen_fd = socket.create_server((env.master_addr, env.master_port)).detach()
    return torch.distributed.TCPStore(
        env.master_addr, env.master_port, env.world_size, env.rank == 0, _INIT_TIMEOUT, master_listen_fd=listen_fd,
    )


def init_distributed(env: DistEnv) -> torch.device:
    """Export the torch variables, join the process group (gloo on CPU, nccl on GPU), return the device.

    Under torchrun (and accelerate, which runs torchrun) the agent's store is joined through
    ``env://``; elsewhere rank 0 serves a store bound to the master address. DeepSpeed then adopts
    the initialised group.
    """
    import deepspeed

    export_torch_env(env)
    device = device_for(env)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not torch.distributed.is_initialized():
        if env.agent_store:
            torch.distributed.init_process_group(backend, timeout=_INIT_TIMEOUT)
        else:
            torch.distributed.init_process_group(
                backend, store=_bound_store(env), rank=env.rank, world_size=env.world_size, timeout=_INIT_TIMEOUT,
            )
    with library_output():  # DeepSpeed prints "... built successfully" on every rank
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
    return device


def sum_over_ranks(values: Sequence[float] | torch.Tensor, device: torch.device) -> list[float]:
    """Sum a few per-rank numbers over all ranks in one collective (identity when alone); one host read.

    ``values`` may be a 1-D tensor already on ``device`` (numbers the host has not read yet)."""
    if isinstance(values, torch.Tensor):
        tensor = values.to(device=device, dtype=torch.float64)
    else:
        tensor = torch.tensor(list(values), dtype=torch.float64, device=device)
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(tensor)
    return tensor.tolist()


def broadcast_from_main(value: object) -> object:
    """Rank 0's ``value`` on every rank (a picklable object: a checkpoint tag, a path)."""
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.barrier()


def shutdown() -> None:
    """Leave the process group together: a rank tearing gloo down while another still talks aborts it."""
    if torch.distributed.is_initialized():
        barrier()
        torch.distributed.destroy_process_group()
        _forget_deepspeed_groups()


def _forget_deepspeed_groups() -> None:
    """DeepSpeed caches groups of the process group it first saw (a clone of the world group); a second
    training in the same process (a pair point or search trials in one SLURM task) must not reuse them."""
    import sys

    groups = sys.modules.get("deepspeed.utils.groups")
    if groups is None:
        return
    for name in ("_WORLD_GROUP", "_ZERO_PARAM_INTRA_PARALLEL_GROUP", "_DATA_PARALLEL_GROUP", "_MODEL_PARALLEL_GROUP",
                 "_TENSOR_MODEL_PARALLEL_GROUP"):
        if hasattr(groups, name):
            setattr(groups, name, None)
    for name in ("_EXPERT_PARALLEL_GROUP", "_EXPERT_PARALLEL_GROUP_RANKS", "_EXPERT_DATA_PARALLEL_GROUP",
                 "_EXPERT_DATA_PARALLEL_GROUP_RANKS", "_ALL_TO_ALL_GROUP"):
        if isinstance(getattr(groups, name, None), dict):
            getattr(groups, name).clear()
