"""Sequence replay with per-env streams, episode boundaries and chunked disk persistence."""

from replay.buffer import SequenceReplay
from replay.storage import ReplayLoadError

__all__ = ["ReplayLoadError", "SequenceReplay"]
