"""Reading a comparison's run logs back, and the statistics over them.

A run folder holds what run_agent.py writes (`config.yaml`, `metrics.jsonl` with the evaluations
and throughput, `episodes.jsonl` with each training episode's return) and, once launched by
`benchmarks/compare.py`, its marker: `compare.json` when the run finished, `compare.partial.json`
when it stopped early. From these: one score per run (final and best return or success), their
mean over seeds with a 95% confidence interval of Student's t, learning curves binned by env
steps, and a comparison's title and run commands.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

MARKER = "compare.json"  # written into a run folder once its run succeeded
PARTIAL = "compare.partial.json"  # written when a run stopped early, for the next launch to resume
METRICS = ("return", "success")
LAST_FRACTION = 0.1  # without evaluations, a run's final return is that of its last 10% of episodes

# Two-sided 95% quantiles of Student's t (0.975 quantile) for 1-30 degrees of freedom; scipy is no
# dependency of this project, and these are the values every statistics table prints.
_T975 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)  # fmt: skip
_Z975 = 1.959964
CI_NOTE = (
    "± is the half-width of a 95% confidence interval of the mean over seeds: t(0.975, n-1) s/√n "
    "with the sample standard deviation s (t tabulated up to 30 degrees of freedom, a Cornish-Fisher "
    "expansion beyond); one seed gives no interval."
)


# ---------------------------------------------------------------------------------------------
# Statistics


def t_quantile(df: int) -> float:
    """The 0.975 quantile of Student's t with `df` >= 1 degrees of freedom."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975  # beyond the table the expansion is within 2e-4 of the exact quantile
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_ci(values: Sequence[float]) -> tuple[float, float | None]:
    """(mean, 95% half-width) of `values`; the half-width is None for fewer than two values."""
    x = np.asarray(values, np.float64)
    if len(x) == 0:
        return math.nan, None
    if len(x) == 1:
        return float(x[0]), None
    return float(x.mean()), t_quantile(len(x) - 1) * float(x.std(ddof=1)) / math.sqrt(len(x))


def success_rate(returns: np.ndarray, last: int) -> float:
    """Fraction of the last `last` episodes (all of them if fewer) whose return is positive."""
    return float(np.mean(np.asarray(returns)[-last:] > 0)) if len(returns) else math.nan


def window_means(values: np.ndarray, window: int) -> np.ndarray:
    """Means of every run of `window` consecutive values (all of them if fewer)."""
    window = max(1, min(window, len(values)))
    sums = np.cumsum(np.concatenate([[0.0], np.asarray(values, np.float64)]))
    return (sums[window:] - sums[:-window]) / window


# ---------------------------------------------------------------------------------------------
# Run folders and their logs


def variant_dir(variant: str) -> str:
    """The folder name of a variant (no ':', which some file systems and tools refuse)."""
    return variant.replace(":", "-")


def read_marker(logdir: Path, name: str = MARKER) -> dict[str, Any] | None:
    """The marker `name` of a run folder (MARKER: finished, PARTIAL: stopped), or None."""
    try:
        return json.loads((logdir / name).read_text())
    except (OSError, ValueError):
        return None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a .jsonl file, or of its gzipped copy `<path>.gz` where only that exists
    (an archived run); a torn last line (a run still writing) is skipped.
    """
    records = []
    packed = path.with_name(path.name + ".gz")
    if path.is_file() or packed.is_file():
        text = path.read_text() if path.is_file() else gzip.decompress(packed.read_bytes()).decode()
        for line in text.splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records


@dataclasses.dataclass
class RunLog:
    """What a run folder's logs say, as far as a comparison needs."""

    logdir: Path
    config: dict[str, Any]  # the resolved config.yaml ({} if missing)
    evals: list[tuple[int, float]]  # (env step, eval/return)
    episode_steps: np.ndarray  # env step at which each training episode ended
    episode_returns: np.ndarray
    steps_per_s: float | None  # training throughput over the logged windows
    wall_s: float | None  # the whole run, process start to exit (from the marker)
    args: list[str] | None  # run_agent.py arguments (from the marker)

    @property
    def budget(self) -> int | None:
        return self.config.get("train", {}).get("steps")


def read_run(logdir: Path) -> RunLog | None:
    """The logs of the run in `logdir`, or None when it holds no episodes and no evaluations, or
    when it is a run compare.py launched that has not finished (it would bias the comparison).
    """
    if read_marker(logdir, PARTIAL) is not None and read_marker(logdir) is None:
        return None
    metrics = read_jsonl(logdir / "metrics.jsonl")
    episodes = [e for e in read_jsonl(logdir / "episodes.jsonl") if "return" in e and "step" in e]
    evals = [(int(m["step"]), float(m["eval/return"])) for m in metrics if "eval/return" in m]
    if not episodes and not evals:
        return None
    try:
        config = yaml.safe_load((logdir / "config.yaml").read_text()) or {}
    except OSError:
        config = {}
    # Log windows span equal step counts, so the harmonic mean of their rates is steps / time.
    rates = [m["perf/env_steps_per_s"] for m in metrics if m.get("perf/env_steps_per_s", 0) > 0]
    marker = read_marker(logdir) or {}
    return RunLog(
        logdir=logdir,
        config=config,
        evals=evals,
        episode_steps=np.array([e["step"] for e in episodes], np.int64),
        episode_returns=np.array([e["return"] for e in episodes], np.float64),
        steps_per_s=len(rates) / sum(1.0 / r for r in rates) if rates else None,
        wall_s=marker.get("wall_s"),
        args=marker.get("args"),
    )


