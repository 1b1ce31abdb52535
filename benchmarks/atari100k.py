"""Atari 100k: the 26 games in DreamerV3's protocol, trained through compare.py, then scored.

    python benchmarks/atari100k.py --dry-run                      # the full protocol's commands
    python benchmarks/atari100k.py                                 # train all 26 x 5 seeds x 2, score
    python benchmarks/atari100k.py --games pong,breakout --seeds 0,1 --jobs 4
    python benchmarks/atari100k.py --score-only --json runs/atari100k/scores.json

The protocol: each game `atari:<game>` on the `atari100k` preset for 100k agent steps, which at
action repeat 4 are the benchmark's 400k frames; no sticky actions and up to 30 no-op frames at
each reset (the preset's `env.options`: DreamerV3's `atari100k` env settings, `sticky: False,
noops: 30`; the env adapter's default of sticky actions at 0.25 is DreamerV3's setting for the
200M-frame Atari benchmark); the minimal action set, 64 x 64 colour, episodes to
game over (a lost life does not end one), 108k frames at most. A run's score is its evaluation at
100k steps over 100 episodes (the preset's `train.eval_every` and `train.eval_episodes`, as R2I and
DreamerV3's first release evaluate). Seeds 0-4: DreamerV3's published Atari 100k scores have 5
per game. Variants `s3m:output` (R2I's policy input for non-memory tasks) and `rssm` (DreamerV3).

The runs of game G go to `OUT/G/<variant>/seed<k>` (OUT: `--out`, default runs/atari100k); an
interrupted benchmark resumes with the same command, as any comparison of compare.py. Scores: per
game the mean raw score over seeds and its human-normalised score (score - random) / (human -
random), with the random and human scores of `benchmarks/data/atari_scores.csv` (source in its
header); over games the human-normalised mean, median and interquartile mean, each with its 95%
stratified-bootstrap interval from rliable. Written to OUT/scores.md and printed; `--json PATH`
also writes them as data.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from benchmarks import protocols  # noqa: E402

SCORES_CSV = ROOT / "benchmarks" / "data" / "atari_scores.csv"
PRESET = "atari100k"
STEPS = 100_000  # agent steps; x4 action repeat = the benchmark's 400k frames
REPEAT = 4  # the env adapter's action repeat, as DreamerV3's
OVERRIDES = ()  # the protocol's env settings are the preset's own
SEEDS = (0, 1, 2, 3, 4)  # DreamerV3's published Atari 100k scores: 5 seeds per game
DEFAULT_OUT = ROOT / "runs" / "atari100k"


def read_reference(path: Path = SCORES_CSV) -> dict[str, tuple[float, float]]:
    """game -> (random, human) from the data file, in its order (its `#` lines are comments)."""
    lines = [line for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return {row["game"]: (float(row["random"]), float(row["human"])) for row in csv.DictReader(lines)}


REFERENCE = read_reference()
GAMES = tuple(REFERENCE)


def human_normalised(game: str, score: float) -> float:
    """(score - random) / (human - random): 0 is the random policy, 1 the human tester."""
    random, human = REFERENCE[game]
    return (score - random) / (human - random)


def suite(out: Path, games: Sequence[str] = GAMES) -> protocols.Suite:
    """The Atari 100k protocol on `games`, its runs under `out`."""
    tasks = tuple(protocols.Task(game, f"atari:{game}", PRESET, STEPS, OVERRIDES) for game in games)
    return protocols.Suite(
        name="atari100k",
        title=f"Atari 100k: {len(tasks)} games, {STEPS // 1000}k agent steps "
        f"({STEPS * REPEAT // 1000}k frames)",
        folder=out,
        tasks=tasks,
        seeds=SEEDS,
        normalise=human_normalised,
        normalised="human-normalised",
        per_task_label="HNS",
        task_word="game",
        reference={game: REFERENCE[game] for game in games},
        notes=(
            "HNS: human-normalised score, (score - random) / (human - random), with the random and human "
            "scores of benchmarks/data/atari_scores.csv. A run's score: its evaluation at 100k agent "
            "steps over 100 episodes; no sticky actions, up to 30 no-op frames at each reset (DreamerV3's "
            "Atari 100k settings).",
        ),
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--games", help="comma-separated subset of the 26 games (default: all)")
    protocols.add_arguments(parser, DEFAULT_OUT, ",".join(map(str, SEEDS)))
    return parser.parse_intermixed_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.out = args.out.resolve()
    try:
        games = protocols.pick(args.games, GAMES, "game")
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return protocols.execute(args, [suite(args.out, games)], "atari100k")


if __name__ == "__main__":
    sys.exit(main())
