"""The env layer's shared pieces: action/observation conversion, wrappers, errors, rendering
setup, lazy imports and VectorEnv's step flags (on gymnasium's CartPole, no suite needed)."""

from __future__ import annotations

import os
import subprocess
import sys

import gymnasium
import numpy as np
import pytest
from gymnasium import spaces

from envs import SUITES, EnvError, VectorEnv, make_env, rendering
from envs.spaces import ObservationLayout, flat_size, flatten, from_range, one_hot, to_index, to_range
from envs.wrappers import (
    ContractObservation,
    DiscreteActions,
    NormalizedActions,
    PreviousAction,
    contract_actions,
)

# ---------------------------------------------------------------- actions


def test_one_hot_index_round_trip():
    for n in (1, 2, 7):
        for i in range(n):
            vector = one_hot(i, n)
            assert vector.dtype == np.float32 and vector.shape == (n,) and vector.sum() == 1
            assert to_index(vector, n) == i
            assert to_index(i, n) == i
            assert to_index(np.int64(i), n) == i


@pytest.mark.parametrize("bad", [5, -1, np.zeros(4), np.zeros((1, 5)), 1.5])
def test_to_index_rejects(bad):
    with pytest.raises(EnvError):
        to_index(bad, 5)


def test_range_round_trip():
    space = spaces.Box(np.array([-2.0, 0.0, 10.0]), np.array([2.0, 1.0, 30.0]), dtype=np.float64)
    unit = np.array([-1.0, 0.25, 1.0], np.float32)
    env_action = to_range(unit, space)
    np.testing.assert_allclose(env_action, [-2.0, 0.625, 30.0])
    assert env_action.dtype == np.float64
    np.testing.assert_allclose(from_range(env_action, space), unit, atol=1e-6)
    np.testing.assert_allclose(to_range(np.array([5.0, -5.0, 0.0]), space), [2.0, 0.0, 20.0])  # clipped


def test_unbounded_action_space_is_an_error():
    with pytest.raises(EnvError, match="unbounded"):
        to_range(np.zeros(2), spaces.Box(-np.inf, np.inf, (2,)))


class _ToyEnv(gymnasium.Env):
    """Echoes the inner action it received in `info`, with a chosen observation space."""

    def __init__(self, observation_space: spaces.Space, action_space: spaces.Space):
        self.observation_space, self.action_space = observation_space, action_space

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, False, False, {"inner": action}


def test_multidiscrete_actions_become_one_discrete():
    env = DiscreteActions(_ToyEnv(spaces.Discrete(2), spaces.MultiDiscrete([3, 4])))
    assert env.action_space == spaces.Discrete(12)
    env.reset(seed=0)
    seen = set()
    for index in range(12):
        inner = env.step(one_hot(index, 12))[4]["inner"]
        assert env.env.action_space.contains(inner)
        assert inner[0] * 4 + inner[1] == index
        seen.add(tuple(inner))
    assert len(seen) == 12


def test_normalized_actions_round_trip():
    inner_space = spaces.Box(np.array([-2.0, 0.0], np.float32), np.array([2.0, 5.0], np.float32))
    env = NormalizedActions(_ToyEnv(spaces.Discrete(2), inner_space))
    assert env.action_space == spaces.Box(-1.0, 1.0, (2,), np.float32)
    env.reset(seed=0)
    unit = np.array([0.5, -0.2], np.float32)
    inner = env.step(unit)[4]["inner"]
    np.testing.assert_allclose(inner, [1.0, 2.0], atol=1e-6)
    np.testing.assert_allclose(env.reverse_action(inner), unit, atol=1e-6)


def test_unsupported_action_space_is_an_error():
    with pytest.raises(EnvError, match="unsupported action space"):
        contract_actions(_ToyEnv(spaces.Discrete(2), spaces.MultiBinary(3)))


# ---------------------------------------------------------------- observations


def test_flatten_one_hot_parts():
    space = spaces.Tuple((spaces.Discrete(2), spaces.Discrete(4, start=1), spaces.MultiDiscrete([3, 2])))
    vector = flatten(space, (1, 4, np.array([2, 0])))
    assert vector.dtype == np.float32 and vector.shape == (flat_size(space),) == (11,)
    np.testing.assert_array_equal(vector, [0, 1, 0, 0, 0, 1, 0, 0, 1, 1, 0])


