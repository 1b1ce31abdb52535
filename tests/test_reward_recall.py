"""benchmarks/reward_recall.py's offline data: random-action replays that any recipe can train on."""

from __future__ import annotations

import numpy as np
import torch

import envs
from agent import Agent
from benchmarks.reward_recall import collect
from configs import load_config
from replay import START_PREFIX

ENV_ID = "bsuite:memory_len/0"


def test_collect_stores_no_state_even_where_the_recipe_replays_stored_states():
    # A recipe with replay context (popgym_cpu's `replay.store_state=true`) would sample
    # `start/valid` with no stored latent behind it, which Agent.train refuses; random-action
    # steps carry no latent, so the offline replay must start every sample from the initial state.
    cfg = load_config(["debug"], [f"env.name={ENV_ID}", "replay.store_state=true"])
    replay = collect(ENV_ID, 64, 0, cfg.replay)
    assert not replay.store_state
    batch = replay.sample(2, 8)
    assert not any(key.startswith(START_PREFIX) for key in batch)
    with envs.VectorEnv(ENV_ID, 1, 0) as env:
        agent = Agent(cfg, env.obs_space, env.action_dim, env.discrete, torch.device("cpu"))
    metrics = agent.train(batch)
    assert np.isfinite(metrics["wm/total_loss"])
