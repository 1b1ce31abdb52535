"""Memory Maze: `memory_maze:<9x9|11x11|13x13|15x15>`, 64 x 64 egocentric images, Discrete(6).

Two workarounds live here:

- `memory_maze/__init__.py` imports the old `gym` package unconditionally. `_import_tasks` lets
  `gym`, `gym.envs`, `gym.envs.registration` and `gym.spaces` resolve to gymnasium's modules for
  the duration of that import only, then builds tasks through the package's dm_env interface
  (`memory_maze.tasks.memory_maze_9x9(seed=...)`), which the shared DmEnv adapter wraps.
- About two thirds of a step's time went to a pure-Python loop over MuJoCo contacts in
  dm_control's `TargetSphere._update_activation`, run after every physics substep for every
  target. `install_fast_target_activation` swaps in a numpy version with the same result
  (tests/test_envs_memory_maze.py compares both); a step gets 3 to 5 times faster.

Episodes end by time limit only (truncation): 1000 / 2000 / 3000 / 4000 steps.
"""

from __future__ import annotations

import sys
from typing import Any

import gymnasium
import numpy as np

from envs.dm_env_adapter import DmEnv
from envs.errors import EnvError, listing
from envs.rendering import ensure_headless_gl
from envs.wrappers import ContractObservation, contract_actions

SIZES = ("9x9", "11x11", "13x13", "15x15")
_GYM_ALIASES = ("gym", "gym.envs", "gym.envs.registration", "gym.spaces")


def tasks() -> list[str]:
    """The four maze sizes."""
    return list(SIZES)


def _import_tasks() -> Any:
    """Import `memory_maze.tasks` with `gym.*` resolving to gymnasium during the import only."""
    if "memory_maze.tasks" in sys.modules:
        return sys.modules["memory_maze.tasks"]
    ensure_headless_gl()
    modules = {
        "gym": gymnasium,
        "gym.envs": gymnasium.envs,
        "gym.envs.registration": gymnasium.envs.registration,
        "gym.spaces": gymnasium.spaces,
    }
    saved = {name: sys.modules.get(name) for name in _GYM_ALIASES}
    sys.modules.update(modules)
    try:
        from memory_maze import tasks as maze_tasks
    finally:
        # Other packages decide between gym and gymnasium by trying `import gym`; leave no alias.
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return maze_tasks


def _fast_update_activation(self: Any, physics: Any) -> None:
    """numpy version of dm_control's TargetSphere._update_activation (same decisions, no Python loop).

    The target activates when any current contact involves its geom and, if the target was
    given specific collision geoms, also involves one of those.
    """
    if self._activated:
        return
    contact = physics.data.contact
    geom1, geom2 = np.asarray(contact.geom1), np.asarray(contact.geom2)
    hit = (geom1 == self._geom_id) | (geom2 == self._geom_id)
    if self._specific_collision_geom_ids:
        ids = np.asarray(list(self._specific_collision_geom_ids))
        hit &= np.isin(geom1, ids) | np.isin(geom2, ids)
    if hit.any():
        self._activated = True
        physics.bind(self._material).rgba[-1] = 0


_original_update_activation: Any = None


def install_fast_target_activation(enable: bool = True) -> None:
    """Patch (or with `enable=False`, restore) TargetSphere._update_activation, process-wide."""
    global _original_update_activation
    from dm_control.locomotion.props import target_sphere

    if _original_update_activation is None:
        _original_update_activation = target_sphere.TargetSphere._update_activation
    chosen = _fast_update_activation if enable else _original_update_activation
    target_sphere.TargetSphere._update_activation = chosen


def make(task: str, seed: int | None, fast_contacts: bool = True) -> gymnasium.Env:
    """A maze size -> contract env (image uint8 (64, 64, 3), Discrete(6)).

    The image carries the current target's colour as a border, as in the Memory Maze benchmark.
    `fast_contacts=False` keeps dm_control's original (slow) target check.
    """
    if task not in SIZES:
        raise EnvError(f"unknown Memory Maze size {task!r}; sizes: {listing(SIZES)}")
    maze_tasks = _import_tasks()
    install_fast_target_activation(fast_contacts)
    factory = getattr(maze_tasks, f"memory_maze_{task}")

    def build(build_seed: int | None) -> Any:
        return factory(seed=build_seed, image_only_obs=True)

    return contract_actions(ContractObservation(DmEnv(build, seed)))
