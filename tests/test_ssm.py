"""S5 layers and the SSM stack: parallel mode equals step mode, with resets, in values and gradients."""

import contextlib

import numpy as np
import pytest
import torch

from configs.schema import S3MConfig
from world_model.ssm import S5Layer, SSMStack, hippo_normal


def random_resets(B, T, prob, gen):
    is_first = torch.rand(B, T, generator=gen) < prob
    is_first[:, 0] = True
    return is_first


def run_steps(module, u, is_first, x_prev):
    ys, xs = [], []
    x = x_prev
    for t in range(u.shape[1]):
        y, x = module.step(u[:, t], is_first[:, t], x)
        ys.append(y)
        xs.append(x)
    return torch.stack(ys, 1), torch.stack(xs, 1)


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp(min=1.0)).item()


def make_stack(discretization, learn_init, scan, dtype=torch.float32, seed=0, selective=False):
    torch.manual_seed(seed)
    stack = SSMStack(
        hidden=12,
        state_size=8,
        layers=2,
        blocks=2,
        discretization=discretization,
        learn_initial_state=learn_init,
        scan=scan,
        selective=selective,
    ).to(dtype)
    with torch.no_grad():
        for block in stack.layers:
            if learn_init:
                block.ssm.x_init.normal_()
            if selective:  # away from its zero init, so the step sizes really vary
                block.ssm.dt_proj.weight.normal_(0.0, 0.5)
    return stack


def test_hippo_normal_eigenvalues():
    lam, V = hippo_normal(16)
    np.testing.assert_allclose(lam.real, -0.5)
    np.testing.assert_allclose(V.conj().T @ V, np.eye(16), atol=1e-10)
    assert len(np.unique(np.round(lam.imag, 6))) == 16


@pytest.mark.parametrize("selective", [False, True], ids=["lti", "selective"])
@pytest.mark.parametrize("discretization", ["bilinear", "zoh"])
@pytest.mark.parametrize("scan", ["chunked", "associative", "loop"])
@pytest.mark.parametrize("B,T", [(1, 1), (3, 20), (2, 65)])
def test_parallel_equals_step(discretization, scan, B, T, selective):
    stack = make_stack(discretization, learn_init=True, scan=scan, selective=selective)
    gen = torch.Generator().manual_seed(T)
    u = torch.randn(B, T, 12, generator=gen, requires_grad=True)
    is_first = random_resets(B, T, 0.15, gen)
    x_prev = (
        stack.initial_state(B) + torch.randn(B, 2, 8, dtype=torch.complex64, generator=gen)
    ).requires_grad_()
    y_par, x_par = stack(u, is_first, x_prev)
    y_step, x_step = run_steps(stack, u, is_first, x_prev)
    assert y_par.shape == (B, T, 12) and x_par.shape == (B, T, 2, 8) and x_par.dtype == torch.complex64
    assert rel_err(y_par, y_step) < 1e-5
    assert rel_err(x_par, x_step) < 1e-5

    cot_y = torch.randn(B, T, 12, generator=gen)
    cot_x = torch.randn(B, T, 2, 8, dtype=torch.complex64, generator=gen)
    params = [p for p in stack.parameters()]
    inputs = [u, x_prev, *params]

    def grads(y, x):
        loss = (y * cot_y).sum() + (x * cot_x).real.sum()
        return torch.autograd.grad(loss, inputs, allow_unused=True)

    for g_par, g_step, name in zip(
        grads(y_par, x_par), grads(y_step, x_step), ["u", "x_prev"] + [n for n, _ in stack.named_parameters()]
    ):
        if g_step is None:
            assert g_par is None or g_par.abs().max() == 0, name
            continue
        assert rel_err(g_par, g_step) < 1e-5, f"gradient of {name} differs: {rel_err(g_par, g_step):.2e}"


