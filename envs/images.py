"""Image resizing for pixel observations (Atari, MiniGrid, user envs)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from envs.errors import EnvError


def image_size(size: int | Sequence[int]) -> tuple[int, int]:
    """An option `size` (int or (h, w)) -> (h, w), checked positive."""
    hw = (int(size), int(size)) if isinstance(size, (int, np.integer)) else tuple(int(s) for s in size)
    if len(hw) != 2 or min(hw) < 1:
        raise EnvError(f"image size must be an int or (height, width) of positive ints, got {size!r}")
    return hw  # type: ignore[return-value]


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 (h, w, c) -> uint8 (size[0], size[1], c), bilinear with antialiasing when shrinking.

    Pillow's bilinear filter widens its support when downscaling, so it averages like an area
    filter; DreamerV3 resizes its Atari frames the same way.
    """
    assert image.dtype == np.uint8 and image.ndim == 3, (
        f"expected uint8 (h, w, c), got {image.dtype} {image.shape}"
    )
    if image.shape[:2] == tuple(size):
        return image
    height, width = size
    channels = image.shape[2]
    if channels == 1:
        out = Image.fromarray(image[..., 0]).resize((width, height), Image.Resampling.BILINEAR)
        return np.asarray(out)[..., None]
    if channels == 3:
        return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))
    planes = [
        np.asarray(Image.fromarray(image[..., i]).resize((width, height), Image.Resampling.BILINEAR))
        for i in range(channels)
    ]
    return np.stack(planes, -1)
