"""Why a turn got its label: each utterance's influence on each model (occlusion), each model's attention over
the turn's utterances, and each model's share in the fused decision.

Influence (occlusion), the measure to read: every turn is scored again once per utterance of its window with
that utterance masked (its text replaced by the empty text, its audio clip and, for the turn's own utterance,
its video clip marked missing, which the models already represent by their learned "missing" vectors; the
role and the position stay). The turn samples come from the bundle's own expander and go through the same
collate, model, calibration as the real turn; an utterance's influence on a model is that model's calibrated
probability of the fused label with everything minus the same with the utterance masked (positive: the
utterance argued for the label). It costs one extra forward per utterance of the window, so only with
``explain``.

Attention: both models run a self-attention over the utterances of a turn's window (model A over
[text, audio, role] states, ``utterances``; model B over [text, role] states, ``text_stream``), and
the turn is read from the current (last) utterance's position. These weights are what the layer mixes
in, not what the decision rests on: the layer adds its mix to the residual state of the current
utterance, and the Bi-LSTM below has already carried the history into every state, so a model that
learned to read the turn's own utterance still spreads its attention evenly (measured in
``benchmarks/attention_focus.py``). Model B's cross-modal attention (its video frames querying the
utterances) is not reported. A forward hook on that attention
layer recomputes its weights from the same inputs (the call the model makes asks for none; in eval
mode the layer is deterministic, so the weights are the ones it applied) and keeps the current
utterance's row, averaged over heads: one weight per utterance of the window, summing to 1. The
model's output is not touched, so the logits are the same with and without an explanation.

Share in the fusion: for the gating strategy, the gate's per-turn weight of each model; for the
other strategies, each calibrated model's probability of the fused label over their sum; a turn
where only one model had its medium is that model's alone.
"""

from __future__ import annotations

import copy
import threading
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from emotrain.evaluation.gather import Scored

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


class Occluder:
    """Scores, for each turn sample the bundle's expanders make, one copy per utterance of its window with that
    utterance masked (see the module docstring). The copies go through the same collate, model and scoring as
    the turns, in batches of their own, so the turns themselves are batched, and scored, exactly as without."""

    def __init__(self, runner: "Predictor", batch_size: int | None):
        self.runner = runner
        self.inner = runner._expanders
        runner._expanders = self._expanders  # the runner is the caller's own copy; the shared predictor is untouched
        self.sizes = {name: batch_size or m.entry.batch_size for name, m in runner.bundle.models.items()}
        self.pending: dict[str, list[dict[str, Any]]] = {name: [] for name in runner.bundle.models}
        self.scored = {name: Scored.empty(len(runner.classes)) for name in runner.bundle.models}
        self.pad_ids: dict[str, int] = {}
        self.rows: dict[str, dict[str, int]] = {}  # by model, masked key -> row of ``scored`` (after ``finish``)
        self.temperatures = {name: runner.bundle.info.models[name].temperature for name in runner.bundle.models}

    def _expanders(self, counter: Any) -> dict[str, Any]:
        expanders = self.inner(counter)
        self.pad_ids = {name: e.tokenizer.pad_token_id for name, e in expanders.items()}
        return {name: _Occluding(e, lambda masked, name=name: self._add(name, masked)) for name, e in expanders.items()}

    def _add(self, name: str, masked: list[dict[str, Any]]) -> None:
        self.pending[name].extend(masked)
        while len(self.pending[name]) >= self.sizes[name]:
            self._flush(name, self.sizes[name])

    @torch.no_grad()
    def _flush(self, name: str, count: int) -> None:
        from emotrain.data.stream import as_tensors, collate_turns
        from emotrain.evaluation.scoring import score_batch

        model = self.runner.bundle.models[name]
        batch = collate_turns(self.pending[name][:count], model.data, model.modalities, self.pad_ids[name])
        self.pending[name] = self.pending[name][count:]
        score_batch(self.runner.predict_fns[name], as_tensors(batch), self.scored[name])

    def finish(self) -> None:
        """Score what is still pending (after the turns are scored)."""
        for name, pending in self.pending.items():
            if pending:
                self._flush(name, len(pending))
        self.rows = {name: {k: i for i, k in enumerate(s.keys)} for name, s in self.scored.items()}

    def for_turn(self, turn: "TurnPrediction", classes: list[str], last_utterance: int) -> dict[str, list[dict[str, float]]]:
        """Per model, ``[{utterance, influence}]`` over the turn's window, oldest first (the last is the turn's own)."""
        from emotrain.fusion.calibration import scaled_log_probs

        k = classes.index(turn.label)
        out = {}
        for name, rows in self.rows.items():
            full = turn.probs.get(name)
            masked = []
            while f"{turn.key}{MASKED}{len(masked)}" in rows:
                masked.append(rows[f"{turn.key}{MASKED}{len(masked)}"])
            if not masked or full is None or np.isnan(full).any():
                continue
            p = np.exp(scaled_log_probs(self.scored[name].logits[masked], self.temperatures[name]))[:, k]
            first = last_utterance - len(masked) + 1
            out[name] = [{"utterance": first + j, "influence": round(float(full[k] - p[j]), 6)}
                         for j in range(len(masked))]
        return out


MASKED = "#masked"  # key of a turn scored with one utterance masked: f"{key}#masked{j}" (j: position in the window)


class _Occluding:
    """An expander whose turn samples are also handed, as masked copies, to ``score``; anything else is the
    expander's."""

    def __init__(self, expander: Any, score: Any):
        self.expander = expander
        self.score = score
        self.empty = np.asarray(expander.tokenizer("", truncation=True,
                                                   max_length=expander.cfg.text.max_utterance_tokens)["input_ids"],
                                dtype=np.int64)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.expander, name)

    def __call__(self, sample: dict[str, Any], *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        turns = self.expander(sample, *args, **kwargs)
        for turn in turns:
            n = len(turn["roles"])
            copies = []
            for j in range(n):
                masked = copy.copy(turn)
                masked["key"] = f"{turn['key']}{MASKED}{j}"
                masked["tokens"] = {**turn["tokens"], "utterances": list(turn["tokens"]["utterances"])}
                masked["tokens"]["utterances"][j] = self.empty
                if "audio" in turn:
                    masked["audio"] = list(turn["audio"])
                    masked["audio"][j] = None
                if "video" in turn and j == n - 1:  # the turn's video is its own utterance's clip
                    masked["video"] = None
                copies.append(masked)
            self.score(copies)
        return turns


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
