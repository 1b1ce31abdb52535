"""S5 layers and the stack of SSM blocks used by the S3M world model (docs/design.md §3).

Each layer has two modes that compute the same numbers:

- `forward(u, is_first, x_prev)`: the whole sequence at once through the reset-aware linear
  recurrence of `world_model.scan` (training, observing replayed sequences);
- `step(u, is_first, x_prev)`: one time step carrying the state (acting, imagining).

The S5 layer (Smith et al., 2023) is MIMO with a diagonal complex state of size P:

    x_t = Λ̄ ⊙ x_{t-1} + B̄ u_t,      y_t = Re(C̃ x_t) + D ⊙ u_t

with Λ̄, B̄ the zero-order-hold or bilinear discretisation of the continuous (Λ, B̃) with a learned
per-state step size Δ. With `selective=True` the step size depends on the input,
Δ_t = softplus(W_Δ u_t + softplus⁻¹(Δ)), so Λ̄_t and B̄_t change from step to step (the
input-dependent Δ of Mamba, Gu & Dao 2023): Δ_t → 0 holds the state and ignores u_t, a large Δ_t
overwrites it. A time-invariant layer applies one fixed kernel at every step, so picking one input
out of a sequence by its content or position ("selective copying", docs/design.md §3) has to be
built from the nonlinear mixing between layers; a selective layer gates it directly. It is an
opt-in departure from R2I. W_Δ starts at zero, so a selective layer starts out as the
time-invariant one.

At an episode's first step the incoming state is replaced by `x_init` (zeros, or learned), which
the recurrence sees as the affine map `x -> 0·x + (Λ̄ x_init + B̄ u_t)`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from world_model.scan import linear_recurrence

BC_INITS = ("r2i", "unit")


def lecun_normal_(tensor: torch.Tensor, fan_in: int) -> torch.Tensor:
    """In place: truncated normal on [-2, 2] standard deviations with variance 1 / fan_in.

    JAX's `lecun_normal` (what R2I and S5 use): the 0.8796 factor undoes the truncation's loss
    of variance, so the samples' variance is exactly 1 / fan_in.
    """
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
    return nn.init.trunc_normal_(tensor, mean=0.0, std=std, a=-2.0 * std, b=2.0 * std)


def hippo_normal(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of the normal part of HiPPO-LegS (HiPPO-N), the S5 initialisation.

    HiPPO-LegS is A_nk = -sqrt(2n+1) sqrt(2k+1) for n > k, -(n+1) for n = k, 0 above. Adding
    P P^T with P_n = sqrt(n + 1/2) leaves a normal matrix: -1/2 on the diagonal plus a skew-symmetric
    part, so its eigenvalues are -1/2 + i ω with ω from the Hermitian matrix -i·skew.

    Returns:
        lam: (n,) complex128 eigenvalues; V: (n, n) complex128 unitary eigenvectors.
    """
    q = np.sqrt(1 + 2 * np.arange(n))
    A = -np.tril(np.outer(q, q), k=-1) - np.diag(np.arange(n) + 1.0)
    p = np.sqrt(np.arange(n) + 0.5)
    normal = A + np.outer(p, p)
    skew = normal - np.diag(np.diag(normal))
    omega, V = np.linalg.eigh(-1j * skew)
    lam = np.diag(normal).mean() + 1j * omega
    return lam, V


