"""``emotrain bundle`` / ``predict`` and the Python API, on a synthetic corpus and a small stand-in system
(tests/predict_system.py: seeded tiny models evaluated and fused for real, no DeepSpeed training)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from emotrain.fusion.fusion_file import FusionSummary
from emotrain.cli import main
from emotrain.errors import UserError
from emotrain.evaluation.metrics import softmax
from emotrain.evaluation.predictions import load_predictions
from emotrain.fusion.pipeline import restore_strategy
from emotrain.inference.bundle import load_bundle
from emotrain.inference.outputs import read_predictions
from emotrain.inference.predict import Predictor
from predict_system import REPO, corpus_and_system, predict

TOL = 1e-5


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    return corpus_and_system(tmp_path_factory.mktemp("predict"))


def rows_by_key(out: Path) -> dict[str, dict]:
    rows = read_predictions(out / "predictions.jsonl")
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)), "a turn predicted twice"
    return {r["key"]: r for r in rows}


def probs(row: dict, system: str, classes: list[str]) -> np.ndarray:
    return np.array([row["probs"][system][c] for c in classes])


def evaluate_and_fuse(system: dict, split: str) -> tuple[list[str], dict[str, np.ndarray]]:
    """What `evaluate` + `fuse` say for each turn of ``split``: the chosen strategy on both models' logits,
    and each model's calibrated probabilities."""
    summary = FusionSummary.load(system["fusion"])
    preds = {name: load_predictions(system[name] / "predictions" / f"{split}.npz") for name in ("audio", "video")}
    keys = list(preds["audio"].keys)
    assert keys == sorted(keys) and list(preds["video"].keys) == keys
    a, v = preds["audio"].logits.astype(np.float64), preds["video"].logits.astype(np.float64)
    strategy = restore_strategy(summary.chosen, summary.chosen_params, summary.fusion_config())
    return keys, {"fused": strategy.predict_proba(a, v),
                  "audio": softmax(a / summary.temperature("audio")),
                  "video": softmax(v / summary.temperature("video"))}


def test_predict_from_the_raw_folder_and_from_shards_equals_evaluate_plus_fuse(system, tmp_path):
    predict(system["bundle"], "--avamerg", system["corpus"], "--json", "train.json", "--out", tmp_path / "raw", "--csv")
    predict(system["bundle"], "--shards", system["shards"], "--split", "test", "--out", tmp_path / "shards")
    classes = load_bundle(system["bundle"]).classes
    raw, shards = rows_by_key(tmp_path / "raw"), rows_by_key(tmp_path / "shards")
    manifests = system["manifests"]
    assert len(raw) == sum(m.turns for m in manifests.values())  # every turn of the corpus, unlabelled ones too
    assert len(shards) == manifests["test"].turns
    keys, expected = evaluate_and_fuse(system, "test")
    assert len(keys) == manifests["test"].labelled_turns > 5
    for key_index, key in enumerate(keys):
        for rows in (raw, shards):
            row = rows[key]
            assert row["path"] == "fused" and row["present"] == {"audio": True, "video": True}
            for name, want in expected.items():
                np.testing.assert_allclose(probs(row, name, classes), want[key_index], rtol=0, atol=TOL, err_msg=(key, name))
            assert row["label"] == classes[int(np.argmax(expected["fused"][key_index]))]
    # the fusion is not one of the models, and the models differ: the comparison can fail
    assert not np.allclose(expected["fused"], expected["audio"], atol=1e-3)
    assert not np.allclose(expected["audio"], expected["video"], atol=1e-3)
    header = (tmp_path / "raw" / "predictions.csv").read_text().splitlines()[0].split(",")
    assert header[:7] == ["key", "conversation_id", "turn_id", "label", "path", "audio_present", "video_present"]
    assert len(header) == 7 + 3 * len(classes)
    summary = json.loads((tmp_path / "raw" / "summary.json").read_text())
    assert summary["turns"] == len(raw) and summary["paths"] == {"fused": len(raw)} and summary["skipped"] == []


