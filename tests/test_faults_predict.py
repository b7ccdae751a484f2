"""Faults found by probing predict and bundle as a careless or hostile user (issue 26): input that cannot be
represented, bundles that are not self-contained or say something their weights do not mean, outputs that
are not checked before the work or not written as a whole. Each case is one line or a reported skip."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from emotrain.cli import main
from emotrain.data.avamerg import RecordError, parse_conversation, read_conversations
from emotrain.errors import UserError
from emotrain.inference.bundle import load_bundle
from emotrain.inference.predict import Predictor
from test_predict import predict, system  # noqa: F401 - the module's stand-in system, reused


def one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"emotrain {command}: error:"), err
    return err


def records_of(system) -> list[dict]:  # noqa: F811
    return json.loads((system["corpus"] / "train.json").read_text())


# -- input that cannot be represented ---------------------------------------------------------------------

def test_an_id_with_a_trailing_newline_is_refused_not_kept_beside_the_real_one(system):  # noqa: F811
    record = records_of(system)[0]
    with pytest.raises(RecordError, match="unsafe"):
        parse_conversation({**record, "conversation_id": record["conversation_id"] + "\n"})


def test_a_lone_surrogate_skips_its_record_with_the_reason(system, tmp_path):  # noqa: F811
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


def test_text_given_for_clip_bytes_is_skipped_and_unused_names_are_reported(system):  # noqa: F811
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

def test_an_out_under_a_file_is_one_line_before_any_work(system, tmp_path, capsys):  # noqa: F811
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


def test_predicting_into_an_earlier_result_leaves_none_of_its_files(system, tmp_path):  # noqa: F811
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
