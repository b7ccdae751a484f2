from dataclasses import replace

import numpy as np
import pytest
import torch

from helpers import CLASSES, make_runs, make_split

from emotrain.errors import UserError
from emotrain.fusion.calibration import fit_temperature, scaled_log_probs
from emotrain.fusion.late import ConfidenceFusion, MeanFusion, WeightedFusion, select_on_val
from emotrain.fusion.learned import GatingConfig, GatingFusion, StackingConfig, StackingFusion, stratified_folds
from emotrain.fusion.pipeline import FusionConfig, MetricsConfig, build_strategies, fuse_runs
from emotrain.fusion.runs import align, load_run
from emotrain.evaluation.metrics import expected_calibration_error, macro_f1, softmax
from emotrain.evaluation.predictions import Predictions, load_predictions, save_predictions

def small_config(**strategies) -> FusionConfig:
    """Small grids and few folds so a whole fit takes a second."""
    return FusionConfig(
        stacking=StackingConfig(folds=3, l2=[1e-3, 1e-1], max_iter=50),
        gating=GatingConfig(folds=3, hidden=8, lr=0.03, epochs=[20, 60], weight_decay=[0.0, 1e-2]),
        metrics=MetricsConfig(bootstrap_resamples=100),
        **strategies,
    )


def test_temperature_scaling_fixes_an_over_confident_model():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 1.5, (4000, 5))
    labels = np.array([rng.choice(5, p=p) for p in softmax(true_logits)])  # labels drawn from the true model
    over = 3.0 * true_logits
    t = fit_temperature(over, labels)
    assert 2.4 < t < 3.6  # recovers the factor the logits were inflated by
    before = expected_calibration_error(softmax(over), labels)
    after = expected_calibration_error(np.exp(scaled_log_probs(over, t)), labels)
    assert after < before / 2
    assert fit_temperature(over, labels) == t  # deterministic
    assert fit_temperature(0.3 * true_logits, labels) < 1  # an under-confident model is sharpened


def test_every_strategy_gives_distributions_and_learns_something():
    rng = np.random.default_rng(1)
    y, a, b = make_split(rng, 400)
    y_t, a_t, b_t = make_split(rng, 300)
    for strategy in build_strategies(small_config()):
        probs = strategy.fit(a, b, y).predict_proba(a_t, b_t)
        assert probs.shape == (300, len(CLASSES))
        assert np.allclose(probs.sum(1), 1.0) and (probs >= 0).all()
        assert (probs.argmax(1) == y_t).mean() > 0.6, strategy.name  # single models reach about 0.55


def test_weighted_fusion_keeps_the_useful_model():
    rng = np.random.default_rng(2)
    y, a, _ = make_split(rng, 400)
    y_t, a_t, _ = make_split(rng, 400)
    noise, noise_t = rng.normal(0, 1, a.shape), rng.normal(0, 1, a_t.shape)
    alone = macro_f1(y_t, a_t.argmax(1), len(CLASSES))
    for useful_first in (True, False):
        pair, pair_t = ((a, noise), (a_t, noise_t)) if useful_first else ((noise, a), (noise_t, a_t))
        fusion = WeightedFusion().fit(*pair, y)
        assert (fusion.value > 0) if useful_first else (fusion.value < 1)
        assert macro_f1(y_t, fusion.predict_proba(*pair_t).argmax(1), len(CLASSES)) > alone - 0.02


def test_selection_breaks_macro_f1_ties_by_nll():
    labels = np.array([0, 1, 0, 1])
    sharp = np.array([[0.9, 0.1], [0.1, 0.9], [0.9, 0.1], [0.1, 0.9]])
    soft = np.array([[0.6, 0.4], [0.4, 0.6], [0.6, 0.4], [0.4, 0.6]])
    best, trace = select_on_val(["soft", "sharp"], {"soft": soft, "sharp": sharp}.get, labels)
    assert best == "sharp" and trace[0]["val_macro_f1"] == trace[1]["val_macro_f1"] == 1.0
    wrong = sharp[:, ::-1]
    assert select_on_val(["wrong", "soft"], {"wrong": wrong, "soft": soft}.get, labels)[0] == "soft"


