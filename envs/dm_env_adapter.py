"""A gymnasium Env over a dm_env.Environment (bsuite, DeepMind Control, Memory Maze).

dm_env has no `reset(seed=...)`: its environments are seeded when built. The adapter therefore
takes a `build(seed)` function and rebuilds the environment when a reset names a seed (skipped
when the env is fresh and the seed is the one it was built with, so VectorEnv's first seeded
reset costs nothing). An episode's last step is a termination when its discount is 0 and a
truncation (time limit) otherwise, which is how dm_env marks the two.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from envs.errors import EnvError


def spec_to_space(spec: Any) -> spaces.Space:
    """A dm_env spec (Array, BoundedArray, DiscreteArray, or a dict of them) -> gymnasium space."""
    from dm_env import specs

    if isinstance(spec, dict):
        # An OrderedDict keeps the env's key order (gymnasium sorts the keys of a plain dict).
        return spaces.Dict(OrderedDict((key, spec_to_space(value)) for key, value in spec.items()))
    if isinstance(spec, specs.DiscreteArray):
        return spaces.Discrete(int(spec.num_values))
    if isinstance(spec, specs.BoundedArray):
        low = np.broadcast_to(spec.minimum, spec.shape).astype(spec.dtype)
        high = np.broadcast_to(spec.maximum, spec.shape).astype(spec.dtype)
        return spaces.Box(low, high, spec.shape, spec.dtype)
    if isinstance(spec, specs.Array):
        dtype = np.dtype(spec.dtype)
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            return spaces.Box(info.min, info.max, spec.shape, dtype)
        return spaces.Box(-np.inf, np.inf, spec.shape, dtype)
    raise EnvError(f"unsupported dm_env spec {spec!r}")


class DmEnv(gymnasium.Env):
    """gymnasium.Env over `build(seed) -> dm_env.Environment`, with an action repeat.

    Observations are the dm_env's own (an array or a dict of arrays) unless a subclass overrides
    `observe`; rewards are summed over the repeated steps; `terminated`/`truncated` come from the
    last step's discount.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, build: Callable[[int | None], Any], seed: int | None, repeat: int = 1):
        if repeat < 1:
            raise EnvError(f"action repeat must be >= 1, got {repeat}")
        self._build = build
        self._repeat = int(repeat)
        self._built_seed = seed
        self._fresh = True  # built and never reset: a reset with the same seed needs no rebuild
        self._env = build(seed)
        self.observation_space = spec_to_space(self._env.observation_spec())
        self.action_space = spec_to_space(self._env.action_spec())

    @property
    def dm_env(self) -> Any:
        """The wrapped dm_env.Environment (replaced when a reset names a new seed)."""
        return self._env

    def observe(self, timestep: Any) -> Any:
        """The gymnasium observation for a dm_env TimeStep; subclasses render images here."""
        return timestep.observation

    def _rebuilt(self) -> None:
        """Hook for subclasses that keep per-environment state (e.g. a camera); called after a rebuild."""

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        if seed is not None and not (self._fresh and seed == self._built_seed):
            self._env.close()
            self._env = self._build(seed)
            self._built_seed = seed
            self._rebuilt()
        self._fresh = False
        return self.observe(self._env.reset()), {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        reward = 0.0
        for _ in range(self._repeat):
            timestep = self._env.step(action)
            reward += float(timestep.reward or 0.0)
            if timestep.last():
                break
        terminated = bool(timestep.last() and float(timestep.discount) == 0.0)
        truncated = bool(timestep.last() and not terminated)
        return self.observe(timestep), reward, terminated, truncated, {}

    def close(self) -> None:
        self._env.close()
