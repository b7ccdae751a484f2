"""The new (randomly initialised) layers both fusion models share.

All of them keep PyTorch's default initialisation; nothing here ever touches an encoder's
weights. They work with float32 or bfloat16 parameters (DeepSpeed's bf16 training) and under
CPU/GPU autocast (evaluation), where the LSTMs step out of autocast to run in their own dtype.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from emotrain.data.schema import META_FIELDS


class SequenceEncoder(nn.Module):
    """Bi-LSTM over a padded sequence, then multi-head self-attention (residual + LayerNorm).

    Padding is skipped by packing with ``lengths`` and masked out of the attention keys, so a
    short dialogue's states do not depend on how much padding its batch has.
    """

    def __init__(self, input_dim: int, hidden: int, layers: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.lstm = nn.LSTM(
            input_dim, hidden, num_layers=layers, batch_first=True, bidirectional=True,
            dropout=dropout if layers > 1 else 0.0,
        )
        self.dim = 2 * hidden
        self.dropout = nn.Dropout(dropout)
        self.attention = nn.MultiheadAttention(self.dim, heads, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(self.dim)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` [B, L, D_in], ``lengths`` [B] (None = all L real) -> [B, L, 2 * hidden]."""
        total = x.shape[1]
        # The LSTM runs in its own parameters' dtype with autocast off: under CPU bf16 autocast,
        # oneDNN rejects it on some CPUs ("could not create a primitive descriptor"); it is small.
        with torch.autocast(x.device.type, enabled=False):
            x = x.to(self.lstm.weight_ih_l0.dtype)
            if lengths is None:
                states, _ = self.lstm(x)
                pad_mask = None
            else:
                packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
                states, _ = self.lstm(packed)
                states, _ = pad_packed_sequence(states, batch_first=True, total_length=total)
                pad_mask = torch.arange(total, device=x.device)[None, :] >= lengths[:, None]
        states = self.dropout(states)
        attended, _ = self.attention(states, states, states, key_padding_mask=pad_mask, need_weights=False)
        return self.norm(states + self.dropout(attended))


class CrossModalAttention(nn.Module):
    """Each stream attends to the other (video queries text, text queries video), residually."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.a_to_b = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.b_to_a = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm_a = nn.LayerNorm(dim)
        self.norm_b = nn.LayerNorm(dim)

    def forward(
        self, a: torch.Tensor, b: torch.Tensor, a_pad: torch.Tensor | None, b_pad: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``a`` [B, La, D], ``b`` [B, Lb, D]; ``*_pad`` True on padding positions."""
        a_seen, _ = self.a_to_b(a, b, b, key_padding_mask=b_pad, need_weights=False)
        b_seen, _ = self.b_to_a(b, a, a, key_padding_mask=a_pad, need_weights=False)
        return self.norm_a(a + a_seen), self.norm_b(b + b_seen)


class MetadataEmbedding(nn.Module):
    """One embedding table per ``META_FIELDS`` column, ``meta_dim // F`` dims each.

    Table sizes come from the train vocab (``meta_vocab_sizes(manifest_vocab)``), id 0 =
    unknown, so val/test ids mean the same strings as in training.
    """

    def __init__(self, vocab_sizes: dict[str, int], meta_dim: int) -> None:
        super().__init__()
        columns = [column for column, _ in META_FIELDS]
        missing = [c for c in columns if c not in vocab_sizes]
        if missing:
            raise ValueError(f"meta_vocab_sizes lacks column(s) {missing}")
        self.field_dim = meta_dim // len(columns)
        self.tables = nn.ModuleList(nn.Embedding(vocab_sizes[c], self.field_dim) for c in columns)
        self.dim = self.field_dim * len(columns)

    def forward(self, meta_ids: torch.Tensor) -> torch.Tensor:
        """``meta_ids`` [B, F] -> [B, F, field_dim] (a short sequence, one step per field)."""
        return torch.stack([table(meta_ids[:, i]) for i, table in enumerate(self.tables)], dim=1)


class ClassifierHead(nn.Module):
    """Dropout -> Linear -> GELU -> Dropout -> Linear to the class logits."""

    def __init__(self, input_dim: int, hidden: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(input_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def missing_vector(dim: int) -> nn.Parameter:
    """A learned stand-in for an absent clip (small random start, like an embedding row)."""
    return nn.Parameter(torch.randn(dim) * 0.02)


def scatter_rows(values: torch.Tensor, where: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """Place ``values`` [N, ...] at the True positions of ``where`` [B, U]; ``fill`` elsewhere.

    Encoders run only over real rows (utterances that exist, clips that are present); this puts
    their outputs back on the [B, U] grid without an in-place write autograd would dislike.
    """
    out = fill.to(values.dtype).expand(*where.shape, *values.shape[1:]).clone()
    return out.masked_scatter(where.reshape(*where.shape, *([1] * (values.dim() - 1))), values)


def current_state(states: torch.Tensor, num_utts: torch.Tensor) -> torch.Tensor:
    """The state of each turn's current (last real) utterance: ``states[b, num_utts[b] - 1]``."""
    return states[torch.arange(states.shape[0], device=states.device), num_utts - 1]

