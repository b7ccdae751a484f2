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
from helpers import data_config
from emotrain.data.stream import Modalities, build_loader
loader, _ = build_loader(data_config(sys.argv[1], num_workers=2), "train", Modalities(False, False), 2, train=True)
batches = iter(loader)
next(batches)
helpers = [p.pid for p in psutil.Process().children(recursive=True)]
print(" ".join(map(str, helpers)), flush=True)
time.sleep(600)
"""


def python_env(*paths: Path, **extra: str) -> dict[str, str]:
    """This environment plus ``extra``, with the checkout (then ``paths``) importable by a child ``python -c``."""
    path = os.pathsep.join([str(REPO), *map(str, paths), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, **extra, "PYTHONPATH": path}


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
    env = python_env(TESTS)
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


@pytest.mark.slow
def test_a_run_folder_removed_during_training_ends_it_with_one_line_and_no_process_left(split_shards, tmp_path):
    import shutil

    from helpers import child_env, kill9_tree, wait_for

    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "emotrain.cli", "train", "demo/audio_text", "--run-dir", str(run),
           "--set", f"data.shards={split_shards}", "--set", "train.total_samples=100000", "--set", "train.eval_every_steps=0",
           "--set", "data.num_workers=1", "--set", "train.bf16=false", "--set", "train.checkpoint_every_steps=2",
           "--set", "train.log_every_steps=1"]
    env = dict(child_env(), PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    helpers: list[int] = []
    try:
        wait_for(run / "checkpoints" / "step00000002" / "complete", proc, timeout=300)
        helpers = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        assert helpers, "no loader processes to count"
        while run.exists():  # the trainer may be writing into it meanwhile
            shutil.rmtree(run, ignore_errors=True)
        rc = proc.wait(timeout=180)
        err = proc.stderr.read().strip().splitlines()
        assert rc == 2 and err[-1].startswith("emotrain train: error: the run folder"), err[-20:]
        assert not any(line.startswith("Traceback") for line in err), err
        deadline = time.monotonic() + 20
        while alive(helpers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert alive(helpers) == []
    finally:
        kill9_tree(proc.pid)
        for pid in alive(helpers):
            os.kill(pid, signal.SIGKILL)


def test_a_fork_server_whose_training_process_died_while_it_started_exits():
    """Under load the training process can be killed while its fork server still imports the preload: the
    server was reparented before it asked to die with its parent, and must exit instead of staying behind."""
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    code = "from emotrain.signals import fork_server_dies_with_parent as f; f(); print('still here')"
    env = python_env(EMOTRAIN_LOADER_PARENT=str(gone.pid))
    child = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert (child.returncode, child.stdout) == (1, ""), (child.returncode, child.stdout, child.stderr[-2000:])


def test_a_loader_worker_whose_fork_server_died_while_it_started_exits():
    """Under load a worker can still be starting when the training process is killed and its fork server dies
    with it: the worker is reparented before its worker_init_fn asks to die with the server, and must exit
    instead of waiting forever on a queue whose other end it holds itself."""
    code = """
import os, sys
from emotrain.signals import fork_server_dies_with_parent, ignore_stop_notices
fork_server_dies_with_parent()  # this process plays the fork server of the test process
server = os.getpid()
if os.fork() == 0:
    while os.getppid() == server:  # the server is gone before the worker starts
        pass
    ignore_stop_notices(0)
    print("worker still here", flush=True)
    os._exit(0)
"""
    env = python_env(EMOTRAIN_LOADER_PARENT=str(os.getpid()))
    # The output pipe closes when the worker ends too: nothing printed means the worker exited at its start.
    server = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert (server.returncode, server.stdout) == (0, ""), (server.returncode, server.stdout, server.stderr[-2000:])
