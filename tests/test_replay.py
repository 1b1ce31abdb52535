"""Invariants of the sequence replay: FIFO capacity, contiguous samples, boundaries, persistence."""

from __future__ import annotations

import os

import numpy as np
import pytest

from replay import ReplayLoadError, SequenceReplay, storage

EPISODE = 7  # every stream starts a new episode every 7 steps


def make_step(counters: np.ndarray, state: bool = False) -> dict[str, np.ndarray]:
    """A contract step for N streams whose values encode (stream, step number) for checking."""
    n = len(counters)
    streams = np.arange(n)
    step = {
        "image": np.broadcast_to(
            ((counters + 10 * streams) % 256).astype(np.uint8)[:, None, None, None], (n, 4, 4, 3)
        ),
        "action": np.eye(6, dtype=np.float32)[counters % 6],
        "reward": counters.astype(np.float64),  # float64 in, float32 stored
        "counter": counters.copy(),
        "stream": streams.copy(),
        "is_first": counters % EPISODE == 0,
        "is_last": counters % EPISODE == EPISODE - 1,
        "is_terminal": np.zeros(n, bool),
    }
    if state:
        step["state/x"] = (counters[:, None] * 100 + streams[:, None] + np.arange(3)).astype(np.complex64)
        step["state/z"] = np.full((n, 2), counters[:, None], np.float32)
    return step


def fill(replay: SequenceReplay, steps: int, state: bool = False) -> None:
    """Add `steps` steps to every stream, continuing each stream's counter."""
    for _ in range(steps):
        counters = np.array([replay.stored_range(s)[1] for s in range(replay.num_streams)])
        replay.add(make_step(counters, state))


def assert_batches_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def assert_contents_equal(a: SequenceReplay, b: SequenceReplay) -> None:
    assert len(a) == len(b) and a.steps_added == b.steps_added and a.spec == b.spec
    for stream in range(a.num_streams):
        assert a.stored_range(stream) == b.stored_range(stream)
        assert_batches_equal(a.stream_steps(stream), b.stream_steps(stream))


def test_capacity_is_fifo_and_len_bounded():
    replay = SequenceReplay(capacity=21, num_streams=2, seed=0)  # 10 steps per stream, 1 unused
    assert replay.stream_capacity == 10
    for t in range(25):
        replay.add(make_step(np.full(2, t)))
        assert len(replay) == min(2 * (t + 1), 20) <= replay.capacity
    assert replay.steps_added == 50
    for stream in range(2):
        assert replay.stored_range(stream) == (15, 25)
        np.testing.assert_array_equal(replay.stream_steps(stream)["counter"], np.arange(15, 25))
    assert replay.sample(64, 4)["counter"].min() >= 15


def test_sample_is_contiguous_steps_of_one_stream():
    replay = SequenceReplay(capacity=300, num_streams=3, seed=1)
    fill(replay, 60)
    batch = replay.sample(128, 9)
    assert batch["counter"].shape == (128, 9) and batch["image"].shape == (128, 9, 4, 4, 3)
    assert (batch["stream"] == batch["stream"][:, :1]).all(), "a sample mixes streams"
    assert (np.diff(batch["counter"], axis=1) == 1).all(), "a sample is not contiguous"
    expected_image = (batch["counter"] + 10 * batch["stream"]) % 256
    assert (batch["image"] == expected_image[..., None, None, None]).all()
    np.testing.assert_array_equal(batch["reward"], batch["counter"].astype(np.float32))
    assert set(np.unique(batch["stream"])) == {0, 1, 2}


def test_starts_cover_every_window_and_unequal_streams():
    replay = SequenceReplay(capacity=40, num_streams=2, seed=2)
    for t in range(12):
        replay.add({k: v[0] for k, v in make_step(np.array([t])).items()}, stream=0)
    for t in range(3):  # stream 1 is too short for T = 5 and must never be drawn
        replay.add({k: v[1] for k, v in make_step(np.array([0, t])).items()}, stream=1)
    assert replay.stream_lengths.tolist() == [12, 3]
    starts = replay.sample(2000, 5)["counter"][:, 0]
    assert set(np.unique(starts)) == set(range(8)), "every window start must be reachable"
    assert np.bincount(starts).min() > 150, "starts should be close to uniform"


