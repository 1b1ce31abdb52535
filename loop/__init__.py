"""What the training loop owns around the learner: checkpoints (`loop.checkpoint`) and logs
(`loop.logger`: TensorBoard, `metrics.jsonl`, `episodes.jsonl`, open-loop videos)."""

from loop.checkpoint import CheckpointError, Progress, find_checkpoint, load_loop_state, save_checkpoint
from loop.logger import Episodes, Logger

__all__ = [
    "CheckpointError",
    "Episodes",
    "Logger",
    "Progress",
    "find_checkpoint",
    "load_loop_state",
    "save_checkpoint",
]
