"""The log channel: periodic progress lines off a terminal, rank-prefixed warnings, a log file per folder."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from emotrain import log as emolog

REPO = Path(__file__).resolve().parents[1]
PROGRESS_LINE = re.compile(r"train: \d+/\d+ step \(\d+%\), [\d.]+ step/s, ETA \d+:\d\d:\d\d")


def test_off_a_terminal_progress_is_a_periodic_line_with_rate_and_eta(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="emotrain")
    bar = emolog.progress(total=10, initial=2, desc="train", unit="step", stream=io.StringIO())
    assert isinstance(bar, emolog.PlainProgress)
    bar.every = 0.0  # every update: the interval itself is EMOTRAIN_PROGRESS_EVERY
    for _ in range(8):
        bar.set_postfix(loss="0.5")
        bar.update()
    bar.close()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 9 and all(PROGRESS_LINE.search(line) for line in lines[:-1]), lines
    assert lines[-2].startswith("train: 10/10 step (100%)") and "loss=0.5" in lines[-2]
    assert lines[-1].endswith("(done)") and not any("\r" in line for line in lines)


def test_a_quiet_interval_logs_nothing_until_it_passes(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="emotrain")
    bar = emolog.PlainProgress(total=1000, desc="pack", unit="conv", every=3600)
    for _ in range(999):
        bar.update()
    assert caplog.records == []


def test_on_a_terminal_it_is_a_bar() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    from tqdm import tqdm

    assert isinstance(emolog.progress(total=3, desc="x", stream=Tty()), tqdm)


RANK_SCRIPT = """
import logging, sys, warnings
from emotrain.log import get_logger, log_to_folder, setup_logging
setup_logging()
log_to_folder(sys.argv[1])
log = get_logger("emotrain.probe")
log.info("hello from the probe")
log.warning("a warning of this rank")
warnings.warn("a library warning")
"""


def test_each_rank_warns_with_its_rank_and_the_folder_log_holds_them_all(tmp_path: Path) -> None:
    outs = {}
    for rank in (0, 1):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "PYTHONPATH": str(REPO)}
        env.pop(emolog.FILES_ENV, None)
        outs[rank] = subprocess.run([sys.executable, "-c", RANK_SCRIPT, str(tmp_path)], env=env, capture_output=True,
                                    text=True, timeout=60)
        assert outs[rank].returncode == 0, outs[rank].stderr
    assert outs[0].stdout.strip() == "hello from the probe" and outs[1].stdout == ""  # rank 0's messages only
    assert "[rank 1] a warning of this rank" in outs[1].stderr
    text = (tmp_path / "logs" / "emotrain.log").read_text()
    for rank in (0, 1):
        assert re.search(rf"\[rank {rank}\] WARNING emotrain.probe: a warning of this rank", text), text
        assert re.search(rf"\[rank {rank}\] WARNING py.warnings: .*a library warning", text), text
    assert text.count("hello from the probe") == 1


def test_a_removed_log_folder_costs_no_traceback(tmp_path: Path) -> None:
    script = RANK_SCRIPT.replace('log.info("hello from the probe")',
                                 'import shutil; shutil.rmtree(sys.argv[1]); log.info("after removal")')
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "gone")], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0 and "Traceback" not in proc.stderr and "Logging error" not in proc.stderr, proc.stderr
    assert not (tmp_path / "gone").exists()


def break_one_conversation_per_shard(split_dir: Path) -> None:
    """Each shard's first conversation gets unreadable JSON: every rank meets a skipped sample."""
    for shard in sorted(split_dir.glob("*.tar")):
        with tarfile.open(shard) as tar:
            members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
        first = sorted(m.name for m, _ in members if m.name.endswith(".json") and m.name.count(".") == 1)[0]
        with tarfile.open(shard, "w") as out:
            for member, data in members:
                if member.name == first:
                    data = b"{not json"
                member.size = len(data)
                out.addfile(member, io.BytesIO(data))


@pytest.mark.slow
def test_a_slurm_style_run_log_has_progress_lines_and_the_run_log_every_ranks_warnings(split_shards, tmp_path: Path) -> None:
    """Two ranks with output to a file, as under SLURM: periodic lines, no carriage-return bar; the run's
    log file holds each rank's warnings (its loader workers' skipped samples), prefixed by rank."""
    import shutil

    shards = tmp_path / "shards"
    shutil.copytree(split_shards, shards)
    break_one_conversation_per_shard(shards / "train")
    run_dir, out = tmp_path / "run", tmp_path / "slurm-1234.out"
    env = {**os.environ, "EMOTRAIN_PROGRESS_EVERY": "0", "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    env.pop(emolog.FILES_ENV, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "launch" / "train.py"), "demo/video_text", "--run-dir", str(run_dir),
           "--set", f"data.shards={shards}", "--set", "train.total_samples=64", "--set", "train.global_batch_size=8",
           "--set", "train.micro_batch_size=4", "--set", "train.eval_every_steps=0", "--set", "data.num_workers=1",
           "--set", "train.checkpoint_every_steps=100"]
    with open(out, "w") as sink:
        proc = subprocess.run(cmd, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, timeout=600)
    captured = out.read_text()
    assert proc.returncode == 0, captured[-3000:]
    assert "\r" not in captured
    assert len(PROGRESS_LINE.findall(captured)) >= 4, captured[-3000:]
    text = (run_dir / "logs" / "emotrain.log").read_text()
    for rank in (0, 1):
        assert re.search(rf"\[rank {rank}\] WARNING emotrain\.data\.stream: skipping", text), text[-3000:]
    assert "train: completed at step 8/8" in text
