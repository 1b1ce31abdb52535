"""MiniGrid / BabyAI: `minigrid:<id>`, e.g. `minigrid:MiniGrid-MemoryS11-v0`.

The observation is the agent's partial view rendered as RGB (MiniGrid's RGBImgPartialObsWrapper
and ImgObsWrapper) as `image` uint8 (size, size, 3), default 64 x 64. The view is rendered with
tiles just large enough to cover the target size and then shrunk, so the image stays sharp.
Actions are Discrete(7). Options: `size` (int or (h, w)); any other option (e.g. `max_steps`)
goes to the MiniGrid env's constructor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import gymnasium

from envs.errors import EnvError, listing
from envs.images import image_size
from envs.wrappers import ContractObservation, ResizeImage, contract_actions

_PREFIXES = ("MiniGrid-", "BabyAI-")


def tasks() -> list[str]:
    """Registered MiniGrid and BabyAI ids, e.g. 'MiniGrid-MemoryS11-v0'."""
    import minigrid  # noqa: F401  (registers the ids with gymnasium)

    return [env_id for env_id in gymnasium.registry if env_id.startswith(_PREFIXES)]


def make(task: str, seed: int | None, size: int | Sequence[int] = 64, **kwargs: Any) -> gymnasium.Env:
    """A MiniGrid id -> contract env (image observation, Discrete actions)."""
    from minigrid.wrappers import ImgObsWrapper, RGBImgPartialObsWrapper

    names = tasks()
    if task not in names:
        raise EnvError(f"unknown MiniGrid id {task!r}; registered: {listing(names)}")
    height, width = image_size(size)
    env = gymnasium.make(task, **kwargs).unwrapped
    tile = max(1, math.ceil(max(height, width) / env.agent_view_size))
    env = ImgObsWrapper(RGBImgPartialObsWrapper(env, tile_size=tile))
    env = ResizeImage(ContractObservation(env), (height, width))
    return contract_actions(env)
