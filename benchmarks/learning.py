"""The project's learning targets: train each one's variants and seeds, then write docs/results.md.

    python benchmarks/learning.py                                   # every target, full budgets
    python benchmarks/learning.py --targets cartpole --seeds 0 --steps 5000   # a quick look
    python benchmarks/learning.py --redraw                          # rebuild the page only

`TARGETS` below holds each target's env, variants, presets, overrides, budget, metric and goal;
edit it there. The runs of target NAME go to `OUT/NAME/<variant>/seed<k>` (OUT: `--out`, default
runs/learning) and are launched and skipped when finished by `benchmarks/compare.py`, and read and
summarised by `benchmarks/runlogs.py`. The page `DOCS/results.md` (DOCS: `--docs`, default docs/)
has a row per target and variant (result as mean ± 95% CI over seeds, the goal, `met`,
**missed** or `report` where a target has no goal, wall time and the exact run command) and links
one learning-curve plot per target, `DOCS/curves_NAME.png`; `DOCS/results.json` holds the same rows
as data (`{"targets": [{"target", "env", "variant", "seeds", "metric", "mean", "ci", "goal",
"status", "per_seed", ...}]}`). Every finished run's logs are archived under `DOCS/runs/NAME/
<variant>/seed<k>` (config and marker, metrics and episodes gzipped) and the rows are read from
there, so a page outlives the machine its runs ran on. A rebuild keeps the rows of targets it does
not rebuild, and of those without runs, from the previous `results.json`; a seed whose logs are
gone keeps its recorded score (noted on the row); and the text under a `## Analysis` heading of
the existing page stays.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

from benchmarks import compare, published, random_policy, runlogs  # noqa: E402
from configs import Config, load_config  # noqa: E402

ANALYSIS = "## Analysis"
RESULTS_JSON = "results.json"
ARCHIVE = "runs"  # DOCS/runs/<target>/<variant>/seed<k>: the logs of the page's finished runs
ARCHIVED = ("config.yaml", runlogs.MARKER)  # copied into the archive as they are
PACKED = ("metrics.jsonl", "episodes.jsonl")  # gzipped into it
# A row of results.json: target, env, variant, budget, seeds, metric (`return` or `success`),
# metric_text, mean and ci (the 95% half-width over seeds, null with one seed), random (the
# uniform random policy's score on the same metric), dreamerv3 (DreamerV3's published return at the
# same env steps, null where none is published), goal (null: a `report` row), status (`met`,
# `missed` or `report`), wall_s, command, and optionally note.
Row = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Target:
    """One learning target: what to run, how to score it, and the score to reach."""

    env: str
    variants: tuple[str, ...]  # names of `compare.VARIANTS`
    preset: str
    steps: int  # env steps per run
    metric: str  # "return": final eval (or last 10% of training episodes); "success": returns > 0
    goal: float | None  # the mean over seeds must reach this; None: reported, no goal
    overrides: tuple[str, ...] = ()
    seeds: tuple[int, ...] = (0, 1, 2)
    last_episodes: int = 1000  # episodes the success metric reads
    random_episodes: int = 100  # episodes of the random policy's `return` (success: last_episodes)
    goal_times_random: float | None = None  # the goal is this multiple of the random policy's score


# The memory targets run the CPU recipes of configs/presets (`bsuite_cpu`, `popgym_cpu`, both built
# on `memory_cpu`), where each setting says why it is there; the default `python run_agent.py`
# trains `popgym_cpu` too.


def bsuite_memory(
    sweep_id: int,
    seeds: tuple[int, ...] = (0, 1, 2),
    goal: float | None = 0.95,
    variants: tuple[str, ...] = ("s3m:hidden", "rssm"),
    last_episodes: int = 1000,
    steps: int = 100_000,
) -> Target:
    """A BSuite memory_len target on the `bsuite_cpu` recipe, S3M beside the RSSM."""
    return Target(
        env=f"bsuite:memory_len/{sweep_id}",
        variants=variants,
        preset="bsuite_cpu",
        steps=steps,
        metric="success",
        goal=goal,
        overrides=("train.eval_every=20000",),
        seeds=seeds,
        last_episodes=last_episodes,
    )


def popgym_memory(task: str, goal: float | None, steps: int = 100_000) -> Target:
    """A POPGym target on the `popgym_cpu` recipe, S3M beside the RSSM, seeds 0-2."""
    return Target(
        env=f"popgym:{task}",
        variants=("s3m:hidden", "rssm"),
        preset="popgym_cpu",
        steps=steps,
        metric="return",
        goal=goal,
        overrides=("train.eval_every=10000",),
    )


def control(
    env: str,
    preset: str,
    goal: float | None,
    variants: tuple[str, ...] = ("s3m:output", "rssm"),
    goal_times_random: float | None = None,
) -> Target:
    """A control or pixel target: the preset's budget and evaluations, seeds 0-2, scored by the
    final evaluation's return; the random policy is scored over as many episodes as one
    evaluation."""
    cfg = load_config([preset], [f"env.name={env}"])
    return Target(
        env=env,
        variants=variants,
        preset=preset,
        steps=cfg.train.steps,
        metric="return",
        goal=goal,
        random_episodes=cfg.train.eval_episodes,
        goal_times_random=goal_times_random,
    )


TARGETS: dict[str, Target] = {
    # R2I keeps success about 0.95 up to 50 memory steps where DreamerV3 collapses after about 20
    # (docs/design.md §7); memory_len/15 is memory length 30.
    "bsuite_memory_len_30": bsuite_memory(15, seeds=(0, 1)),
    # The memory sweep: R2I still reports about 0.95 at length 50, where DreamerV3 has collapsed
    # (docs/design.md §7); memory_len/17 is length 50 and memory_len/22 length 100.
    "bsuite_memory_len_50": bsuite_memory(17),
    # The budget in episodes: length 50's 100k steps hold about 1,960 of its 51-step episodes, and
    # 200k steps as many of length 100's 101-step ones, so the last 1000 are the second half of
    # both runs. At 100k steps (990 episodes) the S3M and RSSM were still at chance in four seeds
    # of six; the S3M's seed 0 at 200k learns it after about 800 episodes.
    "bsuite_memory_len_100": bsuite_memory(22, goal=0.8, steps=200_000),
    # The ablation: the S3M as it was before it followed R2I's code, beside the length-50 rows.
    "bsuite_memory_len_50_legacy": bsuite_memory(17, goal=None, variants=("s3m:hidden:legacy",)),
    # Not one of the three targets: the pipeline check beneath them. With memory length 1 the final
    # reward is cue x last action with the cue one step back, which `benchmarks/reward_recall.py`
    # shows the world models learn offline within a few hundred updates at these settings.
    "bsuite_memory_len_1": Target(
        env="bsuite:memory_len/0",
        variants=("s3m:hidden", "rssm"),
        # Run before `memory_cpu`'s reward head and KL changes (two-hot, representation KL 0.1),
        # with its 4x4 latents and 256 imagination starts.
        preset="bsuite_check_cpu",
        steps=30_000,
        metric="success",
        goal=0.95,
        overrides=("train.eval_every=10000",),
        seeds=(0,),
    ),
    # R2I reaches 0.81 here, DreamerV3 0.10 (docs/design.md §7).
    "popgym_repeat_previous_easy": Target(
        env="popgym:RepeatPreviousEasy",
        variants=("s3m:hidden", "rssm"),
        preset="popgym_cpu",
        steps=100_000,
        metric="return",
        goal=0.8,
        overrides=("train.eval_every=10000",),
        seeds=(0, 1),
    ),
    # R2I reports 0.77 on RepeatPreviousMedium (DreamerV3 0.13) and 0.79 on ConcentrationEasy.
    "popgym_repeat_previous_medium": popgym_memory("RepeatPreviousMedium", goal=0.5),
    "popgym_repeat_first_medium": popgym_memory("RepeatFirstMedium", goal=0.8),
    "popgym_concentration_easy": popgym_memory("ConcentrationEasy", goal=None),
    # Continuous control and pixels (the DreamerV3 comparison): the S3M with the output-state
    # policy, R2I's choice for non-memory tasks, beside the RSSM, on the CPU recipes of
    # configs/presets; each row shows DreamerV3's published return at the same env steps.
    "dmc_cartpole_swingup": control("dmc:cartpole_swingup", "dmc_cpu", goal=600.0),
    "dmc_walker_walk": control("dmc:walker_walk", "dmc_cpu", goal=400.0),
    "dmc_vision_cartpole_swingup": control("dmc_vision:cartpole_swingup", "dmc_vision_cpu", goal=300.0),
    # Memory Maze reads the full state (z_t, h_t, x_t), R2I's choice there; the goal is twice the
    # random policy's mean return (its column).
    "memory_maze_9x9": control(
        "memory_maze:9x9",
        "memory_maze_cpu",
        goal=None,
        variants=("s3m:full", "rssm"),
        goal_times_random=2.0,
    ),
    "atari_pong": control("atari:pong", "atari_cpu", goal=None),
    # A fully observed control task; the `gym_cpu` recipe's comments give the evidence for each
    # of its settings.
    "cartpole": Target(
        env="gym:CartPole-v1",
        variants=("s3m:output",),
        preset="gym_cpu",
        steps=80_000,
        metric="return",
        goal=450.0,
        overrides=("train.eval_every=10000",),
        seeds=(0, 1, 2),
    ),
}


def with_overrides(target: Target, seeds: Sequence[int] | None, steps: int | None) -> Target:
    """`target` with the command line's seeds and budget, where given."""
    return dataclasses.replace(
        target,
        seeds=tuple(seeds) if seeds else target.seeds,
        steps=steps or target.steps,
    )


