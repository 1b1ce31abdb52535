"""Output distributions and losses of the world model and the actor-critic (DreamerV3).

- `symlog` / `symexp`: the squashing transform that lets one set of hyperparameters handle
  targets of any scale (DreamerV3, Hafner et al. 2023, "Symlog Predictions").
- `TwoHot`: a categorical over fixed bins in symlog space, trained with two-hot targets; the reward
  head and the critic use it (DreamerV3 §"Symlog predictions", 255 bins on linspace(-20, 20)).
- `OneHotCategorical`: one categorical over the last axis with a uniform mixture ("unimix") and
  straight-through one-hot samples; used for the stochastic latent z_t (S groups of C classes, the
  groups are batch axes) and for discrete policies (one group of A actions).
- `kl_categorical`: per-group KL between two categoricals, for the dynamics/representation losses.
- `BoundedNormal`: DreamerV3's continuous policy, a Normal with tanh mean and bounded std.
- `bernoulli`: the continue head's distribution.
- `mse` / `symlog_mse`: the image and vector reconstruction losses.

Every distribution computes in float32 whatever the dtype of its inputs, as DreamerV3 does.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor


def symlog(x: Tensor) -> Tensor:
    """sign(x) * log(1 + |x|) (DreamerV3): compresses large magnitudes, identity near 0."""
    return torch.sign(x) * torch.log1p(torch.abs(x))


def symexp(x: Tensor) -> Tensor:
    """sign(x) * (exp(|x|) - 1), the inverse of `symlog`."""
    return torch.sign(x) * torch.expm1(torch.abs(x))


def mse(pred: Tensor, target: Tensor, dims: int) -> Tensor:
    """Sum of squared errors over the last `dims` axes.

    This is the negative log-likelihood of a unit-variance Gaussian up to a constant, DreamerV3's
    image loss ("MSEDist" with sum aggregation).

    Args:
        pred: (..., *event) float32.
        target: (..., *event) float32, same shape as `pred`.
        dims: number of trailing event axes to sum over.
    Returns:
        (...,) float32.
    """
    assert pred.shape == target.shape, f"mse: pred {tuple(pred.shape)} != target {tuple(target.shape)}"
    error = (pred.float() - target.float()).square()
    return error.sum(dim=tuple(range(-dims, 0))) if dims else error


def symlog_mse(pred: Tensor, target: Tensor, dims: int = 1) -> Tensor:
    """Squared error in symlog space, summed over the last `dims` axes (DreamerV3 vector loss).

    Args:
        pred: (..., *event) float32, the prediction already in symlog space.
        target: (..., *event) float, the target in raw (untransformed) space.
        dims: number of trailing event axes to sum over.
    Returns:
        (...,) float32.
    """
    return mse(pred, symlog(target.float()), dims)


@functools.lru_cache(maxsize=16)
def _symlog_bins(num_bins: int, low: float, high: float, device: torch.device) -> Tensor:
    # Cached per device so distributions built every step do not allocate their bins anew.
    return torch.linspace(low, high, num_bins, dtype=torch.float32, device=device)


def twohot_encode(x: Tensor, bins: Tensor) -> Tensor:
    """Two-hot encoding of `x` on sorted `bins` (DreamerV3 "Symlog Predictions").

    The weight is split between the two nearest bins in proportion to closeness, so the weighted
    sum of the bins equals `x` exactly; values beyond either end put all weight on the end bin.

    Args:
        x: (...,) float32, in the same space as the bins (symlog space for `TwoHot`).
        bins: (K,) float32, increasing.
    Returns:
        (..., K) float32, non-negative, summing to 1.
    """
    below, above, weight_below, weight_above = _twohot_indices(x, bins)
    encoding = torch.zeros(*x.shape, bins.shape[0], dtype=torch.float32, device=x.device)
    encoding.scatter_add_(-1, below.unsqueeze(-1), weight_below.unsqueeze(-1))
    encoding.scatter_add_(-1, above.unsqueeze(-1), weight_above.unsqueeze(-1))
    return encoding


def _twohot_indices(x: Tensor, bins: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Indices and weights of the two bins around x: (below, above, w_below, w_above), each (...,)."""
    x = x.detach().float()
    num_bins = bins.shape[0]
    # count(bins <= x): `below` is the last bin at or under x, `above` the first bin over it.
    above = torch.bucketize(x, bins, right=True)
    below = (above - 1).clamp(0, num_bins - 1)
    above = above.clamp(0, num_bins - 1)
    # Outside the range both indices hit the same end bin; the span guard avoids 0 / 0 there.
    span = bins[above] - bins[below]
    same = below == above
    weight_above = torch.where(same, torch.zeros_like(x), (x - bins[below]) / torch.where(same, 1.0, span))
    weight_below = 1.0 - weight_above
    return below, above, weight_below, weight_above


