"""`emotrain inspect`: parameter counts offline, for model YAMLs and run YAMLs."""

from __future__ import annotations

import json
from pathlib import Path

from emotrain.cli import main as cli_main
from emotrain.data.manifest import Manifest
from emotrain.data.schema import META_FIELDS
from emotrain.labels import LabelScheme

ROOT = Path(__file__).resolve().parents[1]
# bert-base-uncased without its pooler (we use the CLS token): 109,482,240 - 590,592.
BERT_BASE_NO_POOLER = 108_891_648
# Frozen by default: embeddings (23,837,184) + 6 of 12 layers (7,087,872 each).
BERT_BASE_FROZEN = 23_837_184 + 6 * 7_087_872


def _rows(out: str) -> dict[str, list[int]]:
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[1].replace(",", "").isdigit():
            rows[parts[0]] = [int(p.replace(",", "")) for p in parts[1:]]
    return rows


def test_full_size_counts_without_weights(capsys):
    assert cli_main(["inspect", str(ROOT / "configs/model/audio_text.yaml")]) == 0
    out = capsys.readouterr().out
    rows = _rows(out)
    assert "no manifest: 64 ids per metadata field" in out
    assert rows["text_encoder"] == [BERT_BASE_NO_POOLER - BERT_BASE_FROZEN, BERT_BASE_FROZEN, BERT_BASE_NO_POOLER]
    assert rows["audio_encoder"][1] > 0  # the conv feature encoder is frozen by default
    assert rows["metadata"][2] == 64 * 25 * len(META_FIELDS)
    total = rows.pop("total")
    assert total == [sum(r[i] for r in rows.values()) for i in range(3)]


def test_run_yaml_with_model_section_and_manifest(tmp_path, capsys):
    model = (ROOT / "configs/model/video_text_tiny.yaml").read_text()
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text("model:\n" + "".join(f"  {line}\n" for line in model.splitlines()) + "train: {lr: 0.001}\n")
    scheme = LabelScheme(name="x", classes=["p", "q", "r"])
    Manifest(name="x", split="train", conversations=0, turns=0, labelled_turns=0, clips=0, label_histogram={},
             scheme=scheme, shards=[], conversation_ids=[], vocab={"topic": ["a", "b", "c"]}, recipe={}).write(tmp_path)
    assert cli_main(["inspect", str(run_yaml), "model.video.freeze=true", "--manifest", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = _rows(out)
    assert "3 classes" in out
    assert rows["video_encoder"][0] == 0 and rows["video_encoder"][1] > 0
    assert rows["head"][2] == (64 * 64 + 64) + (64 * 3 + 3)  # fusion 2*32 -> mlp 64 -> 3 classes
    dim = 80 // len(META_FIELDS)
    assert rows["metadata"][2] == dim * (4 + (len(META_FIELDS) - 1))  # topic: 3 + unknown; others: unknown only


def test_malformed_manifest_is_one_line_exit_2(tmp_path, capsys):
    (tmp_path / "manifest.json").write_text(json.dumps({"vocab": {}, "scheme": {"name": "x", "classes": ["p", "q"]}}))
    assert cli_main(["inspect", str(ROOT / "configs/model/video_text_tiny.yaml"), "--manifest", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "malformed manifest" in err and "missing required key" in err and len(err.strip().splitlines()) == 1


def test_bad_config_is_one_line_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: audio_text\nhidden: 3\n")
    assert cli_main(["inspect", str(bad)]) == 2
    assert "needs an `audio`" in capsys.readouterr().err
