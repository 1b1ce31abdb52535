"""Memory Maze through make_env: the contract, seeding, time-limit truncation, and the fast
target-activation check giving the same frames and rewards as dm_control's original loop."""

from __future__ import annotations

import numpy as np
import pytest
from gymnasium import spaces

from envs import VectorEnv, make_env
from envs import memory_maze_env as maze


def _rollout(fast: bool, steps: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Frames (steps + 1, 64, 64, 3) and rewards (steps,) of a fixed action sequence, with the
    agent placed onto the current target at step 2 so that a target activates (reward 1)."""
    env = make_env("memory_maze:9x9", 0, fast_contacts=fast)
    obs, _ = env.reset()
    dm_env = env.unwrapped.dm_env
    frames, rewards = [obs["image"]], []
    for t in range(steps):
        if t == 2:
            task, physics = dm_env.task, dm_env.physics
            target = task._targets[task._current_target_ix]
            x, y = physics.bind(target.geom).xpos[:2]
            task._walker.set_pose(physics, position=[x, y, 0.3])
        obs, reward, _, _, _ = env.step(t % 6)
        frames.append(obs["image"])
        rewards.append(reward)
    env.close()
    return np.stack(frames), np.array(rewards)


def test_fast_target_activation_matches_original():
    try:
        original_frames, original_rewards = _rollout(fast=False)
    finally:
        maze.install_fast_target_activation(True)
    fast_frames, fast_rewards = _rollout(fast=True)
    assert original_rewards.max() == 1.0, "the target should have been reached"
    np.testing.assert_array_equal(fast_rewards, original_rewards)
    np.testing.assert_array_equal(fast_frames, original_frames)


class _Contacts:
    def __init__(self, pairs):
        self.geom1 = np.array([a for a, _ in pairs], np.int32)
        self.geom2 = np.array([b for _, b in pairs], np.int32)

    def __iter__(self):
        for a, b in zip(self.geom1, self.geom2):
            yield type("Contact", (), {"geom1": a, "geom2": b})()


class _Physics:
    def __init__(self, pairs):
        self.data = type("Data", (), {"contact": _Contacts(pairs)})()
        self.rgba = np.ones(4)

    def bind(self, material):
        return self


class _Target:
    def __init__(self, specific):
        self._activated, self._geom_id, self._material = False, 7, None
        self._specific_collision_geom_ids = specific


@pytest.mark.parametrize("specific", [None, [], [3], [3, 9]])
@pytest.mark.parametrize(
    "pairs", [[], [(1, 2)], [(7, 2)], [(3, 7)], [(9, 7), (1, 2)], [(1, 3), (7, 2)], [(7, 7)]]
)
def test_fast_target_activation_decides_like_the_loop(specific, pairs):
    from dm_control.locomotion.props import target_sphere

    maze.install_fast_target_activation(True)
    original = maze._original_update_activation
    assert target_sphere.TargetSphere._update_activation is maze._fast_update_activation
    loop_target, fast_target = _Target(specific), _Target(specific)
    loop_physics, fast_physics = _Physics(pairs), _Physics(pairs)
    original(loop_target, loop_physics)
    maze._fast_update_activation(fast_target, fast_physics)
    assert fast_target._activated == loop_target._activated
    np.testing.assert_array_equal(fast_physics.rgba, loop_physics.rgba)


def test_memory_maze_contract_seed_and_truncation():
    env = make_env("memory_maze:9x9", 3)
    assert env.action_space == spaces.Discrete(6)
    assert env.observation_space["image"].shape == (64, 64, 3)
    first, _ = env.reset()
    assert first["image"].dtype == np.uint8 and first["image"].shape == (64, 64, 3)
    kept = first["image"].copy()
    obs, reward, terminated, truncated, _ = env.step(np.eye(6, dtype=np.float32)[1])
    assert type(reward) is float and not terminated and not truncated
    np.testing.assert_array_equal(first["image"], kept)
    again, _ = env.reset(seed=3)  # rebuilds the maze from the same seed
    np.testing.assert_array_equal(again["image"], first["image"])
    env.close()

    with VectorEnv("memory_maze:9x9", 1, seed=3, max_steps=2) as venv:
        assert venv.obs_space == {"image": ((64, 64, 3), np.dtype(np.uint8))} and venv.action_dim == 6
        steps = [venv.reset()]
        for _ in range(3):
            steps.append(venv.step(np.eye(6, dtype=np.float32)[[2]]))
    np.testing.assert_array_equal(steps[0]["image"][0], first["image"])
    assert [bool(s["is_first"][0]) for s in steps] == [True, False, False, True]
    assert [bool(s["is_last"][0]) for s in steps] == [False, False, True, False]
    assert not any(bool(s["is_terminal"][0]) for s in steps), "a time limit is not a termination"
