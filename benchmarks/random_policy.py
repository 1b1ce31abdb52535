"""The uniform random policy's score on an env, the floor a learning target's result is read against.

    python benchmarks/random_policy.py --env popgym:RepeatPreviousMedium --episodes 100
    python benchmarks/random_policy.py --env bsuite:memory_len/17 --metric success --episodes 1000

Uniform random actions (one-hot for discrete envs, uniform in [-1, 1] otherwise, as the prefill
of `run_agent.py`) in one env, seeded, for a fixed number of episodes, scored as the learning
targets score a run (`benchmarks/runlogs.py`): `return` is the mean episode return, `success` the
share of episodes with a return above 0. `benchmarks/learning.py` reads the scores from
`benchmarks/data/random_policy.json`, where `score` writes every one it measures, so a page rebuild
runs no env whose score is stored.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

import envs
from loop.logger import Episodes

ROOT = Path(__file__).resolve().parents[1]

STORE = ROOT / "benchmarks" / "data" / "random_policy.json"
METRICS = ("return", "success")


def key(env_id: str, metric: str, episodes: int, options: Mapping[str, Any] | None = None) -> str:
    """The stored score's name: env, options (sorted, as JSON), metric and episode count."""
    opts = json.dumps(dict(options or {}), sort_keys=True)
    return f"{env_id} {opts} {metric} {episodes}"


def measure(
    env_id: str, metric: str, episodes: int, seed: int = 0, options: Mapping[str, Any] | None = None
) -> float:
    """The random policy's score over `episodes` whole episodes of one env seeded with `seed`."""
    assert metric in METRICS, f"random_policy: metric must be one of {METRICS}, got {metric!r}"
    assert episodes >= 1, f"random_policy: episodes must be >= 1, got {episodes}"
    rng = np.random.default_rng(seed)
    returns: list[float] = []
    with envs.VectorEnv(env_id, 1, seed, **dict(options or {})) as env:
        counter, step = Episodes(1), env.reset()
        while len(returns) < episodes:
            returns += [ret for _, ret, _ in counter.observe(step)]
            step = env.step(env.random_actions(rng))
    scores = np.asarray(returns[:episodes])
    return float((scores > 0).mean() if metric == "success" else scores.mean())


def stored(path: Path = STORE) -> dict[str, float]:
    """Every stored score by `key` (empty without a store)."""
    return json.loads(path.read_text()) if path.is_file() else {}


def score(
    env_id: str,
    metric: str,
    episodes: int,
    options: Mapping[str, Any] | None = None,
    path: Path = STORE,
) -> float:
    """The stored score, or one measured now (seed 0) and written to the store."""
    scores = stored(path)
    name = key(env_id, metric, episodes, options)
    if name not in scores:
        scores[name] = round(measure(env_id, metric, episodes, 0, options), 4)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(dict(sorted(scores.items())), indent=1) + "\n")
    return scores[name]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", required=True, help="suite:task, as run_agent.py's --env")
    parser.add_argument("--metric", choices=METRICS, default="return")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.episodes < 1:
        print(f"error: --episodes must be >= 1, got {args.episodes}", file=sys.stderr)
        return 2
    try:
        value = measure(args.env, args.metric, args.episodes, args.seed)
    except envs.EnvError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    what = f"{args.metric} over {args.episodes} episodes (seed {args.seed})"
    print(f"{args.env}: random policy, {what}: {value:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