def test_layout_splits_image_and_vector():
    space = spaces.Dict(
        {
            "pixels": spaces.Box(0, 255, (8, 6, 3), np.uint8),
            "pos": spaces.Box(-1.0, 1.0, (2, 2), np.float64),
            "flag": spaces.Discrete(3),
        }
    )
    layout = ObservationLayout(space)
    assert layout.space["image"].shape == (8, 6, 3) and layout.space["image"].dtype == np.uint8
    assert layout.space["vector"].shape == (7,) and layout.space["vector"].dtype == np.float32
    obs = space.sample()
    out = layout(obs)
    assert out["image"].dtype == np.uint8 and np.array_equal(out["image"], obs["pixels"])
    assert out["vector"].dtype == np.float32 and out["vector"].shape == (7,)
    assert layout.space.contains(out)


def test_layout_grey_image_gains_a_channel():
    layout = ObservationLayout(spaces.Box(0, 255, (10, 12), np.uint8))
    assert set(layout.space.spaces) == {"image"}
    assert layout(np.zeros((10, 12), np.uint8))["image"].shape == (10, 12, 1)


def test_layout_two_images_is_an_error():
    image = spaces.Box(0, 255, (8, 8, 3), np.uint8)
    with pytest.raises(EnvError, match="2 images"):
        ObservationLayout(spaces.Dict({"a": image, "b": image}))


def test_previous_action_appends_one_hot():
    env = contract_actions(
        ContractObservation(_ToyEnv(spaces.Box(-1.0, 1.0, (2,), np.float32), spaces.Discrete(3)))
    )
    env = PreviousAction(env)
    obs, _ = env.reset(seed=0)
    assert obs["vector"].shape == (5,) and np.array_equal(obs["vector"][2:], [0, 0, 0])
    obs = env.step(2)[0]
    np.testing.assert_array_equal(obs["vector"][2:], [0, 0, 1])
    obs = env.step(one_hot(1, 3))[0]
    np.testing.assert_array_equal(obs["vector"][2:], [0, 1, 0])
    env.reset()
    assert env.step(0)[0]["vector"][2:].tolist() == [1, 0, 0]


# ---------------------------------------------------------------- names, options, errors


@pytest.mark.parametrize(
    "name, match",
    [
        ("nosuite:task", "unknown suite 'nosuite'.*popgym.*dmc_vision"),
        ("popgym", "not 'suite:task'"),
        ("popgym:", "not 'suite:task'"),
        ("popgym:RepeatPreviousImpossible", "RepeatPreviousEasy"),
        ("bsuite:memory_len/999", "memory_len"),
        ("minigrid:MiniGrid-Nope-v0", "MiniGrid-MemoryS11-v0"),
        ("memory_maze:8x8", "9x9, 11x11, 13x13, 15x15"),
        ("atari:notagame", "Pong"),
        ("dmc:walker_fly", "walker_walk"),
        ("dmc_vision:walker_fly", "walker_walk"),
        ("gym:CartPoleX-v1", "CartPole-v1"),
    ],
)
def test_unknown_suite_or_task(name, match):
    with pytest.raises(EnvError, match=match) as error:
        make_env(name, 0)
    assert isinstance(error.value, ValueError)
    assert "\n" not in str(error.value)


def test_unknown_option():
    with pytest.raises(EnvError, match="unknown option 'colour'.*prev_action"):
        make_env("popgym:RepeatPreviousEasy", 0, colour=True)


def test_suites_listed():
    assert set(SUITES) == {"popgym", "bsuite", "minigrid", "memory_maze", "atari", "dmc", "dmc_vision", "gym"}


def test_import_is_light():
    heavy = ["popgym", "bsuite", "minigrid", "ale_py", "dm_control", "mujoco", "memory_maze", "torch"]
    code = f"import sys, envs; print([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------- rendering


def test_rendering_keeps_user_choice(monkeypatch):
    monkeypatch.setenv("MUJOCO_GL", "osmesa")
    monkeypatch.setenv("PYOPENGL_PLATFORM", "mine")
    assert rendering.ensure_headless_gl() == "osmesa"
    assert os.environ["PYOPENGL_PLATFORM"] == "mine"


