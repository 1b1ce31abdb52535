"""Replay figures: bytes per stored 64x64x3 image step, add / sample / save / load speed.

Usage, from the repository root: `python -m benchmarks.replay_speed [--capacity 20000] [--streams 4]`
(as a module: run as a script, this file would shadow the `replay` package). One line per figure.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from replay import SequenceReplay


def image_step(num_envs: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One contract step for `num_envs` envs: 64x64x3 image, one-hot action of 6, reward, flags."""
    return {
        "image": rng.integers(0, 256, (num_envs, 64, 64, 3), dtype=np.uint8),
        "action": np.eye(6, dtype=np.float32)[rng.integers(0, 6, num_envs)],
        "reward": rng.standard_normal(num_envs).astype(np.float32),
        "is_first": rng.random(num_envs) < 0.01,
        "is_last": rng.random(num_envs) < 0.01,
        "is_terminal": np.zeros(num_envs, bool),
    }


def timed(fn, repeats: int) -> float:
    """Seconds per call of `fn`, best of three rounds of `repeats` calls."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        best = min(best, (time.perf_counter() - start) / repeats)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--capacity", type=int, default=20_000)
    parser.add_argument("--streams", type=int, default=4)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    replay = SequenceReplay(args.capacity, args.streams, seed=0, chunk_steps=1024)
    steps = [image_step(args.streams, rng) for _ in range(64)]
    start = time.perf_counter()
    for i in range(args.capacity // args.streams):
        replay.add(steps[i % len(steps)])
    add_s = (time.perf_counter() - start) / replay.steps_added
    print(f"bytes per step (64x64x3 image, one-hot action of 6, reward, 3 flags): {replay.bytes_per_step}")
    print(
        f"stored {len(replay)} steps, {replay.nbytes / 2**20:.0f} MiB; add: {1e6 * add_s:.1f} us per env step"
    )

    for batch, length in ((16, 64), (16, 256), (4, 1024)):
        seconds = timed(lambda b=batch, t=length: replay.sample(b, t), 5)
        print(
            f"sample B={batch} T={length}: {1e3 * seconds:.1f} ms per batch, "
            f"{batch * length / seconds / 1e3:.0f}k steps/s"
        )

    with tempfile.TemporaryDirectory() as directory:
        start = time.perf_counter()
        replay.save(directory)
        save_s = time.perf_counter() - start
        start = time.perf_counter()
        replay.save(directory)
        resave_s = time.perf_counter() - start
        start = time.perf_counter()
        SequenceReplay(args.capacity, args.streams, seed=0).load(directory)
        load_s = time.perf_counter() - start
    mib = replay.nbytes / 2**20
    print(f"save: {mib / save_s:.0f} MiB/s ({save_s:.2f} s); unchanged re-save: {resave_s:.3f} s")
    print(f"load: {mib / load_s:.0f} MiB/s ({load_s:.2f} s)")


if __name__ == "__main__":
    main()
