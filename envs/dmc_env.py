"""DeepMind Control Suite: `dmc:<domain>_<task>` (proprio) and `dmc_vision:<domain>_<task>` (pixels).

DreamerV3's protocol: action repeat 2 (`repeat`), actions in [-1, 1], 1000 physics steps per
episode (500 agent steps), ended by the time limit (`truncated`). `time_limit` (seconds of
simulated time) shortens episodes.

- `dmc`: `vector` float32 (d,), the task's observation dict flattened in its own key order.
- `dmc_vision`: `image` uint8 (64, 64, 3) only (option `size`), from camera 0, or camera 2 for
  quadruped (option `camera`). With `fast_render=True` (default) the scene is drawn without
  multisampling, shadows and reflections, into a framebuffer of the image's size, through one
  reused camera: on a CPU renderer that is about 15x faster than dm_control's defaults and the
  bodies still read clearly at 64 x 64. `fast_render=False` gives dm_control's default look.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from envs.dm_env_adapter import DmEnv
from envs.errors import EnvError, listing
from envs.images import image_size
from envs.rendering import ensure_headless_gl
from envs.wrappers import ContractObservation, contract_actions

# DreamerV3 looks at quadruped from its camera 2; every other domain from camera 0.
_CAMERAS = {"quadruped": 2}


def _suite() -> Any:
    ensure_headless_gl()
    from dm_control import suite

    return suite


def tasks() -> list[str]:
    """'<domain>_<task>' for every task in dm_control's suite, e.g. 'walker_walk'."""
    return [f"{domain}_{task}" for domain, task in _suite().ALL_TASKS]


def _split(name: str) -> tuple[str, str]:
    """'ball_in_cup_catch' -> ('ball_in_cup', 'catch'); domains may contain underscores."""
    pairs = {f"{domain}_{task}": (domain, task) for domain, task in _suite().ALL_TASKS}
    if name not in pairs:
        raise EnvError(f"unknown DMC task {name!r}; tasks: {listing(pairs)}")
    return pairs[name]


def _builder(domain: str, task: str, time_limit: float | None) -> Any:
    suite = _suite()
    task_kwargs: dict[str, Any] = {}
    if time_limit is not None:
        task_kwargs["time_limit"] = float(time_limit)

    def build(seed: int | None) -> Any:
        return suite.load(domain, task, task_kwargs={**task_kwargs, "random": seed})

    return build


class DMCVision(DmEnv):
    """DmEnv whose observation is a rendered image uint8 (h, w, 3) instead of the proprio dict."""

    def __init__(
        self, build: Any, seed: int | None, repeat: int, size: tuple[int, int], camera: int, fast: bool
    ):
        self._size, self._camera_id, self._fast = size, camera, fast
        super().__init__(build, seed, repeat)
        self.observation_space = spaces.Box(0, 255, (*size, 3), np.uint8)
        self._rebuilt()

    def _rebuilt(self) -> None:
        from dm_control.mujoco.engine import Camera

        physics = self.dm_env.physics
        height, width = self._size
        if self._fast:
            # These must be set before the first render creates the GL contexts.
            physics.model.vis.global_.offwidth = width
            physics.model.vis.global_.offheight = height
            physics.model.vis.quality.offsamples = 0
            physics.model.vis.quality.shadowsize = 64
        self._view = Camera(physics, height, width, self._camera_id)

    def observe(self, timestep: Any) -> np.ndarray:
        # A reused Camera returns a view of its own pixel buffer, which the next render
        # overwrites: copy, or every observation handed out would change under its holder.
        if self._fast:
            image = self._view.render(render_flag_overrides={"shadow": False, "reflection": False})
        else:
            image = self._view.render()
        return np.array(image, np.uint8, copy=True)


def make(
    task: str,
    seed: int | None,
    repeat: int = 2,
    time_limit: float | None = None,
) -> gymnasium.Env:
    """A DMC task -> contract env with a proprio `vector` and Box(-1, 1) actions."""
    domain, name = _split(task)
    return contract_actions(ContractObservation(DmEnv(_builder(domain, name, time_limit), seed, repeat)))


def make_vision(
    task: str,
    seed: int | None,
    repeat: int = 2,
    time_limit: float | None = None,
    size: int | Sequence[int] = 64,
    camera: int | None = None,
    fast_render: bool = True,
) -> gymnasium.Env:
    """A DMC task -> contract env with an `image` uint8 (h, w, 3) and Box(-1, 1) actions."""
    domain, name = _split(task)
    camera_id = _CAMERAS.get(domain, 0) if camera is None else int(camera)
    env = DMCVision(
        _builder(domain, name, time_limit), seed, repeat, image_size(size), camera_id, fast_render
    )
    return contract_actions(ContractObservation(env))
