"""Conversions between a suite's own spaces and the data contract.

Actions: the contract's discrete action is an index in `Discrete(n)` that may also arrive as a
one-hot float vector (n,); its continuous action is a float32 vector in [-1, 1] that the adapter
rescales to the env's own bounds. Observations: whatever a suite emits becomes a dict with
`image` uint8 (h, w, c) and/or `vector` float32 (d,), discrete parts one-hot encoded.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from envs.errors import EnvError

IMAGE, VECTOR = "image", "vector"


def one_hot(index: int, n: int) -> np.ndarray:
    """float32 (n,) with a 1 at `index`."""
    if not 0 <= index < n:
        raise EnvError(f"action index {index} out of range for {n} actions")
    out = np.zeros(n, np.float32)
    out[index] = 1.0
    return out


def to_index(action: Any, n: int) -> int:
    """A discrete action given as an int (or 0-d array) or a one-hot float vector (n,) -> int index.

    A vector is read by its argmax, so a one-hot sample and an index give the same action.
    """
    array = np.asarray(action)
    if array.ndim == 0:
        if not np.issubdtype(array.dtype, np.integer) and float(array) != int(array):
            raise EnvError(f"discrete action {action!r} is neither an integer nor a one-hot vector")
        index = int(array)
    elif array.shape == (n,):
        index = int(np.argmax(array))
    else:
        raise EnvError(f"discrete action of shape {array.shape}: expected an int or a one-hot vector ({n},)")
    if not 0 <= index < n:
        raise EnvError(f"action index {index} out of range for {n} actions")
    return index


def _finite_bounds(space: spaces.Box) -> tuple[np.ndarray, np.ndarray]:
    low, high = space.low.astype(np.float64), space.high.astype(np.float64)
    if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
        raise EnvError(f"cannot rescale actions to [-1, 1]: the action space {space} is unbounded")
    return low, high


def to_range(action: np.ndarray, space: spaces.Box) -> np.ndarray:
    """Contract action in [-1, 1] (A,) -> the env's range, dtype and shape of `space` (clipped first)."""
    low, high = _finite_bounds(space)
    unit = np.clip(np.asarray(action, np.float64).reshape(space.shape), -1.0, 1.0)
    return (low + (unit + 1.0) * 0.5 * (high - low)).astype(space.dtype)


def from_range(action: np.ndarray, space: spaces.Box) -> np.ndarray:
    """The env's action (shape of `space`) -> float32 (A,) in [-1, 1]; the inverse of `to_range`."""
    low, high = _finite_bounds(space)
    width = np.where(high > low, high - low, 1.0)
    unit = 2.0 * (np.asarray(action, np.float64).reshape(space.shape) - low) / width - 1.0
    return unit.astype(np.float32).reshape(-1)


def is_image(space: spaces.Space) -> bool:
    """A uint8 Box of shape (h, w) or (h, w, c) with c <= 4 is an image; everything else is a vector."""
    if not isinstance(space, spaces.Box) or space.dtype != np.uint8:
        return False
    shape = space.shape
    return (len(shape) == 2 and min(shape) > 1) or (len(shape) == 3 and min(shape[:2]) > 1 and shape[2] <= 4)


def flat_size(space: spaces.Space) -> int:
    """Length of `flatten(space, x)`."""
    if isinstance(space, spaces.Discrete):
        return int(space.n)
    if isinstance(space, spaces.MultiDiscrete):
        return int(np.sum(space.nvec))
    if isinstance(space, (spaces.MultiBinary, spaces.Box)):
        return int(np.prod(space.shape))
    if isinstance(space, spaces.Tuple):
        return sum(flat_size(s) for s in space.spaces)
    if isinstance(space, spaces.Dict):
        return sum(flat_size(s) for s in space.spaces.values())
    raise EnvError(f"cannot turn an observation space {type(space).__name__} into a vector")


def flatten(space: spaces.Space, value: Any) -> np.ndarray:
    """One observation of `space` -> float32 (flat_size(space),); Discrete parts become one-hots."""
    if isinstance(space, spaces.Discrete):
        return one_hot(int(value) - int(space.start), int(space.n))
    if isinstance(space, spaces.MultiDiscrete):
        values = np.asarray(value).reshape(-1) - np.asarray(space.start).reshape(-1)
        sizes = np.asarray(space.nvec).reshape(-1)
        out = np.zeros(int(sizes.sum()), np.float32)
        out[np.concatenate([[0], np.cumsum(sizes)[:-1]]) + values] = 1.0
        return out
    if isinstance(space, (spaces.MultiBinary, spaces.Box)):
        return np.asarray(value, np.float32).reshape(-1)
    if isinstance(space, spaces.Tuple):
        return _concat([flatten(s, v) for s, v in zip(space.spaces, value)])
    if isinstance(space, spaces.Dict):
        return _concat([flatten(s, value[k]) for k, s in space.spaces.items()])
    raise EnvError(f"cannot turn an observation space {type(space).__name__} into a vector")


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts).astype(np.float32, copy=False) if parts else np.zeros(0, np.float32)


