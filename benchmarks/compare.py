"""Compare agent variants on one environment: train variants x seeds, then tabulate and plot.

    python benchmarks/compare.py --env popgym:RepeatPreviousEasy --preset popgym,cpu --steps 20000 \\
        --variants s3m:hidden,rssm --seeds 0,1,2 --out runs/compare/repeat_previous
    python benchmarks/compare.py --preset bsuite,cpu --env bsuite:memory_len/15 --steps 100000 \\
        --metric success --last-episodes 1000 --out runs/compare/memory_len_30
    python benchmarks/compare.py --out runs/compare/repeat_previous --redraw   # tables and plot only

Each run is `python run_agent.py ... threads=T` in its own process with its output in
`OUT/<variant>/seed<k>/run.log` (a variant's folder is its name with ':' spelled '-', e.g.
`s3m-hidden`), up to `--jobs` at a time (default: CPU cores // T). A run that succeeds gets a
`compare.json` beside its logs (its arguments and wall time); a folder holding one is a finished
run and is not trained again, and a run stopped after a checkpoint (Ctrl-C) is resumed, so the
same command continues an interrupted comparison. A failed run is reported on one line with its
log and the others go on; the exit status is then 1.

Written from the runs' logs: `OUT/results.md` (a row per variant: final and best return or
success, each the mean over seeds with a 95% confidence interval; wall time and env steps/s) and
`OUT/curves.png` (training episode return against env steps, mean over seeds with its 95% band).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display is needed or wanted
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RUN_AGENT = ROOT / "run_agent.py"
MARKER = "compare.json"  # written into a run folder once its run succeeded
PARTIAL = "compare.partial.json"  # written when a run stopped early, for the next launch to resume
EXIT_INTERRUPTED = 130  # run_agent.py's status when Ctrl-C stopped it after saving a checkpoint
RUN_LOG = "run.log"

# Variant name -> the overrides that make it.
VARIANTS: dict[str, tuple[str, ...]] = {
    "s3m:hidden": ("world_model=s3m", "agent.policy_input=hidden"),
    "s3m:output": ("world_model=s3m", "agent.policy_input=output"),
    "s3m:full": ("world_model=s3m", "agent.policy_input=full"),
    "rssm": ("world_model=rssm",),
}
DEFAULT_VARIANTS = "s3m:hidden,rssm"
METRICS = ("return", "success")
LAST_FRACTION = 0.1  # without evaluations, a run's final return is that of its last 10% of episodes
CURVE_BINS = 40
METRIC_NOTES = {  # how a results page says what its numbers are
    "return": "Final and best return: the last and the best evaluation (`eval/return`) of each run; "
    "runs without evaluations (from `episodes`) use the mean of their last 10% of training episodes "
    "and the best mean over as many consecutive ones.",
    "success": "Success: the fraction of training episodes with a return above 0 among each run's "
    "last {last}; best success: the highest such fraction over any {last} consecutive episodes.",
}

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
# Runs: what to launch, launching, and reading their logs back


def variant_dir(variant: str) -> str:
    """The folder name of a variant (no ':', which some file systems and tools refuse)."""
    return variant.replace(":", "-")


@dataclasses.dataclass
class RunSpec:
    """One run to launch: `python run_agent.py ARGS --logdir LOGDIR`."""

    variant: str
    seed: int
    logdir: Path
    args: list[str]  # run_agent.py arguments, without --logdir

    def command(self) -> list[str]:
        return [sys.executable, str(RUN_AGENT), *self.args, "--logdir", str(self.logdir)]


def plan_runs(
    out: Path,
    variants: Sequence[str],
    seeds: Sequence[int],
    preset: str,
    env: str | None = None,
    steps: int | None = None,
    overrides: Sequence[str] = (),
    threads: int = 1,
) -> list[RunSpec]:
    """The runs of `variants` x `seeds` in `out/<variant>/seed<k>`, one thread each by default."""
    specs = []
    for variant in variants:
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant '{variant}'; choose from {', '.join(VARIANTS)}")
        for seed in seeds:
            args = ["--preset", preset, *(["--env", env] if env else [])]
            args += [*(["--steps", str(steps)] if steps else []), "--seed", str(seed)]
            args += [*VARIANTS[variant], *overrides, f"threads={threads}"]
            specs.append(RunSpec(variant, seed, out / variant_dir(variant) / f"seed{seed}", args))
    return specs


def read_marker(logdir: Path, name: str = MARKER) -> dict[str, Any] | None:
    """The marker `name` of a run folder (MARKER: finished, PARTIAL: stopped), or None."""
    try:
        return json.loads((logdir / name).read_text())
    except (OSError, ValueError):
        return None


def check_reusable(specs: Sequence[RunSpec]) -> None:
    """Refuse to mix in runs made with other arguments (another budget, preset, ...)."""
    for spec in specs:
        for name in (MARKER, PARTIAL):
            marker = read_marker(spec.logdir, name)
            if marker is not None and marker.get("args") != spec.args:
                made = shlex.join(marker.get("args", []))
                raise ValueError(
                    f"{spec.logdir} holds a run made with other arguments ({made}); "
                    "choose another --out or delete that folder"
                )


def launch(spec: RunSpec, threads: int) -> int:
    """Run `spec` to the end with its output in its run.log; returns the exit status.

    A run stopped after a checkpoint (Ctrl-C, a crash) continues from it with `--resume`; its wall
    time adds up over the sessions. Any other unfinished run starts over, since run_agent.py
    refuses a folder that holds a run.
    """
    partial = read_marker(spec.logdir, PARTIAL)
    earlier = 0.0
    if partial is not None and (spec.logdir / "checkpoint").is_dir():
        command = [sys.executable, str(RUN_AGENT), "--resume", str(spec.logdir)]
        earlier = float(partial.get("wall_s", 0.0))
        print(f"resuming {spec.variant} seed {spec.seed} from {spec.logdir / 'checkpoint'}", flush=True)
    else:
        if spec.logdir.exists():
            print(f"restarting the unfinished run in {spec.logdir}", flush=True)
            shutil.rmtree(spec.logdir)
        spec.logdir.mkdir(parents=True)
        command = spec.command()
    # One BLAS/OpenMP thread per run as well, so that parallel runs do not oversubscribe the cores;
    # a slow progress bar keeps the log readable.
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env["TQDM_MININTERVAL"] = "30"
    start = time.time()
    with open(spec.logdir / RUN_LOG, "a") as log:
        log.write(shlex.join(command) + "\n")
        log.flush()
        status = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    wall = earlier + time.time() - start
    record = {"args": spec.args, "wall_s": wall, "ended": time.strftime("%Y-%m-%d %H:%M:%S")}
    if status == 0:
        (spec.logdir / MARKER).write_text(json.dumps(record, indent=1) + "\n")
        (spec.logdir / PARTIAL).unlink(missing_ok=True)
        print(
            f"done    {spec.variant} seed {spec.seed} in {wall:.0f} s: {short_path(spec.logdir)}", flush=True
        )
    else:
        (spec.logdir / PARTIAL).write_text(json.dumps(record, indent=1) + "\n")
        what = "stopped" if status == EXIT_INTERRUPTED else "FAILED "
        log = spec.logdir / RUN_LOG
        print(f"{what} {spec.variant} seed {spec.seed} (exit {status}): see {log}", flush=True)
    return status


def short_path(path: Path) -> str:
    """`path` relative to the working directory when inside it, for shorter messages and pages."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def default_jobs(threads: int) -> int:
    """As many parallel runs as the cores this process may use hold runs of `threads` threads."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // max(1, threads))


def run_all(specs: Sequence[RunSpec], jobs: int, threads: int = 1) -> list[RunSpec]:
    """Launch the unfinished runs of `specs`, `jobs` at a time; returns those that failed."""
    todo = [spec for spec in specs if read_marker(spec.logdir) is None]
    if len(todo) < len(specs):
        print(f"{len(specs) - len(todo)} of {len(specs)} runs already finished", flush=True)
    if not todo:
        return []
    print(f"launching {len(todo)} runs, {jobs} at a time", flush=True)
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(launch, spec, threads): spec for spec in todo}
        try:
            return [futures[f] for f in concurrent.futures.as_completed(futures) if f.result() != 0]
        except KeyboardInterrupt:
            # The running children got the same Ctrl-C and stop; runs not yet started never start.
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a .jsonl file; a torn last line (a run still writing) is skipped."""
    records = []
    if path.is_file():
        for line in path.read_text().splitlines():
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
    when it is a run this script launched that has not finished (it would bias the comparison).
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