class TwoHot:
    """Discrete regression over fixed bins in symlog space (DreamerV3 reward head and critic).

    Args:
        logits: (..., K) float, unnormalised scores of the K bins.
        bins: (K,) float32 bin positions in symlog space; default linspace(-20, 20, K) as DreamerV3.

    `mean()` and `log_prob()` speak raw (untransformed) values: the symlog transform is inside.
    """

    def __init__(self, logits: Tensor, bins: Tensor | None = None) -> None:
        num_bins = logits.shape[-1]
        if bins is None:
            bins = _symlog_bins(num_bins, -20.0, 20.0, logits.device)
        assert bins.shape == (num_bins,), f"TwoHot: {num_bins} logits but bins {tuple(bins.shape)}"
        self.logits = logits.float()
        self.bins = bins

    @functools.cached_property
    def log_probs(self) -> Tensor:
        """(..., K) float32 log-probabilities of the bins, computed when first read."""
        return F.log_softmax(self.logits, dim=-1)

    @functools.cached_property
    def probs(self) -> Tensor:
        """(..., K) float32 bin probabilities, computed when first read."""
        return torch.softmax(self.logits, dim=-1)

    def mean(self) -> Tensor:
        """(...,) float32: symexp of the expected bin, the raw-space prediction."""
        # A matrix-vector product over the bins: one pass instead of a product and a sum. The
        # imagined rewards and the slow critic's values need only this, never the log-probabilities.
        # Autocast would compute it in bfloat16: the expected value stays float32 like the rest.
        with torch.autocast(self.logits.device.type, enabled=False):
            return symexp(self.probs @ self.bins)

    def mode(self) -> Tensor:
        """(...,) float32: same as `mean()`, as in DreamerV3 (the bins' argmax would be too coarse)."""
        return self.mean()

    def log_prob(self, target: Tensor) -> Tensor:
        """Log-likelihood of the two-hot encoding of symlog(target): sum_k twohot_k * log p_k.

        Args:
            target: (...,) float, raw-space values; no gradient flows into it.
        Returns:
            (...,) float32.
        """
        assert target.shape == self.logits.shape[:-1], (
            f"TwoHot.log_prob: target {tuple(target.shape)} vs batch {tuple(self.logits.shape[:-1])}"
        )
        below, above, weight_below, weight_above = _twohot_indices(symlog(target.detach().float()), self.bins)
        # Gathering the two bins equals the dot product with the two-hot vector, without building it.
        log_below = self.log_probs.gather(-1, below.unsqueeze(-1)).squeeze(-1)
        log_above = self.log_probs.gather(-1, above.unsqueeze(-1)).squeeze(-1)
        return weight_below * log_below + weight_above * log_above


class SymlogGaussian:
    """A unit-variance Gaussian in symlog space (DreamerV3 `symlog_mse` heads).

    Args:
        pred: (...) float, the prediction in symlog space.

    `mean()` and `log_prob()` speak raw values, like `TwoHot`; `log_prob` is the negative squared
    error in symlog space (the Gaussian's log-density up to a constant).
    """

    def __init__(self, pred: Tensor) -> None:
        self.pred = pred.float()

    def mean(self) -> Tensor:
        """(...,) float32: symexp of the prediction."""
        return symexp(self.pred)

    def log_prob(self, target: Tensor) -> Tensor:
        """-(pred - symlog(target))^2, (...,) float32; no gradient flows into `target`."""
        assert target.shape == self.pred.shape, (
            f"SymlogGaussian.log_prob: target {tuple(target.shape)} vs batch {tuple(self.pred.shape)}"
        )
        return -symlog_mse(self.pred, target.detach(), dims=0)


