import json

import numpy as np
import pytest
from sklearn import metrics as skm

from emotrain.evaluation.metrics import (
    bootstrap_intervals,
    compute_metrics,
    expected_calibration_error,
    macro_f1,
    softmax,
)

CLASSES = ["happy", "surprised", "angry", "fear", "sad", "disgusted", "contempt"]
C = len(CLASSES)


def random_case(seed: int, n: int = 300, never_predicted: int | None = None, no_support: int | None = None):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, C, n)
    if no_support is not None:
        labels[labels == no_support] = (no_support + 1) % C
    logits = rng.normal(0, 1, (n, C))
    logits[np.arange(n), labels] += 1.0  # better than chance, still many errors
    if never_predicted is not None:
        logits[:, never_predicted] = -50.0
    return logits, labels


CASES = {
    "random": {},
    "class never predicted": {"never_predicted": 2},
    "class without support": {"no_support": 4},
    "both": {"never_predicted": 1, "no_support": 5},
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_metric_agrees_with_sklearn(case):
    logits, labels = random_case(sum(map(ord, case)), **CASES[case])
    probs = softmax(logits)
    preds = probs.argmax(1)
    kw = CASES[case]
    if "never_predicted" in kw:
        assert kw["never_predicted"] not in preds
    if "no_support" in kw:
        assert kw["no_support"] not in labels and kw["no_support"] in preds
    m = compute_metrics(probs, labels, CLASSES, resamples=50)
    every = list(range(C))
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(labels, preds), abs=1e-12)
    for average in ("macro", "weighted"):
        p, r, f, _ = skm.precision_recall_fscore_support(labels, preds, labels=every, average=average, zero_division=0)
        assert m[f"{average}_precision"] == pytest.approx(p, abs=1e-12)
        assert m[f"{average}_recall"] == pytest.approx(r, abs=1e-12)
        assert m[f"{average}_f1"] == pytest.approx(f, abs=1e-12)
    p, r, f, s = skm.precision_recall_fscore_support(labels, preds, labels=every, average=None, zero_division=0)
    for i, name in enumerate(CLASSES):
        got = m["per_class"][name]
        scores = (got["precision"], got["recall"], got["f1"], got["support"])
        assert scores == pytest.approx((p[i], r[i], f[i], s[i]), abs=1e-12)
    assert m["confusion_matrix"] == skm.confusion_matrix(labels, preds, labels=every).tolist()
    assert m["nll"] == pytest.approx(skm.log_loss(labels, y_proba=probs, labels=every), rel=1e-9)
    assert macro_f1(labels, preds, C) == m["macro_f1"]
    json.dumps(m)  # plain JSON data throughout


def test_logits_and_their_probabilities_give_the_same_metrics():
    logits, labels = random_case(3)
    from_logits = compute_metrics(logits, labels, CLASSES, from_logits=True, resamples=50)
    from_probs = compute_metrics(softmax(logits), labels, CLASSES, resamples=50)
    for key in ("accuracy", "macro_f1", "weighted_f1", "ece", "confusion_matrix", "bootstrap"):
        assert from_logits[key] == from_probs[key]
    assert from_logits["nll"] == pytest.approx(from_probs["nll"], rel=1e-9)


def test_ece_of_a_hand_computed_case():
    # bin (0.6, 0.667]: confidence 0.65 twice, one right -> gap 0.15; bin (0.933, 1]: 1.0 right -> gap 0
    probs = np.array([[0.65, 0.35], [0.65, 0.35], [0.0, 1.0], [1.0, 0.0]])
    labels = np.array([0, 1, 1, 0])
    assert expected_calibration_error(probs, labels) == pytest.approx(2 / 4 * 0.15)
    m = compute_metrics(probs, labels, ["a", "b"], resamples=10)
    count = m["calibration"]["count"]
    assert sum(count) == 4 and count[9] == 2 and count[14] == 2


def test_bootstrap_matches_a_plain_loop_and_is_seeded():
    logits, labels = random_case(7, n=120, never_predicted=3)
    preds = logits.argmax(1)
    ci = bootstrap_intervals(labels, preds, C, resamples=40, seed=11)
    rng = np.random.default_rng(11)
    acc, f1 = [], []
    for _ in range(40):
        idx = rng.integers(0, len(labels), len(labels))
        acc.append(skm.accuracy_score(labels[idx], preds[idx]))
        f1.append(skm.f1_score(labels[idx], preds[idx], labels=list(range(C)), average="macro", zero_division=0))
    assert ci["accuracy"] == pytest.approx(np.percentile(acc, [2.5, 97.5]).tolist(), abs=1e-12)
    assert ci["macro_f1"] == pytest.approx(np.percentile(f1, [2.5, 97.5]).tolist(), abs=1e-12)
    assert bootstrap_intervals(labels, preds, C, resamples=40, seed=11) == ci
    assert bootstrap_intervals(labels, preds, C, resamples=40, seed=12) != ci
    lo, hi = bootstrap_intervals(labels, preds, C, resamples=400)["macro_f1"]
    assert lo < macro_f1(labels, preds, C) < hi


def test_bad_inputs_are_rejected():
    logits, labels = random_case(0, n=10)
    with pytest.raises(ValueError, match="labels must lie"):
        compute_metrics(logits, np.full(10, -1), CLASSES, from_logits=True)
    with pytest.raises(ValueError, match="shape"):
        compute_metrics(logits[:, :3], labels, CLASSES, from_logits=True)
