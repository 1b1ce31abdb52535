"""Mixed precision: which precision a device gets, what runs in bfloat16 / float16 and what stays
float32, step mode against `observe` under each precision, a debug training per precision, and
float16's loss scaling (overflowed steps skipped, scales checkpointed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from world_model_data import VECTOR, A, make_batch

import run_agent
from agent import Agent
from agent.guards import UpdateGuard
from agent.precision import autocast_context, cpu_flags, make_grad_scaler, resolve_precision
from configs import load_config, load_config_file
from configs.loader import ConfigError
from world_model import S3M
from world_model.base import stack_states
from world_model.rssm import RSSM

CPU = torch.device("cpu")
# Step mode against observe, largest elementwise difference allowed: float32 differs only by the
# order of its sums; bfloat16 keeps 8 bits of mantissa (relative error 2^-8 per rounding), and
# an S3M or RSSM step rounds through several layers, so 0.05 on values of order 1; float16 keeps
# 11 bits (2^-11), so 0.01.
TOLERANCE = {"32": 1e-5, "bf16-mixed": 5e-2, "16-mixed": 1e-2}
HALF = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def test_cpu_flags_and_auto_precision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16\n\nprocessor\t: 1\n")
    assert {"avx512f", "avx512_bf16"} <= cpu_flags(info)
    assert cpu_flags(tmp_path / "absent") == set()
    monkeypatch.setattr("agent.precision.cpu_flags", lambda: {"avx2", "avx512_bf16"})
    assert resolve_precision("auto", CPU) == "bf16-mixed"
    monkeypatch.setattr("agent.precision.cpu_flags", lambda: {"avx2", "avx512f"})
    assert resolve_precision("auto", CPU) == "32"
    assert resolve_precision("bf16-mixed", CPU) == "bf16-mixed"  # asked for, it is given
    assert resolve_precision("16-mixed", CPU) == "16-mixed"  # never chosen by auto, but given
    with pytest.raises(ConfigError, match="precision"):
        load_config(["debug"], ["precision=fp8"])


def make_model(kind: str):
    cfg = load_config(["debug"])
    torch.manual_seed(0)
    if kind == "s3m":
        model = S3M(VECTOR, A, cfg.model, cfg.s3m)
    else:
        model = RSSM(VECTOR, A, cfg.model, cfg.rssm)
    # Probabilities in place of samples: deterministic, and continuous, so that a bfloat16 rounding
    # cannot flip a one-hot sample and the two paths can be compared within a tolerance.
    model._sample_latent = lambda logits: model._latent_dist(logits).probs.flatten(-2)
    return model


@pytest.mark.parametrize("precision", ["32", "bf16-mixed", "16-mixed"])
@pytest.mark.parametrize("kind", ["s3m", "rssm"])
def test_step_mode_equals_observe_under_each_precision(kind: str, precision: str):
    model = make_model(kind)
    context = autocast_context(precision, CPU)
    batch = make_batch(VECTOR, 3, 12, reset_at=(5, 9))
    with torch.no_grad(), context():
        post, _, _, _ = model.observe(batch)
        state, states = model.initial_state(3), []
        for t in range(12):
            state = model.step(state, {"vector": batch["vector"][:, t]}, batch["is_first"][:, t])
            states.append(state)
            state = {**state, "action": batch["action"][:, t]}
    stepped = stack_states(states, dim=1)
    for key in model.state_keys:
        torch.testing.assert_close(
            stepped[key].to(post[key].dtype), post[key], rtol=0, atol=TOLERANCE[precision]
        )
    if kind == "s3m":  # the SSM states are complex64 whatever the precision
        assert post["x"].dtype == stepped["x"].dtype == torch.complex64


def agent_and_batch(precision: str, world_model: str = "s3m"):
    cfg = load_config(["debug"], [f"precision={precision}", f"world_model={world_model}"])
    torch.manual_seed(0)
    agent = Agent(cfg, VECTOR, A, True)
    batch = {k: v.numpy() for k, v in make_batch(VECTOR, 2, 8, reset_at=(3,)).items()}
    return agent, batch


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
@pytest.mark.parametrize("world_model", ["s3m", "rssm"])
def test_mixed_precision_computes_matmuls_in_half_and_keeps_the_rest_float32(
    world_model: str, precision: str
):
    agent, batch = agent_and_batch(precision, world_model)
    assert agent.precision == precision
    half = HALF[precision]
    seen: dict[str, torch.dtype] = {}

    def record(name: str):
        def hook(module, inputs, output) -> None:  # returns None: the output is left as it is
            seen.setdefault(name, output.dtype)

        return hook

    hooks = [
        module.register_forward_hook(record(name))
        for name, module in [
            ("encoder", agent.world_model.encoder.mlp.hidden[0]),
            ("actor", agent.actor_critic.actor.mlp.hidden[0]),
            ("critic", agent.actor_critic.critic.mlp.hidden[0]),
        ]
    ]
    metrics = agent.train(batch)
    for hook in hooks:
        hook.remove()
    assert seen == {"encoder": half, "actor": half, "critic": half}
    # The features actor and critic read: cast once under autocast, float32 without.
    start = agent.world_model.initial_state(2)
    for policy_input in ("output", "hidden", "full"):
        with agent.autocast():
            assert agent.world_model.features(start, policy_input).dtype == half
        assert agent.world_model.features(start, policy_input).dtype == torch.float32
    # Under 16-mixed the first scaled gradients may overflow (their steps skipped, norms inf).
    overflow_allowed = precision == "16-mixed"
    assert all(np.isfinite(v) for k, v in metrics.items() if not (overflow_allowed and "grad_norm" in k))
    networks = [agent.world_model, agent.actor_critic]
    assert {p.dtype for net in networks for p in net.parameters()} == {torch.float32}
    assert {p.grad.dtype for net in networks for p in net.parameters() if p.grad is not None} == {
        torch.float32
    }
    optimizers = [agent.world_model.opt, agent.actor_critic.actor_opt, agent.actor_critic.critic_opt]
    moments = {s["exp_avg"].dtype for opt in optimizers for s in opt.state.values()}
    assert moments == {torch.float32}
    assert agent.actor_critic.retnorm.low.dtype == torch.float32
    # Losses and their reductions are float32: the same update at float32 gives nearly the same.
    reference, _ = agent_and_batch("32", world_model)
    expected = reference.train(batch)
    for key in ("wm/total_loss", "wm/reward_loss", "wm/kl"):
        assert metrics[key] == pytest.approx(expected[key], rel=0.05, abs=1e-3), key
    # Acting on a CPU runs in float32 (no matmul there is large enough for bfloat16 to pay):
    # float32 actions, float32 / complex64 states, the actor's layers in float32.
    obs = {"vector": batch["vector"][:, 0], "is_first": np.ones(2, bool)}
    seen.clear()
    hook = agent.actor_critic.actor.mlp.hidden[0].register_forward_hook(record("actor"))
    action, state = agent.policy(obs)
    hook.remove()
    assert seen == {"actor": torch.float32}
    assert action.dtype == np.float32 and np.isfinite(action).all()
    if world_model == "s3m":
        assert state["x"].dtype == torch.complex64
    else:
        assert state["h"].dtype == torch.float32


@pytest.mark.parametrize("precision", ["32", "bf16-mixed", "16-mixed"])
def test_every_precision_runs_a_debug_training(precision: str, tmp_path: Path):
    args = ["--preset", "debug", "train.steps=40", "train.prefill=20", "train.log_every=10"]
    args += ["env.options={max_steps: 16}"]
    logdir = tmp_path / "run"
    assert run_agent.main([*args, f"precision={precision}", "--logdir", str(logdir)]) == 0
    assert load_config_file(logdir / "config.yaml").precision == precision
    losses = [
        m["wm/total_loss"] for m in map(json.loads, open(logdir / "metrics.jsonl")) if "wm/total_loss" in m
    ]
    assert losses and np.isfinite(losses).all()
    scales = [m.get("wm/loss_scale") for m in map(json.loads, open(logdir / "metrics.jsonl"))]
    scales = [s for s in scales if s is not None]
    assert bool(scales) == (precision == "16-mixed")  # logged where the losses are scaled
    assert all(s > 0 for s in scales)


def test_16_mixed_skips_an_overflowed_step_and_keeps_its_loss_scales():
    agent, batch = agent_and_batch("16-mixed")
    assert agent.scales_loss
    assert not make_grad_scaler("bf16-mixed", CPU).is_enabled()
    guard = UpdateGuard(agent, max_skipped=1)
    for _ in range(3):  # the optimisers' moments, and the scales halved past early overflows
        metrics, _ = guard.train(batch)
        assert metrics is not None and metrics["wm/loss_scale"] <= 2.0**16
    actor_scale = agent.actor_critic.actor_scaler.get_scale()
    # A scale of 2^120 overflows float16's range (65504) in the scaled backward pass.
    agent.world_model.scaler = make_grad_scaler("16-mixed", CPU)
    agent.world_model.scaler.load_state_dict({**agent.world_model.scaler.state_dict(), "scale": 2.0**120})
    before = {k: v.clone() for k, v in agent.world_model.state_dict().items()}
    moments = [s["exp_avg"].clone() for s in agent.world_model.opt.state.values()]
    metrics, _ = guard.train(batch)
    # The scaler skipped the world model's step: weights and moments as they were, the scale
    # halved, the norm inf; not a fault, so the guard kept the update (the actor's and critic's
    # steps, whose own scalers did not overflow, went through) and counts no skip.
    assert metrics is not None and guard.skipped == 0
    assert not np.isfinite(metrics["wm/grad_norm"]) and np.isfinite(metrics["wm/total_loss"])
    assert metrics["wm/loss_scale"] == 2.0**119
    for key, value in agent.world_model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0, msg=key)
    for moment, state in zip(moments, agent.world_model.opt.state.values()):
        torch.testing.assert_close(state["exp_avg"], moment, rtol=0, atol=0)
    assert np.isfinite(metrics["actor/grad_norm"]) and metrics["actor/loss_scale"] >= actor_scale
    # The scales travel with the checkpoint; one from before the loss scalers still loads.
    saved = agent.state_dict()
    assert saved["loss_scalers"]["wm"]["scale"] == 2.0**119
    fresh, _ = agent_and_batch("16-mixed")
    fresh.load_state_dict(saved)
    assert fresh.world_model.scaler.get_scale() == 2.0**119
    older = {k: v for k, v in saved.items() if k != "loss_scalers"}
    fresh, _ = agent_and_batch("16-mixed")
    fresh.load_state_dict(older)
    assert fresh.world_model.scaler.get_scale() == 2.0**16  # starts afresh
    bf16, _ = agent_and_batch("bf16-mixed")
    bf16.load_state_dict(saved)  # another precision: its pass-through scalers ignore the scales
    assert not bf16.scales_loss


@pytest.mark.parametrize("selective", [False, True])
def test_s5_projections_follow_autocast_only_with_mixed_projections(selective: bool):
    from world_model.ssm import S5Layer

    torch.manual_seed(0)
    mixed = S5Layer(64, 32, blocks=2, selective=selective)
    if selective:  # a nonzero W_Δ, so Δ_t depends on u
        torch.nn.init.normal_(mixed.dt_proj.weight, std=0.1)
    full = S5Layer(64, 32, blocks=2, selective=selective, mixed_projections=False)
    full.load_state_dict(mixed.state_dict())
    u, is_first = torch.randn(3, 20, 64), torch.zeros(3, 20, dtype=torch.bool)
    x0 = mixed.initial_state(3)
    with torch.no_grad():
        y32, x32 = mixed(u, is_first, x0)  # no autocast: float32 either way
        with autocast_context("bf16-mixed", CPU)():
            y_mixed, x_mixed = mixed(u, is_first, x0)
            y_full, x_full = full(u, is_first, x0)
            y_step, x_step = mixed.step(u[:, 0], is_first[:, 0], x0)
    # States complex64 and outputs float32 whatever the projections ran in.
    assert {x_mixed.dtype, x_full.dtype, x_step.dtype} == {torch.complex64}
    assert {y_mixed.dtype, y_full.dtype, y_step.dtype} == {torch.float32}
    # float32 projections give float32's numbers; bfloat16 ones differ by bfloat16's rounding.
    torch.testing.assert_close(y_full, y32, rtol=0, atol=1e-6)
    error = (y_mixed - y32).abs().max().item()
    assert 1e-4 < error < TOLERANCE["bf16-mixed"], error
    torch.testing.assert_close(y_step, y_mixed[:, 0], rtol=0, atol=1e-5)


def test_to_autocast_dtype_casts_floats_under_autocast_only():
    from world_model.networks import to_autocast_dtype

    x, index = torch.randn(4, 3), torch.arange(4)
    assert to_autocast_dtype(x) is x
    with autocast_context("bf16-mixed", CPU)():
        assert to_autocast_dtype(x).dtype == torch.bfloat16
        assert to_autocast_dtype(index) is index
        # What a Linear reads is the same whether cast before or by autocast.
        layer = torch.nn.Linear(3, 5)
        torch.testing.assert_close(layer(to_autocast_dtype(x)), layer(x), rtol=0, atol=0)
    with autocast_context("32", CPU)():
        assert to_autocast_dtype(x) is x
