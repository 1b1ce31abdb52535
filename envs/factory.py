"""`make_env(name, seed, **options)`: one entry point for every suite, names `suite:task`.

| suite | task | observation | actions |
| --- | --- | --- | --- |
| popgym | `RepeatPreviousEasy`, ... (all registered POPGym envs) | vector | Discrete / Box |
| bsuite | sweep ids, `memory_len/10`, `discounting_chain/0`, ... | vector | Discrete |
| minigrid | `MiniGrid-MemoryS11-v0`, ... | image 64 x 64 x 3 | Discrete(7) |
| memory_maze | `9x9`, `11x11`, `13x13`, `15x15` | image 64 x 64 x 3 | Discrete(6) |
| atari | `pong`, `ms_pacman`, ... | image 64 x 64 x 3 | Discrete(n) |
| dmc | `walker_walk`, `cheetah_run`, ... | vector | Box(-1, 1) |
| dmc_vision | same tasks as dmc | image 64 x 64 x 3 | Box(-1, 1) |
| gym | any registered gymnasium id, `CartPole-v1` | image and/or vector | Discrete / Box |

Options are each adapter's keyword arguments (see its module); `max_steps` works for every
suite and truncates episodes after that many agent steps. Suite packages are imported only when
their suite is made, so `import envs` needs only the core install.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import gymnasium
from gymnasium.wrappers import TimeLimit

from envs import atari_env, bsuite_env, dmc_env, gym_env, memory_maze_env, minigrid_env, popgym_env
from envs.errors import EnvError, listing
from envs.spaces import check_contract
from envs.wrappers import ContractEnv

SUITES = ("popgym", "bsuite", "minigrid", "memory_maze", "atari", "dmc", "dmc_vision", "gym")

# The pip extra that installs each suite's packages (pyproject.toml).
_EXTRAS = {
    "popgym": "popgym",
    "bsuite": "bsuite",
    "minigrid": "minigrid",
    "memory_maze": "memory-maze",
    "atari": "atari",
    "dmc": "dmc",
    "dmc_vision": "dmc",
}


def _check_options(suite: str, make: Callable[..., gymnasium.Env], options: dict[str, Any]) -> None:
    """EnvError naming the option when `make` does not take it (adapters with **kwargs take all)."""
    parameters = inspect.signature(make).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    known = [name for name in parameters if name not in ("task", "seed")]
    for key in options:
        if key not in known:
            raise EnvError(
                f"unknown option {key!r} for suite {suite!r}; options: {listing(known + ['max_steps'])}"
            )


def make_env(name: str, seed: int | None = 0, **options: Any) -> gymnasium.Env:
    """Build the env `name` = 'suite:task' with the data contract's spaces.

    Returns a gymnasium.Env whose observation space is Dict(image: Box uint8 (h, w, c)?,
    vector: Box float32 (d,)?) and whose action space is Discrete(n) (step takes an int or a
    one-hot float vector (n,)) or Box(-1, 1, (A,), float32). Its first reset without a seed uses
    `seed`. Raises EnvError (a ValueError) for an unknown suite, task or option.
    """
    adapters: dict[str, Callable[..., gymnasium.Env]] = {
        "popgym": popgym_env.make,
        "bsuite": bsuite_env.make,
        "minigrid": minigrid_env.make,
        "memory_maze": memory_maze_env.make,
        "atari": atari_env.make,
        "dmc": dmc_env.make,
        "dmc_vision": dmc_env.make_vision,
        "gym": gym_env.make,
    }
    suite, colon, task = name.partition(":")
    if not colon or not task:
        raise EnvError(f"env name {name!r} is not 'suite:task'; suites: {listing(SUITES)}")
    if suite not in adapters:
        raise EnvError(f"unknown suite {suite!r} in {name!r}; suites: {listing(SUITES)}")
    options = dict(options)
    max_steps = options.pop("max_steps", None)
    make = adapters[suite]
    _check_options(suite, make, options)
    try:
        env = make(task, seed, **options)
    except ModuleNotFoundError as error:
        if suite not in _EXTRAS:
            raise
        raise EnvError(
            f"suite {suite!r} needs package {error.name!r}: pip install -e '.[{_EXTRAS[suite]}]'"
        ) from error
    if max_steps is not None:
        if int(max_steps) < 1:
            raise EnvError(f"max_steps must be >= 1, got {max_steps}")
        env = TimeLimit(env, int(max_steps))
    env = ContractEnv(env, seed)
    check_contract(env)
    return env