class S5Layer(nn.Module):
    """One S5 layer: H real channels in and out, P complex states.

    Args:
        hidden: H, the input and output width.
        state_size: P, the number of complex states.
        blocks: HiPPO-N blocks on the diagonal at initialisation (P must divide by it).
        discretization: `bilinear` or `zoh`.
        dt_min, dt_max: range of the log-uniform initialisation of Δ.
        learn_initial_state: learn x_init (otherwise it stays zero).
        scan: implementation of the recurrence (`auto`, `chunked`, `associative`, `loop`).
        bc_init: scale of B̃ and C̃ at initialisation. `r2i` follows R2I's `mimo.py`: B = truncated
            LeCun-normal on the shape (P, H), whose fan-in is P, and C's real and imaginary parts
            truncated LeCun-normal on the shape (H, P, 2), whose fan-in is P·H. `unit` draws B with
            fan-in H and C with variance 1/P per complex entry, so that y_t starts at unit scale.
        selective: input-dependent step size Δ_t (see the module docstring); off in R2I.
        mixed_projections: under autocast, B̄ u and C̃ x run in the autocast dtype (see `forward`).
    """

    def __init__(
        self,
        hidden: int,
        state_size: int,
        blocks: int = 1,
        discretization: str = "bilinear",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        learn_initial_state: bool = True,
        scan: str = "auto",
        bc_init: str = "r2i",
        selective: bool = False,
        mixed_projections: bool = True,
    ):
        super().__init__()
        assert state_size % blocks == 0, f"state_size {state_size} must divide into {blocks} HiPPO blocks"
        assert discretization in ("bilinear", "zoh"), f"unknown discretization {discretization!r}"
        assert bc_init in BC_INITS, f"unknown bc_init {bc_init!r}, expected one of {BC_INITS}"
        self.hidden, self.state_size = hidden, state_size
        self.discretization, self.scan, self.selective = discretization, scan, selective
        self.mixed_projections = mixed_projections
        self._fixed: tuple[torch.Tensor | None, torch.Tensor, torch.Tensor] | None = None
        H, P = hidden, state_size

        lam, V = hippo_normal(P // blocks)
        lam = np.tile(lam, blocks)
        V = np.kron(np.eye(blocks), V)  # block-diagonal eigenvectors, (P, P)
        self.lam_re = nn.Parameter(torch.tensor(lam.real, dtype=torch.float32))
        self.lam_im = nn.Parameter(torch.tensor(lam.imag, dtype=torch.float32))
        V = torch.tensor(V, dtype=torch.complex128)
        # B̃ = V^-1 B and C̃ = C V (S5), with V unitary so V^-1 = V^H.
        if bc_init == "r2i":
            # JAX's lecun_normal: fan-in = the second-to-last axis times every axis but the last
            # two, so P for B (P, H), and P·H for C (H, P, 2), whose H axis counts as a receptive
            # field (the last axis, real and imaginary part, is the out-axis).
            B = lecun_normal_(torch.empty(P, H, dtype=torch.float64), fan_in=P)
            C = lecun_normal_(torch.empty(H, P, 2, dtype=torch.float64), fan_in=P * H)
            C = torch.view_as_complex(C)
        else:
            B = torch.randn(P, H, dtype=torch.float64) / math.sqrt(H)
            C = torch.randn(H, P, dtype=torch.complex128) / math.sqrt(P)
        B_tilde = V.conj().T @ B.to(V.dtype)  # (P, H)
        C_tilde = C @ V  # (H, P)
        self.B_re = nn.Parameter(B_tilde.real.float())
        self.B_im = nn.Parameter(B_tilde.imag.float())
        self.C_re = nn.Parameter(C_tilde.real.float())
        self.C_im = nn.Parameter(C_tilde.imag.float())
        self.D = nn.Parameter(torch.randn(H))
        log_dt = torch.rand(P) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        self.log_dt = nn.Parameter(log_dt)
        init = torch.zeros(P, 2)
        self.x_init = nn.Parameter(init) if learn_initial_state else nn.Buffer(init)
        if selective:
            self.dt_proj = nn.Linear(H, P)
            nn.init.zeros_(self.dt_proj.weight)
            nn.init.zeros_(self.dt_proj.bias)

    def _discretize(self, dt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Λ̄ and the input scale s (B̄ = s B̃) for step sizes dt: (..., P) float -> (..., P) complex."""
        # Re(Λ) < 0 keeps the discrete system stable whatever the optimiser does (S5's clip_eigs).
        lam = torch.complex(self.lam_re.clamp(max=-1e-4), self.lam_im)
        if self.discretization == "zoh":
            lam_bar = torch.exp(lam * dt)
            return lam_bar, (lam_bar - 1) / lam
        inv = 1 / (1 - dt * lam / 2)
        return inv * (1 + dt * lam / 2), inv * dt

    def discretize(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Λ̄ (P,) complex and B̄ (P, H) complex at the learned step size (the time-invariant layer)."""
        lam_bar, scale = self._discretize(self.log_dt.exp())
        return lam_bar, scale[:, None] * torch.complex(self.B_re, self.B_im)

    def _selective(
        self, u: torch.Tensor, dtype: torch.dtype, W_B: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Λ̄_t and B̄_t u_t of a selective layer: u (..., H) float -> (..., P) complex each.

        W_B: B̃'s real matrix (`_input_matrix` of B̃, before the per-step scale), if built already.
        """
        dt = self.log_dt.exp()
        # softplus(0 + softplus⁻¹(Δ)) = Δ, so W_Δ = 0 gives back the time-invariant layer.
        dt_t = nn.functional.softplus(self.dt_proj(u) + torch.log(torch.expm1(dt)))  # (..., P)
        lam_bar, scale = self._discretize(dt_t)
        if W_B is None:
            W_B = self._input_matrix(torch.complex(self.B_re, self.B_im))
        return lam_bar, scale * self._input(u, W_B, dtype)

    def initial_state(self, batch_size: int) -> torch.Tensor:
        """x_init repeated: (B, P) complex64."""
        return torch.view_as_complex(self.x_init.contiguous()).expand(batch_size, -1).clone()

    def _matmul(self, a: torch.Tensor, W: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """a @ W computed in `dtype` (the layer's own, or autocast's), returned in the layer's dtype."""
        if a.dtype == W.dtype == dtype:
            return a @ W
        return (a.to(dtype) @ W.to(dtype)).to(self.B_re.dtype)

    def _input_matrix(self, B_bar: torch.Tensor) -> torch.Tensor:
        """B̄ (P, H) complex as the real (H, 2P) matrix of `_input`."""
        return torch.view_as_real(B_bar).permute(1, 0, 2).reshape(self.hidden, 2 * self.state_size)

    def _output_matrix(self) -> torch.Tensor:
        """C̃ as the real (2P, H) matrix of `_output`: Re(C̃ x) = [Re x, Im x] @ [Re C̃, -Im C̃]^T."""
        return torch.stack([self.C_re, -self.C_im], dim=-1).reshape(self.hidden, 2 * self.state_size).T

    def _input(self, u: torch.Tensor, W_B: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """B̄ u for real u (..., H) -> (..., P) complex, as one real matmul in `dtype`."""
        out = self._matmul(u, W_B, dtype).reshape(*u.shape[:-1], self.state_size, 2)  # (..., P, 2)
        return torch.view_as_complex(out)

    def _output(
        self, x: torch.Tensor, u: torch.Tensor, W_C: torch.Tensor, dtype: torch.dtype
    ) -> torch.Tensor:
        """Re(C̃ x) + D ⊙ u for complex x (..., P) -> (..., H), as one real matmul in `dtype`."""
        xr = torch.view_as_real(x).reshape(*x.shape[:-1], 2 * self.state_size)  # (..., 2P)
        return self._matmul(xr, W_C, dtype) + self.D * u

    @contextlib.contextmanager
    def fixed_weights(self) -> Iterator[None]:
        """Steps inside reuse one discretisation and one copy of the projection matrices.

        For many `step` calls with unchanged parameters (an imagined trajectory): each step would
        otherwise discretise Λ and rebuild and cast B̄ and C̃ again. Built on entry under the
        autocast state then in force, with a graph where gradients are enabled (dynamics
        backprop: every step's gradient flows into the one copy). The parameters must not change
        inside. A selective layer's Λ̄_t and input scale depend on u_t, so it keeps B̃ and C̃.
        """
        dtype = self._projection_dtype(self.B_re.device.type)
        if torch.is_grad_enabled() and self.B_re.requires_grad:
            # One bfloat16 copy would sum every step's gradient in bfloat16; a float32 copy, cast
            # at each step, sums them in float32 as the steps without it do.
            dtype = self.B_re.dtype
        with torch.autocast(self.B_re.device.type, enabled=False):
            W_C = self._output_matrix()
            if self.selective:
                W_B = self._input_matrix(torch.complex(self.B_re, self.B_im))
                self._fixed = (None, W_B.to(dtype), W_C.to(dtype))
            else:
                lam_bar, B_bar = self.discretize()
                self._fixed = (lam_bar, self._input_matrix(B_bar).to(dtype), W_C.to(dtype))
        try:
            yield
        finally:
            self._fixed = None

    def _projection_dtype(self, device_type: str) -> torch.dtype:
        """The dtype of B̄ u and C̃ x: autocast's where it is on and `mixed_projections` is set."""
        if self.mixed_projections and torch.is_autocast_enabled(device_type):
            return torch.get_autocast_dtype(device_type)
        return self.B_re.dtype

    def forward(
        self, u: torch.Tensor, is_first: torch.Tensor, x_prev: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Parallel mode.

        Args:
            u: (B, T, H) float32 inputs (bfloat16 under mixed precision: cast here).
            is_first: (B, T) bool, True where the state restarts from x_init.
            x_prev: (B, P) complex64, the state before the first step.

        Returns:
            y: (B, T, H) float32 outputs; x: (B, T, P) complex64 states after every step.
        """
        # The recurrence stays in float32 / complex64 under mixed precision (agent/precision.py):
        # Λ̄^t over hundreds of steps and the states' sums lose too much in bfloat16. The two
        # projections B̄ u and C̃ x are per-step matmuls like any Linear's, so with
        # `mixed_projections` they run in autocast's dtype and return float32 (Mamba keeps its
        # projections in bfloat16 and its scan in float32 the same way).
        dtype = self._projection_dtype(u.device.type)
        with torch.autocast(u.device.type, enabled=False):
            u = u.to(self.B_re.dtype)  # float32 (float64 when the layer is)
            if self.selective:
                lam_bar, b = self._selective(u, dtype)  # (B, T, P) each
            else:
                lam_bar, B_bar = self.discretize()  # (P,), (P, H)
                b = self._input(u, self._input_matrix(B_bar), dtype)  # (B, T, P)
            x_init = torch.view_as_complex(self.x_init.contiguous())
            # Fold the reset into the inputs: at is_first the map is x -> Λ̄ x_init + B̄ u.
            b = b + is_first.unsqueeze(-1) * (lam_bar * x_init)
            x = linear_recurrence(lam_bar, ~is_first, b, x_prev, self.scan)
            return self._output(x, u, self._output_matrix(), dtype), x

    def step(
        self, u: torch.Tensor, is_first: torch.Tensor | None, x_prev: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Step mode: u (B, H) float32, is_first (B,) bool, x_prev (B, P) complex64 -> y (B, H), x (B, P).

        `is_first=None` means no step restarts (imagination), which skips the reset select.
        """
        dtype = self._projection_dtype(u.device.type)
        fixed_lam, W_B, W_C = self._fixed or (None, None, None)
        with torch.autocast(u.device.type, enabled=False):  # float32 as in `forward`
            u = u.to(self.B_re.dtype)  # float32 (float64 when the layer is)
            if self.selective:
                lam_bar, b = self._selective(u, dtype, W_B)  # (B, P) each
            elif fixed_lam is not None:
                lam_bar, b = fixed_lam, self._input(u, W_B, dtype)
            else:
                lam_bar, B_bar = self.discretize()
                b = self._input(u, self._input_matrix(B_bar), dtype)
            if is_first is not None:
                x_init = torch.view_as_complex(self.x_init.contiguous())
                x_prev = torch.where(is_first.unsqueeze(-1), x_init, x_prev)
            x = lam_bar * x_prev + b
            if W_C is None:
                W_C = self._output_matrix()
            return self._output(x, u, W_C, dtype), x


class SSMBlock(nn.Module):
    """u -> S5 -> GELU -> GLU -> dropout -> + u -> LayerNorm (post-norm, as in R2I)."""

    def __init__(self, hidden: int, state_size: int, dropout: float = 0.0, **s5_kwargs):
        super().__init__()
        self.ssm = S5Layer(hidden, state_size, **s5_kwargs)
        self.glu = nn.Linear(hidden, 2 * hidden)
        self.drop = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(hidden)

    def _mix(self, u: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        value, gate = self.glu(nn.functional.gelu(y)).chunk(2, dim=-1)
        return self.norm(u + self.drop(value * torch.sigmoid(gate)))

    def forward(self, u, is_first, x_prev):
        """(B, T, H), (B, T), (B, P) -> (B, T, H), (B, T, P)."""
        y, x = self.ssm(u, is_first, x_prev)
        return self._mix(u, y), x

    def step(self, u, is_first, x_prev):
        """(B, H), (B,), (B, P) -> (B, H), (B, P)."""
        y, x = self.ssm.step(u, is_first, x_prev)
        return self._mix(u, y), x


class SSMStack(nn.Module):
    """K SSM blocks; the state of the stack is every layer's state, (B, K, P) complex64."""

    def __init__(
        self,
        hidden: int,
        state_size: int,
        layers: int,
        dropout: float = 0.0,
        **s5_kwargs,
    ):
        super().__init__()
        self.layers = nn.ModuleList(
            SSMBlock(hidden, state_size, dropout=dropout, **s5_kwargs) for _ in range(layers)
        )
        self.hidden, self.state_size, self.num_layers = hidden, state_size, layers

    def initial_state(self, batch_size: int) -> torch.Tensor:
        """(B, K, P) complex64."""
        return torch.stack([block.ssm.initial_state(batch_size) for block in self.layers], dim=1)

    def forward(
        self, u: torch.Tensor, is_first: torch.Tensor, x_prev: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Parallel mode.

        Args:
            u: (B, T, H) float32; is_first: (B, T) bool; x_prev: (B, K, P) complex64.

        Returns:
            y: (B, T, H) float32; x: (B, T, K, P) complex64, every layer's state at every step.
        """
        B, T, H = u.shape
        assert H == self.hidden, f"SSMStack expects width {self.hidden}, got {H}"
        assert is_first.shape == (B, T), f"is_first must be ({B}, {T}), got {tuple(is_first.shape)}"
        assert x_prev.shape == (B, self.num_layers, self.state_size), (
            f"x_prev must be ({B}, {self.num_layers}, {self.state_size}), got {tuple(x_prev.shape)}"
        )
        states = []
        for k, block in enumerate(self.layers):
            u, x = block(u, is_first, x_prev[:, k])
            states.append(x)
        return u, torch.stack(states, dim=2)

    @contextlib.contextmanager
    def fixed_weights(self) -> Iterator[None]:
        """Every layer's `S5Layer.fixed_weights`: steps inside reuse one discretisation."""
        with contextlib.ExitStack() as stack:
            for block in self.layers:
                stack.enter_context(block.ssm.fixed_weights())
            yield

    def step(
        self, u: torch.Tensor, is_first: torch.Tensor | None, x_prev: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Step mode: u (B, H), is_first (B,) bool, x_prev (B, K, P) -> y (B, H), x (B, K, P).

        `is_first=None` means no step restarts (imagination).
        """
        states = []
        for k, block in enumerate(self.layers):
            u, x = block.step(u, is_first, x_prev[:, k])
            states.append(x)
        return u, torch.stack(states, dim=1)
