"""Numeric precision of the networks: float32, or mixed precision by autocast to bfloat16 or float16.

    precision = resolve_precision("auto", device)   # "bf16-mixed" where bfloat16 is fast, else "32"
    context = autocast_context(precision, device)   # a callable returning a context manager
    with context():
        loss = ...  # forward passes only; backward runs outside (its ops follow their forward's dtypes)
    scaler = make_grad_scaler(precision, device)    # loss scaling under 16-mixed, a no-op otherwise
    scaler.scale(loss).backward(); scaler.unscale_(opt); clip; scaler.step(opt); scaler.update()

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

bfloat16 keeps float32's exponent range, so no loss scaling is needed. `16-mixed` autocasts to
float16 instead (R2I trains in float16; GPUs before Ampere have float16 tensor cores but no fast
bfloat16): the same split, plus dynamic loss scaling, because float16's smallest normal number
(6e-5) is far above many gradients. `make_grad_scaler` gives each optimiser its own
`torch.amp.GradScaler`; an update whose scaled gradient overflowed is skipped by its scaler (the
weights and moments untouched, the scale halved), which is float16's normal operation and not a
fault (`agent.guards.UpdateGuard` watches only the losses and weights then). `auto` never picks
`16-mixed`: it is asked for.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import torch

from configs.schema import CHOICES

PRECISIONS = CHOICES["precision"]  # ("auto", "32", "bf16-mixed", "16-mixed")
AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
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
    return functools.partial(torch.autocast, device_type=device.type, dtype=AUTOCAST_DTYPES[precision])


def make_grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """A loss scaler for one optimiser: dynamic under `16-mixed` (torch's defaults: scale 2^16,
    halved on an overflow, doubled after 2000 steps without one), disabled (every call a
    pass-through) under `32` and `bf16-mixed`.

    Its use (`WorldModel.update`, `ActorCritic._step`): backward the scaled loss, unscale the
    gradients before clipping them (so that norms and clipping are those of the true gradients),
    then `scaler.step(opt)`, which skips the step where the gradients overflowed (their norms
    then inf), and `scaler.update()`.
    """
    assert precision in PRECISIONS[1:], f"make_grad_scaler: resolve {precision!r} first"
    return torch.amp.GradScaler(device.type, enabled=precision == "16-mixed")