def plan(name: str, target: Target, out: Path, threads: int) -> list[compare.RunSpec]:
    """The runs of one target, in `out/name/<variant>/seed<k>`."""
    return compare.plan_runs(
        out / name,
        target.variants,
        target.seeds,
        target.preset,
        target.env,
        target.steps,
        target.overrides,
        threads,
    )


def metric_text(target: Target) -> str:
    if target.metric == "success":
        return f"success: returns > 0 over the last {target.last_episodes} episodes"
    return "return: final eval (or last 10% of episodes)"


def target_config(target: Target) -> Config:
    """The config of `target`'s runs without a variant's overrides: its preset, env and overrides."""
    return load_config(target.preset.split(","), [f"env.name={target.env}", *target.overrides])


def random_score(target: Target) -> float:
    """The uniform random policy's score on `target`'s env (with the options of its preset) and
    metric: mean return over `random_episodes` episodes, or success over `last_episodes`
    (benchmarks/random_policy.py; stored scores are read, not measured again)."""
    cfg = target_config(target)
    episodes = target.last_episodes if target.metric == "success" else target.random_episodes
    return random_policy.score(target.env, target.metric, episodes, cfg.env.options)


def published_score(target: Target, steps: int | None = None) -> float | None:
    """DreamerV3's published return on `target`'s env after `steps` agent steps (default: its
    budget), at its preset's action repeat (benchmarks/published.py); None for a success metric or
    an env without a curve."""
    if target.metric != "return":
        return None
    cfg = target_config(target)
    return published.score(target.env, steps or target.steps, cfg.env.options.get("repeat"))


