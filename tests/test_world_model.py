"""The S3M world model: shapes, reset alignment, step/parallel agreement, KL balancing, optimiser."""

import pytest
import torch
import torch.nn.functional as F
from world_model_data import DICT, IMAGE, VECTOR, A, deterministic_latents, make_batch

from configs import load_config
from world_model import S3M
from world_model.base import HEAD_KEYS, stack_states


def make_model(obs_space, **overrides):
    cfg = load_config(["debug"], [f"{k}={v}" for k, v in overrides.items()])
    torch.manual_seed(0)
    return S3M(obs_space, A, cfg.model, cfg.s3m), cfg


@pytest.mark.parametrize("obs_space", [VECTOR, IMAGE, DICT], ids=["vector", "image", "dict"])
@pytest.mark.parametrize("B,T", [(1, 1), (2, 7), (3, 16)])
def test_observe_shapes(obs_space, B, T):
    model, cfg = make_model(obs_space)
    batch = make_batch(obs_space, B, T)
    post, losses, metrics, last = model.observe(batch)
    S = cfg.model.stoch_groups * cfg.model.stoch_classes
    K, P, H = cfg.s3m.layers, cfg.s3m.state_size, cfg.model.hidden
    assert post["z"].shape == (B, T, S)
    assert post["h"].shape == (B, T, H)
    assert post["x"].shape == (B, T, K, P) and post["x"].dtype == torch.complex64
    assert last["x"].shape == (B, K, P) and last["action"].shape == (B, A)
    for key in [*obs_space, "reward", "cont", "dyn", "rep", "total"]:
        assert losses[key].dim() == 0 and torch.isfinite(losses[key]), key
        assert f"wm/{key}_loss" in metrics
    for policy_input in ("output", "hidden", "full"):
        assert model.features(post, policy_input).shape == (B, T, model.feature_dim(policy_input))
    recon = model.open_loop(batch, context=min(T, 3))
    for key, (shape, _) in obs_space.items():
        assert recon[key].shape == (B, T, *shape)


def test_reset_alignment():
    """After an in-sequence boundary, posterior and prior equal those of the new episode alone."""
    model, _ = make_model(DICT)
    deterministic_latents(model)
    cut = 5
    batch = make_batch(DICT, 2, 12, reset_at=(cut,))
    batch["is_first"][:, 0] = False  # the sample continues an episode, so the carried state matters
    carried = model.initial_state(2)
    carried["x"] = torch.randn_like(carried["x"])  # a non-initial incoming state must not leak past the reset
    post, _, _, _ = model.observe(batch, carried)
    alone, _, _, _ = model.observe({k: v[:, cut:] for k, v in batch.items()})
    for key in ("z", "h", "x", "logits"):
        torch.testing.assert_close(post[key][:, cut:], alone[key], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        model.prior_logits(post)[:, cut:], model.prior_logits(alone), rtol=1e-5, atol=1e-5
    )
    # ...and before the boundary the carried state matters, so the check above is not vacuous.
    fresh, _, _, _ = model.observe(batch)
    assert (fresh["h"][:, :cut] - post["h"][:, :cut]).abs().max() > 1e-4


@pytest.mark.parametrize("selective", [False, True], ids=["lti", "selective"])
def test_step_mode_equals_observe(selective):
    """Acting step by step gives the posterior states that observe computes in parallel."""
    model, _ = make_model(VECTOR, **{"s3m.selective": selective})
    if selective:
        with torch.no_grad():  # away from the zero init, so that the step sizes vary
            for block in model.ssm.layers:
                block.ssm.dt_proj.weight.normal_(0.0, 0.5)
    deterministic_latents(model)
    batch = make_batch(VECTOR, 3, 10, reset_at=(4, 7))
    post, _, _, last = model.observe(batch)
    state = model.initial_state(3)
    states = []
    for t in range(10):
        state = model.step(state, {"vector": batch["vector"][:, t]}, batch["is_first"][:, t])
        states.append(state)
        state = {**state, "action": batch["action"][:, t]}
    stepped = stack_states(states, dim=1)
    for key in ("z", "h", "x"):
        torch.testing.assert_close(stepped[key], post[key], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state["x"], last["x"], rtol=1e-5, atol=1e-5)


