"""Speed of the S3M world model against the RSSM at matched parameter counts.

For vector (24,) and image (64, 64, 3) observations, B=16, T in {64, 256, 1024}, 6 continuous
actions, 1% resets:

- update: seconds per full world-model update (`WorldModel.update`: encoder, sequence model,
  heads, losses, backward, gradient clip, Adam step), best of a few after one warm-up update;
- imagine: imagined steps per second, `imagine` from all B·T posterior states for 15 steps with
  a uniform random policy, under `torch.no_grad`;
- memory: peak resident set during the first full update minus the resident set just before it,
  in MiB (Linux VmHWM, reset through /proc/self/clear_refs). Each model runs in a fresh
  subprocess after one tiny (T=2) update, so the figure is what one update needs on top of the
  model and the batch: saved activations, gradients, Adam's state and allocator slack, without
  one-time set-up costs. It is a CPU figure (on a GPU one would read
  `torch.cuda.max_memory_allocated`);
- FLOP/s: matmul and convolution FLOPs of one update, counted by
  `torch.utils.flop_counter.FlopCounterMode` (elementwise work, the SSM scan included, is not
  counted), divided by the update time, as a fraction (`%peak`) of the matmul peak of the
  precision in use (`--precision`): the best of 20 (1024 x 1536) @ (1536 x 512) matmuls, timed
  in the same run at the same thread count in float32 and in bfloat16, before the workers and
  again after them (`matmul_peaks`; where other jobs share the CPU, a burst of theirs slows one).

Parameter matching: model widths come from a size preset (`cpu` by default). The S3M keeps them;
the RSSM's GRU width `model.hidden` is chosen by bisection so that its total parameter count
(encoder, sequence model, heads and all) is the closest to the S3M's. Every other width is shared.

Workers run with glibc's malloc told to keep freed memory (`MALLOC_TUNING`; `--no-malloc-tuning`
turns it off): by default every update's large activations come back as fresh zeroed pages, and
those page faults were 25-40% of an update here. `--threads 1` gives clean figures when another job
holds one of the cores.

Rows at a T whose memory, extrapolated linearly in T from the last measured one, would not
fit in 60% of the memory available now are skipped with a note rather than risking the OOM killer.

    python benchmarks/world_model_speed.py                  # a table
    python benchmarks/world_model_speed.py --json           # one JSON object
    python benchmarks/world_model_speed.py --T 64 256 --obs vector --preset small --threads 1
    python benchmarks/world_model_speed.py --T 64 --obs vector --precision bf16-mixed
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agent.precision import autocast_context
from configs import load_config
from world_model import RSSM, S3M, WorldModel

ACTION_DIM = 6
OBS_SPACES = {
    "vector": {"vector": ((24,), np.float32)},
    "image": {"image": ((64, 64, 3), np.uint8)},
}
# glibc returns every large freed block to the OS and takes it back as fresh zeroed pages on the
# next update: on this kind of CPU host that page-fault work was a quarter to a third of an update
# (system time). Keeping freed memory in the heap removes it for both models alike.
MALLOC_TUNING = {"MALLOC_MMAP_THRESHOLD_": str(2**33), "MALLOC_TRIM_THRESHOLD_": str(2**34)}
MEMORY_FRACTION = 0.6  # skip a run predicted to need more than this share of the available memory


def build(kind: str, obs: str, preset: str, rssm_hidden: int | None = None) -> WorldModel:
    """A world model of `kind` for observations `obs` with the preset's widths."""
    overrides = [] if rssm_hidden is None else [f"model.hidden={rssm_hidden}"]
    cfg = load_config([preset], overrides)
    if kind == "s3m":
        return S3M(OBS_SPACES[obs], ACTION_DIM, cfg.model, cfg.s3m)
    return RSSM(OBS_SPACES[obs], ACTION_DIM, cfg.model, cfg.rssm)


def num_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def match_rssm_hidden(obs: str, preset: str) -> tuple[int, int, int]:
    """The RSSM GRU width whose parameter count is closest to the S3M's: (hidden, s3m, rssm)."""
    target = num_params(build("s3m", obs, preset))
    lo, hi = 1, 4096  # the RSSM's count grows monotonically with its width
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if num_params(build("rssm", obs, preset, mid)) <= target:
            lo = mid
        else:
            hi = mid
    counts = {h: num_params(build("rssm", obs, preset, h)) for h in (lo, hi)}
    best = min(counts, key=lambda h: abs(counts[h] - target))
    return best, target, counts[best]


