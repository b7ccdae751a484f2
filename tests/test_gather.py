import numpy as np
import pytest

from emotrain.errors import UserError
from emotrain.evaluation.gather import Scored, check_complete, from_bytes, merge, to_bytes


def scored(keys, seed=0):
    rng = np.random.default_rng(seed)
    return Scored(list(keys), rng.normal(size=(len(keys), 7)).astype(np.float32), rng.integers(0, 7, len(keys)))


def test_bytes_round_trip_without_pickle():
    part = scored(["00001_1", "00002_3", "x" * 40 + "_1"])
    back = from_bytes(to_bytes(part), 7)
    assert back.keys == part.keys
    np.testing.assert_array_equal(back.logits, part.logits)
    np.testing.assert_array_equal(back.labels, part.labels)
    part.present = np.array([True, False, True])  # whether the model's medium was there travels too
    assert from_bytes(to_bytes(part), 7).present.tolist() == [True, False, True]
    merged = merge([part, scored(["00000_1"])])
    assert merged.keys[0] == "00000_1" and merged.present.tolist() == [True, True, False, True]
    empty = from_bytes(to_bytes(Scored.empty(7)), 7)
    assert empty.keys == [] and empty.logits.shape == (0, 7)


def test_merge_sorts_by_key_and_rejects_duplicates():
    merged = merge([scored(["b_1", "a_1"], 1), scored(["c_2"], 2)])
    assert merged.keys == ["a_1", "b_1", "c_2"]
    assert merged.logits.shape == (3, 7)
    with pytest.raises(RuntimeError, match="more than once"):
        merge([scored(["a_1"]), scored(["a_1"])])


def test_count_mismatch_is_an_error():
    with pytest.raises(UserError, match="scored 2 turns but the manifest lists 3"):
        check_complete(scored(["a_1", "b_1"]), 3, "val")
