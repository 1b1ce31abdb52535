"""An open-loop prediction video of a run, as one still image for a page.

    python benchmarks/open_loop_png.py RUN_DIR docs/open_loop_dmc_vision.png
    python benchmarks/open_loop_png.py RUN_DIR out.png --step 20000 --every 4 --sequences 2

`run_agent.py` writes an open-loop video of image tasks to TensorBoard every `train.video_every`
env steps (`open_loop/image`, an animated GIF: loop.logger.open_loop_video): replayed sequences,
the world model's prediction of them from the recorded actions after the first
`loop.logger.VIDEO_CONTEXT` observed steps, and the absolute error, stacked as three rows. This
reads one of those videos from RUN_DIR's event files (the last, or the one at `--step`) and lays
every `--every`-th frame of its first `--sequences` sequences side by side: rows truth /
prediction / error per sequence, columns the time steps, the observed ones marked.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image, ImageSequence  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from loop.logger import VIDEO_CONTEXT, VIDEO_SEQUENCES  # noqa: E402

TAG = "open_loop/image"
ROWS = ("truth", "prediction", "error")


def read_video(logdir: Path, step: int | None = None) -> tuple[int, np.ndarray]:
    """(its step, frames (T, 3h, S·w, C) uint8) of the run's open-loop video at `step` (default:
    the last one written)."""
    if not logdir.is_dir():
        raise ValueError(f"{logdir}: no such run folder")
    events = EventAccumulator(str(logdir), size_guidance={"images": 0})
    events.Reload()
    if TAG not in events.Tags().get("images", []):
        raise ValueError(
            f"{logdir}: no {TAG} video in its event files "
            "(a run of an image task writes one every train.video_every env steps)"
        )
    videos = events.Images(TAG)
    if step is not None:
        videos = [video for video in videos if video.step == step]
        if not videos:
            steps = ", ".join(str(video.step) for video in events.Images(TAG))
            raise ValueError(f"{logdir}: no {TAG} video at step {step}; steps with one: {steps}")
    video = videos[-1]
    gif = Image.open(io.BytesIO(video.encoded_image_string))
    frames = np.stack([np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(gif)])
    return video.step, frames


def still(frames: np.ndarray, every: int, sequences: int) -> tuple[np.ndarray, list[int]]:
    """Tile the video: (sequences·3·h, n·w, C) with n the kept time steps, and those steps.

    frames: (T, 3h, S·w, C), rows truth / prediction / error, S sequences side by side.
    """
    T, width = frames.shape[0], frames.shape[2]
    w = width // VIDEO_SEQUENCES
    assert 1 <= sequences <= VIDEO_SEQUENCES, f"sequences must be in [1, {VIDEO_SEQUENCES}], got {sequences}"
    steps = list(range(0, T, every))
    per_seq = [frames[steps][:, :, s * w : (s + 1) * w] for s in range(sequences)]  # (n, 3h, w, C) each
    columns = np.concatenate(per_seq, axis=1)  # (n, sequences·3h, w, C)
    return np.concatenate(list(columns), axis=1), steps  # (sequences·3h, n·w, C)


def write_png(image: np.ndarray, steps: list[int], sequences: int, title: str, path: Path) -> None:
    """The tiled still with its time steps under the columns and the row names beside them."""
    rows_h, width = image.shape[:2]
    h, w = rows_h // (sequences * len(ROWS)), width // len(steps)
    fig, ax = plt.subplots(figsize=(max(4.0, width / 40), max(2.0, rows_h / 40) + 0.6), dpi=100)
    ax.imshow(image, interpolation="nearest")
    ax.set_xticks([w * (i + 0.5) for i in range(len(steps))])
    ax.set_xticklabels([f"{t}{'*' if t < VIDEO_CONTEXT else ''}" for t in steps], fontsize=7)
    ax.set_yticks([h * (i + 0.5) for i in range(sequences * len(ROWS))])
    ax.set_yticklabels([name for _ in range(sequences) for name in ROWS], fontsize=7)
    ax.set_xlabel("time step (* observed; the rest predicted from actions alone)", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("logdir", type=Path, help="a run folder (its TensorBoard event files)")
    parser.add_argument("out", type=Path, help="the PNG to write")
    parser.add_argument("--step", type=int, help="the video of this env step (default: the last)")
    parser.add_argument("--every", type=int, default=4, help="keep every N-th time step (default: 4)")
    sequences = f"sequences shown, 1-{VIDEO_SEQUENCES} (default: 2)"
    parser.add_argument("--sequences", type=int, default=2, help=sequences)
    parser.add_argument("--title", help="the image's title (default: the run folder and step)")
    args = parser.parse_args(argv)
    if args.every < 1 or not 1 <= args.sequences <= VIDEO_SEQUENCES:
        print(f"error: --every must be >= 1 and --sequences in [1, {VIDEO_SEQUENCES}]", file=sys.stderr)
        return 2
    try:
        step, frames = read_video(args.logdir, args.step)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    image, steps = still(frames, args.every, args.sequences)
    title = args.title or f"{args.logdir.name}: open-loop prediction at {step:,} env steps"
    write_png(image, steps, args.sequences, title, args.out)
    shown = f"{len(steps)} time steps of {frames.shape[0]}, {args.sequences} sequence(s)"
    print(f"wrote {args.out}: {shown}, step {step}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
