"""Each tiny model can fit 32 turns whose label is carried only by its audio or video.

Text, roles and metadata are identical in every turn (``same_text``), so reaching 95% train
accuracy proves gradients reach the media encoder and the fusion path carries its signal.
"""

from __future__ import annotations

import pytest
import torch

from emotrain.models import build_model
from emotrain.models.inputs import model_inputs
from helpers import META_SIZES, NUM_CLASSES, make_batch, tiny_config

MAX_STEPS = 60


def _fit(kind: str, hide_media: bool) -> tuple[float, float, int]:
    """(accuracy before, accuracy after, steps) of full-batch training on 32 turns."""
    torch.manual_seed(0)
    labels = [i % NUM_CLASSES for i in range(32)]
    batch = make_batch(kind, labels, utterances=2, seconds=1.0, seed=1, same_text=True)
    if hide_media:
        batch["audio_present" if kind == "audio_text" else "video_present"][:] = False
    model = build_model(tiny_config(kind, ["dropout=0.0"]), NUM_CLASSES, META_SIZES)
    inputs = model_inputs(batch, torch.device("cpu"))  # what training feeds the model: no labels, no keys
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)

    def accuracy() -> float:
        model.eval()
        with torch.no_grad():
            return (model(inputs).argmax(-1) == batch["labels"]).float().mean().item()

    with torch.no_grad():
        start = accuracy()
    for step in range(1, MAX_STEPS + 1):
        model.train()
        loss = torch.nn.functional.cross_entropy(model(inputs), batch["labels"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 5 == 0 and accuracy() >= 0.95:
            break
    return start, accuracy(), step


@pytest.mark.parametrize("kind", ["audio_text", "video_text"])
def test_overfits_32_turns_through_the_media_only(kind):
    start, final, steps = _fit(kind, hide_media=False)
    assert start < 0.5  # not fitted before training
    assert final >= 0.95, f"{kind}: train accuracy {final:.2f} after {steps} steps"


@pytest.mark.parametrize("kind", ["audio_text", "video_text"])
def test_without_the_media_the_labels_cannot_be_fitted(kind):
    """The control: same batches with the clips marked absent leave nothing to learn from."""
    _, final, _ = _fit(kind, hide_media=True)
    assert final <= 2 / NUM_CLASSES, f"{kind}: {final:.2f} accuracy without media: the labels leak elsewhere"
