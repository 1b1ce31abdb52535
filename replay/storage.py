"""On-disk snapshots of a sequence replay: chunk files plus one JSON index.

A snapshot directory holds

- `replay.json`: counters, RNG state, the key spec and the list of chunk files that make up the
  snapshot (the index);
- `chunk-s<stream>-<start>-<end>-g<generation>.npz`: the steps `[start, end)` of one stream, one
  array per key with leading `end - start`. Step numbers count every step ever added to the stream,
  so a chunk file's content never changes once written.

The index lists each chunk file with the sha256 of its bytes, and loading refuses a file whose bytes
no longer match (a flipped bit would otherwise load as plausible numbers, or fail deep in numpy).
Snapshots of format 1, written before digests, still load, unverified.

Why this layout: an interrupted save must never destroy the previous snapshot. Every file a save
writes carries that save's generation number in its name, so it cannot clobber a file the previous
index refers to; the index is replaced last with an atomic rename, and only then are files that no
index refers to any more deleted. A later save can keep referring to chunk files written by earlier
saves, so full chunks are written once.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

INDEX_NAME = "replay.json"
FORMAT_VERSION = 2  # 2: chunk entries carry a sha256
_READABLE = (1, 2)
_CHUNK_RE = re.compile(r"chunk-s(\d+)-(\d+)-(\d+)-g(\d+)\.npz")


class ReplayLoadError(RuntimeError):
    """A snapshot directory is missing, incomplete or corrupt; the message names the path."""


@dataclass(frozen=True)
class ChunkFile:
    """One chunk file: steps `[start, end)` of stream `stream`, stored under `name`, whose bytes
    have the hex digest `sha256` (None until written, or in a snapshot of format 1)."""

    stream: int
    start: int
    end: int
    name: str
    sha256: str | None = None

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


def file_sha256(path: str) -> str:
    """The hex sha256 of a file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _write_chunk(path: str, arrays: dict[str, np.ndarray], compress: bool) -> str:
    """Write one chunk file (atomically); returns the hex sha256 of its bytes."""
    buffer = io.BytesIO()
    (np.savez_compressed if compress else np.savez)(buffer, **arrays)
    data = buffer.getvalue()
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return hashlib.sha256(data).hexdigest()


def _known_digests(directory: str) -> dict[str, str]:
    """Chunk name -> sha256 from the index already in `directory` (the previous snapshot), if any."""
    try:
        with open(os.path.join(directory, INDEX_NAME)) as f:
            entries = json.load(f)["files"]
        return {e["name"]: e["sha256"] for e in entries if isinstance(e.get("sha256"), str)}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


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
    known = _known_digests(directory)
    files = []
    for chunk in kept:
        path = os.path.join(directory, chunk.name)
        assert os.path.exists(path), f"kept chunk {chunk.name} is missing"
        # A kept file is not read again: its digest is the one it was written with (hashed now
        # only for chunks of a format-1 snapshot, once).
        digest = chunk.sha256 or known.get(chunk.name) or file_sha256(path)
        files.append(replace(chunk, sha256=digest))
    for chunk in new:
        arrays = read(chunk)
        for key, value in arrays.items():
            assert len(value) == chunk.end - chunk.start, f"{key}: {len(value)} rows for chunk {chunk.name}"
        digest = _write_chunk(os.path.join(directory, chunk.name), arrays, compress)
        files.append(replace(chunk, sha256=digest))

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
        if index.get("format") not in _READABLE:
            raise ValueError(f"unknown format {index.get('format')!r}")
        files = [ChunkFile(**entry) for entry in index["files"]]
        for chunk in files:
            if _CHUNK_RE.fullmatch(chunk.name) is None or chunk.end <= chunk.start:
                raise ValueError(f"bad chunk entry {chunk}")
            if index["format"] >= 2 and not isinstance(chunk.sha256, str):
                raise ValueError(f"chunk entry {chunk.name} has no sha256")
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
        data = _read_verified(path, chunk)
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                arrays = {key: npz[key] for key in spec}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            # Without a digest (format 1), a corrupt file shows up only here (e.g. as a
            # UnicodeDecodeError from its header).
            raise ReplayLoadError(
                f"replay chunk file {path} is corrupt or truncated ({type(err).__name__}: {err})"
            ) from None
        for key, (dtype, shape) in spec.items():
            value = arrays[key]
            expected = (chunk.end - chunk.start, *shape)
            if value.dtype != dtype or value.shape != expected:
                raise ReplayLoadError(
                    f"cannot load replay from {path}: {key} is {value.dtype} {value.shape}, "
                    f"expected {dtype} {expected}"
                )
        yield chunk, arrays


def _read_verified(path: str, chunk: ChunkFile) -> bytes:
    """The bytes of a chunk file, checked against its digest (when the index has one)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise ReplayLoadError(f"cannot load replay from {path}: {type(err).__name__}: {err}") from None
    if chunk.sha256 is not None and hashlib.sha256(data).hexdigest() != chunk.sha256:
        raise ReplayLoadError(
            f"replay chunk file {path} does not match its sha256 in {INDEX_NAME}: it is corrupt"
        )
    return data


def verify_snapshot(directory: str) -> None:
    """Check that every chunk file of the snapshot in `directory` matches its digest.

    Raises:
        ReplayLoadError: the index is unreadable, or a file is missing or does not match.
    """
    index = read_index(directory)
    for chunk in index["files"]:
        _read_verified(os.path.join(directory, chunk.name), chunk)