def test_imagine_shapes_and_no_reset():
    model, cfg = make_model(VECTOR)
    post, _, _, _ = model.observe(make_batch(VECTOR, 2, 5))
    start = {k: v.reshape(10, *v.shape[2:]) for k, v in post.items()}

    def policy(state):
        return F.one_hot(torch.zeros(state["z"].shape[0], dtype=torch.long), A).float()

    traj = model.imagine(start, policy, horizon=4)
    assert traj["z"].shape == (5, 10, cfg.model.stoch_groups * cfg.model.stoch_classes)
    assert traj["x"].shape == (5, 10, cfg.s3m.layers, cfg.s3m.state_size)
    assert traj["action"].shape == (5, 10, A)
    torch.testing.assert_close(traj["x"][0], start["x"])
    assert model.reward(traj).shape == (5, 10) and model.cont(traj).shape == (5, 10)
    # Both predictions from one feature build: the same values; only the reward keeps a graph.
    reward, cont = model.reward_and_cont(traj)
    torch.testing.assert_close(reward, model.reward(traj))
    torch.testing.assert_close(cont, model.cont(traj))
    assert reward.requires_grad and not cont.requires_grad
    # `keep` drops the other keys from the trajectory, not from what the policy sees.
    seen = []
    torch.manual_seed(1)
    heads = model.imagine(start, lambda s: seen.append(sorted(s)) or policy(s), horizon=4, keep=HEAD_KEYS)
    torch.manual_seed(1)
    full = model.imagine(start, policy, horizon=4)
    assert sorted(heads) == sorted([*HEAD_KEYS, "action"]) and all("x" in keys for keys in seen)
    for key in heads:
        torch.testing.assert_close(heads[key], full[key], rtol=0, atol=0)


def _grad_norm(loss, params):
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return sum(0.0 if g is None else g.abs().sum().item() for g in grads)


def test_kl_balancing_gradients():
    """The dynamics term trains only the prior, the representation term only the posterior.

    One first step (is_first) so the prior cannot see the posterior through z_{t-1}; no free bits,
    so the clip does not hide gradients.
    """
    model, _ = make_model(VECTOR, **{"model.free_nats": 0.0})
    _, losses, _, _ = model.observe(make_batch(VECTOR, 4, 1))
    posterior = [*model.posterior.parameters(), *model.encoder.parameters()]
    prior = list(model.prior.parameters())
    assert _grad_norm(losses["dyn"], posterior) == 0.0
    assert _grad_norm(losses["dyn"], prior) > 0.0
    assert _grad_norm(losses["rep"], prior) == 0.0
    assert _grad_norm(losses["rep"], posterior) > 0.0


