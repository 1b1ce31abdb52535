"""DreamerV3's published learning curves, read at a run's env steps: the score a row is read beside.

    python benchmarks/published.py dmc:cartpole_swingup --steps 50000        # DreamerV3 at 50k steps
    python benchmarks/published.py --rebuild DIR    # DIR: the `scores/` folder of danijar/dreamerv3

The curves come from the score files that DreamerV3's authors publish with their code
(github.com/danijar/dreamerv3, folder `scores/`: `dmc_proprio-dreamerv3.json.gz`,
`dmc_vision-dreamerv3.json.gz`, `atari100k-dreamerv3.json.gz`), each a list of runs
`{"task", "seed", "xs", "ys"}` with `xs` in env frames (agent steps x action repeat: 2 on DMC, 4 on
Atari) and `ys` the episode returns of the evaluation or training episodes logged there.
`--rebuild` bins every run's curve into windows of `BIN` frames (the mean of the returns logged in
(x - BIN, x]), averages the seeds that logged in a window, and writes the binned means to
`benchmarks/data/dreamerv3_scores.json`, so a page rebuild reads a small file instead of the
published ones. `score(env, steps, repeat)` reads the window that ends nearest `steps x repeat`.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

STORE = ROOT / "benchmarks" / "data" / "dreamerv3_scores.json"
SOURCE = "github.com/danijar/dreamerv3, scores/ at commit e3f0224"
BIN = 10_000  # frames per window of a binned curve
# Published file -> (our env suite, DreamerV3's action repeat on it, which our env adapters share).
FILES = {
    "dmc_proprio-dreamerv3.json.gz": ("dmc", 2),
    "dmc_vision-dreamerv3.json.gz": ("dmc_vision", 2),
    "atari100k-dreamerv3.json.gz": ("atari", 4),
}
# The published task names carry the suite as a prefix: `dmc_walker_walk`, `atari_pong`.
PREFIX = {"dmc": "dmc_", "dmc_vision": "dmc_", "atari": "atari_"}


def env_id(suite: str, task: str) -> str:
    """Our env id of a published task: (`dmc_vision`, `dmc_walker_walk`) -> `dmc_vision:walker_walk`."""
    return f"{suite}:{task.removeprefix(PREFIX[suite])}"


def binned(xs: Sequence[float], ys: Sequence[float], width: int = BIN) -> dict[int, float]:
    """One run's curve as window end (frames) -> mean of the ys logged in (end - width, end]."""
    x, y = np.asarray(xs, float), np.asarray(ys, float)
    assert x.shape == y.shape, f"published curve: {x.shape[0]} xs against {y.shape[0]} ys"
    ends = (np.ceil(x / width) * width).astype(np.int64)
    return {int(end): float(y[ends == end].mean()) for end in np.unique(ends)}


def curves(runs: Sequence[Mapping[str, Any]], suite: str, repeat: int) -> dict[str, dict[str, Any]]:
    """Env id -> {"repeat", "seeds", "frames", "mean"}: the seeds' binned curves averaged per window
    (a window's mean over the seeds that logged in it)."""
    per_task: dict[str, list[dict[int, float]]] = {}
    for run in runs:
        per_task.setdefault(env_id(suite, run["task"]), []).append(binned(run["xs"], run["ys"]))
    out = {}
    for name, seeds in sorted(per_task.items()):
        frames = sorted({end for seed in seeds for end in seed})
        means = [float(np.mean([seed[end] for seed in seeds if end in seed])) for end in frames]
        means = [round(mean, 2) for mean in means]
        out[name] = {"repeat": repeat, "seeds": len(seeds), "frames": frames, "mean": means}
    return out


def rebuild(folder: Path, path: Path = STORE) -> dict[str, Any]:
    """Bin the published files in `folder` (those of `FILES` found there) and write the store."""
    found = [name for name in FILES if (folder / name).is_file()]
    if not found:
        raise FileNotFoundError(f"{folder}: none of {', '.join(FILES)}")
    store: dict[str, Any] = {"source": SOURCE, "bin_frames": BIN, "curves": {}}
    for name in found:
        suite, repeat = FILES[name]
        runs = json.loads(gzip.decompress((folder / name).read_bytes()))
        store["curves"].update(curves(runs, suite, repeat))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(store, indent=None, separators=(",", ":")) + "\n")
    return store


def stored(path: Path = STORE) -> dict[str, dict[str, Any]]:
    """Env id -> its binned curve (empty without a store); read once per version of the file."""
    return _read(path, path.stat().st_mtime_ns) if path.is_file() else {}


@functools.lru_cache(maxsize=4)
def _read(path: Path, mtime_ns: int) -> dict[str, dict[str, Any]]:
    # mtime_ns is part of the key only, so that a rebuilt store is read again.
    return json.loads(path.read_text())["curves"]


def score(env: str, steps: int, repeat: int | None = None, path: Path = STORE) -> float | None:
    """DreamerV3's published mean return on `env` after `steps` agent steps at action repeat
    `repeat` (default: DreamerV3's on that suite): the binned window ending nearest steps x repeat;
    None where nothing is published for `env` or the curve ends more than a window before."""
    curve = stored(path).get(env)
    if curve is None:
        return None
    frames = steps * (repeat or curve["repeat"])
    ends = np.asarray(curve["frames"])
    if frames > ends[-1] + BIN:
        return None
    return curve["mean"][int(np.abs(ends - frames).argmin())]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("env", nargs="?", help="suite:task, as run_agent.py's --env")
    parser.add_argument("--steps", type=int, help="agent steps of the run")
    parser.add_argument("--repeat", type=int, help="the run's action repeat (default: DreamerV3's)")
    parser.add_argument("--rebuild", type=Path, metavar="DIR", help="bin the published files in DIR")
    args = parser.parse_args(argv)
    if args.rebuild:
        try:
            store = rebuild(args.rebuild)
        except FileNotFoundError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"wrote {STORE}: {len(store['curves'])} curves")
        return 0
    if not args.env or not args.steps:
        parser.error("give an env and --steps, or --rebuild DIR")
    value = score(args.env, args.steps, args.repeat)
    if value is None:
        what = "beyond its curve" if args.env in stored() else f"not in {STORE.name}"
        message = f"no published DreamerV3 score for {args.env} at {args.steps} steps ({what})"
        print(f"error: {message}", file=sys.stderr)
        return 2
    print(f"{args.env}: DreamerV3 (published) at {args.steps:,} agent steps: {value:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
