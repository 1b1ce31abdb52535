"""Numeric precision of the networks: float32, or mixed precision by autocast to bfloat16.

    precision = resolve_precision("auto", device)   # "bf16-mixed" where bfloat16 is fast, else "32"
    context = autocast_context(precision, device)   # a callable returning a context manager
    with context():
        ...  # forward passes only; backward runs outside (its ops follow their forward's dtypes)

Under `bf16-mixed` the matmuls and convolutions of the MLPs, CNNs, heads, actor and critic run in
bfloat16 (autocast's lower-precision op list; DreamerV3 computes in bfloat16 by default) in both
updates; acting on a CPU stays float32 (`Agent.act_autocast`). What stays in float32 / complex64,
and where that is arranged:

- parameters, gradients and optimiser state: autocast casts per op and never touches them;
- the S5 layers' discretisation, scan and complex states: autocast is off inside
  `world_model.ssm.S5Layer`, whose inputs are cast to float32 there; its input and output
  projections B̄u and C̃x run in bfloat16 like every Linear (`s3m.mixed_projections`, default on)
  and return float32;
- every distribution's log-probabilities, KL, losses and their reductions: the distributions of
  `world_model.distributions` cast their logits and predictions to float32;
- the λ-returns and the return normaliser: computed from the float32 means of those distributions.

bfloat16 keeps float32's exponent range, so no loss scaling is needed (float16 would need it).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import torch

from configs.schema import CHOICES

PRECISIONS = CHOICES["precision"]  # ("auto", "32", "bf16-mixed")
# CPU feature flags (Linux /proc/cpuinfo) of native bfloat16 dot products: AVX-512 BF16, AMX.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(path: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo is not there, e.g. macOS)."""
    try:
        text = path.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def fast_bf16(device: torch.device) -> bool:
    """Whether `device` computes bfloat16 matmuls natively (faster than float32, not emulated)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return any(flag in cpu_flags() for flag in BF16_CPU_FLAGS)
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision a run uses: `precision` itself, or for `auto` `bf16-mixed` where the device
    computes bfloat16 natively (an AVX-512 BF16 or AMX CPU, an Ampere or newer GPU), else `32`."""
    assert precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {precision!r}"
    if precision != "auto":
        return precision
    return "bf16-mixed" if fast_bf16(device) else "32"


def autocast_context(precision: str, device: torch.device) -> Callable[[], AbstractContextManager]:
    """A callable giving the context for forward passes under `precision` (resolved, not `auto`)."""
    assert precision in PRECISIONS[1:], f"autocast_context: resolve {precision!r} first"
    if precision == "32":
        return contextlib.nullcontext
    return functools.partial(torch.autocast, device_type=device.type, dtype=torch.bfloat16)


def to_autocast_dtype(x: torch.Tensor) -> torch.Tensor:
    """Floating `x` in autocast's dtype where autocast is on, else `x` itself.

    For a tensor that only Linear layers read (the actor's and critic's features): autocast
    would cast it at every layer that reads it, so casting once gives the same numbers with one
    copy instead of several, and stores it at half the size.
    """
    device_type = x.device.type
    if x.is_floating_point() and torch.is_autocast_enabled(device_type):
        return x.to(torch.get_autocast_dtype(device_type))
    return x