def test_free_bits_clip_and_total():
    model, cfg = make_model(VECTOR, **{"model.free_nats": 1e6})
    _, losses, _, _ = model.observe(make_batch(VECTOR, 2, 4))
    assert losses["dyn"].item() == pytest.approx(1e6) and losses["rep"].item() == pytest.approx(1e6)
    assert _grad_norm(losses["dyn"] + losses["rep"], list(model.parameters())) == 0.0
    pred = losses["vector"] + losses["reward"] + losses["cont"]
    expected = pred + cfg.model.dyn_scale * 1e6 + cfg.model.rep_scale * 1e6
    assert losses["total"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_weight_decay_only_on_kernels():
    """R2I decays only parameters named `/(w|kernel)$`: Linear and conv weight matrices, not the
    LayerNorm scales, biases, S5 parameters or the learned initial state."""
    model, cfg = make_model(VECTOR, **{"model.weight_decay": 0.5, "s3m.learn_initial_state": True})
    opt = model.make_optimizer()
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert len(decay) == sum(len(g["params"]) for g in opt.param_groups)  # each parameter once
    assert set(decay) == {id(p) for p in model.parameters()}
    block = model.ssm.layers[0]
    s5 = block.ssm
    assert isinstance(s5.x_init, torch.nn.Parameter)
    decayed = [model.inp[0].weight, model.out[0].weight, block.glu.weight]
    kept = [model.inp[1].weight, model.out[0].bias, block.glu.bias, block.norm.weight, block.norm.bias]
    kept += [s5.lam_re, s5.lam_im, s5.B_re, s5.B_im, s5.C_re, s5.C_im, s5.D, s5.log_dt, s5.x_init]
    assert all(decay[id(p)] == 0.5 for p in decayed)
    assert all(decay[id(p)] == 0.0 for p in kept)
    assert all(p.dim() >= 2 for p in model.parameters() if decay[id(p)] > 0)

    # One step with zero gradients: Adam's update is 0, so only the decoupled decay moves a parameter.
    before = {id(p): p.detach().clone() for p in model.parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    shrink = 1.0 - cfg.model.lr * 0.5
    for p in model.parameters():
        old = before[id(p)]
        torch.testing.assert_close(p.detach(), old * shrink if decay[id(p)] > 0 else old, rtol=0, atol=0)
    assert all(not torch.equal(p.detach(), before[id(p)]) for p in decayed)  # not vacuous

    batch = make_batch(VECTOR, 4, 8)
    before_loss = model.observe(batch)[1]["total"].item()
    for _ in range(20):
        model.update(batch)
    assert model.observe(batch)[1]["total"].item() < before_loss


def test_update_clips_each_ssm_group_on_its_own(monkeypatch):
    """R2I clips every SSM parameter kind (over all layers) and the rest of the model each to
    `grad_clip` on its own: one kind's huge gradient does not scale down the others'."""
    clip = 1.0
    overrides = {"model.grad_clip": clip, "s3m.layers": 2, "s3m.learn_initial_state": True}
    model, _ = make_model(VECTOR, **overrides)
    model.opt = model.make_optimizer()
    blocks = [block.ssm for block in model.ssm.layers]
    # Set -> norm of its gradient. Λ's real part dwarfs the rest; B̃'s real and imaginary parts are
    # each below the clip but together above it, so they are clipped as one complex B̃.
    norms = {"lam_re": 1e4, "lam_im": 0.5, "B": 1.2, "C": 0.5, "D": 0.5, "log_dt": 0.5, "default": 0.5}
    kinds = {"lam_re": ["lam_re"], "lam_im": ["lam_im"], "B": ["B_re", "B_im"], "C": ["C_re", "C_im"]}
    kinds |= {"D": ["D"], "log_dt": ["log_dt"]}
    sets = {kind: [getattr(m, name) for m in blocks for name in names] for kind, names in kinds.items()}
    s5_ids = {id(p) for params in sets.values() for p in params}
    sets["default"] = [p for p in model.parameters() if id(p) not in s5_ids]  # x_init included
    gen = torch.Generator().manual_seed(0)
    target = {}
    for kind, params in sets.items():
        raw = [torch.randn(p.shape, generator=gen) for p in params]
        total = torch.sqrt(sum(g.square().sum() for g in raw))
        target |= {id(p): g * (norms[kind] / total) for p, g in zip(params, raw)}

    observe = model.observe

    def linear_loss(batch, state=None):  # a loss whose gradient is `target`
        post, losses, metrics, last = observe(batch, state)
        total = sum((p * target[id(p)]).sum() for p in model.parameters())
        return post, {**losses, "total": total}, metrics, last

    seen = {}

    def capture():  # in place of the optimiser's step: the gradients after clipping
        seen.update({id(p): p.grad.clone() for p in model.parameters()})

    monkeypatch.setattr(model, "observe", linear_loss)
    monkeypatch.setattr(model.opt, "step", capture)
    metrics = model.update(make_batch(VECTOR, 2, 4))[1]

    for kind, params in sets.items():
        scale = min(1.0, clip / (norms[kind] + 1e-6))  # torch's clip_grad_norm_ coefficient
        for p in params:
            torch.testing.assert_close(seen[id(p)], target[id(p)] * scale, msg=kind)
    assert metrics["wm/grad_norm"] == pytest.approx(sum(n**2 for n in norms.values()) ** 0.5, rel=1e-5)


def test_kl_terms_match_their_definition():
    """dyn and rep equal KL[q || p] of the unimixed categoricals, summed over groups (no free bits)."""
    model, cfg = make_model(VECTOR, **{"model.free_nats": 0.0})
    deterministic_latents(model)
    batch = make_batch(VECTOR, 2, 6, reset_at=(3,))
    post, losses, _, _ = model.observe(batch)
    q = torch.distributions.Categorical(probs=model._latent_dist(post["logits"]).probs)
    p = torch.distributions.Categorical(probs=model._latent_dist(model.prior_logits(post)).probs)
    expected = torch.distributions.kl_divergence(q, p).sum(-1).mean()  # groups summed, then (B, T) mean
    torch.testing.assert_close(losses["dyn"], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(losses["rep"], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("head", ["twohot", "symlog_mse"])
def test_reward_head_loss_and_prediction(head):
    """The reward NLL is the configured head's; both start at 0 and learn a reward on a fixed batch."""
    model, _ = make_model(VECTOR, **{"model.reward_head": head, "model.lr": 3e-3})
    batch = make_batch(VECTOR, 4, 8)
    key = next(iter(VECTOR))
    batch["reward"] = torch.sign(batch[key][..., 0])  # +-1, read off the observation
    post, losses, _, _ = model.observe(batch)
    dist = model.reward_head(model.head_features(post))
    torch.testing.assert_close(losses["reward"], -dist.log_prob(batch["reward"]).mean())
    assert model.reward(post).abs().max().item() < 1e-6  # zero-initialised output layer
    for _ in range(250):
        model.update(batch)
    post, _, _, _ = model.observe(batch)
    assert ((model.reward(post) > 0) == (batch["reward"] > 0)).float().mean().item() > 0.9
