"""What a run logs: scalars to TensorBoard and metrics.jsonl, finished episodes to episodes.jsonl, videos.

    with Logger(logdir) as logger:
        logger.scalars(step, {"wm/total_loss": 1.2, "eval/return": 0.5})
        logger.episode(step, env=0, ret=-0.75, length=51)
        logger.video(step, "open_loop/image", open_loop_video(agent, replay, T))  # (T, C, H, W)

`Episodes` turns the contract steps of N envs into finished episodes (env, return, length);
`open_loop_video` shows how well the world model predicts replayed sequences from actions alone.

Files in the run folder (`step` is always the count of env steps over all training envs, the
x-axis of every plot):

metrics.jsonl, one JSON object per line and per log event:

    {"step": 60, "wm/total_loss": 11.2, ..., "episode/return": -0.75, "episode/length": 51.0, ...}
    {"step": 60, "eval/return": -0.625, "eval/length": 51.0}
    {"step": 60, "event": "resume", "replay_steps": 60}
    {"step": 0, "event": "start", "world_size": 2}        (data-parallel runs only)

  Scalar lines hold float values: training means since the previous log (`episode/*`, `wm/*`,
  `actor/*`, `critic/*`, `perf/*`, `replay/*`), or an evaluation's mean over its episodes
  (`eval/return`, `eval/length`; `eval/episodes` too from `--eval-only`). Non-scalar events
  (`"event": ...`) have other fields. A data-parallel run (agent/distributed.py) records its
  number of ranks, `world_size`, in its `start` and `resume` events; its `replay/steps` and fault
  counters are totals over the ranks, its losses means over them.

episodes.jsonl, one line per finished training episode, in the order they finished:

    {"step": 51, "return": -0.75, "length": 51, "env": 0}

  `step` (int): env steps over all training envs when the episode's last step arrived (a multiple
  of the number of training envs);
  `return` (float): the sum of its rewards; `length` (int): the actions it took (its steps after
  the first); `env` (int): the index of the training env that ran it (rank k's env i is
  k·env.num_envs + i in a data-parallel run, whose rank 0 writes every rank's episodes, in order
  of `step` and `env`, when it logs or saves). Episodes of the random prefill count too;
  evaluation episodes are not here (they are `eval/*` in metrics.jsonl).

Both files are append-only and flushed after every line, so they can be read while the run goes
on, and a resumed run appends to them. A run stopped by Ctrl-C saves a checkpoint at its last
step, so its lines continue without overlap; a run killed without one resumes from its last
checkpoint, and the lines from after that checkpoint's step are then written again (the `resume`
event in metrics.jsonl gives the step the run went back to).

TensorBoard holds the same scalars (a resumed run drops the events logged after its checkpoint's
step and keeps those at it and before), the config as text, and videos as animated GIF image
summaries.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any

import numpy as np
import torch
from PIL import Image
from tensorboard.compat.proto.summary_pb2 import Summary
from torch.utils.tensorboard import SummaryWriter

from agent.agent import Agent
from replay import START_PREFIX, SequenceReplay
from world_model import to_tensors

METRICS = "metrics.jsonl"
EPISODES = "episodes.jsonl"
VIDEO_FPS = 10
VIDEO_SEQUENCES = 4  # replayed sequences side by side in an open-loop video
VIDEO_CONTEXT = 5  # observed steps before the open-loop prediction starts (DreamerV3 uses 5)


class Episodes:
    """Return and length of each env's current episode, from the contract steps it sees."""

    def __init__(self, num_envs: int) -> None:
        self.returns = np.zeros(num_envs, np.float64)
        self.lengths = np.zeros(num_envs, np.int64)

    def observe(self, step: dict[str, np.ndarray]) -> list[tuple[int, float, int]]:
        """Account one step of every env; return (env, return, length) of the episodes it ends.

        step: contract arrays with leading N; `reward` (N,), `is_first` (N,), `is_last` (N,) are read.
        The length counts the actions an episode took: its steps after the first one.
        """
        first = step["is_first"]
        self.returns[first] = 0.0
        self.lengths[first] = 0
        self.returns += step["reward"]
        self.lengths += ~first
        return [
            (int(i), float(self.returns[i]), int(self.lengths[i])) for i in np.flatnonzero(step["is_last"])
        ]


