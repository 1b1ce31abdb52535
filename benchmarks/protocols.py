"""What the benchmark protocols share: task lists run through compare.py, and the field's scores.

    python benchmarks/atari100k.py --dry-run              # the protocols built on this module
    python benchmarks/dmc.py --score-only --json scores.json

A protocol is one or more suites, each a list of `Task`s (env id, preset, budget in agent steps,
overrides). The runs of a suite's task NAME go to `<suite folder>/NAME/<variant>/seed<k>` and are
planned, launched, skipped when finished and resumed by `benchmarks/compare.py`, so the same
command continues an interrupted benchmark. A run's score is its final return as
`runlogs.run_scores` reads it: its last evaluation, or the mean of its last 10% of training
episodes without one. Over tasks, the mean, median and interquartile mean (IQM) of normalised
scores come with 95% stratified-bootstrap confidence intervals from rliable (Agarwal et al. 2021,
"Deep RL at the edge of the statistical precipice"), computed on a runs x tasks score matrix.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from benchmarks import compare, published, runlogs  # noqa: E402

DEFAULT_VARIANTS = "s3m:output,rssm"  # R2I's policy input for non-memory tasks, and DreamerV3
AGGREGATES = ("mean", "median", "iqm")
BOOTSTRAP_REPS = 50_000  # rliable's default number of bootstrap replications
BOOTSTRAP_SEED = 0  # a fixed seed, so that rescoring the same runs prints the same intervals
SCORES_MD = "scores.md"


@dataclasses.dataclass(frozen=True)
class Task:
    """One task of a suite: every variant and seed runs `run_agent.py --preset PRESET --env ENV
    --steps STEPS OVERRIDES`."""

    name: str  # its folder and its name in tables and on the command line, e.g. 'ms_pacman'
    env: str  # env id, e.g. 'atari:ms_pacman'
    preset: str
    steps: int  # agent steps, run_agent.py's --steps
    overrides: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Suite:
    """Tasks scored together: their runs, default seeds, and how a score is normalised."""

    name: str  # e.g. 'atari100k', 'proprio'
    title: str  # the heading of its tables
    folder: Path  # its runs: folder/<task>/<variant>/seed<k>
    tasks: tuple[Task, ...]
    seeds: tuple[int, ...]  # the protocol's seeds, unless --seeds says otherwise
    normalise: Callable[[str, float], float]  # (task, score) -> the score aggregated over tasks
    normalised: str  # what a normalised score is called, e.g. 'human-normalised'
    per_task_label: str | None  # the column of a task's normalised score beside its raw one (None: none)
    task_word: str = "task"  # what the suite calls a task, e.g. 'game'
    reference: dict[str, tuple[float, float]] | None = None  # task -> (random, human), shown
    notes: tuple[str, ...] = ()  # the protocol's details, printed under its tables


def pick(requested: str | None, known: Sequence[str], what: str) -> list[str]:
    """The names of comma-separated `requested` (all of `known` when None), in the order given;
    ValueError naming the first unknown one."""
    if requested is None:
        return list(known)
    names = list(dict.fromkeys(compare.parse_list(requested)))
    for name in names:
        if name not in known:
            raise ValueError(f"unknown {what} '{name}'; {what}s: {', '.join(known)}")
    if not names:
        raise ValueError(f"no {what} named in '{requested}'")
    return names


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = compare.parse_list(text, int)
    except ValueError:
        raise ValueError(f"--seeds must be comma-separated integers, got '{text}'") from None
    if not seeds:
        raise ValueError(f"--seeds names no seed: '{text}'")
    return seeds


# ---------------------------------------------------------------------------------------------
# Runs


def plan(
    suite: Suite, variants: Sequence[str], seeds: Sequence[int], overrides: Sequence[str], threads: int
) -> list[compare.RunSpec]:
    """The runs of every task of `suite` x `variants` x `seeds`, as compare.py plans them."""
    specs = []
    for task in suite.tasks:
        specs += compare.plan_runs(
            suite.folder / task.name,
            variants,
            seeds,
            task.preset,
            task.env,
            task.steps,
            [*task.overrides, *overrides],
            threads,
        )
    return specs


def command_line(spec: compare.RunSpec) -> str:
    """The shell command that trains `spec` from the working directory, as compare.py would."""
    run_agent = compare.short_path(compare.RUN_AGENT)
    return shlex.join(["python", run_agent, *spec.args, "--logdir", compare.short_path(spec.logdir)])


# ---------------------------------------------------------------------------------------------
# Scores


def final_scores(
    suite: Suite, variants: Sequence[str], seeds: Sequence[int]
) -> dict[str, dict[str, dict[int, float]]]:
    """variant -> task -> seed -> final return, for the finished runs of `suite` (runlogs reads an
    unfinished run launched by compare.py as none)."""
    scores: dict[str, dict[str, dict[int, float]]] = {variant: {} for variant in variants}
    for task in suite.tasks:
        for variant, logs in runlogs.read_runs(suite.folder / task.name, variants, seeds).items():
            scores[variant][task.name] = {
                int(log.logdir.name.removeprefix("seed")): runlogs.run_scores(log, "return", 1)[0]
                for log in logs
            }
    return scores


def score_matrix(suite: Suite, per_task: dict[str, dict[int, float]]) -> tuple[np.ndarray, list[str]]:
    """(runs, tasks) normalised scores of the tasks with runs, and those tasks' names.

    The stratified bootstrap resamples runs within each task, so a task's column needs no seed in
    common with another's; the matrix must be rectangular, though, so every task keeps as many
    runs as the task with the fewest (its lowest seeds).
    """
    tasks = [task.name for task in suite.tasks if per_task.get(task.name)]
    if not tasks:
        return np.zeros((0, 0)), []
    runs = min(len(per_task[name]) for name in tasks)
    columns = [
        [suite.normalise(name, per_task[name][seed]) for seed in sorted(per_task[name])[:runs]]
        for name in tasks
    ]
    return np.array(columns, np.float64).T, tasks


def aggregate_estimates(
    matrices: dict[str, np.ndarray], reps: int = BOOTSTRAP_REPS, seed: int = BOOTSTRAP_SEED
) -> dict[str, dict[str, tuple[float, float, float]]]:
    """key -> aggregate -> (point, low, high): mean, median and IQM of each (runs, tasks) matrix,
    with rliable's 95% stratified-bootstrap intervals (percentile method)."""
    from rliable import library, metrics

    def aggregates(scores: np.ndarray) -> np.ndarray:
        return np.array(
            [metrics.aggregate_mean(scores), metrics.aggregate_median(scores), metrics.aggregate_iqm(scores)]
        )

    # rliable 1.2 draws its resamples from numpy's global RNG (`StratifiedBootstrap.update_indices`
    # calls `np.random.choice`), whatever `random_state` says: seed that, and put it back after.
    global_state = np.random.get_state()  # noqa: NPY002 - the RNG rliable reads
    np.random.seed(seed)  # noqa: NPY002
    try:
        with warnings.catch_warnings():
            # rliable hands its RandomState to arch under a keyword arch deprecates.
            warnings.filterwarnings("ignore", "random_state is deprecated", FutureWarning)
            points, intervals = library.get_interval_estimates(
                matrices, aggregates, reps=reps, random_state=np.random.RandomState(seed)
            )
    finally:
        np.random.set_state(global_state)  # noqa: NPY002
    return {
        key: {
            name: (float(points[key][i]), float(intervals[key][0, i]), float(intervals[key][1, i]))
            for i, name in enumerate(AGGREGATES)
        }
        for key in matrices
    }


