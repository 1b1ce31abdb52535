"""gymnasium wrappers that bring any suite's env onto the data contract.

Adapters stack them as `contract_actions(ContractObservation(env))`, adding `ResizeImage`,
`PreviousAction` where an option asks; `make_env` adds a time limit and `ContractEnv` last.
"""

from __future__ import annotations

from typing import Any, SupportsFloat

import gymnasium
import numpy as np
from gymnasium import spaces

from envs.errors import EnvError
from envs.images import resize
from envs.spaces import IMAGE, VECTOR, ObservationLayout, from_range, to_index, to_range


class ContractObservation(gymnasium.ObservationWrapper):
    """Any observation space -> Dict(image uint8 (h, w, c)?, vector float32 (d,)?)."""

    def __init__(self, env: gymnasium.Env):
        super().__init__(env)
        self._layout = ObservationLayout(env.observation_space)
        self.observation_space = self._layout.space

    def observation(self, observation: Any) -> dict[str, np.ndarray]:
        return self._layout(observation)


class DiscreteActions(gymnasium.ActionWrapper):
    """Discrete(n) or MultiDiscrete inner actions -> `Discrete(n)` that also takes a one-hot (n,).

    A MultiDiscrete space becomes one Discrete over all combinations (row-major), so a policy
    over a single categorical can pick any joint action (e.g. POPGym Battleship's (x, y)).
    """

    def __init__(self, env: gymnasium.Env):
        super().__init__(env)
        inner = env.action_space
        if isinstance(inner, spaces.Discrete):
            self._nvec = None
            self.action_space = spaces.Discrete(int(inner.n))
        elif isinstance(inner, spaces.MultiDiscrete):
            self._nvec = tuple(int(n) for n in np.asarray(inner.nvec).reshape(-1))
            self.action_space = spaces.Discrete(int(np.prod(self._nvec)))
        else:
            raise EnvError(f"DiscreteActions needs a Discrete or MultiDiscrete space, got {inner}")

    def action(self, action: Any) -> Any:
        index = to_index(action, int(self.action_space.n))
        inner = self.env.action_space
        if self._nvec is None:
            return int(inner.start) + index
        parts = np.array(np.unravel_index(index, self._nvec)).reshape(inner.nvec.shape)
        return (parts + inner.start).astype(inner.dtype)


class NormalizedActions(gymnasium.ActionWrapper):
    """Bounded Box inner actions -> Box(-1, 1, (A,), float32), rescaled linearly (and clipped)."""

    def __init__(self, env: gymnasium.Env):
        super().__init__(env)
        inner = env.action_space
        if not isinstance(inner, spaces.Box):
            raise EnvError(f"NormalizedActions needs a Box action space, got {inner}")
        to_range(np.zeros(inner.shape), inner)  # raises a clear error for unbounded spaces
        size = int(np.prod(inner.shape))
        self.action_space = spaces.Box(-1.0, 1.0, (size,), np.float32)

    def action(self, action: Any) -> np.ndarray:
        return to_range(action, self.env.action_space)

    def reverse_action(self, action: Any) -> np.ndarray:
        return from_range(action, self.env.action_space)


def contract_actions(env: gymnasium.Env) -> gymnasium.Env:
    """Wrap `env` so its action space is Discrete(n) or Box(-1, 1, (A,), float32)."""
    if isinstance(env.action_space, (spaces.Discrete, spaces.MultiDiscrete)):
        return DiscreteActions(env)
    if isinstance(env.action_space, spaces.Box):
        return NormalizedActions(env)
    raise EnvError(f"unsupported action space {env.action_space}: expected Discrete, MultiDiscrete or Box")


class ResizeImage(gymnasium.ObservationWrapper):
    """Resize the contract `image` to (height, width), keeping channels."""

    def __init__(self, env: gymnasium.Env, size: tuple[int, int]):
        super().__init__(env)
        if IMAGE not in env.observation_space.spaces:
            raise EnvError("ResizeImage needs an observation with an image")
        channels = env.observation_space[IMAGE].shape[2]
        self._size = (int(size[0]), int(size[1]))
        parts = dict(env.observation_space.spaces)
        parts[IMAGE] = spaces.Box(0, 255, (*self._size, channels), np.uint8)
        self.observation_space = spaces.Dict(parts)

    def observation(self, observation: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {**observation, IMAGE: resize(observation[IMAGE], self._size)}


class PreviousAction(gymnasium.Wrapper):
    """Append the previous contract action to `vector` (zeros after a reset), as POPGym's own
    PreviousAction wrapper does: a one-hot (n,) for discrete actions, the [-1, 1] vector for
    continuous ones. Wrap it outside the action wrappers so it sees contract actions.
    """

    def __init__(self, env: gymnasium.Env):
        super().__init__(env)
        act = env.action_space
        if isinstance(act, spaces.Discrete):
            self._size = int(act.n)
        elif isinstance(act, spaces.Box):
            self._size = int(np.prod(act.shape))
        else:
            raise EnvError(f"PreviousAction needs contract actions (Discrete or Box), got {act}")
        before = env.observation_space[VECTOR].shape[0] if VECTOR in env.observation_space.spaces else 0
        parts = dict(env.observation_space.spaces)
        parts[VECTOR] = spaces.Box(-np.inf, np.inf, (before + self._size,), np.float32)
        self.observation_space = spaces.Dict(parts)

    def _encode(self, action: Any) -> np.ndarray:
        if isinstance(self.env.action_space, spaces.Discrete):
            out = np.zeros(self._size, np.float32)
            out[to_index(action, self._size)] = 1.0
            return out
        return np.clip(np.asarray(action, np.float32).reshape(-1), -1.0, 1.0)

    def _append(self, observation: dict[str, np.ndarray], previous: np.ndarray) -> dict[str, np.ndarray]:
        vector = observation.get(VECTOR, np.zeros(0, np.float32))
        return {**observation, VECTOR: np.concatenate([vector, previous])}

    def reset(self, **kwargs: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        observation, info = self.env.reset(**kwargs)
        return self._append(observation, np.zeros(self._size, np.float32)), info

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], SupportsFloat, bool, bool, dict[str, Any]]:
        observation, reward, terminated, truncated, info = self.env.step(action)
        return self._append(observation, self._encode(action)), reward, terminated, truncated, info


class ContractEnv(gymnasium.Wrapper):
    """Outermost wrapper of every `make_env` env: rewards as Python floats, flags as bools, and
    `seed` used for the first reset that names none, so `make_env(name, seed)` alone is
    reproducible. Later unseeded resets continue the env's random stream, as gymnasium specifies.
    """

    def __init__(self, env: gymnasium.Env, seed: int | None):
        super().__init__(env)
        self._pending = seed
        if seed is not None:
            self.action_space.seed(seed)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        if seed is None:
            seed = self._pending
        self._pending = None
        return self.env.reset(seed=seed, options=options)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        observation, reward, terminated, truncated, info = self.env.step(action)
        return observation, float(reward), bool(terminated), bool(truncated), info
