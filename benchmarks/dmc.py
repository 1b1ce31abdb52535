"""DeepMind Control: DreamerV3's proprio and vision task lists, trained through compare.py, then scored.

    python benchmarks/dmc.py --dry-run                            # both suites' commands
    python benchmarks/dmc.py --suite proprio                      # train 18 tasks x 5 seeds x 2, score
    python benchmarks/dmc.py --suite vision --tasks walker_walk,cheetah_run --seeds 0,1,2
    python benchmarks/dmc.py --score-only --json runs/dmc/scores.json

The protocol, from DreamerV3's published DMC scores (github.com/danijar/dreamerv3 `scores/`):
- proprio: 18 tasks `dmc:<task>` from proprioceptive vectors, 500k env steps, 5 seeds;
- vision: the same tasks and quadruped walk and run, 20 tasks `dmc_vision:<task>` from 64 x 64
  pixels, 1M env steps, 10 seeds.
Env steps are control steps of the simulator, the x axis of those scores (DreamerV3 logs agent
steps times the action repeat). The env adapter repeats each action twice, as DreamerV3's DMC
setting, so the runs take 250k and 500k agent steps (run_agent.py's `--steps`); an episode is 1000
control steps (500 agent steps) and returns at most 1000. Presets `dmc_proprio` and `dmc_vision`
(R2I's setting). A run's score is its last evaluation (the preset's `train.eval_episodes`).
Variants `s3m:output` (R2I's policy input for non-memory tasks) and `rssm` (DreamerV3).

The runs of task T go to `OUT/<suite>/T/<variant>/seed<k>` (OUT: `--out`, default runs/dmc); an
interrupted benchmark resumes with the same command, as any comparison of compare.py. Scores per
suite: per task the mean return over seeds; over tasks the mean, median and interquartile mean of
returns / 1000, each with its 95% stratified-bootstrap interval from rliable. Written to
OUT/scores.md and printed; `--json PATH` also writes them as data.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from benchmarks import protocols  # noqa: E402

# DreamerV3's DMC proprio tasks (its score file's 18), in its `dmc_<domain>_<task>` order.
PROPRIO_TASKS = (
    "acrobot_swingup",
    "ball_in_cup_catch",
    "cartpole_balance",
    "cartpole_balance_sparse",
    "cartpole_swingup",
    "cartpole_swingup_sparse",
    "cheetah_run",
    "finger_spin",
    "finger_turn_easy",
    "finger_turn_hard",
    "hopper_hop",
    "hopper_stand",
    "pendulum_swingup",
    "reacher_easy",
    "reacher_hard",
    "walker_run",
    "walker_stand",
    "walker_walk",
)
# DMC vision adds the two quadruped tasks (seen from camera 2, as the env adapter does).
VISION_TASKS = tuple(sorted((*PROPRIO_TASKS, "quadruped_run", "quadruped_walk")))
REPEAT = 2  # the env adapter's action repeat, DreamerV3's for DMC
MAX_RETURN = 1000.0  # at most 1 reward per control step, 1000 control steps per episode
DEFAULT_OUT = ROOT / "runs" / "dmc"


# name -> (env suite, preset, env steps, DreamerV3's seeds, task list)
SUITES = {
    "proprio": ("dmc", "dmc_proprio", 500_000, 5, PROPRIO_TASKS),
    "vision": ("dmc_vision", "dmc_vision", 1_000_000, 10, VISION_TASKS),
}


def normalised(task: str, score: float) -> float:
    """A return as a fraction of DMC's maximum, which every task shares."""
    return score / MAX_RETURN


def suite(name: str, out: Path, tasks: Sequence[str] | None = None) -> protocols.Suite:
    """The DMC suite `name` ('proprio' or 'vision') on `tasks` (default: all), its runs under
    `out/name`."""
    env_suite, preset, env_steps, seeds, known = SUITES[name]
    chosen = [task for task in known if tasks is None or task in tasks]
    steps = env_steps // REPEAT
    return protocols.Suite(
        name=name,
        title=f"DMC {name}: {len(chosen)} tasks, {env_steps // 1000}k env steps "
        f"({steps // 1000}k agent steps)",
        folder=out / name,
        tasks=tuple(protocols.Task(task, f"{env_suite}:{task}", preset, steps) for task in chosen),
        seeds=tuple(range(seeds)),
        normalise=normalised,
        normalised="return / 1000",
        per_task_label=None,
        notes=(
            f"A run's score: its last evaluation. Env steps are the simulator's control steps at action "
            f"repeat {REPEAT}, as DreamerV3 counts them.",
        ),
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add("--suite", choices=(*SUITES, "all"), default="all", help="proprio, vision or all (default: all)")
    add("--tasks", help="comma-separated subset of the suites' tasks (default: all of each)")
    protocols.add_arguments(parser, DEFAULT_OUT, "0-4 for proprio, 0-9 for vision")
    return parser.parse_intermixed_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.out = args.out.resolve()
    names = list(SUITES) if args.suite == "all" else [args.suite]
    known = sorted({task for name in names for task in SUITES[name][4]})
    try:
        tasks = protocols.pick(args.tasks, known, "task" if args.suite == "all" else f"{args.suite} task")
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    # A task of one suite only (quadruped in vision) runs in that suite; a suite left without tasks
    # is dropped.
    suites = [suite(name, args.out, tasks) for name in names]
    return protocols.execute(args, [s for s in suites if s.tasks], "dmc")


if __name__ == "__main__":
    sys.exit(main())