def official_test_json(corpus: Path, root: Path) -> tuple[Path, list[dict]]:
    """The official unlabelled layout: no profiles, responses or chains; string turn ids; a conversation holding
    only turn "1"; one with an empty turn list; media in test/test_audio and test/test_video under their _ID names."""
    records = json.loads((corpus / "train.json").read_text())
    several = [r for r in records if len(r["turns"]) >= 2]
    chosen = several[:3] + [r for r in records if r not in several[:3]][:1]
    out = []
    for i, rec in enumerate(chosen):
        turns = [{"turn_id": str(t["turn_id"]), "context": t["context"], "dialogue_history": t["dialogue_history"]}
                 for t in rec["turns"]]
        if i == 0:
            turns = turns[1:2]  # only turn "1"
        out.append({"conversation_id": rec["conversation_id"], "turns": turns})
    out.append({"conversation_id": "99999", "turns": []})
    test_dir = root / "official"
    (test_dir / "test" / "test_audio").mkdir(parents=True)
    (test_dir / "test" / "test_video").mkdir(parents=True)
    for rec in chosen:
        for ext, sub, folder in (("wav", "test_audio", "audio_v5_0"), ("mp4", "test_video", "video_v5_0")):
            for clip in (corpus / folder).glob(f"dia{rec['conversation_id']}utt*.{ext}"):
                shutil.copy(clip, test_dir / "test" / sub / clip.name)
    (test_dir / "test.json").write_text(json.dumps(out))
    return test_dir, chosen


def test_the_official_unlabelled_format_is_predicted_and_the_empty_conversation_counted(system, tmp_path):
    test_dir, chosen = official_test_json(system["corpus"], tmp_path)
    first = chosen[1]["conversation_id"]
    wav = next((test_dir / "test" / "test_audio").glob(f"dia{first}utt0_*.wav"))
    shutil.copy(wav, wav.with_name(f"dia{first}utt0_999.wav"))  # two files for one utterance
    predict(system["bundle"], "--avamerg", test_dir, "--json", "test.json", "--audio-dir", test_dir / "test" / "test_audio",
            "--video-dir", test_dir / "test" / "test_video", "--out", tmp_path / "out")
    rows = rows_by_key(tmp_path / "out")
    expected = {f"{chosen[0]['conversation_id']}_1"} | {
        f"{r['conversation_id']}_{t['turn_id']}" for r in chosen[1:] for t in r["turns"]}
    assert set(rows) == expected
    assert all(r["present"] == {"audio": True, "video": True} and r["path"] == "fused" for r in rows.values())
    assert rows[f"{chosen[0]['conversation_id']}_1"]["turn_id"] == 1
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["empty_conversations"] == 1 and summary["ambiguous_clips"] == 1
    assert {"kind": "conversation", "id": "99999", "reason": "empty turn list"} in summary["skipped"]
    ambiguous = [s for s in summary["skipped"] if "files match" in s["reason"]]
    assert len(ambiguous) == 1 and ambiguous[0]["reason"].endswith(f"used {wav.name}")


def test_missing_media_fall_back_and_bad_input_is_reported_and_the_api_agrees(system, tmp_path):
    corpus = tmp_path / "corpus"
    shutil.copytree(system["corpus"], corpus)
    records = json.loads((corpus / "train.json").read_text())
    only_audio, only_video, none, broken = (r["conversation_id"] for r in records[:4])
    for cid, folders in ((only_audio, ["video_v5_0"]), (only_video, ["audio_v5_0"]), (none, ["audio_v5_0", "video_v5_0"])):
        for folder in folders:
            for clip in (corpus / folder).glob(f"dia{cid}utt*"):
                clip.unlink()
    bad_wav = next((corpus / "audio_v5_0").glob(f"dia{broken}utt0_*.wav"))
    bad_wav.write_bytes(b"RIFF....WAVEjunk")
    (corpus / "train.json").write_text(json.dumps(records + [{"conversation_id": "bad", "turns": "x"}]))
    predict(system["bundle"], "--avamerg", corpus, "--json", "train.json", "--out", tmp_path / "out")
    rows = rows_by_key(tmp_path / "out")
    classes = load_bundle(system["bundle"]).classes
    want = {only_audio: ("audio", {"audio": True, "video": False}), only_video: ("video", {"audio": False, "video": True}),
            none: ("fused_text_only", {"audio": False, "video": False})}
    for cid, (path, present) in want.items():
        turns = [r for r in rows.values() if r["conversation_id"] == cid]
        assert turns and all(r["path"] == path and r["present"] == present for r in turns), (cid, turns)
        if path in ("audio", "video"):
            for r in turns:
                np.testing.assert_allclose(probs(r, "fused", classes), probs(r, path, classes), atol=1e-12)
    assert len(rows) == sum(len(r["turns"]) for r in records)  # the broken clip and record lost no other turn
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    reasons = {(s["kind"], s["id"]): s["reason"] for s in summary["skipped"]}
    assert reasons[("clip", bad_wav.name)].startswith("undecodable wav")
    assert reasons[("conversation", "bad")] == "turns should be list, got str"
    assert summary["paths"][path] == len([r for r in rows.values() if r["conversation_id"] == none])

    # The Python API: the same numbers for the same conversations, from a folder or from bytes
    predictor = Predictor.load(system["bundle"])
    by_id = {r["conversation_id"]: r for r in records}
    for cid in (only_audio, only_video, none):
        from_folder = predictor.predict_conversation(by_id[cid], media=corpus)
        files = {p.name: p.read_bytes() for folder in ("audio_v5_0", "video_v5_0")
                 for p in (corpus / folder).glob(f"dia{cid}utt*")}
        from_bytes = predictor.predict_conversation(by_id[cid], media=files)
        for result in (from_folder, from_bytes):
            assert [t.key for t in result.turns] == sorted(k for k, r in rows.items() if r["conversation_id"] == cid)
            for turn in result.turns:
                row = rows[turn.key]
                assert (turn.path, turn.present, turn.label) == (row["path"], row["present"], row["label"])
                for name in ("fused", "audio", "video"):
                    np.testing.assert_allclose(turn.probs[name], probs(row, name, classes), atol=TOL)
    with pytest.raises(UserError, match="turns should be list"):
        predictor.predict_conversation({"conversation_id": "bad", "turns": "x"}, media=corpus)
    empty = predictor.predict_conversation({"conversation_id": "99999", "turns": []}, media=corpus)
    assert empty.turns == [] and [s.reason for s in empty.skipped] == ["empty turn list"]


