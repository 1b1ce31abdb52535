"""Sequence replay with per-env streams, episode boundaries and chunked disk persistence."""

from replay.buffer import START_PREFIX, STATE_PREFIX, SequenceReplay
from replay.storage import ReplayLoadError

__all__ = ["START_PREFIX", "STATE_PREFIX", "ReplayLoadError", "SequenceReplay"]
