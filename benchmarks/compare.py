"""Compare agent variants on one environment: train variants x seeds, then tabulate and plot.

    python benchmarks/compare.py --env popgym:RepeatPreviousEasy --preset popgym_cpu --steps 20000 \\
        --variants s3m:hidden,rssm --seeds 0,1,2 --out runs/compare/repeat_previous
    python benchmarks/compare.py --preset bsuite_cpu --env bsuite:memory_len/15 --steps 100000 \\
        --metric success --last-episodes 1000 --out runs/compare/memory_len_30
    python benchmarks/compare.py --out runs/compare/repeat_previous --redraw   # tables and plot only

Each run is `python run_agent.py ... threads=T` in its own process with its output in
`OUT/<variant>/seed<k>/run.log` (a variant's folder is its name with ':' spelled '-', e.g.
`s3m-hidden`), up to `--jobs` at a time (default: CPU cores // T). A run that succeeds gets a
`compare.json` beside its logs (its arguments and wall time); a folder holding one is a finished
run and is not trained again, and a run stopped after a checkpoint (Ctrl-C) is resumed, so the
same command continues an interrupted comparison. A larger `--steps` continues finished runs from
their checkpoints to the new budget; any other change of arguments is refused. A failed run is
reported on one line with its log and the others go on; the exit status is then 1.

Written from the runs' logs: `OUT/results.md` (a row per variant: final and best return or
success, each the mean over seeds with a 95% confidence interval; wall time and env steps/s) and
`OUT/curves.png` (training episode return against env steps, mean over seeds with its 95% band).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import functools
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display is needed or wanted
import matplotlib.pyplot as plt
import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from benchmarks.runlogs import (  # noqa: E402
    CI_NOTE,
    MARKER,
    METRICS,
    PARTIAL,
    RunLog,
    Summary,
    binned_curve,
    describe,
    mean_ci,
    read_marker,
    read_runs,
    run_command,
    summarize,
    variant_dir,
)

RUN_AGENT = ROOT / "run_agent.py"
EXIT_INTERRUPTED = 130  # run_agent.py's status when Ctrl-C stopped it after saving a checkpoint
RUN_LOG = "run.log"

# Variant name -> the overrides that make it.
VARIANTS: dict[str, tuple[str, ...]] = {
    "s3m:hidden": ("world_model=s3m", "agent.policy_input=hidden"),
    "s3m:output": ("world_model=s3m", "agent.policy_input=output"),
    "s3m:full": ("world_model=s3m", "agent.policy_input=full"),
    "rssm": ("world_model=rssm",),
    # Input-dependent step sizes in every S5 layer (world_model/ssm.py), not in R2I.
    "s3m:hidden:selective": ("world_model=s3m", "agent.policy_input=hidden", "s3m.selective=true"),
    # The S3M before it followed R2I's code (the ablation of docs/results.md): B̃ with fan-in H and
    # C̃ at unit output scale, a zero reset state, 4 HiPPO-N blocks, and posterior and prior MLPs
    # as deep as the `cpu` size's encoder (2 layers).
    "s3m:hidden:legacy": (
        "world_model=s3m",
        "agent.policy_input=hidden",
        "s3m.bc_init=unit",
        "s3m.learn_initial_state=false",
        "s3m.blocks=4",
        "model.latent_layers=2",
    ),
}
DEFAULT_VARIANTS = "s3m:hidden,rssm"
CURVE_BINS = 40
MIN_SEEDS_CI = 3  # fewer seeds get a min-max band in the learning-curve plots
METRIC_NOTES = {  # how a results page says what its numbers are
    "return": "Final and best return: the last and the best evaluation (`eval/return`) of each run; "
    "runs without evaluations (from `episodes`) use the mean of their last 10% of training episodes "
    "and the best mean over as many consecutive ones.",
    "success": "Success: the fraction of training episodes with a return above 0 among each run's "
    "last {last}; best success: the highest such fraction over any {last} consecutive episodes.",
}


# ---------------------------------------------------------------------------------------------
# Runs: what to launch, and launching them


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


def steps_arg(args: Sequence[str]) -> int | None:
    """The value of `--steps` in run_agent.py arguments `args`, or None without one."""
    return int(args[args.index("--steps") + 1]) if "--steps" in args else None


def extends(made: Sequence[str], spec: RunSpec) -> bool:
    """Whether the run made with arguments `made` is `spec` on a smaller `--steps` budget, so that
    resuming it from its checkpoint with the larger budget finishes `spec`."""
    steps, made_steps = steps_arg(spec.args), steps_arg(made)
    if steps is None or made_steps is None or made_steps >= steps:
        return False
    at = spec.args.index("--steps") + 1
    return list(made) == [*spec.args[:at], str(made_steps), *spec.args[at + 1 :]]


def check_reusable(specs: Sequence[RunSpec]) -> None:
    """Refuse to mix in runs made with other arguments (another preset, overrides, ...); a run made
    on a smaller `--steps` budget is continued instead (see `launch`)."""
    for spec in specs:
        for name in (MARKER, PARTIAL):
            marker = read_marker(spec.logdir, name)
            if marker is None or marker.get("args") == spec.args:
                continue
            if extends(marker.get("args", []), spec) and (spec.logdir / "checkpoint").is_dir():
                continue
            made = shlex.join(marker.get("args", []))
            raise ValueError(
                f"{spec.logdir} holds a run made with other arguments ({made}); "
                "choose another --out or delete that folder"
            )


def is_done(spec: RunSpec) -> bool:
    """Whether `spec`'s folder holds its finished run, on its own budget."""
    marker = read_marker(spec.logdir)
    return marker is not None and marker.get("args") == spec.args


