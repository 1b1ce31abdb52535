"""bsuite: `bsuite:<experiment>/<index>`, every id of bsuite's sweep (e.g. `memory_len/10`).

bsuite environments are dm_env environments; bsuite's own gym wrapper imports the old `gym`
package, so they go through `envs.dm_env_adapter.DmEnv` instead. Observations (float arrays such
as (1, 3) for memory_len) are flattened into `vector` float32 (d,); actions are Discrete(n).
"""

from __future__ import annotations

import inspect
from typing import Any

import gymnasium

from envs.dm_env_adapter import DmEnv
from envs.errors import EnvError, listing
from envs.wrappers import ContractObservation, contract_actions


def tasks() -> list[str]:
    """Every bsuite sweep id, e.g. 'memory_len/0'."""
    from bsuite import sweep

    return list(sweep.SWEEP)


def _settings(task: str, seed: int | None) -> tuple[str, dict[str, Any]]:
    """(experiment name, constructor kwargs) for a sweep id; `seed` fills the env's RNG seed.

    The sweep fixes what defines a task (sizes, `mapping_seed`); where it leaves the RNG `seed`
    open (absent or None), ours is used so that parallel copies of a task see different noise.
    """
    from bsuite import bsuite as registry
    from bsuite import sweep

    if task not in sweep.SETTINGS:
        experiments = sorted({name.split("/")[0] for name in sweep.SWEEP})
        raise EnvError(
            f"unknown bsuite id {task!r}: expected <experiment>/<index>, experiments: {listing(experiments)}"
        )
    experiment = task.split("/")[0]
    kwargs = dict(sweep.SETTINGS[task])
    constructor = registry.EXPERIMENT_NAME_TO_ENVIRONMENT[experiment]
    if (
        "seed" in inspect.signature(constructor).parameters
        and kwargs.get("seed") is None
        and seed is not None
    ):
        kwargs["seed"] = seed
    return experiment, kwargs


def make(task: str, seed: int | None) -> gymnasium.Env:
    """A bsuite sweep id -> contract env (vector observation, Discrete actions)."""
    from bsuite import bsuite as registry

    _settings(task, seed)  # checks the id before anything is built

    def build(build_seed: int | None) -> Any:
        experiment, kwargs = _settings(task, build_seed)
        return registry.load(experiment, kwargs)

    return contract_actions(ContractObservation(DmEnv(build, seed)))
