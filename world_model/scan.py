"""Reset-aware diagonal linear recurrence, the sequence core of every S5 layer.

    x_t = a_t * x_{t-1} + b_t,   a_t = lam * keep_t,   t = 0 .. T-1,   x_{-1} = x0

with `lam` the discretised diagonal state matrix, (P,) complex for a time-invariant S5 layer or
(B, T, P) complex when the step size depends on the input (`S5Layer(selective=True)`), `keep_t` = 0
where the sequence restarts (an episode's first step) and 1 elsewhere, `b_t` the input (B, T, P)
complex. The reset
value of the state is folded into `b_t` by the caller (docs/design.md §3: at `is_first_t` the map is
`x -> 0 * x + (lam * x_init + B u_t)`), so the recurrence itself stays the plain one and every
implementation below computes the same numbers.

Three implementations, one custom autograd function:

- `chunked` (CPU): split T into C chunks of L steps; scan inside all chunks at once (L Python
  steps on (B, C, P) tensors), carry the chunk ends across chunks (C steps on (B, P)), then add
  each chunk's carry in one vectorised pass. About sqrt(T) Python steps per direction instead of T.
- `associative` (GPU): Hillis-Steele scan with the associative composition of affine maps
  `(a_i, b_i) o (a_j, b_j) = (a_j a_i, a_j b_i + b_j)` (i earlier): log2(T) full-width passes.
- `loop`: the plain sequential recurrence, the reference.

The backward pass never builds an autograd graph over time. It is the reverse-time adjoint
recurrence `g_t = dL/dx_t + conj(a_{t+1}) g_{t+1}` (itself a linear recurrence, run by the same
implementation backwards), from which `dL/db_t = g_t`, `dL/da_t = g_t * conj(x_{t-1})`,
`dL/dx0 = conj(a_0) g_0` (PyTorch's conjugate-Wirtinger convention for complex gradients).
"""

from __future__ import annotations

import math

import torch

METHODS = ("chunked", "associative", "loop")


def default_method(device: torch.device) -> str:
    """The fast implementation for a device: fused chunks on CPU, log-depth scan on GPU."""
    return "associative" if device.type == "cuda" else "chunked"


def _chunk_len(T: int) -> int:
    """Chunk length L ~ sqrt(T): balances the in-chunk and across-chunk Python loops."""
    return max(4, 2 ** round(math.log2(max(T, 1)) / 2))


