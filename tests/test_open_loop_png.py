"""benchmarks/open_loop_png.py: a run's open-loop video, read back from TensorBoard, as a still."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks import open_loop_png
from loop.logger import VIDEO_SEQUENCES, Logger

H = W = 8


def video(T: int) -> torch.Tensor:
    """(T, 3, 3H, S·W): frame t of sequence s has the value (10 t + 40 s + row) / 255 in a row's block."""
    frames = torch.zeros(T, 3, 3 * H, VIDEO_SEQUENCES * W)
    for t in range(T):
        for s in range(VIDEO_SEQUENCES):
            for row in range(3):
                frames[t, :, row * H : (row + 1) * H, s * W : (s + 1) * W] = (10 * t + 40 * s + row) / 255
    return frames


def test_still_lays_out_time_steps_and_sequences(tmp_path: Path, capsys):
    logger = Logger(str(tmp_path), episode_log=False)
    logger.video(100, "open_loop/image", video(9))
    logger.video(200, "open_loop/image", video(12))
    logger.close()
    step, frames = open_loop_png.read_video(tmp_path, 100)
    assert step == 100 and frames.shape == (9, 3 * H, VIDEO_SEQUENCES * W, 3)
    image, steps = open_loop_png.still(frames, every=4, sequences=2)
    assert steps == [0, 4, 8] and image.shape == (2 * 3 * H, 3 * W, 3)
    # Column i is time step steps[i]; block row r of sequence s is that sequence's row r.
    for i, t in enumerate(steps):
        for s in range(2):
            for row in range(3):
                block = image[(3 * s + row) * H : (3 * s + row + 1) * H, i * W : (i + 1) * W]
                assert np.abs(block.astype(int) - (10 * t + 40 * s + row)).max() <= 2, (t, s, row)

    out = tmp_path / "docs" / "open_loop.png"
    assert open_loop_png.main([str(tmp_path), str(out)]) == 0  # the last video: step 200
    assert "step 200" in capsys.readouterr().out
    assert Image.open(out).format == "PNG"


def test_a_run_without_video_is_one_line_error(tmp_path: Path, capsys):
    Logger(str(tmp_path), episode_log=False).close()
    assert open_loop_png.main([str(tmp_path), str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {tmp_path}: no open_loop/image video") and "\n" not in err
    assert not (tmp_path / "x.png").exists()
    assert open_loop_png.main([str(tmp_path / "gone"), str(tmp_path / "x.png")]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'gone'}: no such run folder"
