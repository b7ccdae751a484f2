"""The per-test environment guard also drops what a module-scoped in-process run exported.

An in-process training exports RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT. When a module-scoped fixture
runs it, the export lands before the per-test snapshot, so a plain restore would keep it, and a later
sbatch job exported it and bound the port the pytest process still held ("Address already in use").
"""

import os

import pytest


@pytest.fixture(scope="module")
def exported_by_a_module_fixture():
    os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT="29517")
    yield
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        os.environ.pop(name, None)


def test_a_module_fixtures_rank_and_port_never_reach_the_test(exported_by_a_module_fixture):
    leaked = [name for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if name in os.environ]
    assert leaked == []