def test_learned_strategies_are_deterministic_and_leave_the_global_rng_alone():
    rng = np.random.default_rng(3)
    y, a, b = make_split(rng, 300)
    cfg = small_config()
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    first = [s.fit(a, b, y).params() for s in (StackingFusion(cfg.stacking), GatingFusion(cfg.gating))]
    assert torch.equal(torch.rand(3), expected_draw)
    second = [s.fit(a, b, y).params() for s in (StackingFusion(cfg.stacking), GatingFusion(cfg.gating))]
    assert first == second
    reseeded = GatingFusion(replace(cfg.gating, seed=1)).fit(a, b, y).params()
    assert reseeded["state"] != first[1]["state"]


def test_stratified_folds_spread_every_class():
    labels = np.repeat(np.arange(4), [30, 9, 3, 1])
    folds = stratified_folds(labels, 3, seed=0)
    for cls, n in enumerate([30, 9, 3]):
        assert np.bincount(folds[labels == cls], minlength=3).tolist() == [n // 3] * 3
    assert np.bincount(folds, minlength=3).max() - np.bincount(folds, minlength=3).min() <= 1


def test_cross_validation_needs_enough_samples():
    a = np.zeros((5, 3))
    with pytest.raises(ValueError, match="at least 10"):
        StackingFusion(StackingConfig(folds=5)).fit(a, a, np.array([0, 1, 2, 0, 1]))


def test_shuffled_test_labels_leave_every_fitted_parameter_unchanged(tmp_path):
    honest = fuse_runs(*map(load_run, make_runs(tmp_path / "honest")), small_config())
    perm = np.random.default_rng(9).permutation(500)
    shuffled = fuse_runs(*map(load_run, make_runs(tmp_path / "shuffled", test_label_perm=perm)), small_config())
    assert honest.params == shuffled.params  # temperatures, weights, meta-learner and gate, exactly
    assert set(honest.params) == {"audio", "video", "mean", "weighted", "confidence_maxprob",
                                  "confidence_entropy", "stacking", "gating"}
    assert honest.chosen == shuffled.chosen and honest.val_scores == shuffled.val_scores
    chosen = honest.chosen_row
    assert honest.rows[chosen]["macro_f1"] != shuffled.rows[chosen]["macro_f1"]  # test labels did change


def test_chosen_fusion_beats_both_single_models_on_test(tmp_path):
    result = fuse_runs(*map(load_run, make_runs(tmp_path, n_val=600, n_test=600, seed=4)), small_config())
    fused = result.rows[result.chosen_row]["macro_f1"]
    singles = [result.rows[f"{m} ({k})"]["macro_f1"] for m in ("audio", "video") for k in ("raw", "calibrated")]
    assert fused > max(singles) + 0.05
    assert result.counts["test"] == {"both": 600, "only_audio": 0, "only_video": 0, "unlabelled": 0}


def test_alignment_by_key_with_fallback_and_unlabelled(tmp_path):
    rng = np.random.default_rng(5)
    labels, a, b = make_split(rng, 10)
    labels[0] = -1
    keys = np.array([f"k{i}" for i in range(10)])
    pa = Predictions(keys[:8], a[:8].astype(np.float32), labels[:8])  # A misses k8, k9
    order = rng.permutation(np.arange(2, 10))  # B misses k0, k1; rows shuffled
    pb = Predictions(keys[order], b[order].astype(np.float32), labels[order])
    al = align(pa, pb, "test")
    assert al.counts("audio", "video") == {"both": 6, "only_audio": 1, "only_video": 2, "unlabelled": 1}
    np.testing.assert_array_equal(al.labels, labels[2:8])
    np.testing.assert_array_equal(al.b_logits, b[2:8].astype(np.float32))
    bad = Predictions(pb.keys, pb.logits, (pb.labels + 1) % len(CLASSES))
    with pytest.raises(UserError, match="different labels"):
        align(pa, bad, "test")


def test_fallback_uses_the_calibrated_single_model(tmp_path):
    run_a, run_b = make_runs(tmp_path, n_val=300, n_test=200)
    test_b = load_predictions(run_b / "predictions" / "test.npz")
    keep = np.isin(test_b.keys, test_b.keys[:150])  # B scored only 150 of the 200 test keys
    save_predictions(run_b / "predictions" / "test.npz", test_b.keys[keep], test_b.logits[keep], test_b.labels[keep])
    result = fuse_runs(load_run(run_a), load_run(run_b), small_config(strategies=["mean"]))
    assert result.counts["test"] == {"both": 150, "only_audio": 50, "only_video": 0, "unlabelled": 0}
    assert result.rows["fusion: mean"]["n"] == 200 and result.rows["video (raw)"]["n"] == 150


def test_predictions_round_trip_and_refuse_pickles(tmp_path):
    path = save_predictions(tmp_path / "p" / "val.npz", ["01118_2", "7_0"], np.eye(2, 3), np.array([1, -1]))
    loaded = load_predictions(path)
    assert loaded.keys.tolist() == ["01118_2", "7_0"] and loaded.keys.dtype.kind == "U"
    assert loaded.logits.dtype == np.float32 and loaded.labels.tolist() == [1, -1]
    np.savez(tmp_path / "obj.npz", keys=np.array(["a", "b"], dtype=object), logits=np.eye(2), labels=np.zeros(2, int))
    with pytest.raises(UserError, match="obj.npz"):
        load_predictions(tmp_path / "obj.npz")
    with pytest.raises(ValueError, match="repeat"):
        save_predictions(tmp_path / "dup.npz", ["a", "a"], np.eye(2), np.zeros(2, int))


def test_mean_and_confidence_fusion_without_learning():
    la, lb = np.log([[0.9, 0.1], [0.5, 0.5]]), np.log([[0.2, 0.8], [0.3, 0.7]])
    mean = MeanFusion()
    mean.temperatures = (1.0, 1.0)
    np.testing.assert_allclose(mean.predict_proba(la, lb), [[0.55, 0.45], [0.4, 0.6]])
    conf = ConfidenceFusion("entropy")
    conf.temperatures, conf.value = (1.0, 1.0), 1.0
    probs = conf.predict_proba(la, lb)
    np.testing.assert_allclose(probs[1], [0.3, 0.7], atol=1e-9)  # a uniform model gets no weight
    assert 0.55 < probs[0, 0] < 0.9  # the more certain model A (entropy 0.33 vs 0.50) counts more


def test_fusion_refuses_runs_that_do_not_belong_together(tmp_path):
    import yaml

    run_a, run_b = make_runs(tmp_path, n_val=100, n_test=100)
    with pytest.raises(UserError, match="same run"):
        fuse_runs(load_run(run_a), load_run(run_a), small_config(strategies=["mean"]))
    (run_a / "config.yaml").write_text(yaml.safe_dump({"model": {"kind": "video_text"}}))
    with pytest.raises(UserError, match="swapped"):
        fuse_runs(load_run(run_a), load_run(run_b), small_config(strategies=["mean"]))
    (run_a / "config.yaml").write_text(yaml.safe_dump({"model": {"kind": "audio_text"}}))
    test_b = load_predictions(run_b / "predictions" / "test.npz")
    disjoint = np.char.add("other_", test_b.keys.astype(str))  # B was scored on other shards
    save_predictions(run_b / "predictions" / "test.npz", list(disjoint), test_b.logits, test_b.labels)
    with pytest.raises(UserError, match="test: only 0 of the 200 labelled keys were scored by both"):
        fuse_runs(load_run(run_a), load_run(run_b), small_config(strategies=["mean"]))


def test_every_fitted_strategy_comes_back_from_its_params_as_json():
    """What a bundle stores (params() through JSON) restores each strategy to the same probabilities."""
    import json

    from emotrain.fusion.pipeline import restore_strategy

    rng = np.random.default_rng(3)
    val_labels, val_a, val_b = make_split(rng, 300)
    _, test_a, test_b = make_split(rng, 100)
    config = small_config()
    for strategy in build_strategies(config):
        strategy.fit(val_a, val_b, val_labels)
        params = json.loads(json.dumps(strategy.params()))
        back = restore_strategy(strategy.name, params, config)
        np.testing.assert_allclose(back.predict_proba(test_a, test_b), strategy.predict_proba(test_a, test_b),
                                   rtol=0, atol=1e-12, err_msg=strategy.name)
        for model, logits in enumerate((test_a, test_b)):
            np.testing.assert_allclose(back.calibrated_single(logits, model), softmax(logits / strategy.temperatures[model]),
                                       atol=1e-12)
    with pytest.raises(ValueError, match="stacking: malformed"):
        restore_strategy("stacking", {"temperatures": [1.0, 1.0], "weights": [[1.0]], "bias": [0.0, 1.0]}, config)
    with pytest.raises(ValueError, match="unknown fusion strategy"):
        restore_strategy("magic", {}, config)