def reference_text(score: float | None) -> str:
    return "—" if score is None else compare.fmt(score)


def target_goal(target: Target) -> float | None:
    """The score `target` must reach: its goal, or a multiple of the random policy's score."""
    if target.goal_times_random is not None:
        return round(target.goal_times_random * random_score(target), 3)
    return target.goal


def goal_text(goal: float | None) -> str:
    return "—" if goal is None else f"≥ {goal:g}"


def archive_runs(out: Path, archive: Path, variants: Sequence[str]) -> None:
    """Copy the logs of every finished run under `out/<variant>/seed<k>` to the same place under
    `archive`: its config and marker as they are, its metrics and episodes gzipped. The archive
    sits beside the page, so the page's runs outlive the machine that ran them.
    """
    if out.resolve() == archive.resolve():
        return
    for variant in variants:
        for logdir in (out / runlogs.variant_dir(variant)).glob("seed*"):
            if runlogs.read_marker(logdir) is None:
                continue  # not finished: nothing to keep yet
            dest = archive / runlogs.variant_dir(variant) / logdir.name
            marker = (logdir / runlogs.MARKER).read_bytes()
            if (dest / runlogs.MARKER).is_file() and (dest / runlogs.MARKER).read_bytes() == marker:
                continue  # archived already: the same finished run (its marker holds its wall time)
            dest.mkdir(parents=True, exist_ok=True)
            for name in PACKED:
                if (logdir / name).is_file():
                    # mtime=0: the same logs give the same bytes, so a rebuild changes no file.
                    (dest / f"{name}.gz").write_bytes(gzip.compress((logdir / name).read_bytes(), mtime=0))
            for name in ARCHIVED:  # the marker last: an archive holding it is complete
                if (logdir / name).is_file():
                    shutil.copyfile(logdir / name, dest / name)