def test_rendering_picks_a_working_backend(monkeypatch):
    # An empty value counts as unset; monkeypatch restores both variables afterwards.
    monkeypatch.setenv("MUJOCO_GL", "")
    monkeypatch.setenv("PYOPENGL_PLATFORM", "")
    backend = rendering.ensure_headless_gl()
    assert backend in ("egl", "osmesa")


def test_rendering_error_names_packages(monkeypatch):
    monkeypatch.setenv("MUJOCO_GL", "")
    monkeypatch.setattr(rendering, "_works", lambda backend: False)
    with pytest.raises(EnvError, match="apt-get install -y .*libosmesa6") as error:
        rendering.ensure_headless_gl()
    assert "\n" not in str(error.value)


# ---------------------------------------------------------------- make_env and VectorEnv


def test_make_env_seed_and_contract():
    env = make_env("gym:CartPole-v1", 3)
    assert env.observation_space["vector"].shape == (4,)
    first, _ = env.reset()
    again, _ = make_env("gym:CartPole-v1", 3).reset()
    other, _ = make_env("gym:CartPole-v1", 4).reset()
    np.testing.assert_array_equal(first["vector"], again["vector"])
    assert not np.array_equal(first["vector"], other["vector"])
    obs, reward, terminated, truncated, _ = env.step(one_hot(1, 2))
    assert type(reward) is float and type(terminated) is bool and type(truncated) is bool


def test_max_steps_truncates():
    env = make_env("gym:CartPole-v1", 0, max_steps=3)
    env.reset()
    flags = [env.step(0)[2:4] for _ in range(3)]
    assert flags[:2] == [(False, False), (False, False)] and flags[2][1] is True


def _collect(venv: VectorEnv, steps: int, rng: np.random.Generator) -> list[dict[str, np.ndarray]]:
    out = [venv.reset()]
    for _ in range(steps):
        index = rng.integers(venv.action_dim, size=venv.num_envs)
        out.append(venv.step(np.eye(venv.action_dim, dtype=np.float32)[index]))
    return out


def check_flag_sequence(steps: list[dict[str, np.ndarray]]) -> int:
    """Contract invariants of a collected stream; returns how many episodes ended."""
    first = steps[0]
    assert first["is_first"].all() and not first["is_last"].any() and not first["is_terminal"].any()
    assert (first["reward"] == 0).all()
    ended = 0
    for prev, step in zip(steps, steps[1:]):
        assert step["reward"].dtype == np.float32
        for key in ("is_first", "is_last", "is_terminal"):
            assert step[key].dtype == bool
        np.testing.assert_array_equal(step["is_first"], prev["is_last"])  # next-step autoreset
        assert (step["reward"][step["is_first"]] == 0).all()
        assert not (step["is_first"] & step["is_last"]).any()
        assert not (step["is_terminal"] & ~step["is_last"]).any()
        ended += int(step["is_last"].sum())
    return ended


@pytest.mark.parametrize("num_envs", [1, 2])
def test_vector_env_flags(num_envs):
    with VectorEnv("gym:CartPole-v1", num_envs, seed=0, max_steps=15) as venv:
        assert venv.obs_space == {"vector": ((4,), np.dtype(np.float32))}
        assert venv.discrete and venv.action_dim == 2 and venv.num_envs == num_envs
        steps = _collect(venv, 60, np.random.default_rng(0))
        assert steps[1]["vector"].shape == (num_envs, 4) and steps[1]["vector"].dtype == np.float32
        assert check_flag_sequence(steps) >= num_envs
        last = np.stack([s["is_last"] for s in steps])
        terminal = np.stack([s["is_terminal"] for s in steps])
        assert terminal.any(), "random CartPole should fall over within 15 steps sometimes"
        assert (last & ~terminal).any(), "max_steps=15 should truncate some episodes"


def test_vector_env_seeds_each_env():
    with VectorEnv("gym:CartPole-v1", 2, seed=5) as venv:
        first = venv.reset()["vector"]
    np.testing.assert_array_equal(first[0], make_env("gym:CartPole-v1", 5).reset()[0]["vector"])
    np.testing.assert_array_equal(first[1], make_env("gym:CartPole-v1", 6).reset()[0]["vector"])


