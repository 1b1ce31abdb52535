"""Speed of the reset-aware linear recurrence against a Python loop under autograd.

For T in {64, 256, 1024, 4096}, B=16, P=256 (complex64), 1% resets, times forward+backward of:

- ours: `linear_recurrence` with the implementation `auto` picks for this device (and, as an extra
  column, the other parallel implementation);
- naive: the same recurrence as a Python loop under autograd (skipped where its predicted time
  exceeds a minute, which the output says);
- elementwise: one complex multiply-add `b + a * x` over a (B, T, P) tensor, the cost floor of any
  method that touches every element once.

    python benchmarks/scan.py            # a table
    python benchmarks/scan.py --json     # {"rows": [{"T": ..., "ours_s": ..., "naive_s": ..., ...}]}
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial

import torch

from world_model.scan import default_method, linear_recurrence, linear_recurrence_autograd_loop

NAIVE_LIMIT_S = 60.0


def best_time(fn, repeats: int) -> float:
    fn()  # warm-up: allocator, thread pool
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def make_inputs(B: int, T: int, P: int, device: torch.device):
    gen = torch.Generator().manual_seed(T)
    lam = torch.polar(torch.rand(P, generator=gen) * 0.5 + 0.45, torch.rand(P, generator=gen) * 6.28)
    keep = torch.rand(B, T, generator=gen) > 0.01
    b = torch.randn(B, T, P, dtype=torch.complex64, generator=gen)
    x0 = torch.randn(B, P, dtype=torch.complex64, generator=gen)
    cot = torch.randn(B, T, P, dtype=torch.complex64, generator=gen)
    tensors = [t.to(device) for t in (lam, keep, b, x0, cot)]
    for t in (tensors[0], tensors[2], tensors[3]):
        t.requires_grad_()
    return tensors


def fwd_bwd(fn, lam, keep, b, x0, cot):
    def run():
        x = fn(lam, keep, b, x0)
        torch.autograd.grad(x, (lam, b, x0), cot)
        if b.is_cuda:
            torch.cuda.synchronize()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--T", type=int, nargs="+", default=[64, 256, 1024, 4096])
    parser.add_argument("--B", type=int, default=16)
    parser.add_argument("--P", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    ours_method = default_method(device)
    other_method = "associative" if ours_method == "chunked" else "chunked"

    rows, notes = [], []
    last_naive = None  # (T, seconds) of the last naive run, to predict the next one
    for T in sorted(args.T):
        lam, keep, b, x0, cot = make_inputs(args.B, T, args.P, device)
        ours = best_time(fwd_bwd(partial(linear_recurrence, method=ours_method), lam, keep, b, x0, cot), 5)
        other = best_time(fwd_bwd(partial(linear_recurrence, method=other_method), lam, keep, b, x0, cot), 3)
        coeff, inputs = torch.randn_like(b), b.detach()
        elementwise = best_time(partial(torch.addcmul, inputs, coeff, inputs), 5)
        # The autograd loop grows faster than linearly in T; predict quadratically to be safe.
        predicted = None if last_naive is None else last_naive[1] * (T / last_naive[0]) ** 2
        if predicted is not None and predicted > NAIVE_LIMIT_S:
            naive = None
            notes.append(f"naive loop skipped at T={T}: predicted {predicted:.0f} s > {NAIVE_LIMIT_S:.0f} s")
        else:
            naive = best_time(fwd_bwd(linear_recurrence_autograd_loop, lam, keep, b, x0, cot), 1)
            last_naive = (T, naive)
        rows.append(
            {
                "T": T,
                "ours_s": ours,
                "naive_s": naive,
                "elementwise_s": elementwise,
                f"{other_method}_s": other,
                "naive_over_ours": None if naive is None else naive / ours,
                "ours_over_elementwise": ours / elementwise,
            }
        )

    if args.json:
        meta = {"device": str(device), "method": ours_method, "B": args.B, "P": args.P}
        print(json.dumps({**meta, "rows": rows}))
        return
    print(f"linear recurrence fwd+bwd, B={args.B}, P={args.P} complex64, 1% resets, device={device}")
    print(f"ours = {ours_method}; {other_method} shown for reference")
    columns = ("ours", other_method, "naive loop", "elementwise", "naive/ours", "ours/elem")
    widths = (10, 12, 11, 12, 11, 10)
    print(f"{'T':>6} " + " ".join(f"{c:>{w}}" for c, w in zip(columns, widths)))
    for r in rows:
        naive = "skipped" if r["naive_s"] is None else f"{r['naive_s']:.4f}s"
        ratio = "-" if r["naive_over_ours"] is None else f"{r['naive_over_ours']:.0f}x"
        print(
            f"{r['T']:>6} {r['ours_s']:>9.4f}s {r[f'{other_method}_s']:>11.4f}s {naive:>11} "
            f"{r['elementwise_s']:>11.5f}s {ratio:>11} {r['ours_over_elementwise']:>9.1f}x"
        )
    for note in notes:
        print(note)


if __name__ == "__main__":
    main()
