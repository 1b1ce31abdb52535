"""`VectorEnv`: N copies of one env, stepped together, speaking the data contract.

Next-step autoreset, as gymnasium's vector API: after a step where env i ended (`is_last`), the
following `step` resets env i, ignores its action and returns the new episode's first observation
with `is_first` and reward 0. One env runs in this process; more run in worker subprocesses
(`envs.workers`), stepped in parallel. Env i is built with seed `seed + i`.

Faults are contained per env:

- A worker that dies, hangs past `worker_timeout` seconds or whose env raises is replaced by a
  fresh env (seed `seed + i + N·k` at its k-th restart). The step it failed on repeats env i's
  previous observation with `is_last` (not `is_terminal`) and reward 0, so its episode ends there,
  and the next step starts a new one. Each replacement prints one warning and counts in `restarts`.
  More than `max_restarts` deaths of the same env within `RESTART_WINDOW_S` seconds raise
  `EnvWorkerError` instead: an env that keeps dying is broken, not unlucky.
- A non-finite value (NaN, ±inf) in an observation or reward is replaced by 0 and, after the first
  step of an episode, ends that episode the same way; the first one of each env and key prints a
  warning, all count in `nonfinite`. Non-finite actions are refused with `EnvError`: they would
  reach the env as an arbitrary action (argmax of NaN is 0).
"""

from __future__ import annotations

import collections
import functools
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from gymnasium import spaces

from envs.errors import EnvError
from envs.factory import make_env
from envs.workers import LocalEnv, WorkerEnv, WorkerFailure

RESTART_WINDOW_S = 600.0  # deaths of one env are counted over this many seconds
# Starting a worker imports the suite's packages and builds its env: it may take this many times
# as long as one step.
STARTUP_FACTOR = 10


class EnvWorkerError(RuntimeError):
    """An env's worker kept dying; the one-line message names the env and the last failure."""