class OneHotCategorical:
    """One categorical over the last axis, with a uniform mixture and straight-through samples.

    probs = (1 - unimix) * softmax(logits) + unimix / C, and `logits` holds log(probs) (DreamerV3:
    1% unimix keeps the KL and log-probabilities finite and the policy exploring).

    All leading axes are batch axes. For the latent z_t, pass logits (..., S, C): the S groups are
    independent, so `log_prob`, `entropy` (and `kl_categorical`) return per-group values (..., S)
    that the caller sums over axis -1 for the joint over groups (DreamerV3 treats z as Independent
    over groups). For a discrete policy, pass logits (..., A): one group, values (...,).

    Args:
        logits: (..., C) float, unnormalised.
        unimix: weight of the uniform distribution in [0, 1).
    """

    def __init__(self, logits: Tensor, unimix: float = 0.0) -> None:
        assert 0.0 <= unimix < 1.0, f"OneHotCategorical: unimix must be in [0, 1), got {unimix}"
        logits = logits.float()
        if unimix > 0.0:
            self.probs = (1.0 - unimix) * torch.softmax(logits, -1) + unimix / logits.shape[-1]
        else:
            self._logits = F.log_softmax(logits, -1)
            self.probs = self._logits.exp()
        self.unimix = unimix

    @functools.cached_property
    def logits(self) -> Tensor:
        """(..., C) float32 log(probs), computed when first read: sampling does not need it (an
        imagined step samples 1024 x 32 latents of 32 classes and never reads their logits)."""
        return self._logits if self.unimix == 0.0 else torch.log(self.probs)

    @property
    def num_classes(self) -> int:
        return self.probs.shape[-1]

    def sample(self) -> Tensor:
        """(..., C) float32 one-hot sample with straight-through gradients to the logits.

        The value is exactly one-hot; the gradient is that of `probs` (DreamerV2/V3).
        """
        # Inverse-CDF sampling: one uniform per categorical and a search in the cumulative
        # probabilities; several times faster on CPU than torch.multinomial for many small rows.
        cdf = self.probs.detach().cumsum(-1)
        u = torch.rand(*cdf.shape[:-1], 1, device=cdf.device, dtype=cdf.dtype) * cdf[..., -1:]
        index = torch.searchsorted(cdf, u, right=True).clamp_(max=self.num_classes - 1)  # (..., 1)
        # Scattered straight into float32: F.one_hot would fill an int64 tensor and then copy it.
        onehot = torch.zeros_like(cdf).scatter_(-1, index, 1.0)
        if not self.probs.requires_grad:
            return onehot  # no gradient to pass through (imagination under no_grad)
        # The bracket is exactly zero in value, so the sample is exactly one-hot.
        return onehot + (self.probs - self.probs.detach())

    def mode(self) -> Tensor:
        """(..., C) float32 one-hot of the most likely class; no gradient."""
        return F.one_hot(self.probs.argmax(-1), self.num_classes).to(self.probs.dtype)

    def log_prob(self, onehot: Tensor) -> Tensor:
        """(...,) float32 log-probability of a one-hot value (..., C)."""
        assert onehot.shape == self.probs.shape, (
            f"OneHotCategorical.log_prob: value {tuple(onehot.shape)} vs logits {tuple(self.probs.shape)}"
        )
        return (onehot.float() * self.logits).sum(-1)

    def entropy(self) -> Tensor:
        """(...,) float32 entropy -sum_c p_c log p_c."""
        # The clamp turns 0 * -inf (possible without unimix) into 0 instead of NaN.
        return -(self.probs * self.logits.clamp(min=torch.finfo(torch.float32).min)).sum(-1)


