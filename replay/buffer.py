"""Sequence replay: one FIFO stream per env, uniform sampling of (B, T) sequences (docs/design.md §5).

Every env writes its steps, as they happen, into its own ring buffer (a *stream*). A sample is T
contiguous steps of one stream; it may cross episode boundaries, which `is_first` marks. With
`store_state`, each step may also carry the latent state after observing it (keys `state/...`),
so that a sample can start from the state of the step just before it (DreamerV3's replay context)
instead of the initial state, giving the world model memory longer than T.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from replay import storage

if TYPE_CHECKING:
    from configs.schema import ReplayConfig

STATE_PREFIX = "state/"  # keys a step may carry: the latent state after observing it
START_PREFIX = "start/"  # keys `sample` adds: the stored state before each sequence
# Batch keys that sampling with `store_state` adds besides `start/<name>`; no state may use them.
_START_EXTRAS = ("valid", "stream", "index")

Spec = dict[str, tuple[np.dtype, tuple[int, ...]]]


class SequenceReplay:
    """FIFO replay of per-env step streams, sampled as (B, T) sequences.

    Capacity: `capacity` steps over all streams, split evenly, so each stream keeps its latest
    `capacity // num_streams` steps (the remainder is unused). Storage is allocated on the first
    `add`, from the keys, dtypes and shapes seen there; later steps must have the same keys and
    shapes. Values are stored in their own dtype (images stay uint8) except float64, which is stored
    as float32 to halve the memory.

    Keys: whatever a step holds (docs/design.md §2: `image`, `vector`, `action`, `reward`, `is_first`,
    `is_last`, `is_terminal`); `is_first` is required. Keys starting with `state/` are latent
    states: stored only when `store_state` is on (dropped otherwise) and never returned in the
    (B, T) batch.

    Steps are numbered per stream from 0 (the first step ever added to that stream); a stream
    holds the steps `[added - stream_length, added)`.

    Stored state (`store_state=True`): add with each step `state/<name>`, the latent after
    observing that step (e.g. `state/x` (N, K, P, 2) float32, a complex state as its real and
    imaginary parts). `sample` then returns `start/<name>`, the state of the step before each
    sequence, and `start/valid`; `is_first[:, 0]` is forced only
    where that step is gone. After every update the loop writes the posteriors it trained on back
    (DreamerV3's replay context) with `update_state(batch["start/stream"], batch["start/index"],
    states)`, `states` as `Agent.train_with_states` returns them.

    Persistence: `save(directory)` / `load(directory)` keep contents, counters and the sampling
    RNG, so a resumed run samples exactly what the uninterrupted one would have (see
    `replay.storage` for the layout and why an interrupted save is harmless).
    """

    def __init__(
        self,
        capacity: int,
        num_streams: int = 1,
        seed: int = 0,
        store_state: bool = False,
        chunk_steps: int = 1024,
    ) -> None:
        """
        Args:
            capacity: FIFO capacity in steps over all streams (each stream: capacity // num_streams).
            num_streams: N, one stream per env.
            seed: seed of the replay's own generator, which alone decides what `sample` draws.
            store_state: keep `state/...` keys and return the stored state before each sample.
            chunk_steps: steps of one stream per file in `save`.
        """
        assert num_streams >= 1, f"num_streams must be >= 1, got {num_streams}"
        assert capacity >= num_streams, f"capacity {capacity} < num_streams {num_streams}"
        assert chunk_steps >= 1, f"chunk_steps must be >= 1, got {chunk_steps}"
        self.capacity = capacity
        self.num_streams = num_streams
        self.stream_capacity = capacity // num_streams
        self.store_state = store_state
        self.chunk_steps = chunk_steps
        self._rng = np.random.default_rng(seed)
        self._spec: Spec = {}
        # key -> (N * stream_capacity, ...): stream n's ring is the rows [n * C, (n + 1) * C),
        # flat so that sampling is one `np.take` per key.
        self._flat: dict[str, np.ndarray] = {}
        self._added = np.zeros(num_streams, np.int64)  # steps ever added, per stream
        # Chunks (stream, chunk) whose stored state `update_state` changed since the last save.
        self._dirty: set[tuple[int, int]] = set()
        # Chunk files of the last snapshot saved to or loaded from `_saved_dir`, for reuse by `save`.
        self._saved_dir: str | None = None
        self._saved: dict[tuple[int, int], storage.ChunkFile] = {}

    @classmethod
    def from_config(cls, cfg: ReplayConfig, num_streams: int, seed: int) -> SequenceReplay:
        """Build from the `replay` section of the config, with one stream per training env."""
        return cls(cfg.capacity, num_streams, seed, cfg.store_state, cfg.chunk_steps)

    # ------------------------------------------------------------------ contents

    def __len__(self) -> int:
        """Steps stored over all streams (never more than `capacity`)."""
        return int(self.stream_lengths.sum())

    @property
    def stream_lengths(self) -> np.ndarray:
        """(N,) int64: steps stored in each stream."""
        return np.minimum(self._added, self.stream_capacity)

    @property
    def steps_added(self) -> int:
        """Steps ever added over all streams, evicted ones included."""
        return int(self._added.sum())

    @property
    def spec(self) -> Spec:
        """Stored keys: key -> (dtype, shape of one step); empty before the first `add`."""
        return dict(self._spec)

    @property
    def bytes_per_step(self) -> int:
        """Bytes one stored step takes, over all stored keys."""
        return sum(dtype.itemsize * int(np.prod(shape)) for dtype, shape in self._spec.values())

    @property
    def nbytes(self) -> int:
        """Bytes the stored steps take (the rings are allocated lazily by the OS as they fill)."""
        return len(self) * self.bytes_per_step

    def stats(self) -> dict[str, int]:
        """Counters for logging: steps stored and added, bytes used and reserved."""
        return {
            "steps": len(self),
            "steps_added": self.steps_added,
            "bytes": self.nbytes,
            "bytes_per_step": self.bytes_per_step,
            "bytes_reserved": sum(value.nbytes for value in self._flat.values()),
        }

    def stored_range(self, stream: int) -> tuple[int, int]:
        """Step numbers `[first, end)` that stream `stream` holds."""
        assert 0 <= stream < self.num_streams, f"stream {stream} not in [0, {self.num_streams})"
        added = int(self._added[stream])
        return added - min(added, self.stream_capacity), added

    def stream_steps(
        self, stream: int, start: int | None = None, end: int | None = None
    ) -> dict[str, np.ndarray]:
        """A copy of the stored steps `[start, end)` of one stream (default: all), oldest first.

        Returns:
            key -> (end - start, ...) for every stored key, `state/...` included.
        """
        first, last = self.stored_range(stream)
        start, end = first if start is None else start, last if end is None else end
        assert first <= start <= end <= last, f"steps [{start}, {end}) not in the stored [{first}, {last})"
        rows = stream * self.stream_capacity + np.arange(start, end) % self.stream_capacity
        return {key: np.take(value, rows, axis=0) for key, value in self._flat.items()}

    # ------------------------------------------------------------------ writing

    def add(self, step: dict[str, np.ndarray], stream: int | None = None) -> None:
        """Append one step to every stream, or to the one stream `stream`.

        Args:
            step: key -> value of shape `(N, ...)` (one step per stream), or `(...)` when `stream`
                is given, e.g. `image` (N, h, w, c) uint8, `action` (N, A) float32, `reward` (N,)
                float32, `is_first` / `is_last` / `is_terminal` (N,) bool, `state/x` (N, K, P, 2)
                float32.
            stream: the stream to append to; None appends to all N.
        """
        if stream is None:
            streams = np.arange(self.num_streams)
        else:
            assert 0 <= stream < self.num_streams, f"stream {stream} not in [0, {self.num_streams})"
            streams = np.array([stream])
            step = {key: np.asarray(value)[None] for key, value in step.items()}
        step = {
            key: np.asarray(value)
            for key, value in step.items()
            if self.store_state or not key.startswith(STATE_PREFIX)
        }
        if not self._spec:
            self._allocate(step)
        self._check(step, len(streams))
        rows = streams * self.stream_capacity + self._added[streams] % self.stream_capacity
        for key, value in step.items():
            self._flat[key][rows] = value
        self._added[streams] += 1

    def _allocate(self, step: dict[str, np.ndarray]) -> None:
        assert "is_first" in step, f"a step needs an is_first key, got keys {sorted(step)}"
        assert step["is_first"].dtype == bool, f"is_first must be bool, got {step['is_first'].dtype}"
        if "image" in step:
            assert step["image"].dtype == np.uint8, (
                f"image must be uint8 (data contract), got {step['image'].dtype}"
            )
        spec: Spec = {}
        for key, value in step.items():
            assert value.ndim >= 1, f"{key}: expected a leading stream axis, got a scalar"
            dtype = np.dtype(np.float32) if value.dtype == np.float64 else value.dtype
            assert dtype != np.dtype(object), f"{key}: object arrays cannot be stored"
            if key.startswith(STATE_PREFIX):
                name = key[len(STATE_PREFIX) :]
                assert name not in _START_EXTRAS, f"{key}: state names {_START_EXTRAS} are reserved"
            spec[key] = (dtype, value.shape[1:])
        self._set_spec(spec)

    def _set_spec(self, spec: Spec) -> None:
        self._spec = spec
        rows = self.num_streams * self.stream_capacity
        # np.zeros maps untouched pages lazily, so a large capacity costs memory only as it fills.
        self._flat = {key: np.zeros((rows, *shape), dtype) for key, (dtype, shape) in spec.items()}

    def _check(self, step: dict[str, np.ndarray], count: int) -> None:
        assert step.keys() == self._spec.keys(), (
            f"step keys {sorted(step)} differ from the stored keys {sorted(self._spec)}"
        )
        for key, value in step.items():
            dtype, shape = self._spec[key]
            assert value.shape == (count, *shape), f"{key}: shape {value.shape}, expected {(count, *shape)}"
            assert np.can_cast(value.dtype, dtype, "same_kind"), (
                f"{key}: cannot store {value.dtype} in {dtype}"
            )

    # ------------------------------------------------------------------ sampling

    def sample(self, batch_size: int, seq_len: int) -> dict[str, np.ndarray]:
        """Draw `batch_size` sequences of `seq_len` contiguous steps, each from one stream.

        The first step is uniform over all stored steps that start a full sequence (in streams
        holding at least `seq_len` steps), so every such window is equally likely. Sequences may
        cross episode boundaries; `is_first[:, 0]` is set on the copy (storage is untouched) so
        each sample starts from the initial state, except with `store_state` where the stored
        state of the step before is available (`start/valid`).

        Returns:
            key -> (B, T, ...) for every stored key except `state/...` (e.g. `image` (B, T, h, w, c)
            uint8, `is_first` (B, T) bool). With `store_state`, also:
            `start/<name>` (B, ...): the stored `state/<name>` of the step just before the first
            step, zeros where not valid; `start/valid` (B,) bool: that step is still stored in the
            same stream (where not, `is_first[:, 0]` is forced True); `start/stream` (B,) int64 and
            `start/index` (B,) int64: stream and step number of the first step, for `update_state`.

        Raises:
            ValueError: no stream holds `seq_len` steps yet.
        """
        assert batch_size >= 1 and seq_len >= 1, f"bad batch_size {batch_size} or seq_len {seq_len}"
        cap = self.stream_capacity
        if seq_len > cap:
            raise ValueError(f"seq_len {seq_len} exceeds the per-stream capacity {cap}")
        lengths = self.stream_lengths
        starts = np.maximum(lengths - seq_len + 1, 0)  # (N,) windows per stream
        ends = np.cumsum(starts)
        if ends[-1] == 0:
            raise ValueError(
                f"not enough data to sample sequences of {seq_len} steps: "
                f"the longest stream holds {lengths.max()} steps ({len(self)} stored)"
            )
        draw = self._rng.integers(0, ends[-1], size=batch_size)
        stream = np.searchsorted(ends, draw, side="right")  # (B,)
        first = self._added[stream] - lengths[stream] + draw - (ends[stream] - starts[stream])  # (B,)
        steps = first[:, None] + np.arange(seq_len)  # (B, T)
        rows = stream[:, None] * cap + steps % cap  # (B, T)

        batch = {
            key: np.take(value, rows, axis=0)
            for key, value in self._flat.items()
            if not key.startswith(STATE_PREFIX)
        }
        if not self.store_state:
            batch["is_first"][:, 0] = True
            return batch

        valid = first > self._added[stream] - lengths[stream]  # the step before is still stored
        prev_rows = stream * cap + (first - 1) % cap  # (B,)
        for key, value in self._flat.items():
            if key.startswith(STATE_PREFIX):
                start = np.take(value, prev_rows, axis=0)
                start[~valid] = 0
                batch[START_PREFIX + key[len(STATE_PREFIX) :]] = start
        batch["is_first"][:, 0] |= ~valid
        batch["start/valid"] = valid
        batch["start/stream"] = stream.astype(np.int64)
        batch["start/index"] = first
        return batch

    def update_state(self, stream: np.ndarray, index: np.ndarray, values: dict[str, np.ndarray]) -> int:
        """Overwrite stored states of sampled sequences, e.g. with the posteriors just trained on.

        Args:
            stream: (B,) int, `start/stream` of the batch.
            index: (B,) int, `start/index` of the batch (step number of the first step).
            values: `state/<name>` -> (B, T', ...) new states of the steps `index .. index + T' - 1`
                of each sequence; every value has the same (B, T').
        Returns:
            The number of steps written per key; steps evicted since sampling are skipped.
        """
        assert self.store_state, "update_state needs store_state=True"
        assert values, "update_state needs at least one state/... value"
        stream, index = np.asarray(stream, np.int64), np.asarray(index, np.int64)
        assert stream.ndim == 1 and stream.shape == index.shape, f"stream {stream.shape}, index {index.shape}"
        values = {key: np.asarray(value) for key, value in values.items()}
        length = next(iter(values.values())).shape[1]
        for key, value in values.items():
            assert key in self._spec and key.startswith(STATE_PREFIX), f"{key} is not a stored state key"
            dtype, shape = self._spec[key]
            assert value.shape == (len(stream), length, *shape), (
                f"{key}: shape {value.shape}, expected {(len(stream), length, *shape)}"
            )
            assert np.can_cast(value.dtype, dtype, "same_kind"), (
                f"{key}: cannot store {value.dtype} in {dtype}"
            )

        steps = index[:, None] + np.arange(length)  # (B, T')
        added = self._added[stream][:, None]  # (B, 1)
        keep = (steps >= added - self.stream_lengths[stream][:, None]) & (steps < added)  # (B, T')
        rows = (stream[:, None] * self.stream_capacity + steps % self.stream_capacity)[keep]
        for key, value in values.items():
            self._flat[key][rows] = value[keep]
        # Saved chunks holding these steps are now stale: the next save rewrites them.
        kept_streams = np.broadcast_to(stream[:, None], steps.shape)[keep]
        chunks = np.unique(np.stack([kept_streams, steps[keep] // self.chunk_steps], 1), axis=0)
        self._dirty.update(map(tuple, chunks.tolist()))
        return len(rows)

    # ------------------------------------------------------------------ persistence

    def _read_chunk(self, chunk: storage.ChunkFile) -> dict[str, np.ndarray]:
        return self.stream_steps(chunk.stream, chunk.start, chunk.end)

    def save(self, directory: str, compress: bool = False) -> None:
        """Save contents, counters and RNG state into `directory`, in chunks of `chunk_steps`.

        The previous snapshot in `directory` stays loadable until the new one is complete. Saving
        again to the same directory writes only chunks that are new or grew since the last save
        (or whose states `update_state` changed); full unchanged chunks are kept as they are.

        Args:
            directory: created if missing.
            compress: zlib-compress chunk files (images shrink a lot, but writing is much slower).
        """
        path = os.path.abspath(directory)
        generation = storage.next_generation(path)
        previous = self._saved if self._saved_dir == path else {}
        kept: list[storage.ChunkFile] = []
        new: list[storage.ChunkFile] = []
        size = self.chunk_steps
        for stream in range(self.num_streams):
            low, high = self.stored_range(stream)
            for chunk in range(low // size, -(-high // size)):
                start, end = max(low, chunk * size), min(high, (chunk + 1) * size)
                old = previous.get((stream, chunk))
                if (
                    old is not None
                    and old.start <= start
                    and old.end >= end
                    and (stream, chunk) not in self._dirty
                    and os.path.exists(os.path.join(path, old.name))
                ):
                    kept.append(old)
                else:
                    new.append(storage.ChunkFile.make(stream, start, end, generation))
        index = {
            "generation": generation,
            "num_streams": self.num_streams,
            "capacity": self.capacity,
            "chunk_steps": self.chunk_steps,
            "store_state": self.store_state,
            "added": self._added.tolist(),
            "rng": self._rng.bit_generator.state,
            "spec": {key: [dtype.str, list(shape)] for key, (dtype, shape) in self._spec.items()},
        }
        storage.write_snapshot(path, index, kept, new, self._read_chunk, compress)
        self._saved_dir = path
        self._saved = {(chunk.stream, chunk.start // size): chunk for chunk in kept + new}
        self._dirty.clear()

    def load(self, directory: str) -> None:
        """Replace this replay's contents, counters and RNG state with the snapshot in `directory`.

        The snapshot must have the same `num_streams`. If this replay's capacity is smaller, each
        stream keeps its latest steps. Saved `state/...` keys are dropped unless `store_state` is on.
        Nothing changes here if loading fails.

        Raises:
            storage.ReplayLoadError: `directory` is missing or holds an incomplete or corrupt
                snapshot (one line, naming the path).
        """
        path = os.path.abspath(directory)
        index = storage.read_index(path)
        try:
            saved_spec: Spec = {
                key: (np.dtype(dtype), tuple(int(n) for n in shape))
                for key, (dtype, shape) in index["spec"].items()
            }
            added = np.asarray(index["added"], np.int64)
            rng_state = index["rng"]
            if int(index["num_streams"]) != self.num_streams or added.shape != (self.num_streams,):
                raise ValueError(f"{index['num_streams']} streams saved, this replay has {self.num_streams}")
            rng = np.random.default_rng()
            rng.bit_generator.state = rng_state
        except (KeyError, ValueError, TypeError) as err:
            raise storage.ReplayLoadError(
                f"cannot load replay from {path}: {type(err).__name__}: {err}"
            ) from None

        spec = {
            key: value
            for key, value in saved_spec.items()
            if self.store_state or not key.startswith(STATE_PREFIX)
        }
        fresh = SequenceReplay(self.capacity, self.num_streams, 0, self.store_state, self.chunk_steps)
        fresh._added = added
        if spec:
            fresh._set_spec(spec)
        covered = np.zeros(self.num_streams, np.int64)  # steps of each stream's stored range found
        for chunk, arrays in storage.read_chunks(path, index["files"], spec):
            if not 0 <= chunk.stream < self.num_streams:
                raise storage.ReplayLoadError(f"cannot load replay from {path}: bad stream in {chunk.name}")
            low, high = fresh.stored_range(chunk.stream)
            start, end = max(low, chunk.start), min(high, chunk.end)
            if start >= end:
                continue  # older than what this replay's capacity keeps
            rows = chunk.stream * self.stream_capacity + np.arange(start, end) % self.stream_capacity
            for key, value in arrays.items():
                fresh._flat[key][rows] = value[start - chunk.start : end - chunk.start]
            covered[chunk.stream] += end - start
        if not np.array_equal(covered, fresh.stream_lengths):
            raise storage.ReplayLoadError(
                f"cannot load replay from {path}: chunk files cover {covered.tolist()} steps per stream, "
                f"expected {fresh.stream_lengths.tolist()}"
            )

        self._spec, self._flat, self._added = fresh._spec, fresh._flat, fresh._added
        self._rng = rng
        self._dirty = set()
        # Reuse the loaded chunk files on the next save to this directory only if they follow
        # this replay's chunking; otherwise the next save there rewrites everything.
        size = self.chunk_steps
        aligned = int(index.get("chunk_steps", -1)) == size
        self._saved_dir = path if aligned else None
        self._saved = {(c.stream, c.start // size): c for c in index["files"]} if aligned else {}
