"""The loss options against torch's own cross-entropy and by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from emotrain.config import ConfigError, from_dict
from emotrain.training.losses import LossConfig, build_loss, class_weight_vector

HISTOGRAM = [50, 10, 5, 20, 8, 4, 3]


@pytest.fixture
def data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 7, generator=gen) * 2
    labels = torch.randint(0, 7, (16,), generator=gen)
    labels[3] = -1
    labels[9] = -1
    return logits, labels


def test_plain_is_torch_cross_entropy(data):
    logits, labels = data
    loss = build_loss(LossConfig(), HISTOGRAM)(logits, labels)
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels, ignore_index=-1))


def test_smoothing_matches_torch(data):
    logits, labels = data
    loss = build_loss(LossConfig(label_smoothing=0.1), HISTOGRAM)(logits, labels)
    expected = F.cross_entropy(logits, labels, ignore_index=-1, label_smoothing=0.1)
    torch.testing.assert_close(loss, expected)
    assert not torch.allclose(loss, F.cross_entropy(logits, labels, ignore_index=-1))


@pytest.mark.parametrize("weights", ["none", "inverse_frequency", [1.0, 2.0, 0.5, 1.0, 1.0, 3.0, 1.0]])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_focal_gamma_zero_equals_cross_entropy(data, weights, smoothing):
    logits, labels = data
    cfg = LossConfig(label_smoothing=smoothing, focal_gamma=0.0, class_weights=weights)
    w = class_weight_vector(cfg, HISTOGRAM)
    expected = F.cross_entropy(logits, labels, weight=w, ignore_index=-1, label_smoothing=smoothing)
    torch.testing.assert_close(build_loss(cfg, HISTOGRAM)(logits, labels), expected)


def test_focal_by_hand_and_downweights_easy_turns(data):
    logits, labels = data
    gamma = 2.0
    loss = build_loss(LossConfig(focal_gamma=gamma), HISTOGRAM)(logits, labels)
    keep = labels != -1
    log_p = logits[keep].log_softmax(-1).gather(1, labels[keep][:, None]).squeeze(1)
    expected = (-(1 - log_p.exp()) ** gamma * log_p).mean()
    torch.testing.assert_close(loss, expected)
    assert loss < F.cross_entropy(logits, labels, ignore_index=-1)


def test_inverse_frequency_weights():
    w = class_weight_vector(LossConfig(class_weights="inverse_frequency"), [30, 10, 0, 20])
    torch.testing.assert_close(w, torch.tensor([20 / 30, 20 / 10, 0.0, 20 / 20]))
    balanced = class_weight_vector(LossConfig(class_weights="inverse_frequency"), [5, 5, 5])
    torch.testing.assert_close(balanced, torch.ones(3))


def test_weights_shift_the_loss_towards_the_weighted_class():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    labels = torch.tensor([0, 0, 1])  # turn 0 right, turns 1 and 2 wrong
    plain = build_loss(LossConfig(), [1, 1])(logits, labels)
    # Up-weighting class 1 (one wrong turn) vs class 0 (one right, one wrong turn).
    heavy_1 = build_loss(LossConfig(class_weights=[1.0, 10.0]), [1, 1])(logits, labels)
    heavy_0 = build_loss(LossConfig(class_weights=[10.0, 1.0]), [1, 1])(logits, labels)
    assert heavy_0 < plain < heavy_1
    log_p = logits.log_softmax(-1)
    by_hand = -(log_p[0, 0] + log_p[1, 0] + 10 * log_p[2, 1]) / 12
    torch.testing.assert_close(heavy_1, by_hand)


def test_all_unlabelled_gives_zero_with_a_graph():
    logits = torch.randn(3, 7, requires_grad=True)
    loss = build_loss(LossConfig(focal_gamma=1.0), HISTOGRAM)(logits, torch.full((3,), -1))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_bf16_logits_give_a_float32_loss(data):
    logits, labels = data
    loss = build_loss(LossConfig(), HISTOGRAM)(logits.bfloat16(), labels)
    assert loss.dtype == torch.float32


@pytest.mark.parametrize("data_, message", [
    ({"label_smoothing": 1.0}, "label_smoothing"),
    ({"focal_gamma": -1}, "focal_gamma"),
    ({"class_weights": "balanced"}, "class_weights"),
    ({"class_weights": [0.0, 0.0]}, "not all 0"),
])
def test_config_rejects_nonsense(data_, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(LossConfig, data_)


def test_weight_list_length_must_match_classes():
    with pytest.raises(ValueError, match="3 entries for 7 classes"):
        build_loss(LossConfig(class_weights=[1.0, 1.0, 1.0]), HISTOGRAM)
