"""Model A: audio (Wav2Vec2) + text (BERT) + metadata, fused early over the turn's utterances.

Per utterance: [BERT CLS of its text || Wav2Vec2 mean over its clip || role embedding]; a
Bi-LSTM and self-attention run over the utterances; the current utterance's state, the BERT
vector of the context text and the metadata embeddings go to an MLP. BERT runs once over the
distinct utterance texts of the whole batch and once over its distinct contexts (padding
utterances are never encoded, a text several turns share only once) and Wav2Vec2 only over
the distinct clips that exist; an absent clip is replaced by a learned "missing" vector.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from emotrain.models.encoders import BertCLS, Wav2Vec2Pooled
from emotrain.models.layers import (
    ClassifierHead, MetadataEmbedding, SequenceEncoder, current_state, missing_vector, scatter_rows,
)

if TYPE_CHECKING:
    from emotrain.models.model_config import ModelConfig


class AudioTextModel(nn.Module):
    def __init__(self, cfg: ModelConfig, num_classes: int, meta_vocab_sizes: dict[str, int], load_weights: bool = True) -> None:
        super().__init__()
        assert cfg.audio is not None  # ModelConfig.validate guarantees it
        self.use_context = cfg.use_context
        self.text_encoder = BertCLS(cfg.text, load_weights)
        self.audio_encoder = Wav2Vec2Pooled(cfg.audio, load_weights)
        self.audio_missing = missing_vector(self.audio_encoder.dim)
        self.role_embedding = nn.Embedding(3, cfg.role_dim, padding_idx=0)
        self.utterances = SequenceEncoder(
            self.text_encoder.dim + self.audio_encoder.dim + cfg.role_dim,
            cfg.hidden, cfg.lstm_layers, cfg.attention_heads, cfg.dropout,
        )
        self.metadata = MetadataEmbedding(meta_vocab_sizes, cfg.meta_dim)
        context_dim = self.text_encoder.dim if cfg.use_context else 0
        self.head = ClassifierHead(self.utterances.dim + context_dim + self.metadata.dim, cfg.mlp_hidden, num_classes, cfg.dropout)

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        utt_mask = batch["utt_mask"]
        num_utts = batch["num_utts"]
        # Each distinct text of the batch is encoded once, then placed in every slot using it.
        text = self.text_encoder.encode_slots(batch["utt_token_ids"], batch["utt_token_mask"], batch["utt_row"])
        present = batch["audio_present"] & utt_mask
        if present.any():
            # Each distinct clip of the batch is encoded once, then placed in every slot using it.
            clips = self.audio_encoder(batch["audio"], batch["audio_lengths"])
            audio = scatter_rows(clips[batch["audio_index"][present]], present, self.audio_missing)
        else:
            audio = self.audio_missing.expand(*present.shape, -1).to(text.dtype)
        roles = self.role_embedding(batch["utt_roles"])
        states = self.utterances(torch.cat([text, audio.to(text.dtype), roles.to(text.dtype)], dim=-1), num_utts)
        parts = [current_state(states, num_utts)]
        if self.use_context:
            context = self.text_encoder.encode_slots(batch["ctx_token_ids"], batch["ctx_token_mask"], batch["ctx_row"])
            parts.append(context)
        parts.append(self.metadata(batch["meta_ids"]).flatten(1))
        return self.head(torch.cat([p.to(parts[0].dtype) for p in parts], dim=-1))