def score_suite(
    suite: Suite, variants: Sequence[str], seeds: Sequence[int], reps: int = BOOTSTRAP_REPS
) -> dict[str, Any]:
    """The suite's scores as data: per variant its tasks' runs and the aggregates over tasks."""
    scores = final_scores(suite, variants, seeds)
    matrices, matrix_tasks = {}, {}
    for variant in variants:
        matrix, tasks = score_matrix(suite, scores[variant])
        if tasks:
            matrices[variant], matrix_tasks[variant] = matrix, tasks
    estimates = aggregate_estimates(matrices, reps) if matrices else {}
    result: dict[str, Any] = {"suite": suite.name, "title": suite.title, "normalised": suite.normalised}
    result["tasks"] = [task.name for task in suite.tasks]
    # DreamerV3's published mean return at each task's env steps (benchmarks/published.py).
    result["dreamerv3"] = {task.name: published.score(task.env, task.steps) for task in suite.tasks}
    result["notes"] = list(suite.notes)
    result["variants"] = {}
    for variant in variants:
        tasks = {}
        for name, by_seed in scores[variant].items():
            raw = [by_seed[s] for s in sorted(by_seed)]
            normalised = [suite.normalise(name, value) for value in raw]
            tasks[name] = {"seeds": sorted(by_seed), "scores": raw, "normalised": normalised}
            tasks[name] |= {"mean": float(np.mean(raw)), "normalised_mean": float(np.mean(normalised))}
        entry: dict[str, Any] = {"tasks": tasks}
        if variant in estimates:
            entry["aggregate"] = {"tasks": matrix_tasks[variant], "runs_per_task": len(matrices[variant])}
            entry["aggregate"] |= {
                name: {"value": point, "ci": [low, high]}
                for name, (point, low, high) in estimates[variant].items()
            }
        result["variants"][variant] = entry
    return result