def fmt(value: float | None, ci: float | None = None, digits: int | None = None) -> str:
    """`value ± ci` with 3 decimals (1 for values of 100 and more); `n/a` for a missing value."""
    if value is None or math.isnan(value):
        return "n/a"
    digits = digits if digits is not None else (1 if abs(value) >= 100 else 3)
    return f"{value:.{digits}f}" + (f" ± {ci:.{digits}f}" if ci is not None else "")


def fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def results_table(summaries: Sequence[Summary], metric: str, last_episodes: int) -> str:
    """The markdown table: a row per variant."""
    final, best = "final return", "best return"
    if metric == "success":
        final, best = f"success (last {last_episodes} episodes)", f"best success ({last_episodes} episodes)"
    lines = [
        f"| variant | seeds | {final} | {best} | from | wall time / run | env steps/s |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for s in summaries:
        lines.append(
            f"| {s.variant} | {s.seeds} | {fmt(*s.final)} | {fmt(*s.best)} | {s.source} | "
            f"{fmt_seconds(s.wall_s)} | {fmt(s.steps_per_s, digits=1)} |"
        )
    return "\n".join(lines)


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


def plot_curves(runs: dict[str, list[RunLog]], path: Path, title: str, bins: int = CURVE_BINS) -> None:
    """Training episode return against env steps: per variant the mean over seeds and its 95% band."""
    horizon = max(
        [run.budget or 0 for logs in runs.values() for run in logs]
        + [int(run.episode_steps.max()) for logs in runs.values() for run in logs if len(run.episode_steps)]
    )
    edges = np.linspace(0, max(horizon, 1), bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for variant, logs in runs.items():
        curves = np.array(
            [binned_curve(r.episode_steps, r.episode_returns, edges) for r in logs if len(r.episode_steps)]
        )
        if not len(curves):
            continue
        stats = [mean_ci(column[~np.isnan(column)]) for column in curves.T]
        mean = np.array([m for m, _ in stats])
        half = np.array([np.nan if h is None else h for _, h in stats])
        (line,) = ax.plot(centres, mean, label=f"{variant} ({len(curves)} seeds)")
        ax.fill_between(centres, mean - half, mean + half, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel("env steps")
    ax.set_ylabel(f"training episode return (mean per {edges[1]:.0f}-step bin)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
# Command line


def parse_list(text: str, kind: type = str) -> list[Any]:
    return [kind(item.strip()) for item in text.split(",") if item.strip()]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides for every run")
    add("--variants", help=f"comma-separated, of {', '.join(VARIANTS)} (default: {DEFAULT_VARIANTS})")
    add("--seeds", help="comma-separated seeds (default: 0,1,2; with --redraw: every seed found)")
    add("--env", help="environment id suite:task (default: the preset's)")
    add("--steps", type=int, help="env steps per run (default: the preset's train.steps)")
    add("--preset", default="popgym,cpu", help="run_agent.py presets (default: popgym,cpu)")
    add(
        "--out",
        type=Path,
        default=ROOT / "runs" / "compare",
        help="folder of the runs and results (default: runs/compare)",
    )
    add("--metric", choices=METRICS, default="return", help="return, or success (fraction of returns > 0)")
    add("--last-episodes", type=int, default=1000, help="episodes the success metric reads (default: 1000)")
    add("--threads", type=int, default=1, help="torch threads per run (default: 1)")
    add("--jobs", type=int, help="parallel runs (default: CPU cores // threads)")
    add("--redraw", action="store_true", help="only rebuild table and plot from the runs in --out")
    return parser.parse_intermixed_args(argv)


def write_results(out: Path, runs: dict[str, list[RunLog]], metric: str, last_episodes: int) -> list[Summary]:
    """Write `out/results.md` and `out/curves.png` from `runs`; returns the summaries."""
    summaries = [summarize(v, logs, metric, last_episodes) for v, logs in runs.items()]
    title = describe(runs)
    plot_curves(runs, out / "curves.png", title)
    text = [
        f"# {title}",
        "",
        results_table(summaries, metric, last_episodes),
        "",
        CI_NOTE,
        "",
        METRIC_NOTES[metric].format(last=last_episodes)
        + " Wall time: one run, process start to exit. Env steps/s: training throughput over the "
        "run's logged windows.",
        "",
        "![learning curves](curves.png)",
        "",
        "Runs (S: the seed):",
        "",
    ]
    for variant, logs in runs.items():
        seeds = ", ".join(log.logdir.name.removeprefix("seed") for log in logs)
        text.append(f"- {variant}, seeds {seeds}: `{run_command(logs) or 'unknown (no compare.json)'}`")
    text.append("")
    (out / "results.md").write_text("\n".join(text))
    return summaries


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # A redraw shows every variant it finds unless told which.
    variants = parse_list(args.variants or (",".join(VARIANTS) if args.redraw else DEFAULT_VARIANTS))
    seeds = parse_list(args.seeds or "0,1,2", int)
    out = args.out.resolve()
    failed: list[RunSpec] = []
    if not args.redraw:
        try:
            specs = plan_runs(
                out, variants, seeds, args.preset, args.env, args.steps, args.overrides, args.threads
            )
            check_reusable(specs)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        try:
            failed = run_all(specs, args.jobs or default_jobs(args.threads), args.threads)
        except KeyboardInterrupt:
            print("interrupted; the same command resumes the stopped runs", file=sys.stderr)
            return EXIT_INTERRUPTED
    runs = read_runs(out, variants, None if args.redraw and not args.seeds else seeds)
    if not runs:
        print(f"error: no run logs under {out} for {', '.join(variants)}", file=sys.stderr)
        return 1
    summaries = write_results(out, runs, args.metric, args.last_episodes)
    print(results_table(summaries, args.metric, args.last_episodes))
    print(f"wrote {out / 'results.md'} and {out / 'curves.png'}")
    if failed:
        print(f"{len(failed)} runs failed; their logs are named above", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
