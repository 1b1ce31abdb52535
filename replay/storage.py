"""On-disk snapshots of a sequence replay: chunk files plus one JSON index.

A snapshot directory holds

- `replay.json`: counters, RNG state, the key spec and the list of chunk files that make up the
  snapshot (the index);
- `chunk-s<stream>-<start>-<end>-g<generation>.npz`: the steps `[start, end)` of one stream, one
  array per key with leading `end - start`. Step numbers count every step ever added to the stream,
  so a chunk file's content never changes once written.

Why this layout: an interrupted save must never destroy the previous snapshot. Every file a save
writes carries that save's generation number in its name, so it cannot clobber a file the previous
index refers to; the index is replaced last with an atomic rename, and only then are files that no
index refers to any more deleted. A later save can keep referring to chunk files written by earlier
saves, so full chunks are written once.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

INDEX_NAME = "replay.json"
FORMAT_VERSION = 1
_CHUNK_RE = re.compile(r"chunk-s(\d+)-(\d+)-(\d+)-g(\d+)\.npz")


class ReplayLoadError(RuntimeError):
    """A snapshot directory is missing, incomplete or corrupt; the message names the path."""


@dataclass(frozen=True)
class ChunkFile:
    """One chunk file: steps `[start, end)` of stream `stream`, stored under `name`."""

    stream: int
    start: int
    end: int
    name: str

    @staticmethod
    def make(stream: int, start: int, end: int, generation: int) -> ChunkFile:
        assert 0 <= start < end, f"empty or negative chunk range [{start}, {end})"
        name = f"chunk-s{stream:04d}-{start:012d}-{end:012d}-g{generation:06d}.npz"
        return ChunkFile(stream, start, end, name)


def next_generation(directory: str) -> int:
    """A generation number that no file in `directory` uses yet (1 for a new directory)."""
    if not os.path.isdir(directory):
        return 1
    latest = 0
    for name in os.listdir(directory):
        match = _CHUNK_RE.fullmatch(name.removesuffix(".tmp"))
        if match:
            latest = max(latest, int(match.group(4)))
    try:
        with open(os.path.join(directory, INDEX_NAME)) as f:
            latest = max(latest, int(json.load(f).get("generation", 0)))
    except (OSError, ValueError, AttributeError, TypeError):
        pass  # no readable index yet: the chunk names alone decide
    return latest + 1


def _fsync_dir(directory: str) -> None:
    # Renames are durable only once the directory entry is flushed (POSIX); elsewhere skip.
    if not hasattr(os, "O_DIRECTORY"):
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_chunk(path: str, arrays: dict[str, np.ndarray], compress: bool) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        (np.savez_compressed if compress else np.savez)(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_snapshot(
    directory: str,
    index: dict[str, Any],
    kept: list[ChunkFile],
    new: list[ChunkFile],
    read: Callable[[ChunkFile], dict[str, np.ndarray]],
    compress: bool = False,
) -> None:
    """Write a snapshot into `directory`, replacing the previous one only once it is complete.

    Args:
        index: JSON-serialisable counters and spec; the list of files is added here.
        kept: chunk files already in `directory` (written by an earlier save) to refer to again.
        new: chunk files to write now; their names must be unused (see `next_generation`).
        read: returns the arrays of a new chunk file, each with leading `end - start`.
        compress: zlib-compress chunk files (smaller on disk, much slower to write).
    """
    os.makedirs(directory, exist_ok=True)
    for chunk in kept:
        assert os.path.exists(os.path.join(directory, chunk.name)), f"kept chunk {chunk.name} is missing"
    for chunk in new:
        arrays = read(chunk)
        for key, value in arrays.items():
            assert len(value) == chunk.end - chunk.start, f"{key}: {len(value)} rows for chunk {chunk.name}"
        _write_chunk(os.path.join(directory, chunk.name), arrays, compress)

    files = kept + new
    index = {**index, "format": FORMAT_VERSION, "files": [asdict(chunk) for chunk in files]}
    tmp = os.path.join(directory, INDEX_NAME + ".tmp")
    with open(tmp, "w") as f:
        json.dump(index, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(directory, INDEX_NAME))
    _fsync_dir(directory)

    # Only now is the previous snapshot unreachable: drop the files that no index refers to,
    # including leftovers of interrupted saves. Files that are not ours are left alone.
    referenced = {chunk.name for chunk in files}
    for name in os.listdir(directory):
        if _CHUNK_RE.fullmatch(name.removesuffix(".tmp")) and name not in referenced:
            os.remove(os.path.join(directory, name))


def read_index(directory: str) -> dict[str, Any]:
    """The index of the snapshot in `directory`, with `files` as a list of `ChunkFile`.

    Raises:
        ReplayLoadError: the directory or its index is missing or unreadable.
    """
    path = os.path.join(directory, INDEX_NAME)
    if not os.path.isdir(directory):
        raise ReplayLoadError(f"cannot load replay from {directory}: no such directory")
    try:
        with open(path) as f:
            index = json.load(f)
        if index.get("format") != FORMAT_VERSION:
            raise ValueError(f"unknown format {index.get('format')!r}")
        files = [ChunkFile(**entry) for entry in index["files"]]
        for chunk in files:
            if _CHUNK_RE.fullmatch(chunk.name) is None or chunk.end <= chunk.start:
                raise ValueError(f"bad chunk entry {chunk}")
        index["files"] = files
    except FileNotFoundError:
        raise ReplayLoadError(f"cannot load replay from {directory}: no {INDEX_NAME} in it") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise ReplayLoadError(f"cannot load replay from {path}: {type(err).__name__}: {err}") from None
    return index


def read_chunks(
    directory: str, files: list[ChunkFile], spec: dict[str, tuple[np.dtype, tuple[int, ...]]]
) -> Iterator[tuple[ChunkFile, dict[str, np.ndarray]]]:
    """Yield each chunk file with its arrays, checked against `spec` (key -> (dtype, step shape)).

    Raises:
        ReplayLoadError: a file is missing, unreadable, or its arrays do not match the spec.
    """
    for chunk in files:
        path = os.path.join(directory, chunk.name)
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in spec}
            for key, (dtype, shape) in spec.items():
                value = arrays[key]
                expected = (chunk.end - chunk.start, *shape)
                if value.dtype != dtype or value.shape != expected:
                    raise ValueError(f"{key} is {value.dtype} {value.shape}, expected {dtype} {expected}")
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            raise ReplayLoadError(f"cannot load replay from {path}: {type(err).__name__}: {err}") from None
        yield chunk, arrays
