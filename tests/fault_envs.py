"""A CartPole that misbehaves on purpose, for tests/test_faults.py.

Importing this module registers `FaultyCartPole-v0`; `make_env("gym:fault_envs:FaultyCartPole-v0",
seed, fault=..., at=...)` imports it by name, in a worker subprocess too (pytest puts tests/ on
sys.path, and spawned workers inherit it). The fault strikes on the `at`-th step the env takes
(counted over all its episodes):

- `nan`: that observation's first entry is NaN;
- `hang`: the step never returns;
- `exit`: the worker process exits with status 1 (every env built with it does so again);
- `kill_once`: the process SIGKILLs itself, but only the first env to get there: it leaves the
  file `marker` behind, so the env that replaces it runs on.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import gymnasium
import numpy as np
from gymnasium.envs.classic_control import CartPoleEnv

FAULTS = ("nan", "hang", "exit", "kill_once")


class FaultyCartPole(gymnasium.Wrapper):
    def __init__(self, fault: str, at: int = 5, marker: str | None = None):
        assert fault in FAULTS, f"fault must be one of {FAULTS}, got {fault!r}"
        super().__init__(CartPoleEnv())
        self.fault, self.at, self.marker = fault, at, marker
        self.steps = 0

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.steps += 1
        if self.steps == self.at:
            if self.fault == "nan":
                obs = obs.copy()
                obs[0] = np.nan
            elif self.fault == "hang":
                time.sleep(3600)
            elif self.fault == "exit":
                os._exit(1)
            elif self.marker is not None:
                # O_EXCL: of envs that get there at the same moment, exactly one creates the file.
                try:
                    os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                except FileExistsError:
                    return obs, reward, terminated, truncated, info
                os.kill(os.getpid(), signal.SIGKILL)
        return obs, reward, terminated, truncated, info


gymnasium.register("FaultyCartPole-v0", entry_point=FaultyCartPole)
