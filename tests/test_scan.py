"""The reset-aware linear recurrence: every implementation equals the plain loop, in values and gradients."""

import pytest
import torch

from world_model.scan import METHODS, linear_recurrence, linear_recurrence_autograd_loop


def make_case(B, T, P, dtype=torch.complex64, reset_prob=0.1, seed=0, varying=False):
    """A random recurrence; `varying` draws one lam per (batch, step), as a selective S5 layer has."""
    gen = torch.Generator().manual_seed(seed)
    real = torch.float64 if dtype == torch.complex128 else torch.float32
    shape = (B, T, P) if varying else (P,)
    radius = torch.rand(shape, generator=gen, dtype=real) * 0.5 + 0.45
    angle = torch.rand(shape, generator=gen, dtype=real) * 6.28
    lam = torch.polar(radius, angle).requires_grad_()
    keep = torch.rand(B, T, generator=gen) > reset_prob
    b = torch.randn(B, T, P, generator=gen, dtype=dtype).requires_grad_()
    x0 = torch.randn(B, P, generator=gen, dtype=dtype).requires_grad_()
    cotangent = torch.randn(B, T, P, generator=gen, dtype=dtype)
    return lam, keep, b, x0, cotangent


def values_and_grads(fn, lam, keep, b, x0, cotangent):
    x = fn(lam, keep, b, x0)
    grads = torch.autograd.grad(x, (lam, b, x0), cotangent)
    return x.detach(), grads


def assert_close_rel(actual, expected, rtol):
    scale = expected.abs().max().clamp(min=1.0)
    err = (actual - expected).abs().max() / scale
    assert err <= rtol, f"relative error {err:.2e} > {rtol:.0e}"


@pytest.mark.parametrize("varying", [False, True], ids=["shared-lam", "per-step-lam"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("B,T", [(1, 1), (2, 7), (3, 64), (4, 37), (2, 300)])
def test_matches_autograd_loop(method, B, T, varying):
    case = make_case(B, T, 6, seed=B * 1000 + T, varying=varying)
    x_ref, g_ref = values_and_grads(linear_recurrence_autograd_loop, *case)
    x, g = values_and_grads(lambda *a: linear_recurrence(*a, method=method), *case)
    assert_close_rel(x, x_ref, 1e-5)
    for name, actual, expected in zip(("lam", "b", "x0"), g, g_ref):
        assert actual.shape == expected.shape, name
        assert_close_rel(actual, expected, 1e-5)


@pytest.mark.parametrize("varying", [False, True], ids=["shared-lam", "per-step-lam"])
@pytest.mark.parametrize("method", METHODS)
def test_gradcheck_float64(method, varying):
    lam, keep, b, x0, _ = make_case(2, 9, 3, dtype=torch.complex128, reset_prob=0.25, seed=3, varying=varying)
    assert not keep.all() and keep.any(), "the case must contain resets"
    torch.autograd.gradcheck(lambda lam, b, x0: linear_recurrence(lam, keep, b, x0, method), (lam, b, x0))


@pytest.mark.parametrize("varying", [False, True], ids=["shared-lam", "per-step-lam"])
@pytest.mark.parametrize("method", METHODS)
def test_reset_forgets_the_past(method, varying):
    """After keep_t = 0 the states do not depend on anything before t."""
    lam, keep, b, x0, _ = make_case(2, 40, 5, reset_prob=0.0, seed=5, varying=varying)
    keep = keep.clone()
    keep[:, 17] = False
    x = linear_recurrence(lam, keep, b, x0, method)
    b2 = b.detach().clone()
    b2[:, :17] = torch.randn_like(b2[:, :17])
    x2 = linear_recurrence(lam, keep, b2, torch.randn_like(x0), method)
    torch.testing.assert_close(x[:, 17:], x2[:, 17:], rtol=1e-6, atol=1e-6)
    assert (x[:, :17] - x2[:, :17]).abs().max() > 1e-3


def test_auto_picks_chunked_on_cpu():
    lam, keep, b, x0, _ = make_case(1, 5, 2)
    out = linear_recurrence(lam, keep, b, x0, "auto")
    torch.testing.assert_close(out, linear_recurrence(lam, keep, b, x0, "chunked"))


def test_shape_errors_name_the_argument():
    lam, keep, b, x0, _ = make_case(2, 5, 3)
    with pytest.raises(AssertionError, match="x0"):
        linear_recurrence(lam, keep, b, x0[:1])
    with pytest.raises(AssertionError, match="keep"):
        linear_recurrence(lam, keep[:, :4], b, x0)