# ---------------------------------------------------------------------------------------------
# Tables


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"


def fmt_estimate(estimate: dict[str, Any] | None) -> str:
    if estimate is None:
        return "n/a"
    low, high = estimate["ci"]
    return f"{fmt(estimate['value'])} ({fmt(low)}, {fmt(high)})"


def suite_tables(result: dict[str, Any], suite: Suite, reps: int) -> str:
    """Markdown: a row per task (mean over seeds per variant), then a row per variant of the
    aggregates over tasks with their intervals."""
    variants = list(result["variants"])
    header = [suite.task_word, *(["random", "human"] if suite.reference else []), "DreamerV3 (published)"]
    for variant in variants:
        header += [variant, *([f"{variant} {suite.per_task_label}"] if suite.per_task_label else [])]
    lines = [f"## {result['title']}", "", "| " + " | ".join(header) + " |"]
    lines.append("| --- |" + " ---: |" * (len(header) - 1))
    for name in result["tasks"]:
        row = [name, *(map(fmt, suite.reference[name]) if suite.reference else [])]
        row.append(fmt(result.get("dreamerv3", {}).get(name)))
        for variant in variants:
            task = result["variants"][variant]["tasks"].get(name)
            row.append("n/a" if task is None else f"{fmt(task['mean'])} ({len(task['seeds'])})")
            if suite.per_task_label:
                row.append("n/a" if task is None else fmt(task["normalised_mean"]))
        lines.append("| " + " | ".join(row) + " |")
    word = suite.task_word
    lines += ["", f"| variant | {word}s | runs per {word} | {suite.normalised} mean | median | IQM |"]
    lines.append("| --- | ---: | ---: | ---: | ---: | ---: |")
    for variant in variants:
        agg = result["variants"][variant].get("aggregate")
        if agg is None:
            lines.append(f"| {variant} | 0 | 0 | n/a | n/a | n/a |")
            continue
        cells = [fmt_estimate(agg[name]) for name in AGGREGATES]
        lines.append(
            f"| {variant} | {len(agg['tasks'])} | {agg['runs_per_task']} | " + " | ".join(cells) + " |"
        )
    lines += [
        "",
        f"A {word}'s row: the mean final return over seeds (the number of seeds in parentheses). "
        f"Aggregates over {word}s of {suite.normalised} scores, each with its 95% stratified-bootstrap "
        f"confidence interval (rliable, {reps} replications, percentile method); every {word} joins "
        f"with as many runs as the {word} with the fewest. DreamerV3 (published): the mean over "
        f"seeds of the learning curves DreamerV3's authors publish ({published.SOURCE}) at the "
        f"{word}'s env steps.",
    ]
    for note in suite.notes:
        lines += ["", note]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser, default_out: Path, seeds: str) -> None:
    """The options every protocol script takes besides its task subset (--games, --tasks)."""
    add = parser.add_argument
    add("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides for every run")
    add(
        "--variants",
        default=DEFAULT_VARIANTS,
        help=f"of {', '.join(compare.VARIANTS)} (default: %(default)s)",
    )
    add("--seeds", help=f"comma-separated seeds (default: {seeds})")
    add("--out", type=Path, default=default_out, help="folder of the runs and scores (default: %(default)s)")
    add("--threads", type=int, default=1, help="torch threads per run (default: 1)")
    add("--jobs", type=int, help="parallel runs (default: CPU cores // threads)")
    add("--dry-run", action="store_true", help="print the runs' commands, one per line, and exit")
    add("--score-only", action="store_true", help="score the finished runs in --out without launching any")
    add("--json", type=Path, metavar="PATH", help="also write the scores as JSON to PATH ('-': stdout)")
    add("--reps", type=int, default=BOOTSTRAP_REPS, help="bootstrap replications (default: %(default)s)")


