"""A synthetic collated batch in the loader's layout, for tests, benchmarks and shape checks.

The label is carried by the media only: every clip of a turn is a sine at 200 * (label + 1)
Hz (random phase and length), every video frame is noise tinted with the label's colour
(distinct for up to 7 classes). Text and metadata are random ids, or with ``same_text`` the
same in every turn, so a model can then learn the labels only through its audio or video (the
turns then share their text rows, as the loader sends a conversation's repeated texts once).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from emotrain.data.schema import META_FIELDS, SAMPLE_RATE
from emotrain.data.text import collate_token_batch


def _tint(labels: torch.Tensor) -> torch.Tensor:
    """[B, 3] colours in {-1, 1}: the bits of label + 1 (1..7 all differ)."""
    bits = ((labels[:, None] + 1) >> torch.arange(3)) & 1
    return bits.float() * 2 - 1


def example_batch(
    kind: str, labels: list[int], *, utterances: int = 4, seconds: float = 2.0, frames: int = 4, image: int = 32,
    tokens: int = 8, vocab_size: int = 342, meta_vocab: int = 5, seed: int = 0, same_text: bool = False,
) -> dict[str, Any]:
    """A batch for model ``kind`` ("audio_text" adds audio, "video_text" video); one turn per label.

    Each turn has 1..``utterances`` utterances (the first turn all of them, so U = ``utterances``).
    """
    gen = torch.Generator().manual_seed(seed)
    batch_size = len(labels)
    rows = 1 if same_text else batch_size
    num_utts = torch.randint(1, utterances + 1, (rows,), generator=gen)
    num_utts[0] = utterances
    utt_mask = torch.arange(utterances)[None, :] < num_utts[:, None]
    lengths = torch.randint(3, tokens + 1, (rows, utterances), generator=gen)
    # Speaker (1) and listener (2) alternate, ending with the speaker; 0 on padding.
    roles = torch.where(utt_mask, 1 + (num_utts[:, None] - 1 - torch.arange(utterances)) % 2, 0)
    utt_ids = torch.randint(5, vocab_size, (rows, utterances, tokens), generator=gen).numpy()
    ctx_ids = torch.randint(5, vocab_size, (rows, 6), generator=gen).numpy()
    per_turn = {
        "utt_roles": roles,
        "utt_mask": utt_mask,
        "num_utts": num_utts,
        "meta_ids": torch.randint(0, meta_vocab, (rows, len(META_FIELDS)), generator=gen),
    }
    batch: dict[str, Any] = {k: v.expand(batch_size, *v.shape[1:]).clone() for k, v in per_turn.items()}
    # The loader's own collate lays the texts out (each distinct one once, a row index per slot):
    # with same_text every turn reads the same rows, as turns of one conversation would.
    turns = [
        {"utterances": [utt_ids[r, j, : int(lengths[r, j])] for j in range(int(num_utts[r]))], "context": ctx_ids[r]}
        for r in (0 if same_text else i for i in range(batch_size))
    ]
    batch.update({k: torch.from_numpy(v) for k, v in collate_token_batch(turns, utterances).items()})
    label_t = torch.tensor(labels)
    batch.update(keys=[f"c{i}_0" for i in range(batch_size)], labels=label_t)
    if kind == "audio_text":
        samples = int(seconds * SAMPLE_RATE)
        lengths = torch.randint(samples // 4, samples + 1, (batch_size, utterances), generator=gen) * batch["utt_mask"]
        sample_mask = torch.arange(samples)[None, None, :] < lengths[..., None]
        t = torch.arange(samples) / SAMPLE_RATE
        phase = torch.rand(batch_size, utterances, 1, generator=gen) * 2 * math.pi
        freq = 200.0 * (label_t.float() + 1)
        wave = 0.5 * torch.sin(2 * math.pi * freq[:, None, None] * t + phase)
        present = batch["utt_mask"].clone()  # every utterance has a clip of its own
        index = torch.full(present.shape, -1, dtype=torch.long)
        index[present] = torch.arange(int(present.sum()))
        batch.update(audio=(wave * sample_mask)[present], audio_lengths=lengths[present], audio_index=index,
                     audio_present=present)
    elif kind == "video_text":
        noise = 0.5 * torch.randn(batch_size, frames, 3, image, image, generator=gen)
        tinted = _tint(label_t)[:, None, :, None, None] + noise  # about -2..2: uint8 RGB around grey
        video = (128 + 50 * tinted).round().clamp(0, 255).to(torch.uint8)
        batch.update(video=video, video_present=torch.ones(batch_size, dtype=torch.bool))
    else:
        raise ValueError(f"unknown model kind {kind!r}")
    return batch