class Logger:
    """Scalars to TensorBoard and metrics.jsonl, episodes to episodes.jsonl, videos to TensorBoard.

    resumed_at: the step of the checkpoint a resumed run continues from. TensorBoard then drops
    the events an earlier session logged after that step (they are logged again); those at the
    step itself stay, since the resumed run starts after it and never logs them again.
    episode_log: whether to keep episodes.jsonl; a folder of evaluation results has no training
    episodes.
    """

    def __init__(self, logdir: str, resumed_at: int | None = None, episode_log: bool = True) -> None:
        # SummaryWriter purges events at `purge_step` and later, so purge from the step after.
        purge_step = None if resumed_at is None else resumed_at + 1
        self.writer = SummaryWriter(logdir, purge_step=purge_step)
        self.jsonl = open(os.path.join(logdir, METRICS), "a")
        self.episodes = open(os.path.join(logdir, EPISODES), "a") if episode_log else None

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """One line of metrics.jsonl, {"step": step, **values}, and the same scalars in TensorBoard."""
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.jsonl.write(json.dumps({"step": step, **{k: float(v) for k, v in values.items()}}) + "\n")
        self.jsonl.flush()
        self.writer.flush()

    def event(self, step: int, **fields: Any) -> None:
        """A non-scalar event (e.g. a resume) in metrics.jsonl only."""
        self.jsonl.write(json.dumps({"step": step, **fields}) + "\n")
        self.jsonl.flush()

    def text(self, tag: str, text: str) -> None:
        """Text shown in TensorBoard's text tab (e.g. the config), as Markdown."""
        self.writer.add_text(tag, text)

    def episode(self, step: int, env: int, ret: float, length: int) -> None:
        """One finished training episode as a line of episodes.jsonl (format in the module doc)."""
        if self.episodes is None:
            raise ValueError("this Logger keeps no episode log (episode_log=False)")
        line = {"step": int(step), "return": float(ret), "length": int(length), "env": int(env)}
        self.episodes.write(json.dumps(line) + "\n")
        self.episodes.flush()

    def video(self, step: int, tag: str, frames: torch.Tensor) -> None:
        """frames: (T, C, H, W) float in [0, 1], written as an animated GIF image summary.

        This is the summary `SummaryWriter.add_video` writes; it is encoded here with Pillow
        because `add_video` needs the `moviepy.editor` module, which moviepy 2 no longer has.
        """
        T, C, H, W = frames.shape
        pixels = (frames.clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()  # (T, H, W, C)
        images = [Image.fromarray(frame[..., 0] if C == 1 else frame) for frame in pixels]
        gif = io.BytesIO()
        images[0].save(
            gif, "GIF", save_all=True, append_images=images[1:], duration=1000 // VIDEO_FPS, loop=0
        )
        image = Summary.Image(height=H, width=W, colorspace=C, encoded_image_string=gif.getvalue())
        self.writer.file_writer.add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
        self.jsonl.close()
        if self.episodes is not None:
            self.episodes.close()

    def __enter__(self) -> Logger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NullLogger(Logger):
    """The logger of ranks other than 0 in a data-parallel run: it writes nothing (rank 0 writes
    the run's logs, with every rank's episodes and the metrics of the whole batch)."""

    def __init__(self) -> None:
        pass

    def scalars(self, step: int, values: dict[str, float]) -> None:
        pass

    def event(self, step: int, **fields: Any) -> None:
        pass

    def text(self, tag: str, text: str) -> None:
        pass

    def episode(self, step: int, env: int, ret: float, length: int) -> None:
        pass

    def video(self, step: int, tag: str, frames: torch.Tensor) -> None:
        pass

    def close(self) -> None:
        pass


def open_loop_video(agent: Agent, replay: SequenceReplay, seq_len: int) -> torch.Tensor:
    """Replayed sequences above the world model's open-loop predictions of them, and the error.

    The model observes the first `VIDEO_CONTEXT` steps, then imagines the rest from the recorded
    actions alone: how far the prediction stays on track shows what the model remembers.

    Returns: (T, C, 3·h, S·w) float in [0, 1]: rows truth / prediction / |error|, S sequences.
    """
    batch = replay.sample(VIDEO_SEQUENCES, seq_len)
    # Replay-context keys (start/...) have no time axis; open-loop starts from the initial state.
    batch = {key: value for key, value in batch.items() if not key.startswith(START_PREFIX)}
    device = next(agent.world_model.parameters()).device
    with torch.no_grad():
        data = to_tensors(batch, device)
        pred = agent.world_model.open_loop(data, min(VIDEO_CONTEXT, seq_len))["image"]  # (S, T, h, w, C)
        truth = data["image"].float() / 255.0
        frames = torch.cat([truth, pred, (pred - truth).abs()], 2)  # (S, T, 3h, w, C)
    S, T, H, W, C = frames.shape
    return frames.permute(1, 4, 2, 0, 3).reshape(T, C, H, S * W).cpu()  # sequences side by side
