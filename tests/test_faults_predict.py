"""Faults found by probing predict and bundle as a careless or hostile user (issue 26): input that cannot be
represented, bundles that are not self-contained or say something their weights do not mean, outputs that
are not checked before the work or not written as a whole. Each case is one line or a reported skip."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from emotrain.cli import main
from emotrain.data.avamerg import RecordError, parse_conversation, read_conversations
from emotrain.errors import UserError
from emotrain.inference.bundle import load_bundle
from emotrain.inference.predict import Predictor
from predict_system import corpus_and_system, predict


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    return corpus_and_system(tmp_path_factory.mktemp("predict"))


def one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"emotrain {command}: error:"), err
    return err


def records_of(system) -> list[dict]:
    return json.loads((system["corpus"] / "train.json").read_text())


# -- input that cannot be represented ---------------------------------------------------------------------

def test_an_id_with_a_trailing_newline_is_refused_not_kept_beside_the_real_one(system):
    record = records_of(system)[0]
    with pytest.raises(RecordError, match="unsafe"):
        parse_conversation({**record, "conversation_id": record["conversation_id"] + "\n"})


def test_a_lone_surrogate_skips_its_record_with_the_reason(system, tmp_path):
    records = records_of(system)
    bad = json.loads(json.dumps(records[0]))
    for turn in bad["turns"]:
        turn["dialogue_history"][0]["utterance"] = "caf\ud800"
    bad["conversation_id"] = "surrogate1"
    path = tmp_path / "train.json"
    path.write_text(json.dumps([bad, records[1]]))  # json escapes it: "\ud800" is valid JSON
    conversations, skipped = read_conversations(path)
    assert [c.conversation_id for c in conversations] == [records[1]["conversation_id"]]
    assert any(s.id == "surrogate1" and "lone surrogate" in s.reason for s in skipped), skipped
    predictor = Predictor.load(system["bundle"])
    with pytest.raises(UserError, match="lone surrogate"):
        predictor.predict_conversation(bad, media=system["corpus"])


def test_text_given_for_clip_bytes_is_skipped_and_unused_names_are_reported(system):
    predictor = Predictor.load(system["bundle"])
    record = records_of(system)[0]
    cid = record["conversation_id"]
    files = {p.name: p.read_bytes() for folder in ("audio_v5_0", "video_v5_0")
             for p in (system["corpus"] / folder).glob(f"dia{cid}utt*")}
    wav = sorted(name for name in files if name.endswith(".wav"))[0]
    files[wav] = str(system["corpus"] / "audio_v5_0" / wav)  # a path where the bytes belong
    files["dia99999utt0_1.wav"] = b"RIFF"  # a name no utterance uses
    files[wav.replace(".wav", ".wav\n")] = b"x"  # a name with a trailing newline: not a clip name
    result = predictor.predict_conversation(record, media=files)
    assert result.turns
    reasons = {(s.kind, s.id): s.reason for s in result.skipped}
    assert reasons[("clip", wav)].startswith("not bytes (a str"), reasons
    assert "no utterance" in reasons[("clip", "dia99999utt0_1.wav")]
    assert ("clip", wav.replace(".wav", ".wav\n")) in reasons


# -- outputs checked before the work, written as a whole ---------------------------------------------------

def test_an_out_under_a_file_is_one_line_before_any_work(system, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    # A bundle that does not exist: the --out check comes first, so it is what the line names.
    assert main(["predict", str(tmp_path / "no-bundle"), "--avamerg", str(system["corpus"]), "--json", "train.json",
                 "--out", str(blocker / "sub"), "--no-progress"]) == 2
    assert "cannot write --out" in one_line_error(capsys, "predict")
    assert main(["fuse", "--audio", str(system["audio"]), "--video", str(system["video"]),
                 "--out", str(blocker / "sub")]) == 2
    assert "cannot write --out" in one_line_error(capsys, "fuse")
    assert main(["bundle", "--audio", str(system["audio"]), "--out", str(blocker / "sub")]) == 2
    assert "cannot write --out" in one_line_error(capsys, "bundle")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # nothing half-written beside it


def test_predicting_into_an_earlier_result_leaves_none_of_its_files(system, tmp_path):
    out = tmp_path / "out"
    predict(system["bundle"], "--shards", system["shards"], "--split", "test", "--out", out, "--csv")
    assert (out / "predictions.csv").is_file()
    predict(system["bundle"], "--shards", system["shards"], "--split", "val", "--out", out)
    assert sorted(p.name for p in out.iterdir()) == ["predictions.jsonl", "summary.json"]  # the old CSV is gone
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    fused = tmp_path / "fused"
    fused.mkdir()
    (fused / "stale.md").write_text("an earlier report")
    assert main(["fuse", "--audio", str(system["audio"]), "--video", str(system["video"]), "--out", str(fused),
                 "--config", "fusion/quick"]) == 0
    assert not (fused / "stale.md").exists() and (fused / "fusion.json").is_file()


# -- a bundle is self-contained, and what it says is what its weights mean ---------------------------------

def copy_bundle(system, tmp_path: Path) -> tuple[Path, dict]:
    bundle = tmp_path / "bundle"
    shutil.copytree(system["bundle"], bundle)
    return bundle, json.loads((bundle / "bundle.json").read_text())


def rewrite(bundle: Path, info: dict, rel: str, text: str | None = None) -> None:
    """Change a bundle file (or only its checksum) the way a careful forger would: bundle.json agrees."""
    if text is not None:
        (bundle / rel).write_text(text)
    if "files" in info:  # (a bundle made before checksums has none to forge)
        info["files"][rel] = hashlib.sha256((bundle / rel).read_bytes()).hexdigest()
    (bundle / "bundle.json").write_text(json.dumps(info))


def test_a_tokenizer_outside_the_bundle_is_refused_however_it_is_named(system, tmp_path):
    outside = tmp_path / "outside_tokenizer"
    bundle, info = copy_bundle(system, tmp_path)
    shutil.copytree(bundle / "audio" / "tokenizer", outside)
    data_yaml = (bundle / "audio" / "data.yaml").read_text()
    assert "tokenizer: tokenizer" in data_yaml
    for named in (str(outside), "../../outside_tokenizer"):
        rewrite(bundle, info, "audio/data.yaml", data_yaml.replace("tokenizer: tokenizer", f"tokenizer: {named}"))
        with pytest.raises(UserError, match="lies outside the bundle"):
            load_bundle(bundle)
    # a hub name (offline it would spend its retries) and a missing folder: refused at once, by name
    for named in ("bert-base-uncased", "no_such_folder"):
        rewrite(bundle, info, "audio/data.yaml", data_yaml.replace("tokenizer: tokenizer", f"tokenizer: {named}"))
        with pytest.raises(UserError, match="is not a folder inside the bundle"):
            load_bundle(bundle)
    rewrite(bundle, info, "audio/data.yaml", data_yaml)
    load_bundle(bundle)  # as made: loads
    # a symlink out of the bundle, and an edit of a bundled file
    shutil.rmtree(bundle / "audio" / "tokenizer")
    (bundle / "audio" / "tokenizer").symlink_to(outside)
    with pytest.raises(UserError, match="symbolic link"):
        load_bundle(bundle)
    (bundle / "audio" / "tokenizer").unlink()
    shutil.copytree(outside, bundle / "audio" / "tokenizer")
    edited = sorted((bundle / "audio" / "tokenizer").iterdir())[0]
    edited.write_text(edited.read_text() + " ")
    with pytest.raises(UserError, match=f"tokenizer/{edited.name} changed since the bundle was made"):
        load_bundle(bundle)


def test_a_missing_encoder_config_is_one_line_not_library_defaults(system, tmp_path):
    bundle, info = copy_bundle(system, tmp_path)
    model_yaml = (bundle / "audio" / "model.yaml").read_text()
    assert "pretrained: null" in model_yaml  # the stand-in's tiny encoders are built from config dicts
    pointed = model_yaml.replace("pretrained: null", "pretrained: encoders/text", 1)
    rewrite(bundle, info, "audio/model.yaml", pointed)
    with pytest.raises(UserError, match="is not a folder inside the bundle"):  # the folder is missing
        load_bundle(bundle)
    (bundle / "audio" / "encoders" / "text").mkdir(parents=True)  # there, but without its config.json
    with pytest.raises(UserError, match="has no config.json"):
        load_bundle(bundle)


def test_reordered_classes_or_infinite_temperatures_are_refused(system, tmp_path, capsys):
    bundle, info = copy_bundle(system, tmp_path)
    swapped = list(info["classes"])
    swapped[0], swapped[1] = swapped[1], swapped[0]
    reordered = {**info, "classes": swapped,
                 "scheme": {**info["scheme"], "classes": swapped}}
    (bundle / "bundle.json").write_text(json.dumps(reordered))
    assert main(["predict", str(bundle), "--shards", str(system["shards"]), "--out", str(tmp_path / "o")]) == 2
    assert "the class order belongs to the weights" in one_line_error(capsys, "predict")
    for key, value in (("temperature", float("inf")), ("temperature", float("nan"))):
        bad = json.loads(json.dumps(info))
        bad["models"]["audio"][key] = value
        (bundle / "bundle.json").write_text(json.dumps(bad))
        with pytest.raises(UserError, match="finite"):
            load_bundle(bundle)
    bad = json.loads(json.dumps(info))
    bad["fusion"]["params"]["temperatures"][0] = float("nan")  # what restore_strategy would have accepted
    (bundle / "bundle.json").write_text(json.dumps(bad))
    with pytest.raises(UserError, match="finite"):
        load_bundle(bundle)
    assert not (tmp_path / "o").exists()


def test_turns_come_by_conversation_then_turn_number_past_turn_nine():
    """Turn keys sorted as text put ``c_10`` before ``c_2``: a conversation's rows out of order in predictions.csv."""
    from types import SimpleNamespace

    import numpy as np

    from emotrain.evaluation.gather import Scored

    predictor = Predictor.__new__(Predictor)  # the ordering alone: one model, no fusion, no weights
    predictor.bundle = SimpleNamespace(models={"audio": None}, strategy=None, classes=["happy", "sad"],
                                       info=SimpleNamespace(models={"audio": SimpleNamespace(temperature=1.0)}))
    keys = ["c1_10", "c1_2", "c0_1", "c1_9"]
    turns = predictor.combine({"audio": Scored(keys, np.zeros((4, 2), np.float32), np.zeros(4, np.int64))})
    assert [(t.conversation_id, t.turn_id) for t in turns] == [("c0", 1), ("c1", 2), ("c1", 9), ("c1", 10)]