def target_rows(
    name: str,
    target: Target,
    out: Path,
    docs: Path,
    threads: int,
    all_seeds: bool,
    previous: Sequence[Row] = (),
) -> list[Row]:
    """The rows of one target (one per variant) from its finished runs under `out` and those
    archived under `DOCS/runs/NAME`, and from the per-seed scores of `previous` rows whose runs'
    logs are gone; empty when no variant has any. Its learning curves are redrawn when every
    seed on the rows has its logs (otherwise the earlier plot stays).

    all_seeds: read every seed folder found, not only the target's seeds.
    """
    archive = docs / ARCHIVE / name
    archive_runs(out / name, archive, target.variants)
    runs = runlogs.read_runs(archive, target.variants, None if all_seeds else target.seeds)
    rows = variant_rows(name, target, runs, out, threads, previous, all_seeds)
    if not any(row["seeds"] for row in rows):
        return []
    if runs and all(record["logs"] for row in rows for record in row["per_seed"].values()):
        compare.plot_curves(runs, docs / f"curves_{name}.png", f"{name}: {runlogs.describe(runs)}")
    return rows


def variant_rows(
    name: str,
    target: Target,
    runs: dict[str, list[runlogs.RunLog]],
    out: Path,
    threads: int,
    previous: Sequence[Row] = (),
    all_seeds: bool = False,
) -> list[Row]:
    """One row per variant of `target` from its `runs`, and from the per-seed scores of the
    `previous` row of the same variant and command for seeds without a run (a variant with
    neither: `not run`).
    """
    specs = {spec.variant: spec for spec in plan(name, target, out, threads)}
    earlier = {row["variant"]: row for row in previous}
    rows = []
    for variant in target.variants:
        logs = runs.get(variant, [])
        command = runlogs.run_command(logs) or runlogs.display_command(specs[variant].args)
        per_seed: dict[int, dict[str, Any]] = {}
        for log in logs:
            final, _, _ = runlogs.run_scores(log, target.metric, target.last_episodes)
            per_seed[int(log.logdir.name.removeprefix("seed"))] = {
                "final": final,
                "wall_s": log.wall_s,
                "logs": True,
            }
        row_before = earlier.get(variant, {})
        if row_before.get("command") == command:
            for seed, record in row_before.get("per_seed", {}).items():
                if int(seed) not in per_seed and (all_seeds or int(seed) in target.seeds):
                    per_seed[int(seed)] = {**record, "logs": False}
        per_seed = dict(sorted(per_seed.items()))
        row: Row = {
            "target": name,
            "env": target.env,
            "variant": variant,
            "budget": max((log.budget or 0 for log in logs), default=0) or target.steps,
            "seeds": list(per_seed),
            "metric": target.metric,
            "metric_text": metric_text(target),
            "mean": None,
            "ci": None,
            "goal": target_goal(target),
            "status": "missed",
            "wall_s": None,
            "command": command,
            "per_seed": per_seed,
        }
        if per_seed:
            row["mean"], row["ci"] = runlogs.mean_ci([record["final"] for record in per_seed.values()])
            walls = [record["wall_s"] for record in per_seed.values() if record["wall_s"] is not None]
            row["wall_s"] = sum(walls) / len(walls) if walls else None
            met = row["mean"] >= row["goal"] if row["goal"] is not None else None
            row["status"] = "report" if met is None else "met" if met else "missed"
            lost = [str(seed) for seed, record in per_seed.items() if not record["logs"]]
            if lost:
                seeds = f"seed{'s' if len(lost) > 1 else ''} {', '.join(lost)}"
                row["note"] = f"{seeds}: score as recorded, logs lost"
        else:
            row["note"] = "not run"
        rows.append(row)
    return rows