def read_runs(
    out: Path, variants: Sequence[str], seeds: Sequence[int] | None = None
) -> dict[str, list[RunLog]]:
    """The readable runs under `out/<variant>/seed<k>` per variant (every seed folder if no `seeds`)."""
    runs: dict[str, list[RunLog]] = {}
    for variant in variants:
        folder = out / variant_dir(variant)
        if seeds is None:
            logdirs = sorted(folder.glob("seed*"), key=lambda p: (len(p.name), p.name))
        else:
            logdirs = [folder / f"seed{seed}" for seed in seeds]
        logs = [log for log in map(read_run, logdirs) if log is not None]
        if logs:
            runs[variant] = logs
    return runs


def display_command(args: Sequence[str]) -> str:
    """`python run_agent.py ARGS` with the seed spelled S, for runs that differ only in their seed."""
    args = list(args)
    if "--seed" in args[:-1]:
        args[args.index("--seed") + 1] = "S"
    return shlex.join(["python", "run_agent.py", *args])


def run_command(runs: Sequence[RunLog]) -> str | None:
    """The run_agent.py command of `runs` (from their markers), seed spelled S; None if unknown."""
    args = next((run.args for run in runs if run.args is not None), None)
    return None if args is None else display_command(args)


def describe(runs: dict[str, list[RunLog]]) -> str:
    """The title of a comparison, `<env>, <budget> env steps`, from the runs' configs."""
    configs = [run.config for logs in runs.values() for run in logs]
    env = next((c["env"]["name"] for c in configs if c.get("env", {}).get("name")), "unknown env")
    budget = max((run.budget or 0 for logs in runs.values() for run in logs), default=0)
    return f"{env}, {budget or '?'} env steps"


# ---------------------------------------------------------------------------------------------
# Summaries: one number per run, then mean and interval over seeds


@dataclasses.dataclass
class Summary:
    """A variant's results over its seeds: (mean, 95% half-width) pairs and means."""

    variant: str
    seeds: int
    final: tuple[float, float | None]
    best: tuple[float, float | None]
    source: str  # where `final` and `best` come from: eval, episodes, or both (per run)
    wall_s: float | None
    steps_per_s: float | None


def run_scores(run: RunLog, metric: str, last_episodes: int) -> tuple[float, float, str]:
    """(final, best, source) of one run.

    return: the last evaluation and the best one; without evaluations, the mean of the last 10%
    of training episodes and the best mean over as many consecutive episodes.
    success: the fraction of positive returns over the last `last_episodes` training episodes, and
    the best such fraction over any `last_episodes` consecutive ones.
    """
    returns = run.episode_returns
    if metric == "success":
        if not len(returns):
            return math.nan, math.nan, "episodes"
        best = float(window_means(returns > 0, last_episodes).max())
        return success_rate(returns, last_episodes), best, "episodes"
    if run.evals:
        values = [value for _, value in run.evals]
        return values[-1], max(values), "eval"
    window = max(1, math.ceil(LAST_FRACTION * len(returns)))
    smoothed = window_means(returns, window)
    return float(smoothed[-1]), float(smoothed.max()), "episodes"


def summarize(
    variant: str, runs: Sequence[RunLog], metric: str = "return", last_episodes: int = 1000
) -> Summary:
    scores = [run_scores(run, metric, last_episodes) for run in runs]
    walls = [run.wall_s for run in runs if run.wall_s is not None]
    rates = [run.steps_per_s for run in runs if run.steps_per_s is not None]
    return Summary(
        variant=variant,
        seeds=len(runs),
        final=mean_ci([s[0] for s in scores]),
        best=mean_ci([s[1] for s in scores]),
        source=", ".join(sorted({s[2] for s in scores})),
        wall_s=float(np.mean(walls)) if walls else None,
        steps_per_s=float(np.mean(rates)) if rates else None,
    )


# ---------------------------------------------------------------------------------------------
# Learning curves


def binned_curve(steps: np.ndarray, returns: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Mean return of the (non-empty) episodes ending in each step bin; an empty bin keeps the
    previous bin's value. Bins before the first episode and after the last one are NaN.
    """
    bins = len(edges) - 1
    index = np.clip(np.searchsorted(edges, steps, side="right") - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    means = np.bincount(index, returns, bins) / np.maximum(counts, 1)
    # The bin each bin reads: itself when it holds episodes, else the last one before it that does.
    source = np.maximum.accumulate(np.where(counts > 0, np.arange(bins), -1))
    curve = np.where(source >= 0, means[np.maximum(source, 0)], np.nan)
    curve[index.max() + 1 :] = np.nan
    return curve
