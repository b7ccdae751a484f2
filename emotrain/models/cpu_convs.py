"""Convolutions that run in float32 where they would run in bfloat16 on a CPU.

Why: PyTorch has no fast bfloat16 convolution on CPUs without AVX512-BF16 or AMX (such as the
AVX2-only machine this project is tested on): oneDNN declines and the reference
``_slow_conv2d`` kernels run instead. There, under DeepSpeed's bf16 training, Wav2Vec2's
convolutional feature encoder took 70% of model A's training step (``benchmarks/model_step.py``
has the figures). A convolution given bfloat16 tensors, or called under CPU bf16 autocast, casts
its input, weight and bias to float32, runs with autocast off, and returns bfloat16 as before,
so the parameters, their gradients and the optimizer stay exactly as DeepSpeed holds them. On
GPUs and for float32 or float16 work nothing changes.

The layers are swapped in by class (:func:`use_float32_cpu_convs`), so parameter names, state
dicts and Hugging Face checkpoints are untouched.
"""

from __future__ import annotations

import functools

import torch
from torch import nn


def _bf16_on_cpu(x: torch.Tensor) -> bool:
    """Whether a convolution of ``x`` would run in bfloat16 on the CPU (bf16 input or bf16 autocast)."""
    if x.device.type != "cpu":
        return False
    return x.dtype == torch.bfloat16 or (
        torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    )


class Float32OnCpu:
    """Mixin for ``nn.Conv*d``: a convolution that would run in bfloat16 on the CPU runs in
    float32 (autocast off), and its output is bfloat16 as it would have been."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if not _bf16_on_cpu(input):
            return super()._conv_forward(input, weight, bias)  # type: ignore[misc]
        bias32 = None if bias is None else bias.float()
        with torch.autocast("cpu", enabled=False):
            out = super()._conv_forward(input.float(), weight.float(), bias32)  # type: ignore[misc]
        return out.to(torch.bfloat16)


@functools.cache
def _float32_variant(conv_cls: type[nn.Module]) -> type[nn.Module]:
    """``conv_cls`` with :class:`Float32OnCpu` first in its MRO (also for weight-normed convs,
    whose class torch generates: ``ParametrizedConv1d`` in Wav2Vec2's positional embedding)."""
    return type(f"Float32Cpu{conv_cls.__name__}", (Float32OnCpu, conv_cls), {"__module__": __name__})


def use_float32_cpu_convs(model: nn.Module) -> int:
    """Give every convolution in ``model`` the float32-on-CPU behaviour; returns how many."""
    swapped = 0
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and not isinstance(module, Float32OnCpu):
            module.__class__ = _float32_variant(type(module))
            swapped += 1
    return swapped


def use_plain_convs(model: nn.Module) -> int:
    """Undo :func:`use_float32_cpu_convs` (for measuring what it saves); returns how many."""
    restored = 0
    for module in model.modules():
        if isinstance(module, Float32OnCpu):
            module.__class__ = type(module).__mro__[2]  # after the variant itself and the mixin
            restored += 1
    return restored