def test_vector_env_checks_action_shape():
    with VectorEnv("gym:CartPole-v1", 1, seed=0) as venv:
        venv.reset()
        with pytest.raises(EnvError, match="action shape"):
            venv.step(np.zeros((1, 3), np.float32))


# ---------------------------------------------------------------- every suite, against the real packages
# Memory Maze, whose envs take seconds to build, is tested in test_envs_memory_maze.py.

# name -> (options, observation key -> shape, action space)
SUITE_CASES = {
    "popgym:RepeatPreviousEasy": ({}, {"vector": (4,)}, spaces.Discrete(4)),
    "popgym:BattleshipEasy": ({}, {"vector": (2,)}, spaces.Discrete(64)),
    "popgym:PositionOnlyPendulumEasy": ({}, {"vector": (2,)}, spaces.Box(-1.0, 1.0, (1,), np.float32)),
    "popgym:ConcentrationEasy": ({}, {"vector": (156,)}, spaces.Discrete(52)),
    "bsuite:memory_len/0": ({}, {"vector": (3,)}, spaces.Discrete(2)),
    "bsuite:discounting_chain/0": ({}, {"vector": (2,)}, spaces.Discrete(5)),
    "minigrid:MiniGrid-MemoryS11-v0": ({}, {"image": (64, 64, 3)}, spaces.Discrete(7)),
    "atari:pong": ({}, {"image": (64, 64, 3)}, spaces.Discrete(6)),
    "dmc:walker_walk": ({}, {"vector": (24,)}, spaces.Box(-1.0, 1.0, (6,), np.float32)),
    "dmc_vision:walker_walk": ({}, {"image": (64, 64, 3)}, spaces.Box(-1.0, 1.0, (6,), np.float32)),
    "dmc_vision:quadruped_walk": (
        {"size": 32},
        {"image": (32, 32, 3)},
        spaces.Box(-1.0, 1.0, (12,), np.float32),
    ),
    "gym:Pendulum-v1": ({}, {"vector": (3,)}, spaces.Box(-1.0, 1.0, (1,), np.float32)),
}


def _sample(space: spaces.Space, rng: np.random.Generator) -> np.ndarray:
    """A contract action: one-hot float32 (n,) or float32 (A,) in [-1, 1]."""
    if isinstance(space, spaces.Discrete):
        return one_hot(int(rng.integers(space.n)), int(space.n))
    return rng.uniform(-1.0, 1.0, space.shape).astype(np.float32)


@pytest.mark.parametrize("name", list(SUITE_CASES))
def test_suite_spaces_and_dtypes(name):
    options, shapes, action_space = SUITE_CASES[name]
    env = make_env(name, 0, **options)
    assert env.action_space == action_space
    assert {key: space.shape for key, space in env.observation_space.spaces.items()} == shapes
    obs, _ = env.reset()
    held = [(obs, {key: value.copy() for key, value in obs.items()})]
    rng = np.random.default_rng(0)
    for _ in range(3):
        assert env.observation_space.contains(obs)
        for key, value in obs.items():
            assert value.dtype == (np.uint8 if key == "image" else np.float32) and value.shape == shapes[key]
        obs, reward, terminated, truncated, _ = env.step(_sample(env.action_space, rng))
        held.append((obs, {key: value.copy() for key, value in obs.items()}))
        assert type(reward) is float and type(terminated) is bool and type(truncated) is bool
    for returned, copy in held:  # no observation may share a buffer that later steps overwrite
        for key in copy:
            np.testing.assert_array_equal(returned[key], copy[key])
    env.close()


@pytest.mark.parametrize("name", list(SUITE_CASES))
def test_suite_same_seed_same_first_observation(name):
    options = SUITE_CASES[name][0]
    env = make_env(name, 7, **options)
    first, _ = env.reset()
    twin, _ = make_env(name, 7, **options).reset()
    for key in first:
        np.testing.assert_array_equal(first[key], twin[key])
    for _ in range(3):
        env.step(_sample(env.action_space, np.random.default_rng(1)))
    again, _ = env.reset(seed=7)  # reseeding a used env restarts the same episode
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])