def make_batch(obs: str, B: int, T: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A (B, T) batch of the data contract: random observations, actions in [-1, 1], 1% resets."""
    gen = torch.Generator().manual_seed(seed)
    batch: dict[str, torch.Tensor] = {}
    for key, (shape, dtype) in OBS_SPACES[obs].items():
        if dtype == np.uint8:
            batch[key] = torch.randint(0, 256, (B, T, *shape), generator=gen, dtype=torch.uint8)
        else:
            batch[key] = torch.randn(B, T, *shape, generator=gen)
    batch["action"] = torch.rand(B, T, ACTION_DIM, generator=gen) * 2 - 1
    batch["reward"] = torch.randn(B, T, generator=gen)
    batch["is_first"] = torch.rand(B, T, generator=gen) < 0.01
    batch["is_first"][:, 0] = True
    batch["is_last"] = torch.zeros(B, T, dtype=torch.bool)
    batch["is_terminal"] = torch.zeros(B, T, dtype=torch.bool)
    return batch


def _proc_status_mib(key: str) -> float | None:
    """A `kB` field of /proc/self/status (VmRSS, VmHWM) in MiB; None where there is no /proc."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def reset_peak_rss() -> float:
    """Start a new peak-RSS window; returns the resident set now, in MiB.

    Linux resets VmHWM (the peak) to the current RSS on writing 5 to /proc/self/clear_refs.
    Elsewhere the window falls back to ru_maxrss, the lifetime peak (an underestimate at worst).
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
        rss = _proc_status_mib("VmRSS")
        if rss is not None:
            return rss
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def peak_rss_mib() -> float:
    """The peak resident set of the current window, in MiB."""
    hwm = _proc_status_mib("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One model, one observation type, one T, in this (fresh) process."""
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    model = build(spec["model"], spec["obs"], spec["preset"], spec.get("rssm_hidden"))
    model.autocast = autocast_context(spec["precision"], torch.device("cpu"))
    batch = make_batch(spec["obs"], spec["B"], spec["T"])

    # A tiny update first takes the one-time costs (thread pools, kernel and autograd set-up,
    # ~100 MiB) out of the memory figure; the first full update then gives memory and FLOPs (the
    # counter tallies shapes and holds no tensors) and warms the allocator for the timed ones.
    model.update(make_batch(spec["obs"], spec["B"], 2, seed=1))
    from torch.utils.flop_counter import FlopCounterMode

    rss_before = reset_peak_rss()
    with FlopCounterMode(display=False) as counter:
        model.update(batch)
    memory = peak_rss_mib() - rss_before
    flops = counter.get_total_flops()

    times = []
    for _ in range(spec["repeats"]):
        start = time.perf_counter()
        post, _, _ = model.update(batch)
        times.append(time.perf_counter() - start)
    update_s = min(times)

    start_states = {k: v.flatten(0, 1) for k, v in post.items()}  # (B*T, ...)
    N = start_states["z"].shape[0]
    gen = torch.Generator().manual_seed(1)

    def policy(state: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.rand(N, ACTION_DIM, generator=gen) * 2 - 1

    with torch.no_grad():
        model.imagine(start_states, policy, 1)  # warm-up
        imagine_s = float("inf")
        for _ in range(spec["repeats"]):
            start = time.perf_counter()
            model.imagine(start_states, policy, spec["horizon"])
            imagine_s = min(imagine_s, time.perf_counter() - start)
    return {
        "params": num_params(model),
        "update_s": update_s,
        "imagine_steps_per_s": N * spec["horizon"] / imagine_s,
        "peak_mem_mib": memory,
        "update_flops": flops,
    }


def run_worker(spec: dict[str, Any], malloc_tuning: bool) -> dict[str, Any]:
    """`worker(spec)` in a subprocess, so each memory figure starts from a clean process."""
    env = dict(os.environ)
    if malloc_tuning:
        env.update(MALLOC_TUNING)
    out = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    if out.returncode != 0:
        raise RuntimeError(f"worker {spec} failed (rc {out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# The peak's matmul: big enough to reach the BLAS kernels' steady state, small enough (a few ms
# per rep on one core) to time in every run rather than quote from a spec sheet.
PEAK_SHAPE = (1024, 1536, 512)  # (m, k, n): (m x k) @ (k x n), 2 m k n FLOPs
PEAK_DTYPES = {"32": torch.float32, "bf16-mixed": torch.bfloat16}  # precision -> its matmuls' dtype


def matmul_peak_flops(dtype: torch.dtype = torch.float32, repeats: int = 20) -> float:
    """FLOP/s of the best of `repeats` `PEAK_SHAPE` matmuls in `dtype`, at torch's thread count now."""
    m, k, n = PEAK_SHAPE
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    torch.mm(a, b)  # warm-up: packing buffers, the BLAS's thread pool
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2.0 * m * k * n / best


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def matmul_peaks(earlier: dict[str, float] | None = None) -> dict[str, float]:
    """The matmul peak of each precision's dtype, by name: {"float32": ..., "bfloat16": ...}; with
    `earlier` (a measurement from the same run), the higher of the two for each."""
    earlier = earlier or {}
    peaks = {dtype_name(dtype): matmul_peak_flops(dtype) for dtype in PEAK_DTYPES.values()}
    return {name: max(flops, earlier.get(name, 0.0)) for name, flops in peaks.items()}


def peak_for(peaks: dict[str, float], precision: str) -> float:
    """The entry of `matmul_peaks()` for a resolved precision (`32` or `bf16-mixed`)."""
    return peaks[dtype_name(PEAK_DTYPES[precision])]


def available_mib() -> float:
    """MemAvailable from /proc/meminfo, in MiB (infinite where the file does not exist)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("inf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--preset", default="cpu", help="size preset of both models (configs/presets)")
    parser.add_argument("--T", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--B", type=int, default=16)
    parser.add_argument("--obs", nargs="+", default=["vector", "image"], choices=sorted(OBS_SPACES))
    parser.add_argument("--horizon", type=int, default=15)
    parser.add_argument(
        "--precision",
        default="32",
        choices=sorted(PEAK_DTYPES),
        help="the models' forward passes: float32, or autocast to bfloat16 as a run's bf16-mixed",
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads per worker (0: torch's default)"
    )
    parser.add_argument(
        "--no-malloc-tuning", action="store_true", help="run workers with glibc's default malloc settings"
    )
    parser.add_argument("--save", help="also write the JSON object to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    if args.threads:
        torch.set_num_threads(args.threads)
    peaks = matmul_peaks()
    rows, notes = [], []
    for obs in args.obs:
        rssm_hidden, _, _ = match_rssm_hidden(obs, args.preset)
        last_memory: dict[str, tuple[int, float]] = {}  # model -> (T, MiB) of its last run
        for T in sorted(args.T):
            predicted = max(
                (mib * T / t for t, mib in last_memory.values()), default=0.0
            )  # activations grow linearly in T
            if predicted > MEMORY_FRACTION * available_mib():
                notes.append(
                    f"{obs} T={T} skipped: predicted {predicted:.0f} MiB per update, "
                    f"{available_mib():.0f} MiB available"
                )
                continue
            repeats = 5 if T <= 64 else 3 if T <= 256 else 1  # the best of a few; one at 1024
            common = {"obs": obs, "T": T, "B": args.B, "preset": args.preset, "repeats": repeats}
            common.update(horizon=args.horizon, threads=args.threads, precision=args.precision)
            s3m = run_worker({**common, "model": "s3m"}, not args.no_malloc_tuning)
            rssm = run_worker(
                {**common, "model": "rssm", "rssm_hidden": rssm_hidden}, not args.no_malloc_tuning
            )
            last_memory = {"s3m": (T, s3m["peak_mem_mib"]), "rssm": (T, rssm["peak_mem_mib"])}
            rows.append(
                {
                    "obs": obs,
                    "T": T,
                    "s3m_params": s3m["params"],
                    "rssm_params": rssm["params"],
                    "rssm_hidden": rssm_hidden,
                    "s3m_update_s": s3m["update_s"],
                    "rssm_update_s": rssm["update_s"],
                    "update_ratio": rssm["update_s"] / s3m["update_s"],
                    "s3m_imagine_steps_per_s": s3m["imagine_steps_per_s"],
                    "rssm_imagine_steps_per_s": rssm["imagine_steps_per_s"],
                    "imagine_ratio": s3m["imagine_steps_per_s"] / rssm["imagine_steps_per_s"],
                    "s3m_peak_mem_mib": s3m["peak_mem_mib"],
                    "rssm_peak_mem_mib": rssm["peak_mem_mib"],
                    "s3m_update_flops": s3m["update_flops"],
                    "rssm_update_flops": rssm["update_flops"],
                    "s3m_update_flops_per_s": s3m["update_flops"] / s3m["update_s"],
                    "rssm_update_flops_per_s": rssm["update_flops"] / rssm["update_s"],
                }
            )

    peaks = matmul_peaks(peaks)
    peak = peak_for(peaks, args.precision)
    for row in rows:
        for kind in ("s3m", "rssm"):
            row[f"{kind}_fraction_of_peak"] = row[f"{kind}_update_flops_per_s"] / peak
    result = {
        "matmul_peak_flops_per_s": peak,  # of the precision in use
        "matmul_peaks_flops_per_s": peaks,  # dtype name -> peak
        "peak_matmul_shape": list(PEAK_SHAPE),
        "precision": args.precision,
        "preset": args.preset,
        "B": args.B,
        "threads": torch.get_num_threads(),
        "malloc_tuning": not args.no_malloc_tuning,
        "rows": rows,
        "notes": notes,
    }
    if args.save:
        Path(args.save).write_text(json.dumps(result, indent=1))
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"world-model speed, preset {args.preset!r}, B={args.B}, horizon {args.horizon}, "
        f"{torch.get_num_threads()} threads, malloc tuning {'off' if args.no_malloc_tuning else 'on'}, "
        f"precision {args.precision}"
    )
    m, k, n = PEAK_SHAPE
    print(
        f"matmul peak ({m}x{k} @ {k}x{n}): {peaks['float32'] / 1e9:.1f} GFLOP/s float32, "
        f"{peaks['bfloat16'] / 1e9:.1f} bfloat16; %peak is against the {args.precision} one"
    )
    print("RSSM GRU width chosen to match the S3M parameter count; ratio > 1 means the S3M is faster")
    header = (
        f"{'obs':>6} {'T':>5} {'params s3m/rssm':>17} {'update s3m':>11} {'rssm':>9} {'ratio':>6} "
        f"{'imag/s s3m':>11} {'rssm':>9} {'ratio':>6} {'mem MiB s3m':>12} {'rssm':>7} {'s3m GFLOP/s':>12} "
        f"{'%peak':>6} {'rssm GFLOP/s':>13} {'%peak':>6}"
    )
    print(header)
    for r in rows:
        print(
            f"{r['obs']:>6} {r['T']:>5} {r['s3m_params']:>8}/{r['rssm_params']:<8} "
            f"{r['s3m_update_s']:>10.3f}s {r['rssm_update_s']:>8.3f}s {r['update_ratio']:>5.1f}x "
            f"{r['s3m_imagine_steps_per_s']:>11.3g} {r['rssm_imagine_steps_per_s']:>9.3g} "
            f"{r['imagine_ratio']:>5.2f}x {r['s3m_peak_mem_mib']:>12.0f} {r['rssm_peak_mem_mib']:>7.0f} "
            f"{r['s3m_update_flops_per_s'] / 1e9:>12.1f} {100 * r['s3m_fraction_of_peak']:>5.1f}% "
            f"{r['rssm_update_flops_per_s'] / 1e9:>13.1f} {100 * r['rssm_fraction_of_peak']:>5.1f}%"
        )
    widths = sorted({(r["obs"], r["rssm_hidden"]) for r in rows})
    cfg = load_config([args.preset])
    for obs, hidden in widths:
        print(
            f"{obs}: S3M hidden {cfg.model.hidden}, K={cfg.s3m.layers}, P={cfg.s3m.state_size}; "
            f"RSSM GRU width {hidden}"
        )
    for note in notes:
        print(note)


if __name__ == "__main__":
    main()