class ObservationLayout:
    """Maps observations of any space onto the contract dict `{image?, vector?}`.

    The one image-like part (see `is_image`) becomes `image` uint8 (h, w, c), a grey image gaining
    c = 1; all other parts are flattened, in the space's order, into `vector` float32 (d,).
    """

    def __init__(self, space: spaces.Space):
        # the image's key inside a Tuple/Dict space (() at top level, None without an image), and
        # the space of everything else
        image_space, self._image_key, self._rest = self._split(space)
        parts: dict[str, spaces.Space] = {}
        if image_space is not None:
            shape = image_space.shape if len(image_space.shape) == 3 else (*image_space.shape, 1)
            parts[IMAGE] = spaces.Box(0, 255, shape, np.uint8)
        if self._rest is not None:
            parts[VECTOR] = spaces.Box(-np.inf, np.inf, (flat_size(self._rest),), np.float32)
        if not parts:
            raise EnvError(f"observation space {space} has neither an image nor a vector part")
        self.space = spaces.Dict(parts)

    @staticmethod
    def _split(space: spaces.Space) -> tuple[spaces.Box | None, tuple | None, spaces.Space | None]:
        """(image space, key of the image in the container, the remaining space)."""
        if is_image(space):
            return space, (), None
        if isinstance(space, (spaces.Dict, spaces.Tuple)):
            items = space.spaces.items() if isinstance(space, spaces.Dict) else enumerate(space.spaces)
            images = [(k, s) for k, s in items if is_image(s)]
            if len(images) > 1:
                names = ", ".join(str(k) for k, _ in images)
                raise EnvError(
                    f"observation space has {len(images)} images ({names}); the contract holds one"
                )
            if images:
                key, image = images[0]
                if isinstance(space, spaces.Dict):
                    rest = OrderedDict((k, s) for k, s in space.spaces.items() if k != key)
                    return image, (key,), spaces.Dict(rest) if rest else None
                rest_tuple = [s for i, s in enumerate(space.spaces) if i != key]
                return image, (key,), spaces.Tuple(rest_tuple) if rest_tuple else None
        return None, None, space

    def __call__(self, obs: Any) -> dict[str, np.ndarray]:
        out = {}
        if IMAGE in self.space.spaces:
            image = obs
            for key in self._image_key:
                image = image[key]
            image = np.asarray(image, np.uint8)
            out[IMAGE] = image if image.ndim == 3 else image[..., None]
        if self._rest is not None:
            if self._image_key:
                key = self._image_key[0]
                if isinstance(obs, dict):
                    obs = {k: v for k, v in obs.items() if k != key}
                else:
                    obs = tuple(v for i, v in enumerate(obs) if i != key)
            out[VECTOR] = flatten(self._rest, obs)
        return out


def check_contract(env: gymnasium.Env) -> None:
    """Raise EnvError unless `env`'s spaces follow the data contract (see docs/architecture.md)."""
    obs, act = env.observation_space, env.action_space
    if not isinstance(obs, spaces.Dict) or not obs.spaces or set(obs.spaces) - {IMAGE, VECTOR}:
        raise EnvError(f"observation space must be a Dict of image and/or vector, got {obs}")
    if IMAGE in obs.spaces:
        image = obs.spaces[IMAGE]
        if image.dtype != np.uint8 or len(image.shape) != 3:
            raise EnvError(f"image must be uint8 (h, w, c), got {image}")
    if VECTOR in obs.spaces:
        vector = obs.spaces[VECTOR]
        if vector.dtype != np.float32 or len(vector.shape) != 1:
            raise EnvError(f"vector must be float32 (d,), got {vector}")
    if isinstance(act, spaces.Discrete):
        return
    box_ok = isinstance(act, spaces.Box) and act.dtype == np.float32 and len(act.shape) == 1
    if not (box_ok and np.all(act.low == -1.0) and np.all(act.high == 1.0)):
        raise EnvError(f"action space must be Discrete(n) or Box(-1, 1, (A,), float32), got {act}")
