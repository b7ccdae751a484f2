"""Why a turn got its label: each model's attention over the turn's utterances, and each model's share in
the fused decision.

Attention: both models run a self-attention over the utterances of a turn's window (model A over
[text, audio, role] states, ``utterances``; model B over [text, role] states, ``text_stream``), and
the turn is read from the current (last) utterance's position. A forward hook on that attention
layer recomputes its weights from the same inputs (the call the model makes asks for none; in eval
mode the layer is deterministic, so the weights are the ones it applied) and keeps the current
utterance's row, averaged over heads: one weight per utterance of the window, summing to 1. The
model's output is not touched, so the logits are the same with and without an explanation.

Share in the fusion: for the gating strategy, the gate's per-turn weight of each model; for the
other strategies, each calibrated model's probability of the fused label over their sum; a turn
where only one model had its medium is that model's alone.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from emotrain.inference.predict import Predictor, TurnPrediction

ATTENTION_LAYERS = ("utterances", "text_stream")  # model A's, model B's sequence encoder over utterances


def attention_layer(module: torch.nn.Module) -> torch.nn.MultiheadAttention:
    for name in ATTENTION_LAYERS:
        encoder = getattr(module, name, None)
        if encoder is not None:
            return encoder.attention
    raise ValueError(f"{type(module).__name__} has no attention over utterances")


class AttentionRecorder:
    """Hooks each model's utterance attention and wraps its predict function to file the weights by turn key."""

    def __init__(self, runner: "Predictor"):
        self.weights: dict[str, dict[str, np.ndarray]] = {name: {} for name in runner.bundle.models}
        self.handles = []
        self.thread = threading.get_ident()
        self.current: list[torch.Tensor] = []
        self.recomputing = False
        for name, model in runner.bundle.models.items():
            layer = attention_layer(model.module)
            self.handles.append(layer.register_forward_hook(self._hook, with_kwargs=True))
            runner.predict_fns[name] = self._wrap(name, runner.predict_fns[name])

    def _hook(self, layer: torch.nn.MultiheadAttention, args: tuple, kwargs: dict, output: Any) -> None:
        if self.recomputing or threading.get_ident() != self.thread:
            return
        self.recomputing = True
        try:
            query, key, value = (list(args) + [kwargs.get(k) for k in ("query", "key", "value")][len(args):])[:3]
            _, weights = layer(query, key, value, key_padding_mask=kwargs.get("key_padding_mask"),
                               need_weights=True, average_attn_weights=True)
            self.current.append(weights.detach().float().cpu())
        finally:
            self.recomputing = False

    def _wrap(self, name: str, fn: Any) -> Any:
        def predict(batch: Any) -> Any:
            self.current = []
            out = fn(batch)
            (weights,) = self.current  # one attention over utterances per forward
            for row, (key, n) in enumerate(zip(batch["keys"], batch["num_utts"].tolist())):
                self.weights[name][key] = weights[row, n - 1, :n].numpy().copy()
            return out

        return predict

    def for_turn(self, key: str, last_utterance: int) -> dict[str, list[dict[str, float]]]:
        """Per model, ``[{utterance, weight}]`` over the turn's window, oldest first (the last is the turn's own)."""
        out = {}
        for name, by_key in self.weights.items():
            w = by_key.get(key)
            if w is not None:
                first = last_utterance - len(w) + 1
                out[name] = [{"utterance": first + j, "weight": round(float(x), 6)} for j, x in enumerate(w)]
        return out

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


def fusion_shares(predictor: "Predictor", turns: list["TurnPrediction"]) -> list[dict[str, float]]:
    """Each model's share in each turn's fused decision (see the module docstring)."""
    from emotrain.fusion.learned import GatingFusion, _gate_inputs
    from emotrain.names import FUSION_ROLES

    names = list(predictor.bundle.models)
    if len(names) == 1 or not turns:
        return [{names[0]: 1.0} for _ in turns]
    strategy = predictor.bundle.strategy
    out: list[dict[str, float] | None] = [None] * len(turns)
    both = [i for i, t in enumerate(turns) if t.path in ("fused", "fused_text_only")]
    for i, t in enumerate(turns):
        if i not in set(both):
            out[i] = {name: float(name == t.path) for name in names}
    if isinstance(strategy, GatingFusion) and strategy.gate is not None and both:
        a, b = FUSION_ROLES
        log_pa = np.log(np.clip(np.stack([turns[i].probs[a] for i in both]), 1e-12, None))
        log_pb = np.log(np.clip(np.stack([turns[i].probs[b] for i in both]), 1e-12, None))
        with torch.no_grad():
            gate = torch.softmax(strategy.gate.net(_gate_inputs(log_pa, log_pb)), dim=1).numpy()
        for j, i in enumerate(both):
            out[i] = {a: round(float(gate[j, 0]), 6), b: round(float(gate[j, 1]), 6)}
    else:
        for i in both:
            k = predictor.classes.index(turns[i].label)
            mass = {name: float(turns[i].probs[name][k]) for name in names}
            total = sum(mass.values()) or 1.0
            out[i] = {name: round(m / total, 6) for name, m in mass.items()}
    return [o or {} for o in out]