def markdown_row(row: Row) -> str:
    """One line of the results table from a row of `results.json`."""
    status = "**missed**" if row["status"] == "missed" else row["status"]
    if row.get("note"):
        status += f" ({row['note']})"
    seeds = ", ".join(str(seed) for seed in row["seeds"]) or "none"
    return (
        f"| {row['target']} | {row['env']} | {row['variant']} | {row['budget']:,} | {seeds} | "
        f"{row['metric_text']} | {compare.fmt(row.get('random'))} | {reference_text(row.get('dreamerv3'))} | "
        f"{compare.fmt(row['mean'], row['ci'])} | "
        f"{goal_text(row['goal'])} | "
        f"{status} | {compare.fmt_seconds(row['wall_s'])} | `{row['command']}` |"
    )


def previous_rows(docs: Path) -> dict[str, list[Row]]:
    """Target -> its rows in the existing `results.json` (empty without one)."""
    path = docs / RESULTS_JSON
    rows: dict[str, list[Row]] = {}
    if path.is_file():
        for row in json.loads(path.read_text())["targets"]:
            rows.setdefault(row["target"], []).append(row)
    return rows


def kept_analysis(page: Path) -> str:
    """The `## Analysis` section of an existing page (written by hand), or a placeholder."""
    if page.is_file():
        text = page.read_text()
        at = text.find("\n" + ANALYSIS)
        if at >= 0:
            return text[at + 1 :].rstrip() + "\n"
    return f"{ANALYSIS}\n\nNot written yet.\n"