def _coefficients(lam: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """a_t = lam_t * keep_t, materialised as (B, T, P) complex (lam (P,) or (B, T, P))."""
    return lam * keep.unsqueeze(-1)


def _loop(lam: torch.Tensor, keep: torch.Tensor, b: torch.Tensor, x0: torch.Tensor, reverse: bool):
    a = _coefficients(lam, keep)
    x = torch.empty_like(b)
    prev = x0
    steps = range(b.shape[1] - 1, -1, -1) if reverse else range(b.shape[1])
    for t in steps:
        prev = torch.addcmul(b[:, t], a[:, t], prev, out=x[:, t])
    return x


def _chunked(lam: torch.Tensor, keep: torch.Tensor, b: torch.Tensor, x0: torch.Tensor, reverse: bool):
    B, T, P = b.shape
    L = _chunk_len(T)
    C = -(-T // L)
    pad = C * L - T
    varying = lam.dim() == 3
    if pad:
        # Pad on the side the scan reaches last, so padding never feeds a real output.
        where = (0, 0, pad, 0) if reverse else (0, 0, 0, pad)
        b = torch.nn.functional.pad(b, where)
        keep = torch.nn.functional.pad(keep, where[2:])
        if varying:
            lam = torch.nn.functional.pad(lam, where)
    b = b.reshape(B, C, L, P)  # (B, C, L, P)
    if varying:
        a = _coefficients(lam, keep).reshape(B, C, L, P)  # (B, C, L, P)
        span = a.prod(dim=2)  # (B, C, P)
    else:
        # Time-invariant: a_t = lam * keep_t is formed one step at a time, never all at once.
        keep = keep.reshape(B, C, L, 1)
        span = lam**L * keep.prod(dim=2)  # (B, C, P)

    def coef(l: int) -> torch.Tensor:
        return a[:, :, l] if varying else lam * keep[:, :, l]

    order = range(L - 1, -1, -1) if reverse else range(L)
    # 1. The state each chunk ends with when started from zero, for all chunks at once. Only a
    #    (B, C, P) running value is kept, so this pass reads b and writes nothing big.
    end = torch.zeros(B, C, P, dtype=b.dtype, device=b.device)
    for l in order:
        end = torch.addcmul(b[:, :, l], coef(l), end)
    # 2. Carry the true state across chunks: the chunk's map is x -> (prod_l a_l) x + end.
    carries = torch.empty(B, C, P, dtype=b.dtype, device=b.device)
    carry = x0
    for c in range(C - 1, -1, -1) if reverse else range(C):
        carries[:, c] = carry
        carry = torch.addcmul(end[:, c], span[:, c], carry)
    # 3. Rescan every chunk from its true incoming state, writing the outputs.
    x = torch.empty_like(b)
    prev = carries
    for l in order:
        prev = torch.addcmul(b[:, :, l], coef(l), prev, out=x[:, :, l])
    x = x.reshape(B, C * L, P)
    return x[:, pad:] if reverse else x[:, :T]


def _associative(lam: torch.Tensor, keep: torch.Tensor, b: torch.Tensor, x0: torch.Tensor, reverse: bool):
    if reverse:
        lam = lam.flip(1) if lam.dim() == 3 else lam
        return _associative(lam, keep.flip(1), b.flip(1), x0, reverse=False).flip(1)
    T = b.shape[1]
    a = _coefficients(lam, keep)
    b = b.clone()
    b[:, 0] = b[:, 0] + a[:, 0] * x0
    shift = 1
    while shift < T:
        # Compose each element with the one `shift` steps earlier; right-hand sides are fresh
        # tensors, so the in-place writes never read what they overwrite.
        b[:, shift:] = torch.addcmul(b[:, shift:], a[:, shift:], b[:, :-shift])
        a[:, shift:] = a[:, shift:] * a[:, :-shift]
        shift *= 2
    return b


_IMPLEMENTATIONS = {"chunked": _chunked, "associative": _associative, "loop": _loop}


class _LinearRecurrence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, lam, keep, b, x0, method):
        x = _IMPLEMENTATIONS[method](lam, keep, b, x0, reverse=False)
        ctx.save_for_backward(lam, keep, x, x0)
        ctx.method = method
        return x

    @staticmethod
    def backward(ctx, grad_x):
        lam, keep, x, x0 = ctx.saved_tensors
        varying = lam.dim() == 3
        # Adjoint: g_t = grad_x_t + conj(a_{t+1}) g_{t+1}, a reverse-time recurrence whose
        # coefficient at t is conj(lam_{t+1}) * keep_{t+1} (zero past the end).
        keep_next = torch.nn.functional.pad(keep[:, 1:], (0, 1))
        # keep_next is 0 at the last step, so the wrapped-around lam there never counts.
        lam_next = lam.roll(-1, dims=1) if varying else lam
        g = _IMPLEMENTATIONS[ctx.method](
            lam_next.conj(), keep_next, grad_x.contiguous(), torch.zeros_like(x0), reverse=True
        )
        grad_lam = grad_x0 = None
        if ctx.needs_input_grad[0]:
            # da_t/dlam_t = keep_t, so dL/dlam_t = keep_t * g_t * conj(x_{t-1}) (summed over
            # (B, T) when lam is shared). A plain product and sum; einsum takes a path here
            # that is about 6x slower on CPU.
            if varying:
                x_prev = torch.cat([x0.unsqueeze(1), x[:, :-1]], dim=1)  # (B, T, P)
                grad_lam = (g * x_prev.conj()).mul_(keep[:, :, None])
            else:
                grad_lam = (g[:, 1:] * x[:, :-1].conj()).mul_(keep[:, 1:, None]).sum((0, 1))
                grad_lam += (g[:, 0] * x0.conj()).mul_(keep[:, :1]).sum(0)
        if ctx.needs_input_grad[3]:
            lam0 = lam[:, 0] if varying else lam
            grad_x0 = (lam0 * keep[:, :1]).conj() * g[:, 0]
        return grad_lam, None, g, grad_x0, None


def linear_recurrence(
    lam: torch.Tensor,
    keep: torch.Tensor,
    b: torch.Tensor,
    x0: torch.Tensor,
    method: str = "auto",
) -> torch.Tensor:
    """All states of `x_t = lam * keep_t * x_{t-1} + b_t`.

    Args:
        lam: (P,) complex, the diagonal transition, or (B, T, P) complex, one per step.
        keep: (B, T) bool or float, 0 where the state restarts (its reset value lives in `b`).
        b: (B, T, P) complex, the inputs.
        x0: (B, P) complex, the state before the first step.
        method: `chunked`, `associative`, `loop`, or `auto` (by device).

    Returns:
        x: (B, T, P) complex, the state after every step.
    """
    assert b.dim() == 3 and b.is_complex(), f"b must be (B, T, P) complex, got {tuple(b.shape)} {b.dtype}"
    B, T, P = b.shape
    assert lam.shape in ((P,), (B, T, P)), f"lam must be ({P},) or ({B}, {T}, {P}), got {tuple(lam.shape)}"
    assert keep.shape == (B, T), f"keep must be ({B}, {T}), got {tuple(keep.shape)}"
    assert x0.shape == (B, P), f"x0 must be ({B}, {P}), got {tuple(x0.shape)}"
    if method == "auto":
        method = default_method(b.device)
    assert method in METHODS, f"unknown scan method {method!r}; choose from {METHODS}"
    keep = keep.to(lam.real.dtype)
    return _LinearRecurrence.apply(lam, keep, b, x0, method)


def linear_recurrence_autograd_loop(
    lam: torch.Tensor, keep: torch.Tensor, b: torch.Tensor, x0: torch.Tensor
) -> torch.Tensor:
    """The same recurrence as a Python loop under autograd: the slow reference and baseline."""
    keep = keep.to(lam.real.dtype).unsqueeze(-1)
    xs = []
    x = x0
    for t in range(b.shape[1]):
        lam_t = lam[:, t] if lam.dim() == 3 else lam
        x = lam_t * keep[:, t] * x + b[:, t]
        xs.append(x)
    return torch.stack(xs, dim=1)
