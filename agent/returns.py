"""λ-returns over imagined trajectories and their percentile normalisation (DreamerV3, docs/design.md §4).

λ-return (DreamerV3 eq. 7, the recursion of `VFunction.score` in the 2023 code), for t < H:

    R_t = r_{t+1} + γ c_{t+1} ((1 - λ) v_{t+1} + λ R_{t+1}),        R_H = v_H

with r_{t+1}, c_{t+1} the reward and continuation predicted for the state reached after step t and
v the critic's value. γ c_{t+1} = 0 cuts the bootstrap at a predicted episode end.

Return normalisation (DreamerV3 "return normalization"): advantages are divided by
S = max(1, P95(R) - P5(R)), the percentiles tracked by an EMA over updates, so that large returns
are scaled down while small ones are not scaled up (which would amplify noise in sparse tasks).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def lambda_returns(reward: Tensor, cont: Tensor, value: Tensor, discount: float, lam: float) -> Tensor:
    """λ-returns of an imagined trajectory of H steps.

    Args:
        reward: (H, N) float32, reward[t] = r_{t+1}, predicted on arriving at state t + 1.
        cont: (H, N) float32, cont[t] = c_{t+1} in [0, 1], continuation after state t + 1.
        value: (H + 1, N) float32, critic values v_0 .. v_H of states 0 .. H.
        discount: γ.
        lam: λ.

    Returns:
        (H, N) float32, R_0 .. R_{H-1}. Differentiable in all inputs (dynamics backprop needs it).
    """
    H = reward.shape[0]
    assert cont.shape == reward.shape, (
        f"lambda_returns: cont {tuple(cont.shape)} vs reward {tuple(reward.shape)}"
    )
    assert value.shape == (H + 1, *reward.shape[1:]), (
        f"lambda_returns: value must be (H + 1, ...) = {(H + 1, *reward.shape[1:])}, got {tuple(value.shape)}"
    )
    disc = discount * cont  # (H, N)
    # The part of R_t that does not depend on R_{t+1}, for all t at once; only the λ-chain is serial.
    interm = reward + disc * (1.0 - lam) * value[1:]  # (H, N)
    returns = []
    last = value[-1]
    for t in reversed(range(H)):
        last = interm[t] + disc[t] * lam * last
        returns.append(last)
    return torch.stack(returns[::-1])


class ReturnNormalizer(nn.Module):
    """EMA of the low and high return percentiles; `scale` = max(min_scale, high - low).

    DreamerV3 (`Moments` with impl `perc_ema`): both EMAs start at 0 and move by (1 - decay) of the
    batch percentile per update. The EMAs are buffers, so they travel with `state_dict`.

    Args:
        decay: EMA decay (0.99).
        low, high: percentiles in [0, 100] (5, 95).
        min_scale: the smallest scale (1.0): returns spread over less than this are not scaled up.
    """

    low: Tensor
    high: Tensor

    def __init__(self, decay: float = 0.99, low: float = 5.0, high: float = 95.0, min_scale: float = 1.0):
        super().__init__()
        assert 0.0 <= decay < 1.0, f"ReturnNormalizer: decay must be in [0, 1), got {decay}"
        assert 0.0 <= low < high <= 100.0, f"ReturnNormalizer: need 0 <= low < high <= 100, got {low}, {high}"
        assert min_scale > 0.0, f"ReturnNormalizer: min_scale must be positive, got {min_scale}"
        self.decay = decay
        self.quantiles = (low / 100.0, high / 100.0)
        self.min_scale = min_scale
        self.register_buffer("low", torch.zeros(()))
        self.register_buffer("high", torch.zeros(()))

    @torch.no_grad()
    def update(self, returns: Tensor) -> None:
        """Move the EMAs towards the percentiles of `returns` (any shape, float)."""
        flat = returns.detach().float().reshape(-1)
        assert flat.numel() > 0, "ReturnNormalizer.update: empty returns"
        q = torch.tensor(self.quantiles, dtype=flat.dtype, device=flat.device)
        low, high = torch.quantile(flat, q)  # linear interpolation, as numpy/jnp.percentile
        self.low.mul_(self.decay).add_((1.0 - self.decay) * low)
        self.high.mul_(self.decay).add_((1.0 - self.decay) * high)

    def scale(self) -> Tensor:
        """() float32: max(min_scale, high - low), without gradient."""
        return torch.clamp(self.high - self.low, min=self.min_scale).detach()
