"""The best checkpoint by validation, kept through rotation, and early stopping that survives a resume."""

from __future__ import annotations

import json

import pytest
from helpers import result_of, run, scalars, torchrun

from emotrain.errors import UserError
from emotrain.training import checkpoint
from emotrain.training.best import BestState, EarlyStopping, observe


def test_higher_wins_ties_go_to_the_lower_nll_and_min_delta_governs_patience():
    best, stopping = BestState(), EarlyStopping(patience=2, min_delta=0.05)
    assert observe({"val/macro_f1": 0.5, "val/nll": 1.0}, 10, best, "val/macro_f1", stopping) == (True, False)
    assert observe({"val/macro_f1": 0.5, "val/nll": 0.9}, 20, best, "val/macro_f1", stopping) == (True, False)
    assert (best.step, best.evals_without_improvement) == (20, 1)  # a tie is the new best, not progress
    assert observe({"val/macro_f1": 0.52, "val/nll": 2.0}, 30, best, "val/macro_f1", stopping) == (True, True)
    assert (best.step, best.value) == (30, 0.52)  # better, but by less than min_delta: patience ran out
    assert observe({"val/macro_f1": 0.6}, 40, best, "val/macro_f1", stopping) == (True, False)
    assert best.evals_without_improvement == 0


def test_nll_as_the_metric_is_lower_is_better_and_an_empty_evaluation_counts_for_nothing():
    best = BestState()
    assert observe({"val/nll": 1.0}, 1, best, "val/nll", None) == (True, False)
    assert observe({"val/nll": 1.5}, 2, best, "val/nll", None) == (False, False)
    assert best.evals_without_improvement == 1
    # patience 1 is used up, but an evaluation without the metric neither stops nor counts
    assert observe({}, 3, best, "val/nll", EarlyStopping(patience=1)) == (False, False)
    assert best.evals_without_improvement == 1
    assert observe({"val/nll": 0.5}, 4, best, "val/nll", None) == (True, False) and best.value == 0.5


def _fake_tags(root, steps, best=None):
    root.mkdir(parents=True, exist_ok=True)
    for step in steps:
        tag = root / checkpoint.tag_for(step)
        tag.mkdir()
        (tag / checkpoint.COMPLETE).write_text("{}")
    if best is not None:
        (root / checkpoint.BEST).write_text(checkpoint.tag_for(best))


def test_rotation_never_deletes_the_best_and_evaluate_export_default_to_it(tmp_path):
    root = tmp_path / "checkpoints"
    _fake_tags(root, [10, 20, 30, 40], best=20)
    checkpoint.prune(root, keep=1)
    assert checkpoint.complete_tags(root) == ["step00000020", "step00000040"]
    assert checkpoint.choose_tag(root) == ("step00000020", "best")
    assert checkpoint.choose_tag(root, last=True) == ("step00000040", "last")
    assert checkpoint.choose_tag(root, "step00000040") == ("step00000040", "requested")


def test_a_tag_must_be_a_tag_of_this_run(tmp_path):
    root = tmp_path / "checkpoints"
    _fake_tags(root, [10])
    with pytest.raises(UserError, match="not a tag name"):
        checkpoint.choose_tag(root, "../../other/checkpoints/step00000010")
    with pytest.raises(UserError, match="complete: step00000010"):
        checkpoint.choose_tag(root, "step00000099")
    _fake_tags(tmp_path / "empty", [])
    with pytest.raises(UserError, match="train first"):
        checkpoint.choose_tag(tmp_path / "empty")


# Validation every 2 steps, scripted: best at step 4, then 3 evaluations without improvement.
SCRIPT = "2:0.1,4:0.5,6:0.3,8:0.2,10:0.4,12:0.3,14:0.3,16:0.3"
BEST_RUN = ["global_batch_size=32", "micro_batch_size=8", "checkpoint_every_steps=2", "keep_checkpoints=1",
            "eval_every_steps=2", "log_every_steps=2", "early_stopping={patience: 3}"]


def _tags(run_dir) -> list[str]:
    return checkpoint.complete_tags(checkpoint.checkpoint_dir(run_dir))


@pytest.mark.slow
def test_best_survives_rotation_and_a_resumed_run_keeps_its_patience_until_early_stopping_ends_it(tmp_path):
    """One run in two launches: the first stops at step 8 (256 samples) with 2 evaluations without
    improvement, the second resumes with 512 samples and stops early at step 10, where an
    uninterrupted run stops too (a fresh patience counter would have run to step 16)."""
    first = run(torchrun(tmp_path, "--scripted-val", SCRIPT, train=["total_samples=256", *BEST_RUN]))
    assert result_of(tmp_path, first)["step"] == 8  # 2 evaluations without improvement by then: not yet stopped
    marker = json.loads((checkpoint.checkpoint_dir(tmp_path) / "step00000008" / checkpoint.COMPLETE).read_text())
    assert marker["best"]["step"] == 4 and marker["best"]["evals_without_improvement"] == 2
    assert _tags(tmp_path) == ["step00000004", "step00000008"]  # the last (keep 1) and the best
    second = run(torchrun(tmp_path, "--scripted-val", SCRIPT, train=["total_samples=512", *BEST_RUN]))
    result = result_of(tmp_path, second)
    assert (result["resumed_from"], result["stop_reason"], result["early_stopped"], result["step"]) == (8, "completed", True, 10)
    assert (result["best_step"], result["best_value"]) == (4, 0.5)
    assert _tags(tmp_path) == ["step00000004", "step00000010"]  # the last (keep 1) and the best
    assert (checkpoint.checkpoint_dir(tmp_path) / checkpoint.BEST).read_text() == "step00000004"
    assert scalars(tmp_path)["best/val/macro_f1"] == [(2, pytest.approx(0.1)), (4, pytest.approx(0.5))]


def test_rotation_reads_which_tag_is_best_without_hashing_it(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    _fake_tags(root, [10, 20, 30], best=10)

    def no_hashing(tag_dir):
        raise AssertionError(f"prune verified {tag_dir}: a save would hash the best checkpoint again")

    monkeypatch.setattr(checkpoint, "verify", no_hashing)
    checkpoint.prune(root, keep=1)
    assert checkpoint.complete_tags(root) == ["step00000010", "step00000030"]