def test_boundaries_flagged_and_storage_untouched():
    replay = SequenceReplay(capacity=100, num_streams=2, seed=3)
    fill(replay, 40)
    for _ in range(3):  # forcing is_first in one sample must not leak into storage
        batch = replay.sample(64, 10)
        assert batch["is_first"][:, 0].all()
        np.testing.assert_array_equal(batch["is_first"][:, 1:], batch["counter"][:, 1:] % EPISODE == 0)
        np.testing.assert_array_equal(batch["is_last"], batch["counter"] % EPISODE == EPISODE - 1)
    recorded = replay.stream_steps(0)
    np.testing.assert_array_equal(recorded["is_first"], recorded["counter"] % EPISODE == 0)


def test_dtypes_kept():
    replay = SequenceReplay(capacity=50, num_streams=1, seed=0)
    fill(replay, 10)
    batch = replay.sample(4, 3)
    assert batch["image"].dtype == np.uint8
    assert batch["reward"].dtype == np.float32 and batch["action"].dtype == np.float32
    assert batch["is_first"].dtype == bool and batch["counter"].dtype == np.int64
    assert replay.bytes_per_step == 48 + 24 + 4 + 8 + 8 + 3
    assert replay.stats()["bytes"] == 10 * replay.bytes_per_step


def test_sampling_is_deterministic_given_seed():
    a, b = SequenceReplay(100, 2, seed=7), SequenceReplay(100, 2, seed=7)
    fill(a, 30)
    fill(b, 30)
    assert_batches_equal(a.sample(8, 5), b.sample(8, 5))
    c = SequenceReplay(100, 2, seed=8)
    fill(c, 30)
    assert not np.array_equal(a.sample(8, 5)["counter"], c.sample(8, 5)["counter"])


@pytest.mark.parametrize("steps", [13, 47])  # before and after the rings wrap around
def test_save_load_identical_contents_and_samples(tmp_path, steps):
    replay = SequenceReplay(capacity=40, num_streams=2, seed=4, chunk_steps=6)
    fill(replay, steps)
    replay.sample(3, 4)  # advance the RNG: its state must be saved too
    replay.save(tmp_path / "replay")
    loaded = SequenceReplay(capacity=40, num_streams=2, seed=99, chunk_steps=6)
    loaded.load(tmp_path / "replay")
    assert_contents_equal(replay, loaded)
    assert_batches_equal(replay.sample(16, 5), loaded.sample(16, 5))
    fill(replay, 9)  # and both go on identically after more adds
    fill(loaded, 9)
    assert_contents_equal(replay, loaded)
    assert_batches_equal(replay.sample(16, 5), loaded.sample(16, 5))


def test_repeated_saves_write_only_new_chunks(tmp_path):
    directory = str(tmp_path / "replay")
    replay = SequenceReplay(capacity=40, num_streams=2, seed=5, chunk_steps=4)
    fill(replay, 10)  # per stream: chunks [0, 4) [4, 8) full, [8, 10) partial
    replay.save(directory)
    first = set(os.listdir(directory))
    assert len(first) == 2 * 3 + 1
    fill(replay, 3)  # [8, 12) is now full, [12, 13) new
    replay.save(directory)
    second = set(os.listdir(directory))
    full_chunks = {
        name
        for name in first
        if "-000000000000-000000000004-" in name or "-000000000004-000000000008-" in name
    }
    assert len(full_chunks) == 4 and full_chunks <= second, "full unchanged chunks must be kept"
    assert len(second - first) == 2 * 2 and len(second) == 2 * 4 + 1
    fill(replay, 20)  # wrap around: chunks older than the stored steps are dropped
    replay.save(directory)
    loaded = SequenceReplay(capacity=40, num_streams=2, seed=0, chunk_steps=4)
    loaded.load(directory)
    assert_contents_equal(replay, loaded)
    assert len(os.listdir(directory)) == 2 * 6 + 1  # steps [13, 33): chunks 3..8


