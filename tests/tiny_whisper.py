"""A tiny random Whisper saved to a folder, for offline speech-recognition tests (no weights downloaded).

A byte-level tokenizer (the 256 byte symbols, no merges) with Whisper's special tokens, including the
timestamp tokens ``<|0.00|>`` ... ``<|30.00|>``; a two-layer model of 16 dims; the feature extractor
with 80 mel bins. ``pipeline("automatic-speech-recognition", model=folder)`` runs it with no network.
Its weights are random: it proves the wiring, not the words.
"""

from __future__ import annotations

import json
from pathlib import Path

LANGUAGE = "<|en|>"


def make_tiny_whisper(folder: Path, seed: int = 0) -> Path:
    import torch
    from transformers import (GenerationConfig, WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration,
                              WhisperProcessor, WhisperTokenizer)
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(bytes_to_unicode().values())
    vocab = {s: i for i, s in enumerate(symbols)}
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    specials = ["<|endoftext|>", "<|startoftranscript|>", LANGUAGE, "<|translate|>", "<|transcribe|>",
                "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]
    stamps = [f"<|{i * 0.02:.2f}|>" for i in range(1501)]
    tokenizer = WhisperTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), unk_token="<|endoftext|>",
                                 bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": specials[1:]})
    tokenizer.add_tokens(stamps)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in specials}
    config = WhisperConfig(
        vocab_size=len(tokenizer), num_mel_bins=80, d_model=16, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        max_source_positions=1500, max_target_positions=64, pad_token_id=ids["<|endoftext|>"],
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|endoftext|>"],
        decoder_start_token_id=ids["<|startoftranscript|>"])
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config).eval()
    generation = GenerationConfig(
        decoder_start_token_id=ids["<|startoftranscript|>"], eos_token_id=ids["<|endoftext|>"],
        pad_token_id=ids["<|endoftext|>"], bos_token_id=ids["<|endoftext|>"], max_length=32,
        no_timestamps_token_id=ids["<|notimestamps|>"], is_multilingual=False, begin_suppress_tokens=[],
        suppress_tokens=[], forced_decoder_ids=None)
    model.generation_config = generation
    model.save_pretrained(str(folder))
    processor = WhisperProcessor(WhisperFeatureExtractor(feature_size=80), tokenizer)
    processor.save_pretrained(str(folder))
    return folder