def execute(args: argparse.Namespace, suites: Sequence[Suite], benchmark: str) -> int:
    """Plan `suites`' runs, then print them (--dry-run), or launch the unfinished ones (unless
    --score-only) and score the finished ones: markdown on stdout and in OUT/scores.md, JSON on
    request. Exit status 2 for bad arguments, 1 when runs failed or none could be scored."""
    try:
        variants = compare.parse_list(args.variants)
        seeds = {suite.name: parse_seeds(args.seeds) if args.seeds else list(suite.seeds) for suite in suites}
        if args.reps < 1:
            raise ValueError(f"--reps must be >= 1, got {args.reps}")
        specs = [
            spec
            for suite in suites
            for spec in plan(suite, variants, seeds[suite.name], args.overrides, args.threads)
        ]
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        try:
            print("\n".join(command_line(spec) for spec in specs), flush=True)
        except BrokenPipeError:
            # A reader that stopped early (`| head`) is no error; point stdout at /dev/null so that
            # the interpreter's last flush at exit does not fail on the closed pipe either.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    failed: list[compare.RunSpec] = []
    if not args.score_only:
        launched = compare.launch_runs(lambda: specs, args.jobs, args.threads)
        if isinstance(launched, int):
            return launched
        failed = launched
    try:
        results = [score_suite(suite, variants, seeds[suite.name], args.reps) for suite in suites]
    except ModuleNotFoundError as err:
        print(f"error: scoring needs {err.name!r}: pip install -e '.[benchmarks]'", file=sys.stderr)
        return 2
    if not any(v["tasks"] for result in results for v in result["variants"].values()):
        print(f"error: no finished runs under {args.out} to score", file=sys.stderr)
        return 1
    page = "\n\n".join(suite_tables(r, suite, args.reps) for r, suite in zip(results, suites)) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / SCORES_MD).write_text(page)
    text = json.dumps({"benchmark": benchmark, "suites": results}, indent=1) + "\n"
    if args.json is not None and str(args.json) != "-":
        args.json.write_text(text)
    # With `--json -` stdout is the JSON alone, for a pipe; the tables are in OUT/scores.md.
    print(text if str(args.json) == "-" else page, end="")
    return compare.exit_status(failed)