def test_interrupted_save_keeps_previous_snapshot(tmp_path, monkeypatch):
    directory = str(tmp_path / "replay")
    replay = SequenceReplay(capacity=40, num_streams=2, seed=6, chunk_steps=4)
    fill(replay, 10)
    replay.save(directory)
    expected = replay.sample(8, 5)
    fill(replay, 10)
    calls = []

    def failing_write(path, arrays, compress):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        original(path, arrays, compress)

    original = storage._write_chunk
    monkeypatch.setattr(storage, "_write_chunk", failing_write)
    with pytest.raises(KeyboardInterrupt):
        replay.save(directory)
    monkeypatch.undo()
    loaded = SequenceReplay(capacity=40, num_streams=2, seed=0, chunk_steps=4)
    loaded.load(directory)
    assert loaded.steps_added == 20
    assert_batches_equal(loaded.sample(8, 5), expected)
    replay.save(directory)  # a later save succeeds and cleans up the leftovers
    loaded.load(directory)
    assert_contents_equal(replay, loaded)


def test_stored_state_starts_from_step_before(tmp_path):
    replay = SequenceReplay(capacity=40, num_streams=2, seed=7, store_state=True, chunk_steps=4)
    fill(replay, 30, state=True)  # wrapped: streams hold steps [10, 30)
    batch = replay.sample(256, 6)
    assert not any(key.startswith("state/") for key in batch)
    assert batch["start/x"].shape == (256, 3) and batch["start/x"].dtype == np.complex64
    first, stream, valid = batch["counter"][:, 0], batch["stream"][:, 0], batch["start/valid"]
    np.testing.assert_array_equal(valid, first > 10)
    assert valid.any() and not valid.all()
    np.testing.assert_array_equal(batch["start/stream"], stream)
    np.testing.assert_array_equal(batch["start/index"], first)
    expected_x = ((first - 1)[:, None] * 100 + stream[:, None] + np.arange(3)) * valid[:, None]
    np.testing.assert_array_equal(batch["start/x"], expected_x)
    np.testing.assert_array_equal(batch["start/z"], np.full((256, 2), ((first - 1) * valid)[:, None]))
    np.testing.assert_array_equal(batch["is_first"][:, 0], ~valid | (first % EPISODE == 0))

    replay.save(tmp_path / "a")  # the update below must make the next save rewrite its chunks
    new_z = np.full((256, 6, 2), -1.0, np.float32)
    assert replay.update_state(batch["start/stream"], batch["start/index"], {"state/z": new_z}) == 256 * 6
    for s in range(2):
        z = replay.stream_steps(s)["state/z"][:, 0]
        touched = np.isin(np.arange(10, 30), batch["counter"][batch["stream"][:, 0] == s])
        np.testing.assert_array_equal(z, np.where(touched, -1.0, np.arange(10, 30)))
    replay.save(tmp_path / "a")
    loaded = SequenceReplay(capacity=40, num_streams=2, seed=0, store_state=True, chunk_steps=4)
    loaded.load(tmp_path / "a")
    assert_contents_equal(replay, loaded)


