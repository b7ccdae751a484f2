import json

import numpy as np
import pytest
import torch

from corpus import torchrun
from emotrain.data.schema import META_FIELDS
from emotrain.data.stream import Modalities
from emotrain.errors import UserError
from emotrain.evaluation.scoring import evaluate_model, write_evaluation
from emotrain.evaluation.gather import Scored
from emotrain.evaluation.predictions import load_classes, load_predictions
from helpers import data_config, labelled_keys


class CountingModel(torch.nn.Module):
    """Logits from the metadata ids only: deterministic, cheap, and it must never see labels."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(len(META_FIELDS), 7)

    def forward(self, batch):
        assert "labels" not in batch and "keys" not in batch
        return self.proj(batch["meta_ids"].float())


def test_single_process_scores_every_turn_and_checks_the_manifest(five_shards, tmp_path):
    import shutil

    model = CountingModel()
    cfg = data_config(five_shards, num_workers=2)
    scored = evaluate_model(model, cfg, Modalities(False, False), "train", 3, torch.device("cpu"), True, 0, 1, 7)
    manifest = json.loads((five_shards / "train" / "manifest.json").read_text())
    assert len(scored.keys) == len(set(scored.keys)) == manifest["labelled_turns"]
    assert scored.logits.dtype == np.float32
    # a manifest that promises more turns than the shards hold is an error, not a warning
    wrong = tmp_path / "wrong"
    shutil.copytree(five_shards, wrong)
    manifest["labelled_turns"] += 1
    (wrong / "train" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="did not see every turn exactly once"):
        evaluate_model(model, data_config(wrong), Modalities(False, False), "train", 3, torch.device("cpu"), False, 0, 1, 7)


def test_write_evaluation_leaves_what_fusion_reads(tmp_path):
    rng = np.random.default_rng(0)
    scored = Scored([f"{i:05d}_1" for i in range(50)], rng.normal(size=(50, 3)).astype(np.float32), rng.integers(0, 3, 50))
    metrics = write_evaluation(tmp_path, "val", scored, ["a", "b", "c"], {"run": "x"}, step=7)
    preds = load_predictions(tmp_path / "predictions" / "val.npz")
    assert list(preds.keys) == scored.keys and load_classes(tmp_path / "predictions") == ["a", "b", "c"]
    report = json.loads((tmp_path / "eval" / "val" / "report.json").read_text())
    assert report["run"] == "x" and report["splits"]["val"]["accuracy"] == metrics["accuracy"]
    assert (tmp_path / "eval" / "val" / "val_confusion.png").stat().st_size > 0
    assert any((tmp_path / "tb").iterdir())


@pytest.mark.slow
def test_exactly_once_at_one_two_three_ranks_over_uneven_shards_same_results(five_shards, tmp_path):
    results = {}
    for nproc in (1, 2, 3):
        out = tmp_path / f"n{nproc}"
        out.mkdir()
        # 2 ranks x 2 loader workers: 4 readers over 5 uneven shards; 1 and 3 ranks with one worker each.
        workers = 2 if nproc == 2 else 1
        torchrun(nproc, "eval_ranks.py", "--shards", str(five_shards), "--out", str(out), "--workers", str(workers))
        preds = load_predictions(out / "predictions" / "train.npz")
        results[nproc] = (preds, json.loads((out / "metrics.json").read_text()))
    base_preds, base_metrics = results[1]
    manifest = json.loads((five_shards / "train" / "manifest.json").read_text())
    assert len(base_preds.keys) == manifest["labelled_turns"]
    assert set(base_preds.keys) == labelled_keys(five_shards)
    for nproc in (2, 3):
        preds, metrics = results[nproc]
        np.testing.assert_array_equal(preds.keys, base_preds.keys)
        np.testing.assert_array_equal(preds.labels, base_preds.labels)
        np.testing.assert_array_equal(preds.logits, base_preds.logits)
        assert metrics == base_metrics


def test_turns_last_is_scored_exactly_once_against_its_own_count(five_shards, tmp_path):
    import shutil

    model = CountingModel()
    manifest = json.loads((five_shards / "train" / "manifest.json").read_text())
    assert 0 < manifest["labelled_last_turns"] < manifest["labelled_turns"]
    scored = evaluate_model(model, data_config(five_shards, turns="last"), Modalities(False, False), "train", 3,
                            torch.device("cpu"), False, 0, 1, 7)
    assert len(scored.keys) == len(set(scored.keys)) == manifest["labelled_last_turns"]
    # the count is checked for this setting too
    wrong = tmp_path / "wrong"
    shutil.copytree(five_shards, wrong)
    manifest["labelled_last_turns"] += 1
    (wrong / "train" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="did not see every turn exactly once"):
        evaluate_model(model, data_config(wrong, turns="last"), Modalities(False, False), "train", 3,
                       torch.device("cpu"), False, 0, 1, 7)
    # a manifest from before the count was recorded: one line saying what to do
    del manifest["labelled_last_turns"]
    (wrong / "train" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="pack the corpus again"):
        evaluate_model(model, data_config(wrong, turns="last"), Modalities(False, False), "train", 3,
                       torch.device("cpu"), False, 0, 1, 7)


def test_an_empty_split_is_one_clear_error(five_shards):
    """five_shards holds every conversation in train: val has nothing to score."""
    with pytest.raises(UserError, match="val holds no labelled turns"):
        evaluate_model(CountingModel(), data_config(five_shards), Modalities(False, False), "val", 3,
                       torch.device("cpu"), False, 0, 1, 7)
