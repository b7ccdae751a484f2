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


# Parallel runs (``pytest -n 2``, what ``make test`` does): the groups that take minutes start first, so the
# two workers finish together instead of one starting the demo last. Measured on a fresh clone (seconds, its
# slowest tests, one worker): the installs 470 (the demo 375, the offline install 95), the SLURM tests 420
# together, train_runs 250, sweep_local 165, engine_runs 150, search_local 100.
FIRST = ("installs", "slurm", "test_train_runs", "test_sweep_local", "test_engine_runs", "test_search_local")
# Modules that ``pip install``/``pip wheel`` this checkout: setuptools builds in its build/ folder, so two at
# once break each other ("No such file or directory"); one worker runs them one after the other.
INSTALLS = ("test_demo", "test_offline_install")


def _group(item: pytest.Item) -> str:
    """A test's unit of parallel work: its module (module fixtures are built once), ``slurm`` for every test
    that submits jobs (the local cluster's two nodes are one resource, and its tests wait on its queue), or
    ``installs`` (see INSTALLS)."""
    if item.get_closest_marker("slurm"):
        return "slurm"
    return "installs" if item.module.__name__ in INSTALLS else item.module.__name__


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tag each test with its xdist group (``--dist loadgroup`` reads the tag) and put the long groups first
    (``--no-loadscope-reorder`` keeps this order); a plain run gets the same order."""
    def rank(item: pytest.Item) -> int:
        group = _group(item)
        return FIRST.index(group) if group in FIRST else len(FIRST)

    items.sort(key=rank)  # stable: files keep their order within a rank
    if config.pluginmanager.hasplugin("xdist"):
        for item in items:
            item.add_marker(pytest.mark.xdist_group(_group(item)))
