"""Tests of world_model.distributions: symlog, two-hot, unimix categoricals, KL, bounded Normal."""

from __future__ import annotations

import math

import pytest
import torch

from world_model.distributions import (
    BoundedNormal,
    OneHotCategorical,
    SymlogGaussian,
    TwoHot,
    bernoulli,
    kl_categorical,
    mse,
    symexp,
    symlog,
    symlog_mse,
    twohot_encode,
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_symlog_symexp_inverse() -> None:
    x = torch.tensor([-1e6, -100.0, -1.0, -1e-3, 0.0, 1e-3, 0.5, 1.0, 100.0, 1e6])
    torch.testing.assert_close(symexp(symlog(x)), x, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(symlog(symexp(symlog(x))), symlog(x))
    assert symlog(torch.tensor(0.0)) == 0.0
    torch.testing.assert_close(symlog(torch.tensor(math.e - 1)), torch.tensor(1.0))


def _bins() -> torch.Tensor:
    return torch.linspace(-20.0, 20.0, 255)


def test_twohot_encoding_mean_recovers_value() -> None:
    bins = _bins()
    inside = torch.tensor([-5000.0, -3.3, -1.0, 0.0, 0.25, 1.0, 7.7, 123.0, 1e5])
    encoding = twohot_encode(symlog(inside), bins)
    assert torch.all(encoding >= 0) and torch.allclose(encoding.sum(-1), torch.ones(len(inside)))
    assert torch.all((encoding > 0).sum(-1) <= 2)
    dist = TwoHot(torch.log(encoding))
    torch.testing.assert_close(dist.mean(), inside, rtol=1e-4, atol=1e-5)
    # Beyond the bins all weight lands on the end bin, so the mean saturates at symexp(+-20).
    beyond = torch.tensor([-symexp(torch.tensor(25.0)).item(), symexp(torch.tensor(21.0)).item()])
    encoding = twohot_encode(symlog(beyond), bins)
    assert encoding[0, 0] == 1.0 and encoding[1, -1] == 1.0
    expected = torch.tensor([-1.0, 1.0]) * symexp(torch.tensor(20.0))
    torch.testing.assert_close(TwoHot(torch.log(encoding)).mean(), expected, rtol=1e-4, atol=0.0)


def test_twohot_log_prob_is_dot_with_encoding_and_maximal_at_target() -> None:
    target = torch.tensor([0.0, 3.7, -250.0, 1e9])
    logits = torch.randn(4, 255, requires_grad=True)
    dist = TwoHot(logits)
    expected = (twohot_encode(symlog(target), _bins()) * torch.log_softmax(logits, -1)).sum(-1)
    torch.testing.assert_close(dist.log_prob(target), expected)
    # The cross-entropy with a fixed target is maximised when the probabilities equal the target.
    peaked = TwoHot(torch.log(twohot_encode(symlog(target), _bins()) + 1e-12))
    assert torch.all(peaked.log_prob(target) > dist.log_prob(target))
    assert torch.all(peaked.log_prob(target) > -1.0)


def test_twohot_gradients_reach_logits_only() -> None:
    logits = torch.zeros(3, 255, requires_grad=True)
    target = torch.tensor([1.0, -2.0, 40.0], requires_grad=True)
    loss = -TwoHot(logits).log_prob(target).sum()
    loss.backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    assert target.grad is None
    # Gradient descent moves the mean towards the target.
    with torch.no_grad():
        moved = TwoHot(logits - 100.0 * logits.grad).mean()
    assert torch.all(torch.sign(moved) == torch.sign(target.detach()))


def test_twohot_zero_logits_mean_zero() -> None:
    assert TwoHot(torch.zeros(5, 255)).mean().abs().max() < 1e-5


def test_symlog_gaussian_is_squared_error_in_symlog_space() -> None:
    pred = torch.tensor([0.0, 0.5, -2.0], requires_grad=True)
    target = torch.tensor([1.0, -3.0, 10.0])
    dist = SymlogGaussian(pred)
    expected = -((pred - torch.sign(target) * torch.log1p(target.abs())) ** 2)
    torch.testing.assert_close(dist.log_prob(target), expected)
    torch.testing.assert_close(dist.mean(), torch.sign(pred) * torch.expm1(pred.abs()))
    # The log-likelihood peaks where the prediction is symlog(target), and only pred gets gradients.
    assert SymlogGaussian(symlog(target)).log_prob(target).abs().max() < 1e-6
    dist.log_prob(target).sum().backward()
    torch.testing.assert_close(pred.grad, 2 * (symlog(target) - pred.detach()))
    with pytest.raises(AssertionError, match="SymlogGaussian.log_prob"):
        dist.log_prob(torch.zeros(2))


def test_straight_through_sample_is_one_hot_with_gradients() -> None:
    logits = torch.randn(6, 32, 16, requires_grad=True)  # (B, S, C)
    dist = OneHotCategorical(logits, unimix=0.01)
    sample = dist.sample()
    assert sample.shape == (6, 32, 16)
    torch.testing.assert_close(sample.detach().sum(-1), torch.ones(6, 32))
    assert set(sample.detach().unique().tolist()) <= {0.0, 1.0}
    (sample * torch.randn_like(sample)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    assert dist.log_prob(sample.detach()).shape == (6, 32)
    assert dist.entropy().shape == (6, 32)
    assert dist.mode().shape == (6, 32, 16)


def test_sample_without_gradients_is_the_same_one_hot() -> None:
    logits = torch.randn(6, 32, 16)
    torch.manual_seed(3)
    with_grad = OneHotCategorical(logits.clone().requires_grad_(), unimix=0.01).sample()
    torch.manual_seed(3)
    with torch.no_grad():
        without = OneHotCategorical(logits, unimix=0.01).sample()
    assert with_grad.requires_grad and not without.requires_grad
    assert without.dtype == torch.float32
    torch.testing.assert_close(without, with_grad.detach(), rtol=0, atol=0)


def test_sampling_frequencies_match_probs() -> None:
    probs = torch.tensor([0.1, 0.2, 0.7])
    dist = OneHotCategorical(torch.log(probs).expand(20000, 3))
    torch.testing.assert_close(dist.sample().mean(0), probs, atol=0.015, rtol=0.0)


def test_unimix_bounds_probs_below() -> None:
    logits = torch.tensor([[100.0, -100.0, -100.0, 0.0]])
    unimix = 0.01
    dist = OneHotCategorical(logits, unimix)
    assert torch.all(dist.probs >= unimix / 4 - 1e-7)
    torch.testing.assert_close(dist.probs.sum(-1), torch.ones(1))
    torch.testing.assert_close(dist.logits, torch.log(dist.probs))
    assert torch.isfinite(dist.entropy()).all() and torch.isfinite(dist.logits).all()


def test_categorical_matches_torch_without_unimix() -> None:
    logits = torch.randn(4, 5)
    ours = OneHotCategorical(logits)
    ref = torch.distributions.OneHotCategorical(logits=logits)
    value = ref.sample()
    torch.testing.assert_close(ours.log_prob(value), ref.log_prob(value))
    torch.testing.assert_close(ours.entropy(), ref.entropy())


def test_kl_categorical() -> None:
    logits = torch.randn(3, 32, 8)
    assert kl_categorical(logits, logits).abs().max() < 1e-6
    q_logits, p_logits = torch.randn(3, 32, 8), torch.randn(3, 32, 8)
    kl = kl_categorical(q_logits, p_logits)
    assert kl.shape == (3, 32) and torch.all(kl >= 0)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Categorical(logits=q_logits), torch.distributions.Categorical(logits=p_logits)
    )
    torch.testing.assert_close(kl, ref)


def test_bounded_normal() -> None:
    raw_mean = (5.0 * torch.randn(4096, 3)).requires_grad_()
    raw_std = (5.0 * torch.randn(4096, 3)).requires_grad_()
    dist = BoundedNormal(raw_mean, raw_std, min_std=0.1, max_std=1.0)
    assert torch.all(dist.std >= 0.1) and torch.all(dist.std <= 1.0)
    action = dist.rsample()
    assert action.shape == (4096, 3) and action.abs().max() <= 1.0
    action.sum().backward()
    assert raw_mean.grad is not None and raw_mean.grad.abs().sum() > 0
    assert raw_std.grad is not None and raw_std.grad.abs().sum() > 0
    assert dist.sample().abs().max() <= 1.0 and dist.mode().abs().max() <= 1.0
    ref = torch.distributions.Independent(torch.distributions.Normal(dist.mean, dist.std), 1)
    value = dist.sample()
    torch.testing.assert_close(dist.log_prob(value), ref.log_prob(value))
    torch.testing.assert_close(dist.entropy(), ref.entropy())


def test_bernoulli_and_losses() -> None:
    dist = bernoulli(torch.zeros(2, 3))
    torch.testing.assert_close(dist.log_prob(torch.ones(2, 3)), torch.full((2, 3), -math.log(2.0)))
    pred, target = torch.randn(2, 4, 5), torch.randn(2, 4, 5)
    torch.testing.assert_close(mse(pred, target, dims=2), ((pred - target) ** 2).sum((-1, -2)))
    torch.testing.assert_close(symlog_mse(symlog(target), target, dims=1), torch.zeros(2, 4))


def test_twohot_mean_is_float32_under_autocast_and_equals_the_bin_expectation() -> None:
    logits = torch.randn(7, 255) * 3
    plain = TwoHot(logits)
    expected = symexp((plain.log_probs.exp() * _bins()).sum(-1))
    torch.testing.assert_close(TwoHot(logits).mean(), expected, rtol=1e-5, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = TwoHot(logits.bfloat16()).mean()
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, TwoHot(logits.bfloat16().float()).mean(), rtol=0, atol=0)