def _warn(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class VectorEnv:
    """N envs of `name` ('suite:task'), options passed to `make_env`.

    Args:
        worker_timeout: seconds a worker may take to answer one reset or step (starting it:
            `STARTUP_FACTOR` times as long); 0 waits forever. Envs in this process have none.
        max_restarts: deaths of one env within `RESTART_WINDOW_S` seconds that are replaced;
            one more raises `EnvWorkerError`.
        warn: where warnings go (one line each); default stderr.

    Attributes:
        obs_space: {key: (shape, dtype)} per observation key, without the leading N.
        action_dim: n for Discrete(n) (actions are one-hot), A for Box(-1, 1, (A,)).
        discrete: whether actions are one-hot categorical.
        num_envs: N.
        restarts: envs replaced so far; nonfinite: observations or rewards found non-finite so far.

    `reset()` and `step(action)` return a step: a dict of numpy arrays with leading N, holding
    the observation keys (`image` uint8 (N, h, w, c), `vector` float32 (N, d)), `reward` float32
    (N,), `is_first`, `is_last`, `is_terminal` bool (N,).
    """

    def __init__(
        self,
        name: str,
        num_envs: int,
        seed: int = 0,
        *,
        worker_timeout: float = 0.0,
        max_restarts: int = 3,
        warn: Callable[[str], None] | None = None,
        **options: Any,
    ):
        if num_envs < 1:
            raise EnvError(f"num_envs must be >= 1, got {num_envs}")
        self.name = name
        self.num_envs = num_envs
        self._seed, self._options = seed, options
        self._timeout = worker_timeout if worker_timeout > 0 else None
        self._max_restarts = max_restarts
        self._warn = warn or _warn
        self._subprocess = num_envs > 1
        self._envs: list[LocalEnv | WorkerEnv] = []
        try:
            self._envs = [self._start(i, seed + i) for i in range(num_envs)]
            for env in self._envs:
                if isinstance(env, WorkerEnv):
                    self._wait_ready(env)
        except WorkerFailure as err:
            self.close()
            raise EnvError(f"env {name!r}: a worker {err}") from None
        except BaseException:
            self.close()
            raise
        obs_space, act_space = self._envs[0].observation_space, self._envs[0].action_space
        assert isinstance(obs_space, spaces.Dict), f"make_env gave a non-Dict observation space {obs_space}"
        self.obs_space: dict[str, tuple[tuple[int, ...], np.dtype]] = {
            key: (tuple(space.shape), np.dtype(space.dtype)) for key, space in obs_space.spaces.items()
        }
        self.discrete = isinstance(act_space, spaces.Discrete)
        self.action_dim = int(act_space.n) if self.discrete else int(act_space.shape[0])
        self.restarts = 0
        self.nonfinite = 0
        self._last = np.ones(num_envs, bool)  # which envs ended on the previous step (all: not started)
        self._previous: list[dict[str, np.ndarray] | None] = [None] * num_envs  # each env's last observation
        self._deaths: list[collections.deque[float]] = [collections.deque() for _ in range(num_envs)]
        self._started = [0] * num_envs  # envs built per slot, the first included
        self._warned: set[tuple[int, str]] = set()

    # ----- building and replacing envs ----------------------------------------------------------

    def _start(self, index: int, seed: int) -> LocalEnv | WorkerEnv:
        build = functools.partial(make_env, self.name, seed, **self._options)
        return WorkerEnv(build) if self._subprocess else LocalEnv(build)

    def _wait_ready(self, env: WorkerEnv) -> None:
        env.wait_ready(None if self._timeout is None else self._timeout * STARTUP_FACTOR)

    @property
    def worker_pids(self) -> list[int | None]:
        """The process id of each env's worker; None for an env in this process."""
        return [env.pid for env in self._envs]

    def _replace(self, index: int, failure: WorkerFailure) -> None:
        """Put a fresh env in slot `index` after its worker failed, or raise EnvWorkerError."""
        now = time.monotonic()
        deaths = self._deaths[index]
        while True:
            deaths.append(now)
            while deaths and deaths[0] < now - RESTART_WINDOW_S:
                deaths.popleft()
            if len(deaths) > self._max_restarts:
                raise EnvWorkerError(
                    f"env {index} of {self.name!r}: its worker failed {len(deaths)} times within "
                    f"{RESTART_WINDOW_S:g} s (env.max_restarts={self._max_restarts}); last: it {failure}"
                )
            self._envs[index].kill()  # type: ignore[union-attr]
            self._started[index] += 1
            self.restarts += 1
            self._warn(
                f"warning: env {index} of {self.name!r}: its worker {failure}; replaced it with a fresh "
                f"env (restart {self.restarts}), its episode ends here"
            )
            env = self._start(index, self._seed + index + self.num_envs * self._started[index])
            self._envs[index] = env
            try:
                self._wait_ready(env)  # type: ignore[arg-type]
                return
            except WorkerFailure as err:
                failure, now = err, time.monotonic()

    # ----- stepping -------------------------------------------------------------------------

    def _call(self, commands: dict[int, tuple[str, Any]]) -> dict[int, Any]:
        """Send env i its (command, action) for each i in `commands`, then collect the results; a
        failed worker's result is the `WorkerFailure` itself (its env already replaced)."""
        failures: dict[int, WorkerFailure] = {}
        for i, (command, action) in commands.items():
            try:
                self._envs[i].send(command, action)
            except WorkerFailure as err:
                failures[i] = err
        results: dict[int, Any] = {}
        for i in commands:
            if i not in failures:
                try:
                    results[i] = self._envs[i].receive(self._timeout)
                    continue
                except WorkerFailure as err:
                    failures[i] = err
            results[i] = failures[i]
        for i, failure in failures.items():
            self._replace(i, failure)
        return results

    def _finite(self, index: int, obs: dict[str, np.ndarray], reward: float) -> tuple[dict, float, bool]:
        """`obs` and `reward` with non-finite values replaced by 0; whether there were any."""
        found = []
        clean = {}
        for key, (_, dtype) in self.obs_space.items():
            value = np.asarray(obs[key], dtype)
            if np.issubdtype(dtype, np.inexact) and not np.isfinite(value).all():
                found.append(key)
                value = np.where(np.isfinite(value), value, 0).astype(dtype)
            clean[key] = value
        if not np.isfinite(reward):
            found.append("reward")
            reward = 0.0
        for key in found:
            self.nonfinite += 1
            if (index, key) not in self._warned:
                self._warned.add((index, key))
                self._warn(
                    f"warning: env {index} of {self.name!r} gave a non-finite {key}; replaced it by 0 "
                    f"and ended the episode (later ones of env {index} are only counted)"
                )
        return clean, reward, bool(found)

    def reset(self) -> dict[str, np.ndarray]:
        """Start every env: a step with `is_first` all True. Only the first call seeds the envs."""
        self._last[:] = True
        return self._advance([None] * self.num_envs)

    def step(self, action: np.ndarray) -> dict[str, np.ndarray]:
        """action: float32 (N, A), one-hot rows for discrete envs (read by argmax), [-1, 1] otherwise."""
        action = np.asarray(action, np.float32)
        expected = (self.num_envs, self.action_dim)
        if action.shape != expected:
            raise EnvError(f"action shape {action.shape}, expected (num_envs, action_dim) = {expected}")
        if not np.isfinite(action).all():
            rows = np.flatnonzero(~np.isfinite(action).all(-1)).tolist()
            raise EnvError(f"non-finite action for env(s) {rows} of {self.name!r}: {action[rows[0]]}")
        env_action = action.argmax(-1) if self.discrete else np.clip(action, -1.0, 1.0)
        return self._advance(list(env_action))

    def random_actions(self, rng: np.random.Generator) -> np.ndarray:
        """Uniform random actions float32 (N, A): one-hot rows for discrete envs, uniform in
        [-1, 1] otherwise (the prefill's, the random policy's)."""
        if self.discrete:
            return np.eye(self.action_dim, dtype=np.float32)[
                rng.integers(self.action_dim, size=self.num_envs)
            ]
        return rng.uniform(-1.0, 1.0, (self.num_envs, self.action_dim)).astype(np.float32)

    def _advance(self, actions: list[Any]) -> dict[str, np.ndarray]:
        """Reset the envs that ended last step, step the others with `actions`: one contract step."""
        is_first = self._last.copy()
        commands = [("reset", None) if first else ("step", a) for first, a in zip(is_first, actions)]
        results = self._call(dict(enumerate(commands)))
        # An env whose worker failed during a reset has no episode to end: reset its new one.
        while again := [i for i, r in results.items() if isinstance(r, WorkerFailure) and is_first[i]]:
            results.update(self._call({i: ("reset", None) for i in again}))
        observations, reward = [], np.zeros(self.num_envs, np.float32)
        terminated, truncated = np.zeros(self.num_envs, bool), np.zeros(self.num_envs, bool)
        for i, result in sorted(results.items()):
            if isinstance(result, WorkerFailure):
                # The worker died mid-episode: repeat its last observation as that episode's end.
                observations.append(self._previous[i])
                truncated[i] = True
                continue
            obs, r, terminated[i], truncated[i] = result
            obs, r, bad = self._finite(i, obs, r)
            if bad and not is_first[i]:
                terminated[i], truncated[i] = False, True
            observations.append(obs)
            reward[i] = 0.0 if is_first[i] else r
        self._previous = observations
        step = {key: np.stack([obs[key] for obs in observations]) for key in self.obs_space}
        step["reward"] = reward
        step["is_first"] = is_first
        step["is_last"] = terminated | truncated
        step["is_terminal"] = terminated
        self._last = step["is_last"].copy()
        return step

    def close(self) -> None:
        for env in self._envs:
            env.close()
        self._envs = []

    def __enter__(self) -> VectorEnv:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
