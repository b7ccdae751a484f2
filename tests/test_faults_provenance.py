"""A result knows the data and config it came from (issue 26): a run records its shards' fingerprints when it
trains; evaluate, fuse, bundle and predict refuse shards that changed since, a moved folder is named as
moved and `evaluate --shards DIR` follows it; an exact resume keeps its stream settings; a run folder moved to
another install keeps working (the tokenizer is compared by content); val and test agree with train."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from corpus import make_shards
from emotrain.cli import main
from emotrain.data.splits import SplitRecipe
from emotrain.errors import UserError

pytestmark = pytest.mark.slow  # one tiny in-process training (DeepSpeed on CPU)
RECIPE = SplitRecipe(0.2, 0.2, seed=1)
TRAIN = ["--set", "train.total_samples=16", "--set", "train.eval_every_steps=0", "--set", "data.num_workers=0",
         "--set", "train.bf16=false", "--set", "train.checkpoint_every_steps=1"]


def pack(corpus: Path, out: Path, seed: int = 1) -> None:
    make_shards(corpus, out, recipe=SplitRecipe(0.2, 0.2, seed=seed), shard_mb=100.0, max_per_shard=2)


@pytest.fixture(scope="module")
def trained(corpus13, tmp_path_factory):
    root = tmp_path_factory.mktemp("provenance")
    shards = root / "shards" / "tiny"
    pack(corpus13, shards)
    run = root / "run"
    assert main(["train", "demo/audio_text", "--run-dir", str(run), "--set", f"data.shards={shards}", *TRAIN]) == 0
    assert main(["evaluate", str(run), "--split", "val", "test", "--no-progress"]) == 0
    return {"root": root, "corpus": corpus13, "shards": shards, "run": run}


def error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith(f"emotrain {command}: error:"), err
    assert sum(line.startswith("Traceback") for line in err) == 0, err
    return err[-1]


def test_the_run_records_its_shards_fingerprints(trained):
    recorded = json.loads((trained["run"] / "provenance.json").read_text())
    assert recorded["shards"] == str(trained["shards"]) and set(recorded["splits"]) == {"train", "val", "test"}
    scored = json.loads((trained["run"] / "predictions" / "scored_on.json").read_text())
    assert scored == {s: recorded["splits"][s] for s in ("val", "test")}


def test_a_moved_shards_folder_is_named_and_evaluate_follows_it_by_fingerprint(trained, capsys, tmp_path):
    moved = trained["root"] / "shards" / "moved"
    trained["shards"].rename(moved)
    try:
        assert main(["evaluate", str(trained["run"]), "--split", "test", "--no-progress"]) == 2
        assert "no longer at" in error_line(capsys, "evaluate") 
        assert main(["evaluate", str(trained["run"]), "--split", "test", "--shards", str(moved), "--no-progress"]) == 0
        other = tmp_path / "other"
        pack(trained["corpus"], other, seed=2)  # the same corpus, split with another seed
        assert main(["evaluate", str(trained["run"]), "--split", "test", "--shards", str(other), "--no-progress"]) == 2
        assert "is not the train split" in error_line(capsys, "evaluate")
    finally:
        moved.rename(trained["shards"])


def test_the_contract_checks_the_stream_and_compares_the_tokenizer_by_content(trained, tmp_path):
    from emotrain.training.rundir import RunDir
    from emotrain.recipes.train import check_same_contract
    from emotrain.training.run_config import load_run_config

    run = RunDir(trained["run"])
    cfg = run.read_config()
    shards = f"data.shards={trained['shards']}"
    with pytest.raises(UserError, match=r"data\.num_workers \(0 -> 2\)"):  # exact resume needs the same stream
        check_same_contract(run, load_run_config("demo/audio_text", [shards, "data.num_workers=2", "train.bf16=false"]))
    # The run folder on another install: its tokenizer lies elsewhere, with the same files.
    moved = tmp_path / "run"
    shutil.copytree(trained["run"], moved)
    tokenizer = tmp_path / "install" / "tokenizer"
    shutil.copytree(cfg.data.text.tokenizer, tokenizer)
    saved = yaml.safe_load((moved / "config.yaml").read_text())
    saved["data"]["text"]["tokenizer"] = str(tokenizer)
    (moved / "config.yaml").write_text(yaml.safe_dump(saved))
    check_same_contract(RunDir(moved), cfg)  # the same tokenizer: accepted
    (tokenizer / "vocab.txt").write_text((tokenizer / "vocab.txt").read_text() + "extra\n")
    with pytest.raises(UserError, match=r"data\.text\.tokenizer"):
        check_same_contract(RunDir(moved), cfg)


def test_val_or_test_packed_under_another_scheme_is_refused(trained, tmp_path):
    from emotrain.data.manifest import Manifest
    from emotrain.data.provenance import check_splits_agree

    shards = tmp_path / "shards"
    shutil.copytree(trained["shards"], shards)
    manifest = json.loads((shards / "test" / "manifest.json").read_text())
    classes = manifest["scheme"]["classes"]
    manifest["scheme"]["classes"] = classes[1:] + classes[:1]
    manifest["label_histogram"] = {c: manifest["label_histogram"][c] for c in manifest["scheme"]["classes"]}
    (shards / "test" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="labels with scheme"):
        check_splits_agree(shards, Manifest.load(shards, "train"))


def test_fuse_refuses_runs_evaluated_on_other_splits(trained, tmp_path, capsys):
    twin = tmp_path / "twin"
    shutil.copytree(trained["run"], twin)
    scored = json.loads((twin / "predictions" / "scored_on.json").read_text())
    scored["test"] = "0" * 64
    (twin / "predictions" / "scored_on.json").write_text(json.dumps(scored))
    assert main(["fuse", "--audio", str(trained["run"]), "--video", str(twin), "--out", str(tmp_path / "f")]) == 2
    assert "scored on another test split" in error_line(capsys, "fuse")
    assert not (tmp_path / "f").exists()


def test_after_a_repack_in_place_evaluate_bundle_predict_and_resume_refuse(trained, capsys, tmp_path):
    """Last in this module: it repacks the shared shards. The split seed changes, so the new "test" split is
    mostly training data; nothing may score it as the run's test split."""
    bundle = tmp_path / "bundle"
    assert main(["bundle", "--audio", str(trained["run"]), "--out", str(bundle)]) == 0
    def test_ids() -> list[str]:
        return json.loads((trained["shards"] / "test" / "manifest.json").read_text())["conversation_ids"]

    before = test_ids()
    pack(trained["corpus"], trained["shards"], seed=2)
    assert test_ids() != before  # another test split
    report = trained["run"] / "eval" / "test" / "report.json"
    kept = report.read_bytes()
    assert main(["evaluate", str(trained["run"]), "--split", "test", "--no-progress"]) == 2
    assert "is not the train split" in error_line(capsys, "evaluate")
    assert report.read_bytes() == kept  # nothing lost: the earlier report stays
    assert main(["bundle", "--audio", str(trained["run"]), "--out", str(tmp_path / "b2")]) == 2
    assert "is not the train split" in error_line(capsys, "bundle")
    assert main(["predict", str(bundle), "--shards", str(trained["shards"]), "--split", "test",
                 "--out", str(tmp_path / "p"), "--no-progress"]) == 2
    assert "packed again since" in error_line(capsys, "predict")
    assert main(["train", "demo/audio_text", "--run-dir", str(trained["run"]), "--set",
                 f"data.shards={trained['shards']}", *TRAIN, "--set", "train.total_samples=32"]) == 2
    assert "changed since" in error_line(capsys, "train")