def test_a_one_model_bundle_predicts_with_that_model_alone(system, tmp_path):
    predict(system["bundle_audio"], "--shards", system["shards"], "--split", "test", "--out", tmp_path / "out")
    rows = rows_by_key(tmp_path / "out")
    keys, expected = evaluate_and_fuse(system, "test")
    classes = load_bundle(system["bundle_audio"]).classes
    for i, key in enumerate(keys):
        row = rows[key]
        assert row["path"] == "audio" and set(row["probs"]) == {"fused", "audio"}
        np.testing.assert_allclose(probs(row, "fused", classes), expected["audio"][i], atol=TOL)


def test_bad_bundles_and_inputs_are_one_line(system, tmp_path, capsys):
    broken = tmp_path / "bundle"
    shutil.copytree(system["bundle"], broken)
    info = json.loads((broken / "bundle.json").read_text())
    (broken / "bundle.json").write_text(json.dumps({**info, "format": 99}))
    with pytest.raises(UserError, match="format 99 is not the format"):
        load_bundle(broken)
    (broken / "bundle.json").write_text(json.dumps(info))
    shutil.copy(broken / "video" / "model.safetensors", broken / "audio" / "model.safetensors")
    with pytest.raises(UserError, match="audio/model.safetensors changed since the bundle was made"):
        load_bundle(broken)
    info["files"]["audio/model.safetensors"] = info["files"]["video/model.safetensors"]  # the checksums made to agree
    (broken / "bundle.json").write_text(json.dumps(info))
    with pytest.raises(UserError, match="does not fit the audio model"):
        load_bundle(broken)
    for args in ([tmp_path / "nope", "--avamerg", system["corpus"]], [system["bundle"], "--avamerg", tmp_path / "nope"],
                 [system["bundle"], "--avamerg", system["corpus"], "--json", "../x.json"]):
        assert main(["predict", *map(str, args), "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("emotrain predict: error:"), err
    assert main(["bundle", "--audio", str(system["audio"]), "--video", str(system["video"]), "--out", str(tmp_path / "b")]) == 2
    assert "--fusion" in capsys.readouterr().err
    assert main(["bundle", "--audio", str(system["video"]), "--video", str(system["audio"]), "--fusion",
                 str(system["fusion"]), "--out", str(tmp_path / "b")]) == 2
    assert "was fitted on" in capsys.readouterr().err


@pytest.mark.slow
def test_two_ranks_under_torchrun_predict_every_turn_exactly_once(system, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    outputs = {}
    for source in (["--avamerg", str(system["corpus"]), "--json", "train.json"],
                   ["--shards", str(system["shards"]), "--split", "test"]):
        name = source[0].strip("-")
        predict(system["bundle"], *source, "--out", tmp_path / f"one_{name}")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
               "emotrain.cli", "predict", str(system["bundle"]), *source, "--out", str(tmp_path / f"two_{name}"),
               "--no-progress"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        outputs[name] = rows_by_key(tmp_path / f"one_{name}"), rows_by_key(tmp_path / f"two_{name}")
    classes = load_bundle(system["bundle"]).classes
    for name, (one, two) in outputs.items():
        assert set(one) == set(two) and len(two) > 0, name
        for key, row in one.items():
            for system_name in ("fused", "audio", "video"):
                np.testing.assert_allclose(probs(two[key], system_name, classes), probs(row, system_name, classes),
                                           atol=TOL)
    assert len(outputs["avamerg"][1]) == sum(m.turns for m in system["manifests"].values())
