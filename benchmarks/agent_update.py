"""Where one agent update's time goes: the world-model update against the actor-critic update.

`Agent.train` on batches replayed from random-action steps of a real env, timed per part (mean
of `--updates` updates after two warm-up ones), once per configuration given with `--compare`,
so the rows of one call are measured side by side on the same machine. `vs first` is the first
row's update time over this row's (above 1: faster). Ratios are what to read; absolute times
depend on the machine and what else runs on it.

    python benchmarks/agent_update.py                            # bsuite,cpu: all starts vs 256
    python benchmarks/agent_update.py --env popgym:RepeatPreviousEasy --preset popgym,cpu
    python benchmarks/agent_update.py --compare "" "model.stoch_groups=4 model.stoch_classes=4"
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import envs  # noqa: E402
from agent import Agent  # noqa: E402
from benchmarks.reward_recall import collect  # noqa: E402
from configs import load_config  # noqa: E402

REPLAY_STEPS, WARMUP = 3000, 2


def timed(fn: Callable[..., Any], total: list[float]) -> Callable[..., Any]:
    """`fn`, adding the seconds of each call to total[0]."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        total[0] += time.perf_counter() - start
        return out

    return wrapper


def measure(env_id: str, presets: list[str], overrides: list[str], updates: int) -> tuple[float, float]:
    """Mean seconds of the world-model and actor-critic parts of one `Agent.train`."""
    cfg = load_config(presets, [f"env.name={env_id}", *overrides])
    torch.manual_seed(0)
    replay = collect(env_id, REPLAY_STEPS, 0, cfg.replay)
    with envs.VectorEnv(env_id, 1, 0) as env:
        agent = Agent(cfg, env.obs_space, env.action_dim, env.discrete, torch.device("cpu"))
    wm, ac = [0.0], [0.0]
    agent.world_model.update = timed(agent.world_model.update, wm)
    agent.actor_critic.update = timed(agent.actor_critic.update, ac)
    B, T = cfg.train.batch_size, cfg.train.seq_len
    for i in range(WARMUP + updates):
        if i == WARMUP:
            wm[0] = ac[0] = 0.0
        agent.train(replay.sample(B, T))
    return wm[0] / updates, ac[0] / updates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--env", default="bsuite:memory_len/15")
    parser.add_argument("--preset", default="bsuite,cpu", help="comma-separated presets")
    parser.add_argument("--updates", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument(
        "--compare",
        nargs="+",
        default=["", "agent.imag_starts=256"],
        help="configurations to time, each a space-separated list of overrides ('' for none)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{args.env}, presets {args.preset}, {args.threads} thread(s), mean of {args.updates} updates")
    print(f"{'overrides':<48} {'world model':>11} {'actor-critic':>12} {'update':>8} {'vs first':>8}")
    first = None
    for text in args.compare:
        wm, ac = measure(args.env, args.preset.split(","), text.split(), args.updates)
        first = first or wm + ac
        print(f"{text or '(none)':<48} {wm:>10.3f}s {ac:>11.3f}s {wm + ac:>7.3f}s {first / (wm + ac):>7.2f}x")


if __name__ == "__main__":
    main()