def write_page(
    names: Sequence[str],
    targets: dict[str, Target],
    out: Path,
    docs: Path,
    threads: int = 1,
    all_seeds: bool = False,
) -> Path:
    """Write `docs/results.md`, `docs/results.json` and the curve plots; returns the page.

    The targets in `names` get rows from their finished runs under `out` (archived into
    `docs/runs` first) and from the runs archived there before. Every other target, and a target
    of `names` without any run, keeps its rows of the previous `results.json` (runs made
    elsewhere or earlier are not lost by a rebuild); a target of `names` with neither is listed as
    not run.
    """
    docs.mkdir(parents=True, exist_ok=True)
    page = docs / "results.md"
    previous = previous_rows(docs)
    rows: list[Row] = []
    for name in [*TARGETS, *(name for name in previous if name not in TARGETS)]:
        before = previous.get(name, [])
        fresh = []
        if name in names:
            fresh = target_rows(name, targets[name], out, docs, threads, all_seeds, before)
        if not fresh and name in names and name not in previous:
            fresh = variant_rows(name, targets[name], {}, out, threads)
        kept = fresh or before
        target = targets.get(name) or TARGETS.get(name)
        if target is not None:  # every row of a known target, kept ones too, gets both references
            floor = random_score(target)
            kept = [
                {**row, "random": floor, "dreamerv3": published_score(target, row["budget"])} for row in kept
            ]
        rows += kept
    (docs / RESULTS_JSON).write_text(json.dumps({"targets": rows}, indent=1) + "\n")
    text = [
        "# Learning results",
        "",
        "The learning targets of `benchmarks/learning.py`, each run with every seed listed; runs "
        f"read from `{compare.short_path(out)}` (OUT) and their logs kept in [{ARCHIVE}/]({ARCHIVE}/), "
        f"page rebuilt {time.strftime('%Y-%m-%d %H:%M')}. "
        "A target is met when the mean over seeds reaches it; `report` rows have no goal. A note "
        "beside the status says where a row's runs differ from the committed code. Commands: S is "
        "each seed; every run also gets `--logdir OUT/<target>/<variant>/seed<S>`. The same rows, "
        f"as data: [{RESULTS_JSON}]({RESULTS_JSON}).",
        "",
        "| target | env | variant | budget (agent steps) | seeds | metric | random policy | "
        "DreamerV3 (published) | result | target | status | wall time / run | command |",
        "| --- | --- | --- | ---: | --- | --- | ---: | ---: | ---: | ---: | --- | ---: | --- |",
        *map(markdown_row, rows),
        "",
        runlogs.CI_NOTE + " Wall time: one run, process start to exit, with the other runs of the "
        "same launch in parallel beside it. DreamerV3 (published): the mean over seeds of the "
        "learning curves DreamerV3's authors publish with their code (" + published.SOURCE + "), "
        f"at the row's env steps (binned per {published.BIN:,} frames; benchmarks/published.py); "
        "budgets are agent steps, at action repeat 2 on DMC and 4 on Atari.",
        "",
    ]
    for name in dict.fromkeys(row["target"] for row in rows):
        if (docs / f"curves_{name}.png").is_file():
            text += [f"## {name}", "", f"![{name}](curves_{name}.png)", ""]
    page.write_text("\n".join(text) + "\n" + kept_analysis(page))
    return page


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--targets", help=f"comma-separated, of {', '.join(TARGETS)} (default: all)")
    add("--seeds", help="comma-separated seeds for every target (default: each target's)")
    add("--steps", type=int, help="env steps per run for every target (default: each target's)")
    add(
        "--out",
        type=Path,
        default=ROOT / "runs" / "learning",
        help="folder of the runs (default: runs/learning)",
    )
    add("--docs", type=Path, default=ROOT / "docs", help="folder of results.md and the plots (default: docs)")
    add("--threads", type=int, default=1, help="torch threads per run (default: 1)")
    add("--jobs", type=int, help="parallel runs (default: CPU cores // threads)")
    add("--redraw", action="store_true", help="only rebuild the page from the runs in --out")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    names = compare.parse_list(args.targets) if args.targets else list(TARGETS)
    unknown = [name for name in names if name not in TARGETS]
    if unknown:
        print(f"error: unknown target {unknown[0]}; choose from {', '.join(TARGETS)}", file=sys.stderr)
        return 2
    seeds = compare.parse_list(args.seeds, int) if args.seeds else None
    targets = {name: with_overrides(TARGETS[name], seeds, args.steps) for name in names}
    out = args.out.resolve()
    failed: list[compare.RunSpec] = []
    if not args.redraw:
        # One pool for every target's runs, so the cores stay busy until the last run.
        launched = compare.launch_runs(
            lambda: [spec for name in names for spec in plan(name, targets[name], out, args.threads)],
            args.jobs,
            args.threads,
        )
        if isinstance(launched, int):
            return launched
        failed = launched
    # A redraw shows every seed it finds, unless --seeds names some.
    all_seeds = args.redraw and seeds is None
    page = write_page(names, targets, out, args.docs.resolve(), args.threads, all_seeds)
    print(f"wrote {page}")
    return compare.exit_status(failed)


if __name__ == "__main__":
    sys.exit(main())
