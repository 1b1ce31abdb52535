"""`VectorEnv`: N copies of one env, stepped together, speaking the data contract.

Built on gymnasium's vector API with next-step autoreset: after a step where env i ended
(`is_last`), the following `step` resets env i, ignores its action and returns the new
episode's first observation with `is_first` and reward 0. One env runs in this process
(SyncVectorEnv); more run in subprocesses (AsyncVectorEnv) started with `spawn`, because forking
a process that holds OpenGL contexts (MuJoCo) or torch's thread pools is unsafe. Env i is built
with seed `seed + i`.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv

from envs.errors import EnvError
from envs.factory import make_env


class VectorEnv:
    """N envs of `name` ('suite:task'), options passed to `make_env`.

    Attributes:
        obs_space: {key: (shape, dtype)} per observation key, without the leading N.
        action_dim: n for Discrete(n) (actions are one-hot), A for Box(-1, 1, (A,)).
        discrete: whether actions are one-hot categorical.
        num_envs: N.

    `reset()` and `step(action)` return a step: a dict of numpy arrays with leading N, holding
    the observation keys (`image` uint8 (N, h, w, c), `vector` float32 (N, d)), `reward` float32
    (N,), `is_first`, `is_last`, `is_terminal` bool (N,).
    """

    def __init__(self, name: str, num_envs: int, seed: int = 0, **options: Any):
        if num_envs < 1:
            raise EnvError(f"num_envs must be >= 1, got {num_envs}")
        builders = [functools.partial(make_env, name, seed + i, **options) for i in range(num_envs)]
        if num_envs == 1:
            self._envs = SyncVectorEnv(builders, autoreset_mode=AutoresetMode.NEXT_STEP)
        else:
            self._envs = AsyncVectorEnv(builders, context="spawn", autoreset_mode=AutoresetMode.NEXT_STEP)
        obs_space = self._envs.single_observation_space
        act_space = self._envs.single_action_space
        assert isinstance(obs_space, spaces.Dict), f"make_env gave a non-Dict observation space {obs_space}"
        self.obs_space: dict[str, tuple[tuple[int, ...], np.dtype]] = {
            key: (tuple(space.shape), np.dtype(space.dtype)) for key, space in obs_space.spaces.items()
        }
        self.discrete = isinstance(act_space, spaces.Discrete)
        self.action_dim = int(act_space.n) if self.discrete else int(act_space.shape[0])
        self.num_envs = num_envs
        self._seed: int | None = seed
        self._last = np.zeros(num_envs, bool)  # which envs ended on the previous step

    def _step_dict(
        self,
        obs: dict[str, np.ndarray],
        reward: np.ndarray,
        is_first: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
    ) -> dict[str, np.ndarray]:
        step = {key: np.asarray(obs[key], dtype) for key, (_, dtype) in self.obs_space.items()}
        step["reward"] = np.where(is_first, 0.0, reward).astype(np.float32)
        step["is_first"] = is_first.astype(bool)
        step["is_last"] = np.logical_or(terminated, truncated)
        step["is_terminal"] = np.asarray(terminated, bool)
        return step

    def reset(self) -> dict[str, np.ndarray]:
        """Start every env: a step with `is_first` all True. Only the first call seeds the envs."""
        obs, _ = self._envs.reset(seed=self._seed)
        self._seed = None
        self._last[:] = False
        zeros = np.zeros(self.num_envs, bool)
        return self._step_dict(obs, np.zeros(self.num_envs), np.ones(self.num_envs, bool), zeros, zeros)

    def step(self, action: np.ndarray) -> dict[str, np.ndarray]:
        """action: float32 (N, A), one-hot rows for discrete envs (read by argmax), [-1, 1] otherwise."""
        action = np.asarray(action, np.float32)
        expected = (self.num_envs, self.action_dim)
        if action.shape != expected:
            raise EnvError(f"action shape {action.shape}, expected (num_envs, action_dim) = {expected}")
        env_action = action.argmax(-1) if self.discrete else np.clip(action, -1.0, 1.0)
        obs, reward, terminated, truncated, _ = self._envs.step(env_action)
        is_first = self._last.copy()
        step = self._step_dict(obs, reward, is_first, terminated, truncated)
        self._last = step["is_last"].copy()
        return step

    def close(self) -> None:
        self._envs.close()

    def __enter__(self) -> VectorEnv:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
