"""Tests of the benchmark protocols (benchmarks/atari100k.py, benchmarks/dmc.py, protocols.py):
their run commands, and their scores from fake run folders against hand-computed values."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

from benchmarks import atari100k, compare, dmc, protocols, published, runlogs  # noqa: E402
from configs import load_config  # noqa: E402

REPS = 2000  # bootstrap replications: plenty for intervals that only need to bracket sensibly


def fake_run(logdir: Path, final: float, env: str, finished: bool = True) -> None:
    """A run folder as run_agent.py and compare.py leave it, whose last evaluation is `final`."""
    logdir.mkdir(parents=True)
    (logdir / "config.yaml").write_text(yaml.safe_dump({"env": {"name": env}, "train": {"steps": 1000}}))
    episodes = [{"step": 100 * (i + 1), "return": final - 50.0, "length": 10, "env": 0} for i in range(5)]
    (logdir / "episodes.jsonl").write_text("".join(json.dumps(e) + "\n" for e in episodes))
    # An earlier, better evaluation: the score is the final one, not the best.
    metrics = [{"step": 500, "eval/return": final + 100.0}, {"step": 1000, "eval/return": final}]
    (logdir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    marker = runlogs.MARKER if finished else runlogs.PARTIAL
    (logdir / marker).write_text(json.dumps({"args": ["--seed", logdir.name[4:]], "wall_s": 1.0}))


def atari_score(game: str, normalised: float) -> float:
    """The raw score whose human-normalised score is `normalised`."""
    random, human = atari100k.REFERENCE[game]
    return random + normalised * (human - random)


# Human-normalised final scores per variant, game and seed of the Atari fixture.
ATARI_FIXTURE = {
    "s3m:output": {"pong": [0.5, 1.0], "breakout": [0.25, 0.75], "boxing": [2.0, 3.0]},
    # Pong has a third seed, which the aggregates leave out (breakout has two); boxing's only run
    # is unfinished and is not read.
    "rssm": {"pong": [0.0, 0.2, 1.0], "breakout": [0.5, 0.5]},
}


@pytest.fixture
def atari_runs(tmp_path: Path) -> Path:
    for variant, games in ATARI_FIXTURE.items():
        for game, values in games.items():
            for seed, value in enumerate(values):
                logdir = tmp_path / game / runlogs.variant_dir(variant) / f"seed{seed}"
                fake_run(logdir, atari_score(game, value), f"atari:{game}")
    fake_run(tmp_path / "boxing" / "rssm" / "seed0", 50.0, "atari:boxing", finished=False)
    return tmp_path


def test_atari_scores_match_hand_computed(atari_runs: Path, capsys: pytest.CaptureFixture):
    out_json = atari_runs / "scores.json"
    argv = ["--score-only", "--out", str(atari_runs), "--games", "pong,breakout,boxing"]
    assert atari100k.main([*argv, "--seeds", "0,1,2", "--reps", str(REPS), "--json", str(out_json)]) == 0
    suite = json.loads(out_json.read_text())["suites"][0]
    assert suite["tasks"] == ["pong", "breakout", "boxing"]

    s3m = suite["variants"]["s3m:output"]
    assert s3m["tasks"]["pong"]["seeds"] == [0, 1]
    assert s3m["tasks"]["pong"]["scores"] == pytest.approx([-3.05, 14.6])  # -20.7 + 35.3 x
    assert s3m["tasks"]["boxing"]["normalised_mean"] == pytest.approx(2.5)
    agg = s3m["aggregate"]
    assert agg["tasks"] == ["pong", "breakout", "boxing"] and agg["runs_per_task"] == 2
    # Per-game means 0.75, 0.5, 2.5: mean 1.25, median 0.75; IQM: the middle four of the six runs
    # (0.25 | 0.5, 0.75, 1, 2 | 3) average 1.0625.
    assert agg["mean"]["value"] == pytest.approx(1.25)
    assert agg["median"]["value"] == pytest.approx(0.75)
    assert agg["iqm"]["value"] == pytest.approx(1.0625)
    for name in protocols.AGGREGATES:
        low, high = agg[name]["ci"]
        # Resampled runs stay within the data's range, and runs differ within each game.
        assert 0.25 - 1e-9 <= low < high <= 3.0 + 1e-9, name
        assert low <= agg[name]["value"] <= high, name
    # Resampling a game's two runs makes its mean its low run, the midpoint or its high run (with
    # chances 1/4, 1/2, 1/4): the sum of the three games' means is 2.75 + 0.25 k, k = 0..8, whose
    # lowest value has a chance of 1/64 < 2.5% and the two lowest 7/64 > 2.5%; so the interval of
    # the mean runs from (2.75 + 0.25) / 3 to (4.75 - 0.25) / 3.
    assert agg["mean"]["ci"] == pytest.approx([1.0, 1.5])

    rssm = suite["variants"]["rssm"]
    assert rssm["tasks"]["pong"]["normalised_mean"] == pytest.approx(0.4)  # all three seeds
    assert "boxing" not in rssm["tasks"]  # its only run is unfinished
    agg = rssm["aggregate"]
    assert agg["tasks"] == ["pong", "breakout"] and agg["runs_per_task"] == 2
    # On seeds 0, 1: per-game means 0.1 and 0.5; IQM of (0 | 0.2, 0.5 | 0.5) = 0.35.
    assert agg["mean"]["value"] == pytest.approx(0.3)
    assert agg["median"]["value"] == pytest.approx(0.3)
    assert agg["iqm"]["value"] == pytest.approx(0.35)

    printed = capsys.readouterr().out
    assert printed == (atari_runs / protocols.SCORES_MD).read_text()
    # Beside each game: DreamerV3's published return at the same 100k agent steps (400k frames).
    assert suite["dreamerv3"]["pong"] == published.score("atari:pong", 100_000) == -4.0
    assert "| pong | -20.700 | 14.600 | -4.000 | 5.775 (2) | 0.750 | -6.580 (3) | 0.400 |" in printed
    assert "| boxing | 0.100 | 12.100 | 82.060 | 30.100 (2) | 2.500 | n/a | n/a |" in printed
    row = next(line for line in printed.splitlines() if line.startswith("| s3m:output | 3 | 2 |"))
    assert row.split(" | ")[3].startswith("1.250 (")  # the mean with its interval


def test_scores_are_reproducible_and_json_goes_to_stdout(atari_runs: Path, capsys: pytest.CaptureFixture):
    argv = ["--score-only", "--out", str(atari_runs), "--games", "pong,breakout,boxing", "--reps", "500"]
    # Whatever state numpy's global RNG is in (rliable draws from it), the intervals are the same.
    np.random.seed(1)  # noqa: NPY002 - the RNG rliable reads
    assert atari100k.main([*argv, "--json", "-"]) == 0
    first = json.loads(capsys.readouterr().out)
    np.random.seed(2)  # noqa: NPY002
    assert atari100k.main([*argv, "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out) == first  # a fixed bootstrap seed
    assert np.random.get_state()[1][0] == np.random.RandomState(2).get_state()[1][0]  # noqa: NPY002


def test_dmc_scores_raw_and_per_1000(tmp_path: Path, capsys: pytest.CaptureFixture):
    for seed, (walk, run) in enumerate([(900.0, 300.0), (700.0, 500.0)]):
        fake_run(tmp_path / "proprio" / "walker_walk" / "rssm" / f"seed{seed}", walk, "dmc:walker_walk")
        fake_run(tmp_path / "proprio" / "cheetah_run" / "rssm" / f"seed{seed}", run, "dmc:cheetah_run")
    out_json = tmp_path / "scores.json"
    argv = ["--score-only", "--out", str(tmp_path), "--variants", "rssm", "--reps", str(REPS)]
    assert dmc.main([*argv, "--json", str(out_json)]) == 0
    proprio, vision = json.loads(out_json.read_text())["suites"]
    assert (proprio["suite"], vision["suite"]) == ("proprio", "vision")
    rssm = proprio["variants"]["rssm"]
    assert rssm["tasks"]["walker_walk"]["mean"] == pytest.approx(800.0)
    # Per-task means 0.8 and 0.4 of the maximum return; IQM of (0.3 | 0.5, 0.7 | 0.9) = 0.6.
    assert rssm["aggregate"]["mean"]["value"] == pytest.approx(0.6)
    assert rssm["aggregate"]["median"]["value"] == pytest.approx(0.6)
    assert rssm["aggregate"]["iqm"]["value"] == pytest.approx(0.6)
    low, high = rssm["aggregate"]["iqm"]["ci"]
    assert 0.3 - 1e-9 <= low < 0.6 < high <= 0.9 + 1e-9
    assert "aggregate" not in vision["variants"]["rssm"]  # no vision runs
    printed = capsys.readouterr().out
    assert "| walker_walk | 881.0 | 800.0 (2) |" in printed  # DreamerV3's at 500k env frames
    assert "| cartpole_swingup | 861.9 | n/a |" in printed  # vision: DreamerV3's at 1M frames


def test_nothing_to_score_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture):
    assert atari100k.main(["--score-only", "--out", str(tmp_path)]) == 1
    assert "no finished runs" in capsys.readouterr().err


def dry_run(main, argv: list[str], capsys: pytest.CaptureFixture) -> list[str]:
    assert main(["--dry-run", *argv]) == 0
    return capsys.readouterr().out.splitlines()


def test_atari_dry_run_prints_one_command_per_run(tmp_path: Path, capsys: pytest.CaptureFixture):
    lines = dry_run(atari100k.main, ["--out", str(tmp_path), "--seeds", "0,1"], capsys)
    assert len(lines) == 26 * 2 * 2  # games x seeds x default variants
    assert all(line.startswith("python ") and " --steps 100000 " in line for line in lines)
    assert len({line.split("--logdir ")[1] for line in lines}) == len(lines)
    assert sum("--env atari:up_n_down " in line for line in lines) == 4
    assert sum("agent.policy_input=output" in line for line in lines) == 26 * 2
    assert len(dry_run(atari100k.main, ["--out", str(tmp_path)], capsys)) == 26 * 5 * 2  # the protocol
    assert not any(tmp_path.iterdir())  # a dry run creates nothing


def test_dmc_dry_run_covers_both_suites(tmp_path: Path, capsys: pytest.CaptureFixture):
    lines = dry_run(dmc.main, ["--out", str(tmp_path)], capsys)
    assert len(lines) == 18 * 5 * 2 + 20 * 10 * 2
    assert sum(" --steps 250000 " in line and "--env dmc:" in line for line in lines) == 18 * 5 * 2
    assert sum(" --steps 500000 " in line and "--env dmc_vision:" in line for line in lines) == 20 * 10 * 2
    picked = dry_run(dmc.main, ["--out", str(tmp_path), "--tasks", "quadruped_run", "--seeds", "3"], capsys)
    assert len(picked) == 2 and all("dmc_vision:quadruped_run --steps 500000 --seed 3 " in x for x in picked)


@pytest.mark.parametrize(
    "main, argv, culprit",
    [
        (atari100k.main, ["--games", "pong,not_a_game"], "not_a_game"),
        (dmc.main, ["--tasks", "walker_walkk"], "walker_walkk"),
        (dmc.main, ["--suite", "proprio", "--tasks", "quadruped_walk"], "quadruped_walk"),
        (atari100k.main, ["--variants", "s3m:nope"], "s3m:nope"),
        (atari100k.main, ["--seeds", "0,x"], "0,x"),
    ],
)
def test_bad_names_exit_2_with_one_line(main, argv, culprit, capsys: pytest.CaptureFixture):
    assert main(["--dry-run", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and culprit in err[0]


def test_script_runs_from_the_command_line():
    command = [sys.executable, str(ROOT / "benchmarks" / "atari100k.py"), "--dry-run", "--games", "pong"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and len(done.stdout.splitlines()) == 5 * 2
    bad = subprocess.run([*command[:-1], "pongg"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown game 'pongg'" in bad.stderr


def protocol_runs() -> list[tuple[protocols.Task, str]]:
    tasks = [*atari100k.suite(Path("out")).tasks]
    tasks += [task for name in dmc.SUITES for task in dmc.suite(name, Path("out")).tasks]
    return [(task, variant) for task in tasks for variant in protocols.DEFAULT_VARIANTS.split(",")]


def test_every_protocol_run_resolves_to_its_config():
    """A typo in a preset, env id or override fails here, not on a GPU hours later."""
    for task, variant in protocol_runs():
        cfg = load_config(
            [task.preset], [f"env.name={task.env}", *compare.VARIANTS[variant], *task.overrides]
        )
        assert cfg.env.name == task.env
        if task.env.startswith("atari:"):
            assert cfg.env.options == {"sticky": 0.0, "noops": 30} and cfg.train.eval_episodes == 100
            assert task.steps == 100_000
    assert len(protocol_runs()) == (26 + 18 + 20) * 2


def test_reference_scores_file():
    assert len(atari100k.REFERENCE) == 26
    assert atari100k.REFERENCE["pong"] == (-20.7, 14.6)
    assert atari100k.REFERENCE["up_n_down"] == (533.4, 11693.2)
    assert all(human > random for random, human in atari100k.REFERENCE.values())
    assert atari100k.human_normalised("breakout", 30.5) == pytest.approx(1.0)
    assert atari100k.human_normalised("breakout", 1.7) == pytest.approx(0.0)


def test_env_ids_name_real_games_and_tasks():
    pytest.importorskip("ale_py")
    from envs import atari_env

    lines = [x for x in atari100k.SCORES_CSV.read_text().splitlines() if x and not x.startswith("#")]
    ale_names = {row.split(",")[0]: row.split(",")[1] for row in lines[1:]}
    assert {game: atari_env.game_name(game) for game in atari100k.GAMES} == ale_names
    pytest.importorskip("dm_control")
    from envs import dmc_env

    assert set(dmc.VISION_TASKS) <= set(dmc_env.tasks())
    assert np.all(np.isin(dmc.PROPRIO_TASKS, dmc.VISION_TASKS))
