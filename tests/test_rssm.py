"""The RSSM world model: shapes, step/observe agreement with sampling, reset alignment, learning."""

import pytest
import torch
import torch.nn.functional as F
from world_model_data import DICT, IMAGE, VECTOR, A, deterministic_latents, make_batch

from configs import load_config
from world_model import RSSM
from world_model.base import stack_states


def make_model(obs_space, **overrides):
    cfg = load_config(["debug"], [f"{k}={v}" for k, v in overrides.items()])
    torch.manual_seed(0)
    return RSSM(obs_space, A, cfg.model, cfg.rssm), cfg


def step_through(model, batch, state=None):
    """`step` one time step at a time, setting each action after its step: states with leading (B, T)."""
    obs_keys = [k for k in batch if k in model.obs_space]
    B, T = batch["is_first"].shape
    state = model.initial_state(B) if state is None else state
    states = []
    for t in range(T):
        state = model.step(state, {k: batch[k][:, t] for k in obs_keys}, batch["is_first"][:, t])
        states.append(state)
        state = {**state, "action": batch["action"][:, t]}
    return stack_states(states, dim=1), state


@pytest.mark.parametrize("obs_space", [VECTOR, IMAGE, DICT], ids=["vector", "image", "dict"])
@pytest.mark.parametrize("B,T", [(1, 1), (2, 7), (3, 16)])
def test_observe_shapes(obs_space, B, T):
    model, cfg = make_model(obs_space)
    batch = make_batch(obs_space, B, T)
    post, losses, metrics, last = model.observe(batch)
    S = cfg.model.stoch_groups * cfg.model.stoch_classes
    H = cfg.model.hidden
    assert post["z"].shape == (B, T, S) and post["logits"].shape == (B, T, S)
    assert post["h"].shape == (B, T, H)
    assert set(last) == {"z", "h", "action"}
    assert last["z"].shape == (B, S) and last["h"].shape == (B, H) and last["action"].shape == (B, A)
    assert ((post["z"] == 0) | (post["z"] == 1)).all() and (post["z"].sum(-1) == cfg.model.stoch_groups).all()
    for key in [*obs_space, "reward", "cont", "dyn", "rep", "total"]:
        assert losses[key].dim() == 0 and torch.isfinite(losses[key]), key
        assert f"wm/{key}_loss" in metrics
    for policy_input in ("output", "hidden", "full"):
        assert model.feature_dim(policy_input) == S + H
        assert model.features(post, policy_input).shape == (B, T, S + H)
    recon = model.open_loop(batch, context=min(T, 3))
    for key, (shape, _) in obs_space.items():
        assert recon[key].shape == (B, T, *shape)


