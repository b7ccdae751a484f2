"""Model B: video (TimeSformer) + text (BERT) + metadata, with cross-modal attention.

Streams: the current utterance's clip -> TimeSformer -> one vector per frame (mean of that
frame's patch tokens) -> Bi-LSTM + self-attention over time; the turn's utterances -> BERT CLS
(+ role) -> Bi-LSTM + self-attention over utterances; the metadata fields -> embeddings -> a
small MLP. Video queries text and text queries video (cross-modal attention); then one token
per source (video summary, current utterance, metadata, context) goes through a fusion
Bi-LSTM + self-attention, averaged, to an MLP. BERT runs once per distinct utterance text and
once per distinct context of the batch; TimeSformer runs only on clips that exist; an absent
clip becomes a learned "missing" vector on every frame.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from emotrain.models.encoders import BertCLS, TimesformerFrames
from emotrain.models.layers import (
    ClassifierHead, CrossModalAttention, MetadataEmbedding, SequenceEncoder, current_state, missing_vector, scatter_rows,
)

if TYPE_CHECKING:
    from emotrain.models.model_config import ModelConfig


class VideoTextModel(nn.Module):
    def __init__(self, cfg: ModelConfig, num_classes: int, meta_vocab_sizes: dict[str, int], load_weights: bool = True) -> None:
        super().__init__()
        assert cfg.video is not None  # ModelConfig.validate guarantees it
        self.use_context = cfg.use_context
        self.text_encoder = BertCLS(cfg.text, load_weights)
        self.video_encoder = TimesformerFrames(cfg.video, cfg.pixel_mean, cfg.pixel_std, load_weights)
        self.video_missing = missing_vector(self.video_encoder.dim)
        self.role_embedding = nn.Embedding(3, cfg.role_dim, padding_idx=0)
        args = (cfg.hidden, cfg.lstm_layers, cfg.attention_heads, cfg.dropout)
        self.video_stream = SequenceEncoder(self.video_encoder.dim, *args)
        self.text_stream = SequenceEncoder(self.text_encoder.dim + cfg.role_dim, *args)
        dim = self.text_stream.dim
        self.cross = CrossModalAttention(dim, cfg.attention_heads, cfg.dropout)
        self.metadata = MetadataEmbedding(meta_vocab_sizes, cfg.meta_dim)
        self.metadata_proj = nn.Sequential(nn.Linear(self.metadata.dim, dim), nn.GELU(), nn.Dropout(cfg.dropout))
        self.context_proj = nn.Linear(self.text_encoder.dim, dim) if cfg.use_context else None
        self.fusion = SequenceEncoder(dim, cfg.hidden, 1, cfg.attention_heads, cfg.dropout)
        self.head = ClassifierHead(self.fusion.dim, cfg.mlp_hidden, num_classes, cfg.dropout)

    def _frames(self, video: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """[B, T, D] frame vectors; the missing vector on every frame of an absent clip."""
        batch, frames = video.shape[:2]
        where = present[:, None].expand(batch, frames)
        if present.any():
            encoded = self.video_encoder(video[present])
            return scatter_rows(encoded.flatten(0, 1), where, self.video_missing)
        return self.video_missing.expand(batch, frames, -1)

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        utt_mask = batch["utt_mask"]
        num_utts = batch["num_utts"]
        # Each distinct text of the batch is encoded once, then placed in every slot using it.
        text = self.text_encoder.encode_slots(batch["utt_token_ids"], batch["utt_token_mask"], batch["utt_row"])
        roles = self.role_embedding(batch["utt_roles"]).to(text.dtype)
        text_states = self.text_stream(torch.cat([text, roles], dim=-1), num_utts)
        frames = self._frames(batch["video"], batch["video_present"])
        video_states = self.video_stream(frames.to(text.dtype)).to(text_states.dtype)
        video_states, text_states = self.cross(video_states, text_states, None, ~utt_mask)

        tokens = [video_states.mean(1), current_state(text_states, num_utts)]
        tokens.append(self.metadata_proj(self.metadata(batch["meta_ids"]).flatten(1)))
        if self.context_proj is not None:
            context = self.text_encoder.encode_slots(batch["ctx_token_ids"], batch["ctx_token_mask"], batch["ctx_row"])
            tokens.append(self.context_proj(context))
        fused = self.fusion(torch.stack([t.to(tokens[0].dtype) for t in tokens], dim=1))
        return self.head(fused.mean(1))
