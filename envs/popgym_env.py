"""POPGym: `popgym:<Name>` for every registered `popgym-<Name>-v0` (e.g. `popgym:RepeatPreviousEasy`).

Observations (Discrete, Tuple, MultiDiscrete or Box) are flattened into `vector` float32 (d,),
discrete parts one-hot. Discrete actions stay Discrete(n); MultiDiscrete ones (Battleship,
MineSweeper) become one Discrete over all (x, y) pairs; Box ones (Pendulum) are rescaled to
[-1, 1]. Option `prev_action=True` appends the previous action to the vector, one-hot for
discrete actions and zeros after a reset, as POPGym's PreviousAction wrapper does.
"""

from __future__ import annotations

import gymnasium

from envs.errors import EnvError, listing
from envs.wrappers import ContractObservation, PreviousAction, contract_actions

_PREFIX, _SUFFIX = "popgym-", "-v0"


def tasks() -> list[str]:
    """Names of the registered POPGym envs, e.g. 'RepeatPreviousEasy'."""
    import popgym  # noqa: F401  (registers the ids with gymnasium)

    return [
        env_id[len(_PREFIX) : -len(_SUFFIX)]
        for env_id in gymnasium.registry
        if env_id.startswith(_PREFIX) and env_id.endswith(_SUFFIX)
    ]


def make(task: str, seed: int | None, prev_action: bool = False) -> gymnasium.Env:
    """A POPGym name -> contract env (vector observation)."""
    names = tasks()
    if task not in names:
        raise EnvError(f"unknown POPGym env {task!r}; POPGym has {listing(names)}")
    # The env itself, without gymnasium.make's checker wrappers: our wrappers check the contract.
    env = gymnasium.make(f"{_PREFIX}{task}{_SUFFIX}").unwrapped
    env = contract_actions(ContractObservation(env))
    return PreviousAction(env) if prev_action else env
