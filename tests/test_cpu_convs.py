"""Convolutions given bfloat16 CPU tensors compute in float32 (no slow reference kernel), nothing else changes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from emotrain.models.cpu_convs import Float32OnCpu, use_float32_cpu_convs, use_plain_convs
from emotrain.models.encoders import EncoderSpec, load_encoder

SHAPES = {nn.Conv1d: (2, 3, 40), nn.Conv2d: (2, 3, 12, 12), nn.Conv3d: (2, 3, 4, 8, 8)}


@pytest.mark.parametrize("conv_cls", list(SHAPES))
def test_bf16_conv_is_the_float32_conv_rounded_and_trains_bf16_parameters(conv_cls):
    torch.manual_seed(0)
    conv = conv_cls(3, 5, 3, padding=1)
    names = list(conv.state_dict())
    assert use_float32_cpu_convs(nn.Sequential(conv)) == 1
    assert list(conv.state_dict()) == names and isinstance(conv, conv_cls)
    conv.to(torch.bfloat16)
    x = torch.randn(SHAPES[conv_cls]).to(torch.bfloat16)
    out = conv(x)
    reference = conv_cls._conv_forward(conv, x.float(), conv.weight.float(), conv.bias.float())
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, reference.to(torch.bfloat16))
    out.float().square().sum().backward()
    assert conv.weight.grad is not None and conv.weight.grad.dtype == torch.bfloat16
    assert conv.weight.grad.abs().sum() > 0


def test_float32_input_takes_the_ordinary_path():
    torch.manual_seed(0)
    plain = nn.Conv1d(2, 4, 3)
    swapped = nn.Conv1d(2, 4, 3)
    swapped.load_state_dict(plain.state_dict())
    use_float32_cpu_convs(swapped)
    x = torch.randn(3, 2, 20)
    assert torch.equal(swapped(x), plain(x))


@pytest.mark.parametrize("kind, config", [
    ("wav2vec2", {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
                  "conv_dim": [8, 8], "conv_kernel": [10, 4], "conv_stride": [5, 4],
                  "num_conv_pos_embeddings": 8, "num_conv_pos_embedding_groups": 2}),
    ("timesformer", {"image_size": 16, "patch_size": 8, "num_frames": 2, "hidden_size": 16,
                     "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}),
])
def test_loaded_encoders_have_no_plain_convs_left(kind, config):
    model = load_encoder(kind, EncoderSpec(pretrained=None, config=config))
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    assert convs, "the encoder has convolutions"
    assert all(isinstance(m, Float32OnCpu) for m in convs)
    assert use_float32_cpu_convs(model) == 0, "swapping twice changes nothing"
    classes = [type(m) for m in convs]
    assert use_plain_convs(model) == len(convs)
    assert [type(m) for m in convs] == [c.__mro__[2] for c in classes]
    assert not any(isinstance(m, Float32OnCpu) for m in convs)


def test_bf16_autocast_conv_runs_in_float32_and_returns_bf16():
    torch.manual_seed(0)
    conv = nn.Conv1d(3, 5, 3)
    use_float32_cpu_convs(conv)
    x = torch.randn(2, 3, 30)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(x)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, nn.Conv1d._conv_forward(conv, x, conv.weight, conv.bias).to(torch.bfloat16))