def test_reset_gives_fresh_sequence_states():
    """States after an is_first equal those of a fresh sequence that starts there."""
    stack = make_stack("bilinear", learn_init=True, scan="chunked")
    gen = torch.Generator().manual_seed(1)
    B, T, cut = 2, 30, 11
    u = torch.randn(B, T, 12, generator=gen)
    is_first = torch.zeros(B, T, dtype=torch.bool)
    is_first[:, 0] = is_first[:, cut] = True
    x_prev = torch.randn(B, 2, 8, dtype=torch.complex64, generator=gen)
    y, x = stack(u, is_first, x_prev)
    y_fresh, x_fresh = stack(u[:, cut:], is_first[:, cut:], stack.initial_state(B))
    torch.testing.assert_close(y[:, cut:], y_fresh, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x[:, cut:], x_fresh, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("selective", [False, True], ids=["lti", "selective"])
@pytest.mark.parametrize("discretization", ["bilinear", "zoh"])
def test_gradcheck_layer_float64(discretization, selective):
    torch.manual_seed(0)
    layer = S5Layer(
        3, 4, blocks=2, discretization=discretization, learn_initial_state=True, selective=selective
    ).double()
    with torch.no_grad():
        layer.x_init.normal_()
        if selective:
            layer.dt_proj.weight.normal_()
    u = torch.randn(2, 6, 3, dtype=torch.float64, requires_grad=True)
    is_first = torch.tensor(
        [[True, False, False, True, False, False], [False, False, True, False, False, False]]
    )
    x_prev = torch.randn(2, 4, dtype=torch.complex128, requires_grad=True)
    names = [name for name, _ in layer.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in layer.parameters())

    def fn(u, x_prev, *ps):
        y, x = torch.func.functional_call(layer, dict(zip(names, ps)), (u, is_first, x_prev))
        return y, torch.view_as_real(x)

    torch.autograd.gradcheck(fn, (u, x_prev, *params))


def test_step_sizes_and_stability():
    layer = S5Layer(4, 8, dt_min=1e-3, dt_max=1e-1)
    dt = layer.log_dt.exp()
    assert (dt >= 1e-3 - 1e-9).all() and (dt <= 1e-1 + 1e-9).all()
    for disc in ("bilinear", "zoh"):
        layer.discretization = disc
        lam_bar, B_bar = layer.discretize()
        assert lam_bar.abs().max() < 1, "a discretised stable system contracts"
        assert B_bar.shape == (8, 4) and B_bar.is_complex()


def test_zero_initial_state_is_a_buffer():
    layer = S5Layer(4, 8, learn_initial_state=False)
    assert "x_init" not in dict(layer.named_parameters())
    assert torch.equal(layer.initial_state(3), torch.zeros(3, 8, dtype=torch.complex64))


def test_initial_state_is_learned_by_default():
    """R2I learns the state a reset loads (`rssm.initial: learned`), in the layer and the config."""
    assert "x_init" in dict(S5Layer(4, 8).named_parameters())
    cfg = S3MConfig()
    assert cfg.learn_initial_state and cfg.blocks == 8 and cfg.bc_init == "r2i"


@pytest.mark.parametrize(
    ("bc_init", "b_var", "c_var"), [("r2i", 1 / 64, 1 / (64 * 256)), ("unit", 1 / 256, 1 / 64)]
)
def test_input_and_output_matrix_scales(bc_init, b_var, c_var):
    """E|B̃_pk|^2 and E|C̃_kp|^2 at init for H=256, P=64: V is unitary, so B̃ = V^H B and C̃ = C V keep
    B's and C's per-entry variance. R2I (`mimo.py`): B LeCun on (P, H), fan-in P; C's real and
    imaginary parts LeCun on (H, P, 2), fan-in P·H each, so |C̃|^2 has 2 / (P·H)."""
    torch.manual_seed(0)
    H, P = 256, 64
    if bc_init == "r2i":
        c_var = 2 * c_var
    layer = S5Layer(H, P, blocks=8, bc_init=bc_init)
    b = (layer.B_re.double() ** 2 + layer.B_im.double() ** 2).mean().item()
    c = (layer.C_re.double() ** 2 + layer.C_im.double() ** 2).mean().item()
    assert b == pytest.approx(b_var, rel=0.05), f"E|B̃|^2 = {b}, expected {b_var}"
    assert c == pytest.approx(c_var, rel=0.05), f"E|C̃|^2 = {c}, expected {c_var}"


def test_r2i_init_state_scale():
    """The state the hidden-state policy reads: at H=512, P=128 with unit-scale inputs, R2I's B init
    (fan-in P) gives states 2x the rms of a fan-in-H init, and the truncated normal keeps |B| < 2 std."""
    torch.manual_seed(0)
    H, P = 512, 128
    u = torch.randn(4, 64, H)
    first = torch.zeros(4, 64, dtype=torch.bool)
    rms = {}
    for bc_init in ("r2i", "unit"):
        layer = S5Layer(H, P, blocks=8, bc_init=bc_init)
        with torch.no_grad():
            _, x = layer(u, first, layer.initial_state(4))
        rms[bc_init] = x.abs().pow(2).mean().sqrt().item()
    assert rms["r2i"] / rms["unit"] == pytest.approx(2.0, rel=0.1), rms


def test_step_without_resets_equals_all_false_mask():
    stack = make_stack("zoh", learn_init=True, scan="chunked")
    u = torch.randn(3, 12)
    x = torch.randn(3, 2, 8, dtype=torch.complex64)
    y_none, x_none = stack.step(u, None, x)
    y_mask, x_mask = stack.step(u, torch.zeros(3, dtype=torch.bool), x)
    torch.testing.assert_close(y_none, y_mask)
    torch.testing.assert_close(x_none, x_mask)


@pytest.mark.parametrize("discretization", ["bilinear", "zoh"])
def test_selective_layer_starts_as_the_time_invariant_one(discretization):
    """W_Δ = 0 at init: a selective layer computes what the same layer without selection does."""
    torch.manual_seed(3)
    lti = S5Layer(6, 8, blocks=2, discretization=discretization)
    selective = S5Layer(6, 8, blocks=2, discretization=discretization, selective=True)
    selective.load_state_dict(lti.state_dict(), strict=False)
    u = torch.randn(2, 15, 6)
    is_first = torch.zeros(2, 15, dtype=torch.bool)
    is_first[:, 0] = is_first[1, 7] = True
    x_prev = lti.initial_state(2)
    for a, b in zip(lti(u, is_first, x_prev), selective(u, is_first, x_prev)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_selective_step_size_follows_the_input():
    """A selective layer whose Δ_t collapses on some inputs holds its state across them."""
    torch.manual_seed(4)
    layer = S5Layer(2, 4, selective=True, discretization="zoh")
    with torch.no_grad():
        # Channel 1 drives Δ_t towards 0 (hold); channel 0 carries the value.
        layer.dt_proj.weight.zero_()
        layer.dt_proj.weight[:, 1] = -40.0
    u = torch.zeros(1, 6, 2)
    u[0, 0, 0] = 1.0  # write at t = 0
    u[0, 1:, 1] = 1.0  # hold afterwards ...
    u[0, 1:, 0] = torch.tensor([5.0, -3.0, 2.0, 4.0, -1.0])  # ... while distractors arrive
    is_first = torch.zeros(1, 6, dtype=torch.bool)
    _, x = layer(u, is_first, torch.zeros(1, 4, dtype=torch.complex64))
    assert (x[0, 1:] - x[0, :1]).abs().max() < 1e-6 * x[0, 0].abs().max().clamp(min=1e-3) + 1e-7
    _, x_lti = S5Layer(2, 4, discretization="zoh")(u, is_first, torch.zeros(1, 4, dtype=torch.complex64))
    assert (x_lti[0, 1:] - x_lti[0, :1]).abs().max() > 1e-4, "a time-invariant layer takes the distractors in"


@pytest.mark.parametrize("selective", [False, True])
@pytest.mark.parametrize("mixed", [False, True])
def test_fixed_weights_give_the_same_steps_and_gradients(selective, mixed):
    torch.manual_seed(0)
    stack = SSMStack(hidden=16, state_size=8, layers=2, blocks=2, selective=selective)
    if selective:
        for block in stack.layers:
            torch.nn.init.normal_(block.ssm.dt_proj.weight, std=0.3)
    u = torch.randn(6, 3, 16)  # (T, B, H)
    x0 = stack.initial_state(3)

    def roll(fixed: bool):
        stack.zero_grad()
        amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=mixed)
        with amp, stack.fixed_weights() if fixed else contextlib.nullcontext():
            x, ys = x0, []
            for t in range(6):
                y, x = stack.step(u[t], None, x)
                ys.append(y)
        ys = torch.stack(ys)
        (ys.square().sum() + torch.view_as_real(x).square().sum()).backward()
        grads = [p.grad.clone() for p in stack.parameters() if p.grad is not None]
        return ys.detach(), grads

    ys, grads = roll(False)
    ys_fixed, grads_fixed = roll(True)
    torch.testing.assert_close(ys_fixed, ys, rtol=0, atol=1e-6)
    assert len(grads_fixed) == len(grads) > 0
    for g_fixed, g in zip(grads_fixed, grads):
        torch.testing.assert_close(g_fixed, g, rtol=1e-4, atol=1e-5)
    assert all(block.ssm._fixed is None for block in stack.layers)  # cleared on exit