def test_update_state_after_adds_skips_evicted_steps_and_is_saved(tmp_path):
    replay = SequenceReplay(capacity=20, num_streams=2, seed=0, store_state=True, chunk_steps=4)
    fill(replay, 12, state=True)  # each stream holds [2, 12)
    replay.save(tmp_path / "a")  # full chunks [4, 8) and [8, 12) are written now
    fill(replay, 3, state=True)  # [5, 15): the ring wrapped; step 5 sits at the next write row
    # Stream 0 from step 2 (steps 2-4 evicted since), stream 1 and stream 0 from step 9, which
    # cross the ring's end and reach the newest step 14.
    stream, index = np.array([0, 1, 0]), np.array([2, 9, 9])
    new_z = -np.arange(1, 3 * 6 + 1, dtype=np.float32).reshape(3, 6, 1).repeat(2, -1)  # (B, T', 2)
    assert replay.update_state(stream, index, {"state/z": new_z}) == 3 + 6 + 6

    expected = {s: np.arange(5, 15, dtype=np.float32) for s in range(2)}
    for b, (s, first) in enumerate(zip(stream, index)):
        for t in range(6):
            if first + t >= 5:
                expected[s][first + t - 5] = new_z[b, t, 0]
    for s in range(2):
        steps = replay.stream_steps(s)
        np.testing.assert_array_equal(steps["counter"], np.arange(5, 15))  # no step was overwritten
        np.testing.assert_array_equal(steps["state/z"][:, 0], expected[s])
        np.testing.assert_array_equal(steps["state/x"].real[:, 0], np.arange(5, 15) * 100 + s)

    replay.save(tmp_path / "a")  # must rewrite the saved chunks these states changed
    loaded = SequenceReplay(capacity=20, num_streams=2, seed=0, store_state=True, chunk_steps=4)
    loaded.load(tmp_path / "a")
    assert_contents_equal(replay, loaded)


def test_state_keys_dropped_without_store_state():
    replay = SequenceReplay(capacity=20, num_streams=1, seed=0)
    fill(replay, 5, state=True)
    assert not any(key.startswith("state/") for key in replay.spec)
    assert not any(key.startswith("start/") for key in replay.sample(2, 3))


def test_load_into_smaller_capacity_keeps_latest_steps(tmp_path):
    replay = SequenceReplay(capacity=40, num_streams=2, seed=0, chunk_steps=8)
    fill(replay, 30)
    replay.save(tmp_path / "replay", compress=True)
    small = SequenceReplay(capacity=20, num_streams=2, seed=0, chunk_steps=8)
    small.load(tmp_path / "replay")
    for stream in range(2):
        assert small.stored_range(stream) == (20, 30)
        np.testing.assert_array_equal(small.stream_steps(stream)["counter"], np.arange(20, 30))


def test_errors(tmp_path):
    replay = SequenceReplay(capacity=20, num_streams=2, seed=0)
    with pytest.raises(ValueError, match="not enough data"):
        replay.sample(4, 3)
    fill(replay, 5)
    with pytest.raises(ValueError, match="not enough data"):
        replay.sample(4, 6)
    with pytest.raises(ValueError, match="per-stream capacity"):
        replay.sample(4, 11)
    step = make_step(np.zeros(2, np.int64))
    with pytest.raises(AssertionError, match="keys"):
        replay.add({k: v for k, v in step.items() if k != "reward"})
    with pytest.raises(AssertionError, match="shape"):
        replay.add({k: v[:1] for k, v in step.items()})
    with pytest.raises(AssertionError, match="image"):
        replay.add({**step, "image": step["image"].astype(np.float32)})

    missing = tmp_path / "missing"
    with pytest.raises(ReplayLoadError, match="missing") as info:
        replay.load(missing)
    assert str(missing) in str(info.value) and "\n" not in str(info.value)

    replay.save(tmp_path / "ok")
    with pytest.raises(ReplayLoadError, match="streams"):
        SequenceReplay(capacity=20, num_streams=1).load(tmp_path / "ok")
    chunk = next(name for name in os.listdir(tmp_path / "ok") if name.endswith(".npz"))
    (tmp_path / "ok" / chunk).write_bytes(b"not a zip file")
    fresh = SequenceReplay(capacity=20, num_streams=2, seed=0)
    fresh.add(make_step(np.zeros(2, np.int64)))
    with pytest.raises(ReplayLoadError, match=chunk):
        fresh.load(tmp_path / "ok")
    assert fresh.steps_added == 2, "a failed load must leave the replay as it was"
    (tmp_path / "ok" / storage.INDEX_NAME).write_text("{")
    with pytest.raises(ReplayLoadError, match=storage.INDEX_NAME):
        fresh.load(tmp_path / "ok")