def test_dmc_seeds_differ():
    first = make_env("dmc:walker_walk", 0).reset()[0]["vector"]
    other = make_env("dmc:walker_walk", 1).reset()[0]["vector"]
    assert not np.array_equal(first, other)


@pytest.mark.parametrize(
    "name",
    ["popgym:BattleshipEasy", "bsuite:discounting_chain/0", "atari:pong", "minigrid:MiniGrid-MemoryS11-v0"],
)
def test_int_and_one_hot_actions_agree(name):
    by_int, by_one_hot = make_env(name, 3), make_env(name, 3)
    by_int.reset(), by_one_hot.reset()
    n = int(by_int.action_space.n)
    for index in np.random.default_rng(0).integers(n, size=12):
        a = by_int.step(int(index))
        b = by_one_hot.step(one_hot(int(index), n))
        assert a[1:4] == b[1:4]
        for key in a[0]:
            np.testing.assert_array_equal(a[0][key], b[0][key])
        if a[2] or a[3]:
            break


def _inner(env: gymnasium.Env, kind: type) -> gymnasium.Wrapper:
    while not isinstance(env, kind):
        env = env.env
    return env


@pytest.mark.parametrize("name", ["popgym:PositionOnlyPendulumEasy", "dmc:cheetah_run"])
def test_continuous_actions_rescaled_to_env_range(name):
    env = make_env(name, 0)
    normalizer = _inner(env, NormalizedActions)
    inner = normalizer.env.action_space
    np.testing.assert_allclose(normalizer.action(np.ones(env.action_space.shape)), inner.high, rtol=1e-6)
    np.testing.assert_allclose(normalizer.action(-np.ones(env.action_space.shape)), inner.low, rtol=1e-6)
    unit = np.linspace(-0.9, 0.9, env.action_space.shape[0]).astype(np.float32)
    np.testing.assert_allclose(normalizer.reverse_action(normalizer.action(unit)), unit, atol=1e-6)


def test_popgym_previous_action_option():
    env = make_env("popgym:RepeatPreviousEasy", 0, prev_action=True)
    assert env.observation_space["vector"].shape == (8,)
    obs, _ = env.reset()
    assert not obs["vector"][4:].any()
    obs = env.step(3)[0]
    np.testing.assert_array_equal(obs["vector"][4:], [0, 0, 0, 1])


def test_bsuite_every_sweep_id_is_known():
    from bsuite import sweep

    env = make_env(f"bsuite:{sweep.SWEEP[-1]}", 0)
    assert isinstance(env.action_space, spaces.Discrete)
    with pytest.raises(EnvError, match="memory_len"):
        make_env("bsuite:memory_len", 0)


def test_atari_accepts_game_spellings():
    assert make_env("atari:ms_pacman", 0).action_space == make_env("atari:MsPacman", 0).action_space


def _run_vector(name: str, options: dict, num_envs: int, policy, limit: int) -> list[dict[str, np.ndarray]]:
    """Step a VectorEnv until env 0 ends an episode, plus one step into the next episode."""
    with VectorEnv(name, num_envs, seed=0, **options) as venv:
        steps = [venv.reset()]
        for t in range(limit):
            steps.append(venv.step(np.stack([policy(t, venv) for _ in range(num_envs)])))
            if steps[-2]["is_last"][0]:
                return steps
    raise AssertionError(f"{name} did not end an episode within {limit} steps")


def _random_policy(t: int, venv: VectorEnv) -> np.ndarray:
    rng = np.random.default_rng(t)
    if venv.discrete:
        return one_hot(int(rng.integers(venv.action_dim)), venv.action_dim)
    return rng.uniform(-1.0, 1.0, venv.action_dim).astype(np.float32)


def _scripted(indices: list[int], n: int):
    return lambda t, venv: one_hot(indices[t % len(indices)], n)


