"""Compute precision and memory format of the encoders: what ``auto`` means, and the autocast context.

Two TrainConfig keys (allowed values in :mod:`moco.config`):

* ``precision``: ``fp32``; ``bf16`` = the encoders' matmuls and convolutions run under ``torch.autocast`` with
  bfloat16 (8-bit mantissa, fp32's exponent range; parameters, gradients, optimiser state and BatchNorm statistics
  stay fp32); ``auto`` = bf16 where the hardware computes bf16 natively (:func:`bf16_supported`), else fp32.
* ``memory_format``: ``contiguous`` (NCHW) or ``channels_last`` (NHWC strides for the model's 4-d weights and the
  views); ``auto`` = channels-last on CUDA and on CPUs with native bf16 (the same test as ``precision: auto``),
  contiguous elsewhere.

Why these ``auto`` rules (measured; see docs/benchmarks.md, "precision and memory format"):

* CPU bf16 is worth it only with native bf16 dot products (AVX512-BF16 ``vdpbf16ps`` or AMX-BF16 tiles). oneDNN also
  runs bf16 on plain AVX512 CPUs by emulation, where it is slower than fp32, so torch's
  ``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` (which accepts those) is not the test; the CPU flags that torch
  reads with cpuinfo (``torch.cpu._is_avx512_bf16_supported``, ``torch.cpu._is_amx_tile_supported``) are.
* channels-last speeds the ConvNet step up on both kinds of bf16 CPU measured, in fp32 and in bf16: a Xeon with
  AMX-BF16, and an AMD EPYC (Zen 4) with AVX512-BF16 and no AMX, where it made the default config's bare step 1.41x
  as fast in fp32 and 1.23x as fast on top of bf16. (An earlier AMD measurement found it slower; that was before
  :class:`moco.model.SplitBatchNorm` stopped copying channels-last maps.) CPUs without native bf16 were not measured,
  so they keep contiguous.

Numerics: autocast covers only the encoders. :class:`moco.model.MoCo` turns the embeddings into fp32 before
normalising them and computes the logits, softmax, loss and statistics with autocast disabled; the queue buffer is
fp32 (keys are cast on enqueue); the momentum update acts on fp32 parameters; evaluation (kNN monitor, linear probe)
runs outside autocast, in fp32.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

from moco.config import MEMORY_FORMATS, PRECISIONS

__all__ = ["bf16_supported", "cpu_bf16_flags", "resolve_precision", "resolve_memory_format", "autocast",
           "describe"]


def cpu_bf16_flags() -> dict[str, bool]:
    """The CPU's native bf16 features as torch detects them (False where this torch cannot tell)."""
    flags = {}
    for name, probe in (("avx512_bf16", "_is_avx512_bf16_supported"), ("amx_bf16", "_is_amx_tile_supported")):
        fn = getattr(torch.cpu, probe, None)
        try:
            flags[name] = bool(fn()) if fn is not None else False
        except RuntimeError:
            flags[name] = False
    return flags


def bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 matmuls and convolutions natively (CUDA: compute capability 8.0+)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return any(cpu_bf16_flags().values())
    return False


def resolve_precision(name: str, device: torch.device) -> str:
    """``fp32`` or ``bf16`` for a configured ``precision`` on ``device`` (``auto``: bf16 iff :func:`bf16_supported`)."""
    if name not in PRECISIONS:
        raise ValueError(f"precision = {name!r} is not allowed: expected one of {', '.join(PRECISIONS)}")
    if name == "auto":
        return "bf16" if bf16_supported(device) else "fp32"
    return name


def resolve_memory_format(name: str, device: torch.device) -> str:
    """``channels_last`` or ``contiguous`` (``auto``: channels-last on CUDA and on CPUs with native bf16)."""
    if name not in MEMORY_FORMATS:
        raise ValueError(f"memory_format = {name!r} is not allowed: expected one of {', '.join(MEMORY_FORMATS)}")
    if name == "auto":
        fast = device.type == "cuda" or bf16_supported(device)
        return "channels_last" if fast else "contiguous"
    return name


def torch_memory_format(name: str) -> torch.memory_format:
    """The torch memory format of a resolved name."""
    return torch.channels_last if name == "channels_last" else torch.contiguous_format


def autocast(device: torch.device, precision: str) -> ContextManager:
    """The context for the training forward: bf16 autocast on ``device``, or nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def describe(device: torch.device, precision: str, memory_format: str) -> str:
    """One log line naming what was chosen and, on a CPU, the bf16 features it was chosen from."""
    text = f"device {device.type}, precision {precision}, memory format {memory_format}"
    if device.type == "cpu":
        flags = [name for name, present in cpu_bf16_flags().items() if present]
        text += f" (CPU bf16 features: {', '.join(flags) or 'none'})"
    return text
