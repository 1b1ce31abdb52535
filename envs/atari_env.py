"""Atari (ale-py): `atari:<game>` (`pong`, `ms_pacman` or `MsPacman`), in DreamerV3's protocol.

- 64 x 64 RGB (option `size`, `gray=True` for one channel), resized with antialiasing.
- Action repeat 4 (`repeat`); sticky actions with probability 0.25 (`sticky`), applied by the
  emulator on every frame; the minimal action set unless `full_action_space=True`.
- The observation is the pixel-wise max of the last two frames of the repeat. After a reset
  both frames are the reset frame: pooling the reset frame with a stale frame of the previous
  episode was a DreamerV3 bug that left Pong at -21 (dreamerv3 issues #175/#178).
- Losing a life does not end the episode; game over is `terminated`; the 108k-frame limit
  (`max_frames`, 27k agent steps at repeat 4) is `truncated`.
- No-op starts (`noops`, 0 by default): each episode begins with a uniform random number in
  [0, noops] of no-op frames, drawn from the env's seeded generator, so that deterministic games
  (no sticky actions) do not start every episode in the same state. Atari 100k uses 30 without
  sticky actions (DreamerV3's `atari100k` setting; Machado et al. 2018 for the 200M protocol use
  sticky actions instead).

The emulator is driven directly (`ale.act` per frame) rather than through gymnasium's per-frame
`step`, which would copy the screen and build an info dict on every frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from envs.errors import EnvError, listing
from envs.images import image_size, resize
from envs.wrappers import ContractObservation, contract_actions

_PREFIX, _SUFFIX = "ALE/", "-v5"


def _register() -> None:
    import ale_py

    gymnasium.register_envs(ale_py)


def tasks() -> list[str]:
    """ALE game names in CamelCase, e.g. 'Pong', 'MsPacman'."""
    _register()
    return [
        env_id[len(_PREFIX) : -len(_SUFFIX)]
        for env_id in gymnasium.registry
        if env_id.startswith(_PREFIX) and env_id.endswith(_SUFFIX)
    ]


def game_name(task: str) -> str:
    """'ms_pacman', 'mspacman' or 'MsPacman' -> the registered CamelCase name 'MsPacman'."""
    names = tasks()
    by_key = {name.lower(): name for name in names}
    key = task.replace("_", "").replace("-", "").lower()
    if key not in by_key:
        raise EnvError(f"unknown Atari game {task!r}; games: {listing(names, limit=200)}")
    return by_key[key]


class Atari(gymnasium.Env):
    """One ALE game with action repeat, two-frame max-pooling and resizing.

    Observation: Box uint8 (h, w, 3) (or (h, w, 1) when gray). Action: Discrete(n) indices into
    the game's action set.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self,
        game: str,
        size: int | Sequence[int] = 64,
        repeat: int = 4,
        sticky: float = 0.25,
        gray: bool = False,
        max_frames: int = 108_000,
        full_action_space: bool = False,
        noops: int = 0,
    ):
        if repeat < 1:
            raise EnvError(f"action repeat must be >= 1, got {repeat}")
        import ale_py

        if noops < 0:
            raise EnvError(f"no-op starts must be >= 0, got noops={noops}")
        self._noops = int(noops)
        self._size = image_size(size)
        self._repeat = int(repeat)
        self._gray = bool(gray)
        # frameskip=1: the emulator advances one frame per `act`, so the repeat, pooling and
        # frame counting here see every frame; ALE applies the sticky actions per frame.
        self._ale_env = gymnasium.make(
            f"{_PREFIX}{game}{_SUFFIX}",
            frameskip=1,
            repeat_action_probability=float(sticky),
            full_action_space=bool(full_action_space),
            max_num_frames_per_episode=int(max_frames),
            obs_type="grayscale" if gray else "rgb",
        ).unwrapped
        self._ale = self._ale_env.ale
        self._noop = ale_py.Action.NOOP  # in every action set, minimal or full
        self._actions = self._ale_env._action_set
        channels = 1 if gray else 3
        self.observation_space = spaces.Box(0, 255, (*self._size, channels), np.uint8)
        self.action_space = spaces.Discrete(len(self._actions))
        self._frames: list[np.ndarray] = []  # the last two raw frames, oldest first

    def _screen(self) -> np.ndarray:
        """The current raw frame, uint8 (210, 160, c)."""
        if self._gray:
            return self._ale.getScreenGrayscale()[..., None]
        return self._ale.getScreenRGB()

    def _observation(self) -> np.ndarray:
        pooled = np.maximum(self._frames[0], self._frames[1])
        return resize(pooled, self._size)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._ale_env.reset(seed=seed)
        frame = self._screen()
        self._frames = [frame, frame]
        for _ in range(int(self.np_random.integers(self._noops + 1)) if self._noops else 0):
            self._ale.act(self._noop)
            if self._ale.game_over(with_truncation=True):
                self._ale_env.reset()
                self._frames = [self._screen()] * 2
                continue
            self._frames = [self._frames[1], self._screen()]
        return self._observation(), {"lives": self._ale.lives()}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        ale_action = self._actions[int(action)]
        reward = 0.0
        terminated = truncated = False
        for _ in range(self._repeat):
            reward += self._ale.act(ale_action)
            self._frames = [self._frames[1], self._screen()]
            terminated = self._ale.game_over(with_truncation=False)
            truncated = self._ale.game_truncated()
            if terminated or truncated:
                break
        truncated = truncated and not terminated
        return (
            self._observation(),
            float(reward),
            bool(terminated),
            bool(truncated),
            {"lives": self._ale.lives()},
        )

    def close(self) -> None:
        self._ale_env.close()


def make(
    task: str,
    seed: int | None,
    size: int | Sequence[int] = 64,
    repeat: int = 4,
    sticky: float = 0.25,
    gray: bool = False,
    max_frames: int = 108_000,
    full_action_space: bool = False,
    noops: int = 0,
) -> gymnasium.Env:
    """An Atari game -> contract env (image uint8 (64, 64, 3), Discrete(n)); see the module docstring."""
    env = Atari(game_name(task), size, repeat, sticky, gray, max_frames, full_action_space, noops)
    return contract_actions(ContractObservation(env))