def test_step_equals_observe_with_sampling():
    """`step` one step at a time gives observe's posterior, prior and samples, resets included.

    Both paths draw one uniform per latent group per time step in the same order, so reseeding the
    RNG before each makes their (exactly one-hot) samples identical.
    """
    model, _ = make_model(DICT)
    batch = make_batch(DICT, 3, 12, reset_at=(4, 9))
    torch.manual_seed(1)
    post, _, _, last = model.observe(batch)
    torch.manual_seed(1)
    stepped, state = step_through(model, batch)
    torch.testing.assert_close(stepped["z"], post["z"], rtol=0, atol=0)
    torch.testing.assert_close(stepped["h"], post["h"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.prior_logits(stepped), model.prior_logits(post), rtol=1e-5, atol=1e-5)
    for key in ("z", "h", "action"):
        torch.testing.assert_close(state[key], last[key], rtol=1e-5, atol=1e-5)
    # The samples really are random: another seed changes them.
    torch.manual_seed(2)
    other, _, _, _ = model.observe(batch)
    assert not torch.equal(other["z"], post["z"])


def test_latents_prior_is_prior_of_h():
    """The prior logits `_latents` returns are p(z | h_t) of its own posterior states."""
    model, _ = make_model(VECTOR)
    batch = make_batch(VECTOR, 2, 6, reset_at=(3,))
    embed = model.encoder(batch)
    post, prior_logits, _ = model._latents(embed, batch["action"], batch["is_first"], model.initial_state(2))
    torch.testing.assert_close(prior_logits, model.prior_logits(post))


def test_reset_alignment():
    """After an in-sequence boundary, posterior and prior equal those of the new episode alone."""
    model, _ = make_model(DICT)
    deterministic_latents(model)
    cut = 5
    batch = make_batch(DICT, 2, 12, reset_at=(cut,))
    batch["is_first"][:, 0] = False  # the sample continues an episode, so the carried state matters
    carried = model.initial_state(2)
    carried["h"] = torch.randn_like(carried["h"])
    carried["z"] = model._latent_dist(torch.randn_like(carried["z"])).mode().flatten(-2)
    carried["action"] = torch.ones_like(carried["action"])
    post, _, _, _ = model.observe(batch, carried)
    alone, _, _, _ = model.observe({k: v[:, cut:] for k, v in batch.items()})
    for key in ("z", "h", "logits"):
        torch.testing.assert_close(post[key][:, cut:], alone[key], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        model.prior_logits(post)[:, cut:], model.prior_logits(alone), rtol=1e-5, atol=1e-5
    )
    # ...and before the boundary the carried state matters, so the check above is not vacuous.
    fresh, _, _, _ = model.observe(batch)
    assert (fresh["h"][:, :cut] - post["h"][:, :cut]).abs().max() > 1e-4


def test_reset_uses_learned_initial_state():
    """At is_first the previous h is tanh(w), z the prior's mode there, a zero; w gets gradients."""
    model, _ = make_model(VECTOR)
    deterministic_latents(model)
    with torch.no_grad():
        model.initial_deter.normal_()
    init = model.initial_state(2)
    torch.testing.assert_close(init["h"], torch.tanh(model.initial_deter).expand(2, -1))
    expected_z = model._latent_dist(model.prior(init["h"])).mode().flatten(-2)
    torch.testing.assert_close(init["z"], expected_z)
    batch = make_batch(VECTOR, 2, 6, reset_at=(3,))
    _, losses, _, _ = model.observe(batch)
    (grad,) = torch.autograd.grad(losses["total"], [model.initial_deter])
    assert grad.abs().sum() > 0


def test_imagine_shapes():
    model, cfg = make_model(VECTOR)
    post, _, _, _ = model.observe(make_batch(VECTOR, 2, 5))
    start = {k: v.reshape(10, *v.shape[2:]) for k, v in post.items()}

    def policy(state):
        return F.one_hot(torch.randint(A, (state["z"].shape[0],)), A).float()

    traj = model.imagine(start, policy, horizon=4)
    S = cfg.model.stoch_groups * cfg.model.stoch_classes
    assert set(traj) == {"z", "h", "action"}
    assert traj["z"].shape == (5, 10, S) and traj["h"].shape == (5, 10, cfg.model.hidden)
    assert traj["action"].shape == (5, 10, A)
    torch.testing.assert_close(traj["h"][0], start["h"])
    assert model.reward(traj).shape == (5, 10) and model.cont(traj).shape == (5, 10)
    assert model.features(traj, "hidden").shape == (5, 10, model.feature_dim("hidden"))


@pytest.mark.parametrize("latent_layers", [1, 2])
def test_fused_steps_equal_the_modules_whose_weights_they_split(latent_layers):
    """`_deter` and `_post_logits` project a_{t-1} and e_t for all T steps at once through
    column blocks of `inp`'s and the posterior's first weights (`_split_weights`); in values and
    gradients they equal the modules on the concatenations, DV3's `img_in` and `obs_out`."""
    model, cfg = make_model(VECTOR, **{"model.latent_layers": latent_layers})
    gen = torch.Generator().manual_seed(1)
    B, H, E = 3, cfg.model.hidden, model.encoder.out_dim
    h = torch.randn(B, H, generator=gen)
    z = F.one_hot(torch.randint(model.stoch_dim, (B,), generator=gen), model.stoch_dim).float()
    a = torch.randn(B, A, generator=gen)
    e = torch.randn(B, E, generator=gen)

    def fused():
        w_z, w_a, w_h, w_e = model._split_weights()
        return model._deter(h, z, F.linear(a, w_a), w_z), model._post_logits(h, F.linear(e, w_e), w_h)

    def modules():
        deter = model.gru(model.inp(torch.cat([z, a], -1)), h)
        return deter, model.posterior(torch.cat([h, e], -1))

    grads = []
    for path in (fused, modules):
        model.zero_grad(set_to_none=True)
        deter, logits = path()
        (deter.square().sum() + logits.square().sum()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        if path is fused:
            values = (deter.detach(), logits.detach())
    torch.testing.assert_close(values[0], deter.detach())
    torch.testing.assert_close(values[1], logits.detach())
    assert grads[0].keys() == grads[1].keys() and any(k.startswith("inp.") for k in grads[0])
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], msg=name)


def test_gru_cell_update_bias_and_norm():
    """With zero weights the gates are σ(0)=0.5 and σ(-1): h moves towards tanh(0.5·0)=0 by σ(-1)."""
    model, _ = make_model(VECTOR)
    with torch.no_grad():
        model.gru.linear.weight.zero_()
    h = torch.randn(4, model.cfg.hidden)
    out = model.gru(torch.randn(4, model.gru.in_dim), h)
    torch.testing.assert_close(out, (1 - torch.sigmoid(torch.tensor(-1.0))) * h)
    plain, _ = make_model(VECTOR, **{"rssm.gru_layer_norm": False})
    assert plain.gru.linear.bias is not None and isinstance(plain.gru.norm, torch.nn.Identity)
    assert model.gru.linear.bias is None and isinstance(model.gru.norm, torch.nn.LayerNorm)


def test_update_reduces_loss():
    model, _ = make_model(VECTOR, **{"model.lr": 1e-3})
    batch = make_batch(VECTOR, 4, 8)

    def loss():
        torch.manual_seed(3)
        return model.observe(batch)[1]["total"].item()

    before = loss()
    for _ in range(15):
        model.update(batch)
    assert loss() < before
    assert {g["weight_decay"] for g in model.opt.param_groups} == {model.cfg.weight_decay}


def test_observe_in_chunks_continues_from_last_state():
    """Observing [0, k) then [k, T) from the returned last state equals observing [0, T) at once."""
    model, _ = make_model(VECTOR)
    deterministic_latents(model)
    batch = make_batch(VECTOR, 2, 9, reset_at=(6,))
    whole, _, _, _ = model.observe(batch)
    first, _, _, last = model.observe({k: v[:, :4] for k, v in batch.items()})
    second, _, _, _ = model.observe({k: v[:, 4:] for k, v in batch.items()}, last)
    for key in ("z", "h", "logits"):
        torch.testing.assert_close(torch.cat([first[key], second[key]], 1), whole[key])


def test_rejects_a_foreign_state():
    model, _ = make_model(VECTOR)
    state = model.initial_state(2)
    state["h"] = torch.zeros(2, model.cfg.hidden + 1)
    with pytest.raises(AssertionError, match="state\\['h'\\]"):
        model.observe(make_batch(VECTOR, 2, 3), state)
