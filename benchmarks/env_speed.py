"""Environment speed: env steps per second with random actions, per suite, for one env and for a
VectorEnv of N envs in subprocesses.

    python benchmarks/env_speed.py            # a table
    python benchmarks/env_speed.py --json     # one JSON object
    python benchmarks/env_speed.py --suites popgym dmc_vision --seconds 5

Each measurement runs for about `--seconds` after a short warm-up; build time (constructing the
env and its first reset) is reported separately. With N envs, steps/s counts the steps of all N.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from envs import VectorEnv

# One representative task per suite.
TASKS = {
    "popgym": "popgym:RepeatPreviousEasy",
    "bsuite": "bsuite:memory_len/10",
    "minigrid": "minigrid:MiniGrid-MemoryS11-v0",
    "memory_maze": "memory_maze:9x9",
    "atari": "atari:pong",
    "dmc": "dmc:walker_walk",
    "dmc_vision": "dmc_vision:walker_walk",
    "gym": "gym:CartPole-v1",
}


def measure(name: str, num_envs: int, seconds: float, warmup: int = 5) -> dict[str, float]:
    """{'build_s', 'steps_per_s', 'steps'} for `num_envs` envs of `name` stepped with random actions."""
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    with VectorEnv(name, num_envs, seed=0) as venv:
        venv.reset()
        build = time.perf_counter() - start
        for _ in range(warmup):
            venv.step(venv.random_actions(rng))
        calls = 0
        start = time.perf_counter()
        while True:
            venv.step(venv.random_actions(rng))
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= seconds and calls >= 10:
                break
    steps = calls * num_envs
    return {"build_s": round(build, 2), "steps_per_s": round(steps / elapsed, 1), "steps": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suites", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring time per suite and setting")
    parser.add_argument("--num-envs", type=int, default=2, help="N of the vectorised measurement")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()

    results: dict[str, dict] = {}
    for suite in args.suites:
        name = TASKS[suite]
        results[suite] = {
            "task": name,
            "single": measure(name, 1, args.seconds),
            f"vector_{args.num_envs}": measure(name, args.num_envs, args.seconds),
        }
        if not args.json:
            print(f"measured {name}", flush=True)

    if args.json:
        print(json.dumps(results))
        return
    vector_key = f"vector_{args.num_envs}"
    n = args.num_envs
    print()
    print(f"| suite | task | steps/s (1 env) | steps/s ({n} envs, subprocesses) | build s (1 / {n}) |")
    print("| --- | --- | ---: | ---: | ---: |")
    for suite, row in results.items():
        single, vector = row["single"], row[vector_key]
        print(
            f"| {suite} | {row['task']} | {single['steps_per_s']:,.0f} | {vector['steps_per_s']:,.0f} "
            f"| {single['build_s']:.1f} / {vector['build_s']:.1f} |"
        )


if __name__ == "__main__":
    main()
