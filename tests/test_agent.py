"""Tests of agent/: λ-returns, return normalisation, the actor-critic update and the Agent API."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from agent import ActorCritic, Agent, ReturnNormalizer, lambda_returns
from agent import actor_critic as actor_critic_module
from configs import load_config
from replay import SequenceReplay
from world_model import S3M

OBS_DIM = 5
OBS_SPACE = {"vector": ((OBS_DIM,), np.float32)}
ACTION_DIM = 3


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # These models are tiny: with a second intra-op thread on a shared 2-core machine, every small
    # op waits on a thread barrier and a test takes 100x longer.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def make_agent(discrete: bool = True, overrides: tuple[str, ...] = (), obs_space=OBS_SPACE) -> Agent:
    cfg = load_config(["debug"], list(overrides))
    return Agent(cfg, obs_space, ACTION_DIM, discrete, "cpu")


def make_batch(discrete: bool, B: int = 2, T: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    """A random (B, T) contract batch with an episode boundary inside and a terminal step."""
    rng = np.random.default_rng(seed)
    if discrete:
        action = np.eye(ACTION_DIM, dtype=np.float32)[rng.integers(0, ACTION_DIM, (B, T))]
    else:
        action = rng.uniform(-1, 1, (B, T, ACTION_DIM)).astype(np.float32)
    is_first = np.zeros((B, T), bool)
    is_first[:, 0] = True
    is_first[0, T // 2] = True
    is_last = np.zeros((B, T), bool)
    is_last[0, T // 2 - 1] = True
    return {
        "vector": rng.normal(size=(B, T, OBS_DIM)).astype(np.float32),
        "action": action,
        "reward": rng.normal(size=(B, T)).astype(np.float32),
        "is_first": is_first,
        "is_last": is_last,
        "is_terminal": is_last.copy(),
    }


def make_obs(is_first: list[bool], seed: int = 0) -> dict[str, np.ndarray]:
    """One contract step of N = len(is_first) envs."""
    rng = np.random.default_rng(seed)
    n = len(is_first)
    return {
        "vector": rng.normal(size=(n, OBS_DIM)).astype(np.float32),
        "reward": np.zeros(n, np.float32),
        "is_first": np.array(is_first),
        "is_last": np.zeros(n, bool),
        "is_terminal": np.zeros(n, bool),
    }


def assert_finite(metrics: dict[str, float]) -> None:
    bad = {k: v for k, v in metrics.items() if not np.isfinite(v)}
    assert not bad, f"non-finite metrics: {bad}"


# ----- λ-returns and return normalisation --------------------------------------------------------


def test_lambda_returns_hand_computed() -> None:
    reward = torch.tensor([[1.0], [2.0], [3.0]])  # r_1, r_2, r_3
    cont = torch.tensor([[1.0], [0.0], [1.0]])  # c_2 = 0: the episode ends on reaching state 2
    value = torch.tensor([[10.0], [20.0], [30.0], [40.0]])  # v_0 .. v_3
    returns = lambda_returns(reward, cont, value, discount=0.5, lam=0.5)
    # R_3 = v_3 = 40
    # R_2 = r_3 + γ c_3 ((1-λ) v_3 + λ R_3) = 3 + 0.5 (20 + 20) = 23
    # R_1 = r_2 + γ c_2 (...) = 2 (cut by c_2 = 0)
    # R_0 = r_1 + γ c_1 ((1-λ) v_1 + λ R_1) = 1 + 0.5 (10 + 1) = 6.5
    torch.testing.assert_close(returns, torch.tensor([[6.5], [2.0], [23.0]]))


def test_lambda_returns_limits() -> None:
    torch.manual_seed(1)
    H, N, gamma = 4, 3, 0.9
    reward, value = torch.randn(H, N), torch.randn(H + 1, N)
    cont = torch.ones(H, N)
    td0 = lambda_returns(reward, cont, value, gamma, lam=0.0)
    torch.testing.assert_close(td0, reward + gamma * value[1:])
    mc = lambda_returns(reward, cont, value, gamma, lam=1.0)
    expected = value[-1]
    for t in reversed(range(H)):
        expected = reward[t] + gamma * expected
        torch.testing.assert_close(mc[t], expected)


def test_return_normalizer_percentiles_and_ema() -> None:
    norm = ReturnNormalizer(decay=0.99, low=5.0, high=95.0, min_scale=1.0)
    returns = torch.arange(101.0)  # P5 = 5, P95 = 95 exactly
    norm.update(returns)
    torch.testing.assert_close(norm.low, torch.tensor(0.05))
    torch.testing.assert_close(norm.high, torch.tensor(0.95))
    assert norm.scale().item() == 1.0  # 0.9 spread is below min_scale: not scaled up
    norm.update(returns)
    torch.testing.assert_close(norm.low, torch.tensor(0.99 * 0.05 + 0.01 * 5.0))
    torch.testing.assert_close(norm.high, torch.tensor(0.99 * 0.95 + 0.01 * 95.0))
    for _ in range(2000):
        norm.update(returns)
    torch.testing.assert_close(norm.scale(), torch.tensor(90.0), rtol=1e-4, atol=1e-4)
    state = norm.state_dict()
    assert set(state) == {"low", "high"}
    fresh = ReturnNormalizer()
    fresh.load_state_dict(state)
    assert fresh.scale().item() == norm.scale().item()


# ----- acting ------------------------------------------------------------------------------------


@pytest.mark.parametrize("world_model", ["s3m", "rssm"])
def test_policy_resets_per_env(world_model: str) -> None:
    agent = make_agent(overrides=(f"world_model={world_model}", "agent.policy_input=full"))
    state = None
    for t in range(3):
        action, state = agent.policy(make_obs([t == 0] * 3, seed=t), state)
        assert action.shape == (3, ACTION_DIM) and action.dtype == np.float32
        np.testing.assert_array_equal(action.sum(-1), 1.0)  # one-hot
        torch.testing.assert_close(state["action"], torch.as_tensor(action))
    obs = make_obs([False, True, False], seed=9)
    _, after = agent.policy(obs, state)
    # Env 1 restarted: its latent must equal a fresh start on the same observation.
    _, fresh = agent.policy({k: v[1:2] for k, v in obs.items()}, None)
    deterministic = [k for k in after if k not in ("z", "action")]  # h, and x for the S3M
    assert deterministic
    for key in deterministic:
        torch.testing.assert_close(after[key][1:2], fresh[key], msg=key)
        # The other envs carried on from their history.
        assert not torch.allclose(after[key][0:1], fresh[key]), key
    # With the same z, the actor then sees the same features, so the same action distribution.
    same_z = {**fresh, "z": after["z"][1:2]}
    feats = agent.world_model.features({k: v[1:2] for k, v in after.items()}, agent.policy_input)
    feats_fresh = agent.world_model.features(same_z, agent.policy_input)
    torch.testing.assert_close(feats, feats_fresh)


def test_policy_modes_and_continuous_range() -> None:
    agent = make_agent(discrete=False)
    obs = make_obs([True, True])
    action, state = agent.policy(obs, None, mode="explore")
    assert action.shape == (2, ACTION_DIM) and np.all(np.abs(action) <= 1.0)
    action_eval, _ = agent.policy(obs, state, mode="eval")
    assert np.all(np.abs(action_eval) < 1.0)
    with pytest.raises(AssertionError, match="mode"):
        agent.policy(obs, state, mode="greedy")


# ----- training ----------------------------------------------------------------------------------


@pytest.mark.parametrize("policy_input", ["output", "hidden", "full"])
def test_policy_inputs_train_and_act(policy_input: str) -> None:
    agent = make_agent(overrides=(f"agent.policy_input={policy_input}",))
    assert agent.actor_critic.feature_dim == agent.world_model.feature_dim(policy_input)
    metrics = agent.train(make_batch(True))
    assert_finite(metrics)
    assert {"wm/total_loss", "actor/loss", "critic/loss", "return/scale", "adv/std"} <= set(metrics)
    action, _ = agent.policy(make_obs([True, False]))
    assert action.shape == (2, ACTION_DIM)
    assert agent.updates == 1


@pytest.mark.parametrize("discrete", [True, False])
@pytest.mark.parametrize("world_model", ["s3m", "rssm"])
def test_action_spaces_train(discrete: bool, world_model: str) -> None:
    agent = make_agent(discrete, (f"world_model={world_model}",))
    assert agent.actor_critic.actor_grad == ("reinforce" if discrete else "dynamics")
    before = [p.clone() for p in agent.actor_critic.actor.parameters()]
    metrics = agent.train(make_batch(discrete))
    assert_finite(metrics)
    assert metrics["actor/grad_norm"] > 0
    changed = [not torch.equal(a, b) for a, b in zip(before, agent.actor_critic.actor.parameters())]
    assert any(changed), "the actor did not move"


@pytest.mark.parametrize("count", [0, 5, 12, 50])
def test_imag_starts_picks_a_subset_of_the_posterior_states(count: int) -> None:
    agent = make_agent(overrides=(f"agent.imag_starts={count}",))
    batch = make_batch(True)  # B x T = 2 x 6 = 12 posterior states
    seen = {}
    update = agent.actor_critic.update

    def spy(world_model, start, start_cont):
        seen["start"], seen["cont"] = start, start_cont
        return update(world_model, start, start_cont)

    agent.actor_critic.update = spy
    assert_finite(agent.train(batch))
    expected = count if 0 < count < 12 else 12  # 0 or more than B*T: all of them
    assert seen["cont"].shape == (expected,)
    assert all(v.shape[0] == expected for v in seen["start"].values())


@pytest.mark.parametrize(
    "imag_cont, p, expected", [("mode", 0.7, 1.0), ("mode", 0.3, 0.0), ("mean", 0.7, 0.7)]
)
def test_imag_cont_gives_the_returns_the_mode_or_the_probability(monkeypatch, imag_cont, p, expected) -> None:
    agent = make_agent(overrides=(f"agent.imag_cont={imag_cont}",))
    wm = agent.world_model
    predict = wm.reward_and_cont
    monkeypatch.setattr(
        wm, "reward_and_cont", lambda state: (predict(state)[0], torch.full(state["z"].shape[:-1], p))
    )
    seen = {}
    returns = actor_critic_module.lambda_returns

    def spy(reward, cont, value, discount, lam):
        seen["cont"] = cont
        return returns(reward, cont, value, discount, lam)

    monkeypatch.setattr(actor_critic_module, "lambda_returns", spy)
    assert_finite(agent.train(make_batch(True)))
    H = agent.cfg.agent.horizon
    assert seen["cont"].shape[0] == H
    torch.testing.assert_close(seen["cont"], torch.full_like(seen["cont"], expected))


def test_image_observations_train() -> None:
    space = {"image": ((16, 16, 3), np.uint8)}
    agent = make_agent(obs_space=space)
    batch = make_batch(True)
    del batch["vector"]
    batch["image"] = np.random.default_rng(0).integers(0, 256, (2, 6, 16, 16, 3), dtype=np.uint8)
    assert_finite(agent.train(batch))


@pytest.mark.parametrize("discrete", [True, False])  # REINFORCE and dynamics backprop
def test_actor_critic_update_leaves_world_model_alone(discrete: bool) -> None:
    agent = make_agent(discrete)
    agent.train(make_batch(discrete))  # trained heads, so rewards and values are not all zero
    wm = agent.world_model
    wm.zero_grad(set_to_none=True)
    before = {name: p.clone() for name, p in wm.named_parameters()}
    requires = {name: p.requires_grad for name, p in wm.named_parameters()}
    batch = make_batch(discrete, seed=1)
    with torch.no_grad():
        post, _, _, _ = wm.observe({k: torch.as_tensor(v) for k, v in batch.items()})
    starts = {k: post[k].flatten(0, 1) for k in wm.state_keys}
    start_cont = torch.ones(starts["z"].shape[0])
    agent.actor_critic.update(wm, starts, start_cont)
    for name, p in wm.named_parameters():
        assert p.grad is None, f"actor-critic gradient reached world-model parameter {name}"
        assert torch.equal(p, before[name]), f"world-model parameter {name} changed"
        assert p.requires_grad == requires[name], f"requires_grad of {name} not restored"
    grads = [p.grad for p in agent.actor_critic.actor.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_actor_losses_match_their_definitions() -> None:
    """REINFORCE: -mean[w (log π · sg((R - v) / S) + η H)], gradients only to log π and H.
    Dynamics backprop: -mean[w ((R - v) / S + η H)], gradients to R, v and H."""
    gen = torch.Generator().manual_seed(0)
    H, N, eta, scale = 4, 3, 3e-4, torch.tensor(2.5)
    weight = torch.rand(H, N, generator=gen)
    count = H * N

    def leaves():
        return [torch.randn(H, N, generator=gen).requires_grad_() for _ in range(4)]

    logpi, returns, value, entropy = leaves()
    loss = actor_critic_module.reinforce_loss(logpi, returns, value, scale, entropy, weight, eta)
    adv = (returns - value).detach() / scale
    torch.testing.assert_close(loss, -(weight * (logpi * adv + eta * entropy)).mean())
    loss.backward()
    torch.testing.assert_close(logpi.grad, -weight * adv / count)
    torch.testing.assert_close(entropy.grad, -weight * eta / count)
    assert returns.grad is None and value.grad is None

    logpi, returns, value, entropy = leaves()
    loss = actor_critic_module.dynamics_loss(logpi, returns, value, scale, entropy, weight, eta)
    torch.testing.assert_close(loss, -(weight * ((returns - value) / scale + eta * entropy)).mean())
    loss.backward()
    torch.testing.assert_close(returns.grad, -weight / scale / count)
    torch.testing.assert_close(value.grad, weight / scale / count)  # the baseline keeps its graph
    torch.testing.assert_close(entropy.grad, -weight * eta / count)
    assert logpi.grad is None


def test_dynamics_backprop_gradient_goes_through_the_world_model() -> None:
    """With dynamics backprop the actor's gradient includes the return's path through imagination."""
    agent = make_agent(discrete=False, overrides=("agent.entropy=0.0",))
    agent.train(make_batch(False))
    ac, wm = agent.actor_critic, agent.world_model
    batch = make_batch(False, seed=2)
    with torch.no_grad():
        post, _, _, _ = wm.observe({k: torch.as_tensor(v) for k, v in batch.items()})
    starts = {k: post[k].flatten(0, 1) for k in wm.state_keys}
    # No entropy term and REINFORCE off: a non-zero actor gradient can only come through the model.
    ac.update(wm, starts, torch.ones(starts["z"].shape[0]))
    assert sum(p.grad.abs().sum() for p in ac.actor.parameters()) > 0


def test_dynamics_backprop_actor_gradient_is_that_of_the_normalised_advantage(monkeypatch) -> None:
    """Dynamics backprop: the actor's gradient is that of -((R_t - v_t) / S + η H_t) w_t, mean over t < H.

    DreamerV3 `ImagActorCritic.loss` (`backprop`, as R2I uses it): adv = normed_ret - normed_base with
    the baseline v_t = critic(s_t) keeping its graph through the frozen critic and the imagined states.
    The expected gradient is computed here from the same imagined trajectory (same seed), by hand.
    """
    cfg = load_config(["debug"], ["agent.grad_clip=1e9"])  # no clipping: compare raw gradients
    wm = S3M(OBS_SPACE, ACTION_DIM, cfg.model, cfg.s3m)
    ac = ActorCritic(wm.feature_dim(cfg.agent.policy_input), ACTION_DIM, False, cfg.agent)
    assert ac.actor_grad == "dynamics"
    with torch.no_grad():
        # The reward head and the critic start at exactly 0: random output layers make R_t and v_t
        # depend on the actions. A large continue bias keeps every imagined step (weights w_t > 0).
        for head in (wm.reward_head.mlp.out, ac.critic.mlp.out):
            torch.nn.init.normal_(head.weight, std=0.3)
        wm.cont_head.mlp.out.bias.fill_(5.0)
        post, _, _, _ = wm.observe({k: torch.as_tensor(v) for k, v in make_batch(False).items()})
    starts = {k: post[k].flatten(0, 1) for k in wm.state_keys}
    start_cont = torch.ones(starts["z"].shape[0])
    actor_params = list(ac.actor.parameters())
    a = cfg.agent

    # By hand, before the update moves the critic and the return normaliser.
    torch.manual_seed(3)
    feats, entropy = [], []

    def act(state):
        f = wm.features(state, ac.policy_input)
        dist = ac.policy(f.detach())
        action = dist.rsample()  # the same draws, in the same order, as the update's imagination
        feats.append(f)
        entropy.append(dist.entropy())
        return action

    traj = wm.imagine(starts, act, a.horizon)
    arrived = {k: v[1:] for k, v in traj.items() if k != "action"}
    reward = wm.reward(arrived)  # (H, N)
    with torch.no_grad():
        cont = (wm.cont(arrived) > 0.5).float()
    value = ac.critic(torch.stack(feats)).mean()  # (H + 1, N), with its graph
    returns = lambda_returns(reward, cont, value, a.discount, a.return_lambda)
    norm = copy.deepcopy(ac.retnorm)
    norm.update(returns)
    scale = norm.scale()
    weight = torch.cumprod(a.discount * torch.cat([start_cont[None], cont]), 0) / a.discount
    assert (weight > 0).all()
    ent = a.entropy * torch.stack(entropy)[:-1]
    loss = (-((returns - value[:-1]) / scale + ent) * weight[:-1]).mean()
    expected = torch.autograd.grad(loss, actor_params, retain_graph=True)
    return_only = torch.autograd.grad((-(returns / scale + ent) * weight[:-1]).mean(), actor_params)

    seen = {}

    def capture():  # in place of the actor's step: the gradients after clipping (off here)
        seen["grads"] = [p.grad.clone() for p in actor_params]

    monkeypatch.setattr(ac.actor_opt, "step", capture)
    torch.manual_seed(3)
    ac.update(wm, starts, start_cont)
    for got, want in zip(seen["grads"], expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)
    # Not vacuous: the baseline's own gradient is a sizeable part of the total.
    diff = max((e - r).abs().max().item() for e, r in zip(expected, return_only))
    assert diff > 1e-2 * max(e.abs().max().item() for e in expected)


def test_slow_critic_moves_by_the_ema_fraction() -> None:
    cfg = load_config(["debug"]).agent
    ac = ActorCritic(8, ACTION_DIM, True, cfg)
    for p in ac.critic.parameters():
        torch.nn.init.normal_(p)
    slow_before = [p.clone() for p in ac.slow_critic.parameters()]
    ac.update_slow_critic()
    for old, new, fast in zip(slow_before, ac.slow_critic.parameters(), ac.critic.parameters()):
        torch.testing.assert_close(new, old + cfg.slow_critic_fraction * (fast - old))
    assert not any(p.requires_grad for p in ac.slow_critic.parameters())


def test_full_update_moves_slow_critic_towards_new_critic() -> None:
    agent = make_agent()
    ac = agent.actor_critic
    slow_before = [p.clone() for p in ac.slow_critic.parameters()]
    agent.train(make_batch(True))
    f = agent.cfg.agent.slow_critic_fraction
    for old, new, fast in zip(slow_before, ac.slow_critic.parameters(), ac.critic.parameters()):
        torch.testing.assert_close(new, (1 - f) * old + f * fast)


# ----- checkpoints and replay context -----------------------------------------------------------


def test_state_dict_round_trip() -> None:
    agent = make_agent()
    agent.train(make_batch(True))
    torch.manual_seed(123)
    other = make_agent()  # different initial weights
    other.load_state_dict(agent.state_dict())
    assert other.updates == 1
    obs = make_obs([True, True, True])
    torch.manual_seed(7)
    a1, _ = agent.policy(obs)
    torch.manual_seed(7)
    a2, _ = other.policy(obs)
    np.testing.assert_array_equal(a1, a2)
    # Optimiser states and the return normaliser travelled too: the next update is identical.
    batch = make_batch(True, seed=3)
    torch.manual_seed(8)
    m1 = agent.train(batch)
    torch.manual_seed(8)
    m2 = other.train(batch)
    assert m1 == m2
    counts = agent.parameter_counts()
    assert counts["total"] == counts["world_model"] + counts["actor"] + counts["critic"] > 0


@pytest.mark.parametrize("world_model", ["s3m", "rssm"])
def test_replay_context_start_keys_are_consumed(world_model: str) -> None:
    agent = make_agent(overrides=(f"world_model={world_model}",))
    replay = SequenceReplay(capacity=200, num_streams=2, seed=0, store_state=True)
    state = None
    for t in range(12):
        obs = make_obs([t == 0, t == 0], seed=t)
        action, state = agent.policy(obs, state)
        stored = agent.replay_state(state)
        assert all(v.dtype == np.float32 for v in stored.values())
        replay.add({**obs, "action": action, **stored})
    batch = replay.sample(2, 6)
    assert "start/valid" in batch and batch["start/valid"].all()
    valid = np.array([True, False])
    batch["start/valid"] = valid  # one sequence whose stored state is gone
    batch["is_first"][1, 0] = True

    # Before the update: the RSSM's initial z is the prior's mode at h_init, which training moves.
    with torch.no_grad():
        init = agent.world_model.initial_state(2)
    seen = {}
    update = agent.world_model.update

    def spy(data, start=None):
        seen["start"], seen["keys"] = start, set(data)
        return update(data, start)

    agent.world_model.update = spy
    assert_finite(agent.train(batch))
    assert not any(k.startswith("start/") for k in seen["keys"])
    start = seen["start"]
    assert start is not None and set(start) == set(init)
    for key, value in start.items():
        stored = torch.as_tensor(batch[f"start/{key}"][0])
        if value.is_complex():
            stored = torch.view_as_complex(stored)
        torch.testing.assert_close(value[0], stored, msg=key)  # the stored latent
        torch.testing.assert_close(value[1], init[key][1], msg=key)  # not valid: initial
