"""Any registered gymnasium environment: `gym:<id>`, e.g. `gym:CartPole-v1`, for users' own envs.

Image-like parts of the observation (uint8 (h, w[, c])) become `image`, everything else is
flattened into `vector` (see envs.spaces.ObservationLayout). Discrete and MultiDiscrete actions
become Discrete(n); bounded Box actions are rescaled to [-1, 1]. Option `size` resizes the
image; every other option goes to `gymnasium.make` (e.g. `max_episode_steps`). To use an env of
your own, register it with gymnasium (or name it `module:Id` so gymnasium imports the module).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

import gymnasium

from envs.errors import EnvError
from envs.images import image_size
from envs.spaces import IMAGE
from envs.wrappers import ContractObservation, ResizeImage, contract_actions


def make(
    task: str, seed: int | None, size: int | Sequence[int] | None = None, **kwargs: Any
) -> gymnasium.Env:
    """A gymnasium id -> contract env."""
    try:
        env = gymnasium.make(task, **kwargs)
    except gymnasium.error.Error as error:
        close = difflib.get_close_matches(task, list(gymnasium.registry), n=5)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise EnvError(f"cannot make gymnasium env {task!r}: {error}{hint}") from error
    env = ContractObservation(env)
    if size is not None:
        if IMAGE not in env.observation_space.spaces:
            raise EnvError(f"option size={size!r} given but {task!r} has no image observation")
        env = ResizeImage(env, image_size(size))
    return contract_actions(env)