def kl_categorical(q_logits: Tensor, p_logits: Tensor, normalized: bool = False) -> Tensor:
    """KL[q || p] between categoricals over the last axis, per group.

    Pass the unimixed logits (`OneHotCategorical.logits`) so the KL is that of the distributions
    the model samples from, as in DreamerV3. Stop-gradients (sg(q) for the dynamics loss, sg(p) for
    the representation loss) are the caller's, and so is the sum over groups before free bits.

    Args:
        q_logits: (..., S, C) float, logits of q (normalised here).
        p_logits: (..., S, C) float, logits of p.
        normalized: both are log-probabilities already (as `OneHotCategorical.logits` are), so
            the normalisation is skipped; the world-model loss calls this twice per update.
    Returns:
        (..., S) float32.
    """
    assert q_logits.shape == p_logits.shape, (
        f"kl_categorical: q {tuple(q_logits.shape)} vs p {tuple(p_logits.shape)}"
    )
    log_q, log_p = q_logits.float(), p_logits.float()
    if not normalized:
        log_q, log_p = F.log_softmax(log_q, -1), F.log_softmax(log_p, -1)
    return (log_q.exp() * (log_q - log_p)).sum(-1)


class BoundedNormal:
    """DreamerV3's continuous policy: Normal(tanh(m), std) with std in [min_std, max_std].

    std = (max_std - min_std) * sigmoid(s + 2) + min_std (DreamerV3 `Dist('normal')`, minstd 0.1,
    maxstd 1.0; the +2 starts std near max_std for exploration). The Normal itself is unbounded;
    DreamerV3 bounds actions where they are used: the env wrapper clips them to [-1, 1] and the RSSM
    rescales its action input by sg(max(1, |a|)). Samples here get that rescaling, a -> a /
    sg(max(1, |a|)) per dimension, so actions stored in replay, sent to the env and fed to the world
    model all lie in [-1, 1] while reparameterised gradients still flow (scaled by 1/|a| where
    rescaled). `log_prob` and `entropy` are those of the unbounded Normal, as in DreamerV3.

    Args:
        raw_mean: (..., A) float, pre-tanh mean.
        raw_std: (..., A) float, pre-sigmoid std.
        min_std, max_std: std bounds.
    """

    def __init__(self, raw_mean: Tensor, raw_std: Tensor, min_std: float = 0.1, max_std: float = 1.0) -> None:
        assert raw_mean.shape == raw_std.shape, (
            f"BoundedNormal: mean {tuple(raw_mean.shape)} vs std {tuple(raw_std.shape)}"
        )
        assert 0.0 < min_std <= max_std, (
            f"BoundedNormal: need 0 < min_std <= max_std, got {min_std}, {max_std}"
        )
        self.mean = torch.tanh(raw_mean.float())
        self.std = (max_std - min_std) * torch.sigmoid(raw_std.float() + 2.0) + min_std
        self.min_std = min_std
        self.max_std = max_std

    @staticmethod
    def _bound(action: Tensor) -> Tensor:
        return action / action.detach().abs().clamp(min=1.0)

    def rsample(self) -> Tensor:
        """(..., A) float32 reparameterised sample in [-1, 1]."""
        return self._bound(self.mean + self.std * torch.randn_like(self.mean))

    def sample(self) -> Tensor:
        """(..., A) float32 sample in [-1, 1], without gradient."""
        with torch.no_grad():
            return self.rsample()

    def mode(self) -> Tensor:
        """(..., A) float32 tanh mean, in (-1, 1)."""
        return self.mean

    def log_prob(self, action: Tensor) -> Tensor:
        """(...,) float32 log-density of an action (..., A), summed over action dimensions."""
        assert action.shape == self.mean.shape, (
            f"BoundedNormal.log_prob: action {tuple(action.shape)} vs mean {tuple(self.mean.shape)}"
        )
        z = (action.float() - self.mean) / self.std
        return (-0.5 * z.square() - torch.log(self.std) - 0.5 * math.log(2.0 * math.pi)).sum(-1)

    def entropy(self) -> Tensor:
        """(...,) float32 entropy of the Normal, summed over action dimensions."""
        return (0.5 + 0.5 * math.log(2.0 * math.pi) + torch.log(self.std)).sum(-1)


def bernoulli(logits: Tensor) -> torch.distributions.Bernoulli:
    """Bernoulli over (...,) from float logits (...,), in float32, for the continue head.

    Argument validation is off: it costs time on every call and targets are floats in {0, 1}.
    """
    return torch.distributions.Bernoulli(logits=logits.float(), validate_args=False)
