"""Training FLOPs per turn from a model config, checked by hand and against torch's FlopCounterMode."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import BertConfig

from emotrain.commands.inspect import model_data
from emotrain.config import from_dict
from emotrain.models import EncoderSpec, ModelConfig
from emotrain.models.encoders import encoder_config, is_frozen, load_encoder
from emotrain.models.example_batch import example_batch
from emotrain.models.flops import (
    TurnWorkload, bert_forward_flops, timesformer_forward_flops, training_flops_per_turn, wav2vec2_forward_flops,
)

ROOT = Path(__file__).resolve().parents[1]
NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
BERT = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 4, "intermediate_size": 64, "vocab_size": 100,
        **NO_DROPOUT}
# One positional-conv group: FlopCounterMode counts a grouped conv's weight gradient as if ungrouped
# (groups times too much); the forward, checked with 4 groups below, it counts right.
WAV2VEC2 = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
            "conv_dim": [16, 16, 16], "conv_kernel": [10, 3, 2], "conv_stride": [5, 2, 2],
            "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 1, "layerdrop": 0.0,
            "apply_spec_augment": False, "hidden_dropout": 0.0}
TIMESFORMER = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
               "image_size": 32, "patch_size": 8, "num_frames": 4, **NO_DROPOUT}
# What the tiny encoders get below, as a workload: 3 rows of 11 tokens, 2 clips of 0.5 s, 2 videos.
WORKLOAD = TurnWorkload(utterance_rows=3, utterance_tokens=11, audio_clips=2, audio_seconds=0.5, video_clips=2)
INPUTS = {
    "bert": lambda: {"input_ids": torch.randint(5, 100, (3, 11)), "attention_mask": torch.ones(3, 11).long()},
    "wav2vec2": lambda: {"input_values": torch.randn(2, 8000)},
    "timesformer": lambda: {"pixel_values": torch.randn(2, 4, 3, 32, 32)},
}
NAMES = {"bert": "text", "wav2vec2": "audio", "timesformer": "video"}


def counted(kind: str, spec: EncoderSpec, train: bool) -> float:
    """FLOPs FlopCounterMode counts for the real HF encoder: a forward, or a forward + backward step.

    A frozen encoder runs without autograd, as the emotrain wrappers (BertCLS, ...) run it.
    """
    model = load_encoder(kind, spec)
    model.config._attn_implementation = "eager"  # CPU sdpa kernels are not counted; eager matmuls are
    model.train(train)
    with FlopCounterMode(display=False) as mode, torch.set_grad_enabled(train and not is_frozen(model)):
        out = model(**INPUTS[kind]()).last_hidden_state
        if train and out.requires_grad:
            out.sum().backward()
    return float(mode.get_total_flops())


def tiny_model(kind: str, spec: EncoderSpec) -> ModelConfig:
    """A model config holding ``spec`` as its ``kind`` encoder (and a tiny BERT beside a media one)."""
    text = spec if kind == "bert" else EncoderSpec(config=BERT)
    if kind == "timesformer":
        return ModelConfig(kind="video_text", text=text, video=spec, use_context=False)
    audio = spec if kind == "wav2vec2" else EncoderSpec(config=WAV2VEC2)
    return ModelConfig(kind="audio_text", text=text, audio=audio, use_context=False)


def full_size(name: str) -> ModelConfig:
    return from_dict(ModelConfig, model_data(str(ROOT / f"configs/model/{name}.yaml"), []), "model")


def test_bert_layer_dense_flops_match_a_hand_count():
    config = BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
    # 2 rows x 5 tokens: QKV 3*8*8 + out 8*8 + FFN 2*8*16 = 512 MACs a token; QK^T and AV 2*5*5*8 a row.
    assert bert_forward_flops(config, rows=2, tokens=5) == 2 * (10 * 512 + 2 * 400)
    two_layers = BertConfig(hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16)
    assert bert_forward_flops(two_layers, rows=2, tokens=5) == 2 * 2 * (10 * 512 + 2 * 400)


@pytest.mark.parametrize("kind, config, forward", [
    ("bert", BERT, lambda c: bert_forward_flops(c, rows=3, tokens=11)),
    ("wav2vec2", {**WAV2VEC2, "num_conv_pos_embedding_groups": 4}, lambda c: wav2vec2_forward_flops(c, 2, 0.5)),
    ("timesformer", TIMESFORMER, lambda c: timesformer_forward_flops(c, clips=2)),
    ("timesformer", {**TIMESFORMER, "attention_type": "joint_space_time"}, lambda c: timesformer_forward_flops(c, 2)),
])
def test_forward_matches_flop_counter(kind, config, forward):
    spec = EncoderSpec(config=config)
    assert forward(encoder_config(kind, spec)) == pytest.approx(counted(kind, spec, train=False), rel=0.01)


@pytest.mark.parametrize("kind, spec", [
    ("bert", EncoderSpec(config=BERT)),  # embeddings train: backward through every layer, input grads too
    ("bert", EncoderSpec(config=BERT, freeze_layers=1)),  # lowest trainable layer: no input grad for its QKV
    # checkpointed: no backward through the frozen layers (load_encoder undoes HF's enable_input_require_grads)
    ("bert", EncoderSpec(config=BERT, freeze_layers=2, gradient_checkpointing=True)),
    ("wav2vec2", EncoderSpec(config=WAV2VEC2, freeze_feature_encoder=True)),
    ("wav2vec2", EncoderSpec(config=WAV2VEC2, freeze_feature_encoder=False, gradient_checkpointing=True)),
    ("wav2vec2", EncoderSpec(config=WAV2VEC2, freeze_layers=1)),  # convs frozen, but HF still wants the waveform's grad
    ("wav2vec2", EncoderSpec(config={**WAV2VEC2, "do_stable_layer_norm": True, "feat_extract_norm": "layer"},
                             freeze_feature_encoder=True, gradient_checkpointing=True)),
    ("timesformer", EncoderSpec(config=TIMESFORMER)),
    ("timesformer", EncoderSpec(config=TIMESFORMER, freeze_layers=1, gradient_checkpointing=True)),
])
def test_training_matches_flop_counter(kind, spec):
    flops = {e.name: e for e in training_flops_per_turn(tiny_model(kind, spec), WORKLOAD).encoders}[NAMES[kind]]
    assert flops.backward > 0
    assert flops.training == pytest.approx(counted(kind, spec, train=True), rel=0.01)


def test_freezing_more_bert_layers_lowers_training_flops():
    def text_flops(n: int):
        text = EncoderSpec(pretrained="bert-base-uncased", freeze_layers=n)  # bert-base's config, offline
        model = ModelConfig(kind="video_text", text=text, video=EncoderSpec(config=TIMESFORMER))
        return training_flops_per_turn(model).encoders[0]

    runs = [text_flops(n) for n in range(13)]
    training = [r.training for r in runs]
    assert all(a > b for a, b in itertools.pairwise(training))
    assert len({r.forward for r in runs}) == 1
    assert runs[-1].training == runs[-1].forward  # every layer frozen: nothing to backprop


@pytest.mark.parametrize("kind", ["bert", "wav2vec2", "timesformer"])
def test_a_frozen_encoder_costs_its_forward_only(kind):
    config = {"bert": BERT, "wav2vec2": WAV2VEC2, "timesformer": TIMESFORMER}[kind]
    spec = EncoderSpec(config=config, freeze=True, gradient_checkpointing=True)
    flops = {e.name: e for e in training_flops_per_turn(tiny_model(kind, spec), WORKLOAD).encoders}[NAMES[kind]]
    assert flops.forward > 0 and flops.training == flops.forward
    assert flops.training == counted(kind, spec, train=True)


def test_full_size_models_offline_in_the_measured_ranges():
    # Measured before BERT read each distinct text once per batch (3.04 utterance copies and one
    # context per turn): model A ~367 GFLOP a turn (Wav2Vec2 most of it), model B ~50 (BERT ~24, TimeSformer ~26).
    copies = TurnWorkload(utterance_rows=3.04, context_rows=1.0)
    a = training_flops_per_turn(full_size("audio_text"), copies)
    b = training_flops_per_turn(full_size("video_text"), copies)
    a_gf, b_gf = a.gflop(), b.gflop()
    assert 367 * 0.7 < a_gf["total"] < 367 * 1.3 and a_gf["audio"] > 0.8 * a_gf["total"]
    assert 50 * 0.7 < b_gf["total"] < 50 * 1.3
    assert 24 * 0.7 < b_gf["text"] < 24 * 1.3 and 26 * 0.7 < b_gf["video"] < 26 * 1.3
    assert a_gf["text"] == b_gf["text"]  # the same BERT over the same text
    distinct = training_flops_per_turn(full_size("video_text")).gflop()  # the default workload: what BERT now reads
    assert b_gf["text"] / distinct["text"] > 1.6 and distinct["video"] == b_gf["video"]
    sixteen = training_flops_per_turn(full_size("video_text"), TurnWorkload(video_frames=16)).gflop()
    assert sixteen["video"] > 2 * b_gf["video"]  # twice the tokens, longer temporal attention


def test_workload_from_a_collated_batch():
    batch = example_batch("audio_text", [0, 1, 2, 3], utterances=4, seconds=2.0, tokens=8)
    workload = TurnWorkload.from_batch(batch)
    assert workload.utterance_rows == batch["utt_token_ids"].shape[0] / 4  # distinct rows, as BERT sees them
    assert workload.context_rows == batch["ctx_token_ids"].shape[0] / 4
    assert workload.utterance_tokens == 8 and workload.context_tokens == 6
    assert workload.audio_clips == batch["audio"].shape[0] / 4
    assert workload.audio_seconds == float(batch["audio_lengths"].max()) / 16000 and workload.video_clips == 0
    video = TurnWorkload.from_batch(example_batch("video_text", [0, 1], frames=4, image=32))
    assert video.video_clips == 1 and video.audio_clips == 0
