"""Shared test setup: everything runs on CPU, offline, with DeepSpeed's CPU accelerator."""

import os

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")


import pytest  # noqa: E402

from emotrain.training.distributed import PER_PROCESS_TORCH_VARS, RENDEZVOUS_VARS  # noqa: E402
from corpus import ALL_IN_TRAIN, make_corpus, make_shards  # noqa: E402


# The rank and rendezvous variables the pytest process itself was started with (normally none).
_TORCH_VARS_AT_START = {name for name in (*PER_PROCESS_TORCH_VARS, *RENDEZVOUS_VARS) if name in os.environ}


@pytest.fixture(autouse=True)
def restore_environ():
    """Undo what a test wrote to os.environ: an in-process run exports RANK, WORLD_SIZE, MASTER_PORT,
    and a later test's subprocesses (sbatch, torchrun) would inherit them.

    A module- or session-scoped fixture's in-process run writes them before this snapshot is taken, so
    the rank and rendezvous variables are dropped first: a later sbatch job would otherwise bind the
    port the pytest process still holds ("Address already in use")."""
    for name in (*PER_PROCESS_TORCH_VARS, *RENDEZVOUS_VARS):
        if name not in _TORCH_VARS_AT_START:
            os.environ.pop(name, None)
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(autouse=True)
def one_slurm_test_at_a_time(request):
    """The SLURM tests of both test workers take turns (a lock file): the local cluster has two nodes, and a
    job array waiting behind another worker's jobs timed out waiting for its first checkpoint."""
    if request.node.get_closest_marker("slurm") is None:
        yield
        return
    import fcntl
    import tempfile
    from pathlib import Path

    with open(Path(tempfile.gettempdir()) / "emotrain-slurm-tests.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        yield


@pytest.fixture(scope="session")
def corpus13(tmp_path_factory):
    """13 synthetic conversations, shared by the loader and evaluation tests."""
    return make_corpus(tmp_path_factory.mktemp("corpus13"), conversations=13, seed=5)


@pytest.fixture(scope="session")
def five_shards(corpus13, tmp_path_factory):
    """The 13 conversations in 5 uneven shards (3, 3, 3, 3, 1), all in the train split."""
    out = tmp_path_factory.mktemp("five") / "five"
    manifests = make_shards(corpus13, out, recipe=ALL_IN_TRAIN, shard_mb=100.0, max_per_shard=3)
    assert [s.conversations for s in manifests["train"].shards] == [3, 3, 3, 3, 1]
    return out


@pytest.fixture(scope="session")
def two_shards(corpus13, tmp_path_factory):
    """The same conversations in 2 shards: fewer shards than ranks at 3 processes."""
    out = tmp_path_factory.mktemp("two") / "two"
    manifests = make_shards(corpus13, out, recipe=ALL_IN_TRAIN, shard_mb=100.0, max_per_shard=7)
    assert len(manifests["train"].shards) == 2
    return out


@pytest.fixture(scope="session")
def split_shards(corpus13, tmp_path_factory):
    """The 13 conversations packed with val and test splits (0.2 each), 2 per shard: what the sweep tests train on."""
    from emotrain.data.splits import SplitRecipe

    out = tmp_path_factory.mktemp("splitshards") / "tiny"
    make_shards(corpus13, out, recipe=SplitRecipe(0.2, 0.2, seed=1), shard_mb=100.0, max_per_shard=2)
    return out


# Parallel runs (``pytest -n 2 --dist loadfile``, what ``make test`` does): each module runs on one worker (its
# module fixtures are built once), and the modules that take minutes start first, so the two workers finish
# together instead of one starting the demo last. Measured on a fresh clone (seconds, one worker): the demo
# 375, the SLURM train tests 260, train_runs 250, slurm_search 60 (60-70 beside another worker), slurm_sweep 100,
# offline_install 95, search_local 100, engine_runs 150.
# The SLURM modules follow each other, so they mostly land on one worker (their tests take turns anyway).
FIRST = ("test_demo", "test_slurm_train", "test_slurm_search", "test_slurm_sweep", "test_train_runs",
         "test_offline_install", "test_engine_runs", "test_search_local", "test_sweep_local")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Put the long modules first (``--no-loadscope-reorder`` keeps this order); a plain run gets the same."""
    def rank(item: pytest.Item) -> int:
        name = item.module.__name__
        return FIRST.index(name) if name in FIRST else len(FIRST)

    items.sort(key=rank)  # stable: the other files keep their order
