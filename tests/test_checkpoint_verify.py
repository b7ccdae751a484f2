"""A damaged newest checkpoint is passed over for the newest good one: resume, evaluate and export."""

from __future__ import annotations

import json

import pytest
from helpers import REFERENCE, result_of, run, torchrun

from emotrain.errors import UserError
from emotrain.training import checkpoint


def _tag(root, step: int, payload: bytes = b"weights") -> None:
    tag = root / checkpoint.tag_for(step)
    tag.mkdir(parents=True)
    (tag / "mp_rank_00_model_states.pt").write_bytes(payload * 100)
    (tag / checkpoint.COMPLETE).write_text(json.dumps({"step": step, checkpoint.FILES: checkpoint._digests(tag)}))


def test_truncated_or_changed_files_fail_verification_and_the_newest_good_tag_wins(tmp_path, caplog):
    for step in (10, 20, 30):
        _tag(tmp_path, step)
    assert checkpoint.latest_good_tag(tmp_path) == "step00000030"
    weights = tmp_path / "step00000030" / "mp_rank_00_model_states.pt"
    weights.write_bytes(weights.read_bytes()[:-5])  # truncated
    (tmp_path / "step00000020" / "mp_rank_00_model_states.pt").write_bytes(b"x" * 700)  # same size, other bytes
    assert "bytes" in checkpoint.verify(tmp_path / "step00000030")
    assert "differs" in checkpoint.verify(tmp_path / "step00000020")
    with caplog.at_level("WARNING"):
        assert checkpoint.latest_good_tag(tmp_path) == "step00000010"
    assert "step00000030 is damaged" in caplog.text
    assert checkpoint.choose_tag(tmp_path) == ("step00000010", "last")
    with pytest.raises(UserError, match="is damaged"):
        checkpoint.choose_tag(tmp_path, "step00000030")


@pytest.mark.slow
def test_resume_falls_back_past_a_damaged_newest_checkpoint(tmp_path):
    train = [t for t in REFERENCE if not t.startswith("total_samples")] + ["total_samples=256"]  # 8 steps
    first = run(torchrun(tmp_path, train=train))
    assert result_of(tmp_path, first)["step"] == 8
    ckpts = checkpoint.checkpoint_dir(tmp_path)
    assert checkpoint.complete_tags(ckpts) == ["step00000004", "step00000008"]
    victim = max((p for p in (ckpts / "step00000008").rglob("*") if p.is_file() and p.name != "complete"),
                 key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    again = run(torchrun(tmp_path, train=[t for t in train if not t.startswith("total_samples")] + ["total_samples=384"]))
    result = result_of(tmp_path, again)
    assert (result["resumed_from"], result["step"]) == (4, 12), again.stderr[-2000:]
    assert "step00000008 is damaged" in again.stderr