# name, options, envs, policy, expected end, max steps
EPISODE_CASES = [
    ("popgym:RepeatPreviousEasy", {}, 2, _random_policy, "terminated", 200),
    ("popgym:RepeatPreviousEasy", {"max_steps": 5}, 1, _random_policy, "truncated", 10),
    ("bsuite:memory_len/0", {}, 2, _random_policy, "terminated", 10),
    ("bsuite:memory_len/0", {"max_steps": 1}, 1, _random_policy, "truncated", 10),
    # forward, forward, turn right, forward, forward reaches the goal of the empty 5x5 room
    ("minigrid:MiniGrid-Empty-5x5-v0", {}, 1, _scripted([2, 2, 1, 2, 2], 3 + 4), "terminated", 10),
    ("minigrid:MiniGrid-Empty-5x5-v0", {"max_steps": 3}, 1, _random_policy, "truncated", 10),
    # FIRE launches every ball and the paddle never moves: five lives lost, then game over
    ("atari:breakout", {}, 1, _scripted([1], 4), "terminated", 400),
    ("atari:pong", {"max_frames": 40}, 1, _random_policy, "truncated", 20),
    ("dmc:walker_walk", {"time_limit": 0.1}, 1, _random_policy, "truncated", 10),
    ("dmc_vision:walker_walk", {"time_limit": 0.1}, 1, _random_policy, "truncated", 10),
    ("gym:CartPole-v1", {}, 1, _random_policy, "terminated", 500),
]


@pytest.mark.parametrize("name, options, num_envs, policy, end, limit", EPISODE_CASES)
def test_episode_flags_through_vector_env(name, options, num_envs, policy, end, limit):
    steps = _run_vector(name, options, num_envs, policy, limit)
    check_flag_sequence(steps)
    last, after = steps[-2], steps[-1]
    assert last["is_last"][0] and bool(last["is_terminal"][0]) == (end == "terminated")
    assert not any(s["is_last"][0] for s in steps[:-2]), "env 0 ended early"
    assert after["is_first"][0] and after["reward"][0] == 0 and not after["is_last"][0]


def test_atari_life_loss_is_not_terminal():
    env = make_env("atari:breakout", 0)
    _, info = env.reset()
    lives = [info["lives"]]
    while True:
        _, _, terminated, truncated, info = env.step(1)
        if terminated or truncated:
            break
        lives.append(info["lives"])
    assert terminated and not truncated
    assert lives[0] == 5 and min(lives) < 5, "lives were lost before the game ended"


def test_atari_reset_pools_the_reset_frame_with_itself():
    env = make_env("atari:pong", 0)
    atari = env.unwrapped
    env.reset()
    for _ in range(30):
        env.step(env.action_space.sample())
    obs, _ = env.reset()
    assert atari._frames[0] is atari._frames[1]
    from envs.images import resize

    np.testing.assert_array_equal(obs["image"], resize(atari._screen(), (64, 64)))


def test_atari_noop_starts_are_seeded_and_bounded():
    def start_frames(noops: int, seeds: range) -> list[int]:
        env = make_env("atari:pong", 0, noops=noops, sticky=0.0)
        frames = []
        for seed in seeds:
            env.reset(seed=seed)
            frames.append(env.unwrapped._ale.getEpisodeFrameNumber())
        env.close()
        return frames

    assert start_frames(0, range(3)) == [0, 0, 0]
    starts = start_frames(30, range(12))
    assert all(0 <= n <= 30 for n in starts) and len(set(starts)) > 3, starts
    assert start_frames(30, range(12)) == starts  # the same seeds, the same starts
    with pytest.raises(EnvError, match="noops=-1"):
        make_env("atari:pong", 0, noops=-1)


@pytest.mark.parametrize("name", ["bsuite:memory_len/0", "gym:Pendulum-v1"])
def test_random_actions_are_valid_actions_of_every_env(name):
    rng = np.random.default_rng(0)
    with VectorEnv(name, 2, 0) as env:
        actions = np.stack([env.random_actions(rng) for _ in range(200)])  # (200, N, A)
        assert actions.shape == (200, 2, env.action_dim) and actions.dtype == np.float32
        if env.discrete:
            assert ((actions == 0) | (actions == 1)).all() and (actions.sum(-1) == 1).all()
            assert set(actions.argmax(-1).ravel()) == set(range(env.action_dim))  # every action drawn
        else:
            assert (actions >= -1).all() and (actions <= 1).all() and actions.std() > 0.4
        env.step(actions[0])  # the env takes them
