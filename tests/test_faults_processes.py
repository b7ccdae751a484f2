"""No process outlives its job (issue 26): the loader's fork server and workers ignore SIGTERM by design, so
they must end with the process they serve; a run folder deleted under a training ends it with one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

CHILD = """
import sys, time
import psutil
from test_stream import data_config
from emotrain.data.stream import Modalities, build_loader
loader, _ = build_loader(data_config(sys.argv[1], num_workers=2), "train", Modalities(False, False), 2, train=True)
batches = iter(loader)
next(batches)
helpers = [p.pid for p in psutil.Process().children(recursive=True)]
print(" ".join(map(str, helpers)), flush=True)
time.sleep(600)
"""


def alive(pids: list[int]) -> list[int]:
    left = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                left.append(pid)
        except psutil.NoSuchProcess:
            pass
    return left


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_no_loader_process_outlives_the_process_it_serves(five_shards, sig):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(TESTS), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(five_shards)], stdout=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    try:
        helpers = [int(pid) for pid in proc.stdout.readline().split()]
        names = [" ".join(psutil.Process(pid).cmdline())[:80] for pid in helpers]
        assert any("forkserver" in name for name in names) and len(helpers) >= 3, names  # the server and 2 workers
        proc.send_signal(sig)  # the default action: no atexit, no loader shutdown
        proc.wait(timeout=30)
        deadline = time.monotonic() + 20
        while alive(helpers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert alive(helpers) == [], [" ".join(psutil.Process(p).cmdline())[:100] for p in alive(helpers)]
    finally:
        for pid in alive([proc.pid] + (helpers if "helpers" in locals() else [])):
            os.kill(pid, signal.SIGKILL)
