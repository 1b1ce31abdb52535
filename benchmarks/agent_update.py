"""Where one agent update's time goes: the world-model update against the actor-critic update.

`Agent.train` on batches replayed from random-action steps of a real env, timed per part (mean
of `--updates` updates after two warm-up ones), once per configuration given with `--compare`,
so the rows of one call are measured side by side on the same machine. `vs first` is the first
row's update time over this row's (above 1: faster). Ratios are what to read; absolute times
depend on the machine and what else runs on it.

`GFLOP/s` is the matmul and convolution FLOPs of one whole update (both parts, backward passes
included), counted by `torch.utils.flop_counter.FlopCounterMode` on the first warm-up update,
over the mean update time; `%peak` sets it against the matmul peak of the precision the agent
resolved (`32`: float32, `bf16-mixed`: bfloat16), measured in the same run at the same thread
count before the first row and after the last (world_model_speed.matmul_peaks), so the table
comes once every row is timed. Elementwise work (the SSM scan, activations, losses) is not
counted, so a low fraction means time spent outside large matmuls.

    python benchmarks/agent_update.py                            # bsuite,cpu: all starts vs 256
    python benchmarks/agent_update.py --env popgym:RepeatPreviousEasy --preset popgym,cpu
    python benchmarks/agent_update.py --compare "" "model.stoch_groups=4 model.stoch_classes=4"
    python benchmarks/agent_update.py --compare precision=32 precision=bf16-mixed
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

import envs
from agent import Agent
from benchmarks.reward_recall import collect
from benchmarks.world_model_speed import PEAK_SHAPE, matmul_peaks, num_params, peak_for
from configs import load_config

REPLAY_STEPS, WARMUP = 3000, 2
counter: list[FlopCounterMode | None] = [None]  # the counter of the update being counted, if any


def timed(fn: Callable[..., Any], total: list[float], flops: list[int] | None = None) -> Callable[..., Any]:
    """`fn`, adding the seconds of each call to total[0] and, while `counter[0]` holds a
    FlopCounterMode, the FLOPs it counted during the call to flops[0]."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        before = counter[0].get_total_flops() if counter[0] is not None else 0
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        total[0] += time.perf_counter() - start
        if flops is not None and counter[0] is not None:
            flops[0] += counter[0].get_total_flops() - before
        return out

    return wrapper


def measure(env_id: str, presets: list[str], overrides: list[str], updates: int) -> dict[str, Any]:
    """One configuration's update: mean seconds of the world-model and actor-critic parts of one
    `Agent.train`, the seconds of both in each timed update, the FLOPs of each part (counted on the
    first warm-up update), the resolved precision and the parameter counts (world model, actor,
    critic; the slow critic, a copy, is left out)."""
    cfg = load_config(presets, [f"env.name={env_id}", *overrides])
    torch.manual_seed(0)
    replay = collect(env_id, REPLAY_STEPS, 0, cfg.replay)
    with envs.VectorEnv(env_id, 1, 0) as env:
        agent = Agent(cfg, env.obs_space, env.action_dim, env.discrete, torch.device("cpu"))
    wm, ac, wm_flops, ac_flops = [0.0], [0.0], [0], [0]
    agent.world_model.update = timed(agent.world_model.update, wm, wm_flops)
    agent.actor_critic.update = timed(agent.actor_critic.update, ac, ac_flops)
    B, T = cfg.train.batch_size, cfg.train.seq_len
    each = []  # seconds of both parts of each timed update
    for i in range(WARMUP + updates):
        if i == WARMUP:
            wm[0] = ac[0] = 0.0
        before = wm[0] + ac[0]
        # The counter costs time per op: only the first warm-up update runs under it (the FLOPs of
        # an update depend on shapes only, so any update gives the same count).
        with FlopCounterMode(display=False) if i == 0 else contextlib.nullcontext() as mode:
            counter[0] = mode
            try:
                agent.train(replay.sample(B, T))
            finally:
                counter[0] = None
        if i >= WARMUP:
            each.append(wm[0] + ac[0] - before)
    return {
        "world_model_s": wm[0] / updates,
        "actor_critic_s": ac[0] / updates,
        "update_s_each": each,
        "world_model_flops": wm_flops[0],
        "actor_critic_flops": ac_flops[0],
        "precision": agent.precision,
        "imag_starts": cfg.agent.imag_starts or B * T,
        "params": {
            "world_model": num_params(agent.world_model),
            "actor": num_params(agent.actor_critic.actor),
            "critic": num_params(agent.actor_critic.critic),
        },
    }


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
    if args.threads < 1:
        raise SystemExit(f"error: --threads must be at least 1, got {args.threads}")
    if args.updates < 1:
        raise SystemExit(f"error: --updates must be at least 1, got {args.updates}")
    torch.set_num_threads(args.threads)
    print(f"{args.env}, presets {args.preset}, {args.threads} thread(s), mean of {args.updates} updates")
    peaks = matmul_peaks()
    rows = [measure(args.env, args.preset.split(","), text.split(), args.updates) for text in args.compare]
    peaks = matmul_peaks(peaks)
    m, k, n = PEAK_SHAPE
    print(
        f"matmul peak ({m}x{k} @ {k}x{n}): {peaks['float32'] / 1e9:.1f} GFLOP/s float32, "
        f"{peaks['bfloat16'] / 1e9:.1f} bfloat16; %peak is against the peak of the row's precision"
    )
    print(
        f"{'overrides':<48} {'world model':>11} {'actor-critic':>12} {'update':>8} {'vs first':>8} "
        f"{'precision':>10} {'GFLOP/s':>8} {'%peak':>6}"
    )
    first = None
    for text, r in zip(args.compare, rows):
        wm, ac = r["world_model_s"], r["actor_critic_s"]
        first = first or wm + ac
        rate = (r["world_model_flops"] + r["actor_critic_flops"]) / (wm + ac)
        print(
            f"{text or '(none)':<48} {wm:>10.3f}s {ac:>11.3f}s {wm + ac:>7.3f}s {first / (wm + ac):>7.2f}x "
            f"{r['precision']:>10} {rate / 1e9:>8.1f} {100 * rate / peak_for(peaks, r['precision']):>5.1f}%"
        )


if __name__ == "__main__":
    main()
