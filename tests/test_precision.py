"""Mixed precision: which precision a device gets, what runs in bfloat16 and what stays float32,
step mode against `observe` under each precision, and a debug training per precision."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from world_model_data import VECTOR, A, make_batch

import run_agent
from agent import Agent
from agent.precision import autocast_context, cpu_flags, resolve_precision
from configs import load_config, load_config_file
from configs.loader import ConfigError
from world_model import S3M
from world_model.base import stack_states
from world_model.rssm import RSSM

CPU = torch.device("cpu")
# Step mode against observe, largest elementwise difference allowed: float32 differs only by the
# order of its sums; bfloat16 keeps 8 bits of mantissa (relative error 2^-8 per rounding), and
# an S3M or RSSM step rounds through several layers, so 0.05 on values of order 1.
TOLERANCE = {"32": 1e-5, "bf16-mixed": 5e-2}


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


@pytest.mark.parametrize("precision", ["32", "bf16-mixed"])
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


@pytest.mark.parametrize("world_model", ["s3m", "rssm"])
def test_bf16_mixed_computes_matmuls_in_bfloat16_and_keeps_the_rest_float32(world_model: str):
    agent, batch = agent_and_batch("bf16-mixed", world_model)
    assert agent.precision == "bf16-mixed"
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
    assert seen == {"encoder": torch.bfloat16, "actor": torch.bfloat16, "critic": torch.bfloat16}
    assert all(np.isfinite(value) for value in metrics.values())
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
    # Acting under autocast gives float32 actions and carries float32 / complex64 states.
    obs = {"vector": batch["vector"][:, 0], "is_first": np.ones(2, bool)}
    action, state = agent.policy(obs)
    assert action.dtype == np.float32 and np.isfinite(action).all()
    if world_model == "s3m":
        assert state["x"].dtype == torch.complex64
    else:
        assert state["h"].dtype == torch.float32


@pytest.mark.parametrize("precision", ["32", "bf16-mixed"])
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