def launch(spec: RunSpec, threads: int) -> int:
    """Run `spec` to the end with its output in its run.log; returns the exit status.

    A run stopped after a checkpoint (Ctrl-C, a crash, or killed outright, e.g. with the session it
    ran in), or finished on a smaller `--steps` budget, continues from its checkpoint with
    `--resume` to `spec`'s budget; its wall time adds up over the sessions (for a killed part, up
    to its last checkpoint). Any other unfinished run starts over, since run_agent.py refuses a
    folder that holds a run.
    """
    earlier_run = read_marker(spec.logdir, PARTIAL) or read_marker(spec.logdir)
    earlier = 0.0
    checkpoint = spec.logdir / "checkpoint"
    if earlier_run is not None and checkpoint.is_dir():
        steps = steps_arg(spec.args)
        command = [sys.executable, str(RUN_AGENT), "--resume", str(spec.logdir)]
        command += ["--steps", str(steps)] if steps is not None else []
        earlier = float(earlier_run.get("wall_s", 0.0))
        if "started" in earlier_run and "ended" not in earlier_run:
            # Killed before it could say how long it ran: count the part up to its last checkpoint,
            # which is where it continues from.
            earlier += max(0.0, checkpoint.stat().st_mtime - float(earlier_run["started"]))
        print(f"resuming {spec.variant} seed {spec.seed} from {checkpoint}", flush=True)
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
    # Marked unfinished from the start: a run killed outright (no exit status to record) is then
    # resumed from its checkpoint by the next launch instead of started over.
    started = {"args": spec.args, "wall_s": earlier, "started": start}
    (spec.logdir / PARTIAL).write_text(json.dumps(started, indent=1) + "\n")
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
        (spec.logdir / MARKER).unlink(missing_ok=True)  # a continued run is unfinished again
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
    todo = [spec for spec in specs if not is_done(spec)]
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


def launch_runs(plan: Callable[[], Sequence[RunSpec]], jobs: int | None, threads: int) -> list[RunSpec] | int:
    """What the command lines of compare.py and learning.py do before reading the runs: plan them,
    refuse runs made with other arguments, and launch the unfinished ones (`jobs` at a time,
    default: CPU cores // `threads`). Returns the runs that failed, or the exit status to stop with
    after printing why: 2 for a bad plan or folders in the way, EXIT_INTERRUPTED after Ctrl-C.
    """
    try:
        specs = plan()
        check_reusable(specs)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        return run_all(specs, jobs or default_jobs(threads), threads)
    except KeyboardInterrupt:
        print("interrupted; the same command resumes the stopped runs", file=sys.stderr)
        return EXIT_INTERRUPTED


def exit_status(failed: Sequence[RunSpec]) -> int:
    """A command line's exit status once its results are written: 1, said why, if runs failed."""
    if failed:
        print(f"{len(failed)} runs failed; their logs are named above", file=sys.stderr)
    return 1 if failed else 0


# ---------------------------------------------------------------------------------------------
# Results: a table and a plot per comparison


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


def plot_curves(runs: dict[str, list[RunLog]], path: Path, title: str, bins: int = CURVE_BINS) -> None:
    """Training episode return against env steps: per variant the mean over seeds and a band.

    The band is the 95% interval of the mean from 3 seeds on, the range of the seeds below that.
    """
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
        if len(curves) >= MIN_SEEDS_CI:
            half = np.array([np.nan if h is None else h for _, h in stats])
            low, high, band = mean - half, mean + half, "95% CI"
        else:
            # With two seeds t(0.975, 1) = 12.7 makes the interval wider than the plot; show the seeds.
            with warnings.catch_warnings():  # bins no seed reached are all-NaN and stay blank
                warnings.simplefilter("ignore", RuntimeWarning)
                low, high, band = np.nanmin(curves, 0), np.nanmax(curves, 0), "min-max"
        seeds = f"{len(curves)} seed{'s' if len(curves) > 1 else ''}"
        label = f"{variant} ({seeds}, {band} band)" if len(curves) > 1 else f"{variant} ({seeds})"
        (line,) = ax.plot(centres, mean, label=label)
        ax.fill_between(centres, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_xlabel("env steps")
    ax.set_ylabel(f"training episode return (mean per {edges[1]:.0f}-step bin)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
    add("--preset", default="popgym_cpu", help="run_agent.py presets (default: popgym_cpu)")
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
        plan = functools.partial(
            plan_runs, out, variants, seeds, args.preset, args.env, args.steps, args.overrides, args.threads
        )
        launched = launch_runs(plan, args.jobs, args.threads)
        if isinstance(launched, int):
            return launched
        failed = launched
    runs = read_runs(out, variants, None if args.redraw and not args.seeds else seeds)
    if not runs:
        print(f"error: no run logs under {out} for {', '.join(variants)}", file=sys.stderr)
        return 1
    summaries = write_results(out, runs, args.metric, args.last_episodes)
    print(results_table(summaries, args.metric, args.last_episodes))
    print(f"wrote {out / 'results.md'} and {out / 'curves.png'}")
    return exit_status(failed)


if __name__ == "__main__":
    sys.exit(main())
