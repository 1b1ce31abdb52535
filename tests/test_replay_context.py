"""Replay context (DreamerV3): the posteriors of every update are written back into replay.

With `replay.store_state`, each step is stored with the latent after observing it, and a sampled
sequence starts from the stored latent of the step before it. DreamerV3 refreshes those latents
with the training posteriors after every update, so that sequences start from a recent model's
latents rather than those of the model that acted, e.g. the untrained one during prefill.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import run_agent
from agent import Agent
from configs import load_config
from replay import SequenceReplay

OBS_DIM, ACTION_DIM, NUM_ENVS, EPISODE = 5, 3, 2, 10


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny models on a shared CPU: a second intra-op thread only adds barrier waits.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def make_obs(t: int) -> dict[str, np.ndarray]:
    """Contract step t of NUM_ENVS envs whose episodes last EPISODE steps."""
    rng = np.random.default_rng(t)
    is_first = np.full(NUM_ENVS, t % EPISODE == 0)
    is_last = np.full(NUM_ENVS, t % EPISODE == EPISODE - 1)
    return {
        "vector": rng.normal(size=(NUM_ENVS, OBS_DIM)).astype(np.float32),
        "reward": rng.normal(size=NUM_ENVS).astype(np.float32),
        "is_first": is_first,
        "is_last": is_last,
        "is_terminal": np.zeros(NUM_ENVS, bool),
    }


def acted_replay(agent: Agent, steps: int) -> SequenceReplay:
    """A replay filled as the loop fills it: each step stored with `agent.replay_state`."""
    replay = SequenceReplay(capacity=1000, num_streams=NUM_ENVS, seed=0, store_state=True)
    state = None
    for t in range(steps):
        obs = make_obs(t)
        action, state = agent.policy(obs, state)
        replay.add({**obs, "action": action, **agent.replay_state(state)})
    return replay


def disjoint(batch: dict[str, np.ndarray], seq_len: int) -> dict[str, np.ndarray]:
    """The sequences of `batch` that share no step with an earlier one (B' <= B).

    Where sampled sequences overlap, either one's posterior may end up stored for the shared steps.
    """
    taken: set[tuple[int, int]] = set()
    keep = []
    for b, (stream, first) in enumerate(zip(batch["start/stream"], batch["start/index"])):
        steps = {(int(stream), int(first) + t) for t in range(seq_len)}
        if not steps & taken:
            keep.append(b)
            taken |= steps
    return {key: value[keep] for key, value in batch.items()}


@pytest.mark.parametrize("world_model", ["s3m", "rssm"])
def test_train_returns_the_posterior_that_replay_then_stores(world_model: str) -> None:
    cfg = load_config(["debug"], [f"world_model={world_model}"])
    agent = Agent(cfg, {"vector": ((OBS_DIM,), np.float32)}, ACTION_DIM, True, "cpu")
    replay = acted_replay(agent, 30)
    B, T = 8, 6
    agent.train(replay.sample(B, T))  # the model that trains is no longer the one that acted
    before = [replay.stream_steps(s) for s in range(NUM_ENVS)]
    batch = disjoint(replay.sample(B, T), T)
    assert len(batch["start/index"]) >= 2 and batch["start/valid"].any()

    seen = {}
    update = agent.world_model.update

    def spy(data, start=None):
        seen["post"], metrics, last = update(data, start)
        return seen["post"], metrics, last

    agent.world_model.update = spy
    metrics, states = agent.train_with_states(batch)
    assert all(np.isfinite(v) for v in metrics.values())
    keys = {"state/" + k for k in agent.initial_state(1)}
    assert set(states) == keys == {k for k in replay.spec if k.startswith("state/")}
    count = replay.update_state(batch["start/stream"], batch["start/index"], states)
    assert count == len(batch["start/index"]) * T  # no step was evicted

    post = seen["post"]
    expected = {"state/action": batch["action"]}
    for key in keys - {"state/action"}:
        value = post[key[len("state/") :]]
        expected[key] = (torch.view_as_real(value) if value.is_complex() else value).float().numpy()
    written = np.zeros((NUM_ENVS, 30), bool)
    acted_z = []  # what the policy stored for the batch's steps, (B', T, S·C)
    for b, (stream, first) in enumerate(zip(batch["start/stream"], batch["start/index"])):
        acted_z.append(before[stream]["state/z"][first : first + T])  # the replay holds steps [0, 30)
        stored = replay.stream_steps(int(stream), int(first), int(first) + T)
        for key in keys:
            assert stored[key].dtype == np.float32, key
            np.testing.assert_array_equal(stored[key], expected[key][b], err_msg=key)
        written[stream, first : first + T] = True
    assert not np.array_equal(np.stack(acted_z), expected["state/z"]), "posterior equals acting"

    for s in range(NUM_ENVS):  # steps no sequence covered keep the latents the policy stored
        after = replay.stream_steps(s)
        for key in keys:
            np.testing.assert_array_equal(after[key][~written[s]], before[s][key][~written[s]], err_msg=key)


def test_train_without_replay_context_returns_no_states() -> None:
    agent = Agent(load_config(["debug"]), {"vector": ((OBS_DIM,), np.float32)}, ACTION_DIM, True, "cpu")
    replay = acted_replay(agent, 12)
    batch = {k: v for k, v in replay.sample(2, 6).items() if not k.startswith("start/")}
    metrics, states = agent.train_with_states(batch)
    assert states == {} and metrics


def test_run_refreshes_prefill_latents_and_saves_them(tmp_path, monkeypatch) -> None:
    made: list[SequenceReplay] = []
    acted: list[dict[str, np.ndarray]] = []  # the state/... keys of every step the loop added
    make_replay = run_agent.make_replay

    def recording_replay(cfg, num_streams):
        replay = make_replay(cfg, num_streams)
        add = replay.add

        def recording_add(step, stream=None):
            acted.append({k: np.array(v) for k, v in step.items() if k.startswith("state/")})
            add(step, stream)

        replay.add = recording_add
        made.append(replay)
        return replay

    monkeypatch.setattr(run_agent, "make_replay", recording_replay)
    logdir = tmp_path / "run"
    prefill, steps = 20, 40
    args = [
        "--preset",
        "debug",
        f"train.steps={steps}",
        f"train.prefill={prefill}",
        "env.options={max_steps: 16}",
        "train.eval_episodes=0",
        "replay.store_state=true",
        # Full chunks saved at step 24 hold prefill steps that later updates refresh: the final
        # save must rewrite them rather than keep the stale files.
        "replay.chunk_steps=4",
        "train.checkpoint_every=24",
        "--logdir",
        str(logdir),
    ]
    assert run_agent.main(args) == 0
    [replay] = made
    assert len(acted) == steps and replay.stream_lengths.tolist() == [steps]

    stored = replay.stream_steps(0, 0, prefill)
    first = {key: np.stack([step[key][0] for step in acted[:prefill]]) for key in acted[0]}
    np.testing.assert_array_equal(stored["state/action"], first["state/action"])  # the actions taken
    changed = [key for key in first if key != "state/action" and not np.array_equal(stored[key], first[key])]
    assert set(changed) == set(first) - {"state/action"}, f"prefill latents never refreshed: {changed}"

    loaded = SequenceReplay(capacity=10_000, store_state=True, chunk_steps=4)
    loaded.load(str(logdir / "checkpoint" / "replay"))
    saved = loaded.stream_steps(0)
    for key, value in replay.stream_steps(0).items():
        np.testing.assert_array_equal(saved[key], value, err_msg=key)
