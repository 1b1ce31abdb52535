"""Tests of benchmarks/compare.py and benchmarks/learning.py: statistics, metrics and pages from
synthetic run folders, and one tiny comparison trained end to end, then redrawn without training.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

from benchmarks import compare, learning, published, runlogs  # noqa: E402
from configs import load_config  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def fake_run(
    logdir: Path,
    returns: list[float],
    evals: Sequence[float] = (),
    budget: int = 1000,
    env: str = "popgym:RepeatPreviousEasy",
    args: list[str] | None = None,
) -> None:
    """A run folder as run_agent.py and compare.py leave it, with the given episode returns."""
    logdir.mkdir(parents=True)
    (logdir / "config.yaml").write_text(yaml.safe_dump({"env": {"name": env}, "train": {"steps": budget}}))
    steps = np.linspace(1, budget, len(returns)).astype(int)
    episodes = [{"step": int(s), "return": float(r), "length": 10, "env": 0} for s, r in zip(steps, returns)]
    (logdir / "episodes.jsonl").write_text("".join(json.dumps(e) + "\n" for e in episodes))
    metrics = [{"step": s, "perf/env_steps_per_s": 100.0, "episode/return": 0.0} for s in (250, 500)]
    metrics += [
        {"step": 500 * (i + 1), "eval/return": value, "eval/length": 10.0} for i, value in enumerate(evals)
    ]
    # A torn last line, as while a run is still writing, must be skipped.
    (logdir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics) + '{"step": 7')
    marker = {"args": args or ["--preset", "debug", "--seed", "0"], "wall_s": 12.0}
    (logdir / runlogs.MARKER).write_text(json.dumps(marker))


def test_t_quantile_and_confidence_interval():
    assert runlogs.t_quantile(1) == pytest.approx(12.706, abs=1e-3)
    assert runlogs.t_quantile(4) == pytest.approx(2.776, abs=1e-3)
    assert runlogs.t_quantile(40) == pytest.approx(2.0211, abs=5e-4)  # beyond the table
    assert runlogs.t_quantile(10**6) == pytest.approx(statistics.NormalDist().inv_cdf(0.975), abs=1e-4)
    mean, half = runlogs.mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.3027 * 1.0 / math.sqrt(3), rel=1e-4)
    assert runlogs.mean_ci([5.0]) == (5.0, None)  # one seed: no interval
    assert compare.fmt(*runlogs.mean_ci([1.0, 2.0, 3.0])) == "2.000 ± 2.484"
    assert compare.fmt(451.25, 3.0) == "451.2 ± 3.0"


def test_success_metric(tmp_path: Path):
    # Seed 0: 950 of its first 1000 episodes succeed, then every other one of the last 500: the
    # last 1000 hold 500 + 250 successes, the best 1000 (from episode 50 on) 950 + 25.
    # Seed 1: 0.85 throughout.
    first = [-1.0] * 50 + [1.0] * 950
    fake_run(tmp_path / "rssm" / "seed0", first + [1.0, -1.0] * 250)
    fake_run(tmp_path / "rssm" / "seed1", ([1.0] * 17 + [-1.0] * 3) * 75)
    runs = runlogs.read_runs(tmp_path, ["rssm"])["rssm"]
    assert [run.logdir.name for run in runs] == ["seed0", "seed1"]
    assert runlogs.run_scores(runs[0], "success", 1000) == (0.75, 0.975, "episodes")
    assert runlogs.success_rate(np.array([1.0, -1.0, 0.0, 2.0]), 3) == pytest.approx(1 / 3)
    summary = runlogs.summarize("rssm", runs, "success", 1000)
    assert summary.final[0] == pytest.approx(0.8)
    assert summary.final[1] == pytest.approx(12.7062 * 0.05, rel=1e-4)  # t(1) * sd / sqrt(2)
    assert summary.wall_s == 12.0 and summary.steps_per_s == pytest.approx(100.0)

    assert compare.main(["--redraw", "--out", str(tmp_path), "--metric", "success"]) == 0
    page = (tmp_path / "results.md").read_text()
    assert "| rssm | 2 | 0.800 ± 0.635 |" in page
    assert "success (last 1000 episodes)" in page
    assert (tmp_path / "curves.png").read_bytes().startswith(PNG_SIGNATURE)


def test_return_metric_eval_or_episodes(tmp_path: Path):
    fake_run(tmp_path / "with_eval", [0.0] * 20, evals=[0.2, 0.9, 0.6])
    fake_run(tmp_path / "no_eval", [0.0] * 18 + [1.0, 0.5])
    with_eval, no_eval = runlogs.read_run(tmp_path / "with_eval"), runlogs.read_run(tmp_path / "no_eval")
    assert runlogs.run_scores(with_eval, "return", 1000) == (0.6, 0.9, "eval")
    # Without evaluations: the last 10% of episodes (2 of 20), best over any 2 consecutive ones.
    assert runlogs.run_scores(no_eval, "return", 1000) == (0.75, 0.75, "episodes")
    assert runlogs.read_run(tmp_path / "nothing_here") is None


def test_binned_curve():
    edges = np.array([0.0, 10.0, 20.0, 30.0, 40.0, 50.0])
    curve = runlogs.binned_curve(np.array([15, 35, 36]), np.array([1.0, 2.0, 4.0]), edges)
    # Nothing before the first episode, carried over an empty bin, nothing after the last one.
    np.testing.assert_array_equal(curve, [np.nan, 1.0, 1.0, 3.0, np.nan])


@pytest.mark.parametrize("name", sorted(learning.TARGETS))
def test_learning_targets_resolve_to_valid_configs(name: str):
    """A typo in a target's preset or overrides fails here, not an hour into its runs."""
    target = learning.TARGETS[name]
    for variant in target.variants:
        overrides = [f"env.name={target.env}", *compare.VARIANTS[variant], *target.overrides]
        cfg = load_config(target.preset.split(","), overrides)
        assert cfg.env.name == target.env


def test_learning_redraw_writes_page(tmp_path: Path):
    out, docs = tmp_path / "runs", tmp_path / "docs"
    for seed in (0, 1):
        fake_run(out / "bsuite_memory_len_30" / "s3m-hidden" / f"seed{seed}", [1.0] * 1200)
        fake_run(out / "bsuite_memory_len_30" / "rssm" / f"seed{seed}", [1.0, -1.0] * 600)
        fake_run(out / "cartpole" / "s3m-output" / f"seed{seed}", [100.0] * 50, evals=[480.0 + seed])
    # Run as a user would, as a script, which also checks that it finds benchmarks/compare.py.
    command = [sys.executable, str(ROOT / "benchmarks" / "learning.py"), "--redraw"]
    command += ["--out", str(out), "--docs", str(docs)]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    page = (docs / "results.md").read_text()
    lines = page.splitlines()
    rows = {line.split(" | ")[2]: line for line in lines if line.startswith("| bsuite_memory_len_30 |")}
    assert "| 1.000 ± 0.000 | ≥ 0.95 | met |" in rows["s3m:hidden"]
    assert "| 0.500 ± 0.000 | ≥ 0.95 | **missed** |" in rows["rssm"]
    assert "| cartpole | gym:CartPole-v1 | s3m:output | 1,000 | 0, 1 |" in page
    assert "480.5 ± 6.4 | ≥ 450 | met | 12 s | `python run_agent.py --preset debug --seed S` |" in page
    assert "| popgym_repeat_previous_easy |" in page and "**missed** (not run)" in page
    assert "| bsuite_memory_len_1 | bsuite:memory_len/0 | rssm |" in page  # listed, not run
    for name in ("bsuite_memory_len_30", "cartpole"):
        assert (docs / f"curves_{name}.png").read_bytes().startswith(PNG_SIGNATURE)
    assert not (docs / "curves_popgym_repeat_previous_easy.png").exists()

    # The same numbers as data, one row per target and variant.
    data = json.loads((docs / "results.json").read_text())["targets"]
    row = next(r for r in data if (r["target"], r["variant"]) == ("bsuite_memory_len_30", "rssm"))
    assert (row["mean"], row["ci"], row["goal"], row["status"], row["seeds"]) == (
        0.5,
        0.0,
        0.95,
        "missed",
        [0, 1],
    )
    row = next(r for r in data if r["target"] == "popgym_concentration_easy")
    assert (row["goal"], row["status"], row["note"]) == (None, "missed", "not run")
    assert [learning.markdown_row(r) for r in data] == [line for line in lines if line.startswith("| ")][2:]
    # DreamerV3's published return at the row's env steps beside a control row (100k agent steps at
    # action repeat 2: the 200k-frame window of benchmarks/data/dreamerv3_scores.json), none
    # beside a memory row; Memory Maze's goal is twice its random policy's score.
    row = next(r for r in data if (r["target"], r["variant"]) == ("dmc_cartpole_swingup", "rssm"))
    curve = published.stored()["dmc:cartpole_swingup"]
    assert row["dreamerv3"] == curve["mean"][curve["frames"].index(200_000)]
    assert f"| {compare.fmt(row['random'])} | {compare.fmt(row['dreamerv3'])} | n/a | ≥ 600 |" in page
    assert all(r["dreamerv3"] is None for r in data if r["target"].startswith(("bsuite", "popgym")))
    maze = next(r for r in data if r["target"] == "memory_maze_9x9")
    assert maze["goal"] == pytest.approx(2 * maze["random"], abs=1e-3) and maze["random"] > 0

    # Hand-written analysis survives a rebuild, and so do the rows of targets not rebuilt, or
    # rebuilt without runs (their runs were made elsewhere): they come from results.json.
    (docs / "results.md").write_text(page.replace("Not written yet.", "Memory holds at 30 steps."))
    elsewhere = tmp_path / "elsewhere"
    learning.main(
        [
            "--redraw",
            "--out",
            str(elsewhere),
            "--docs",
            str(docs),
            "--targets",
            "cartpole,bsuite_memory_len_30",
        ]
    )
    again = (docs / "results.md").read_text()
    assert "Memory holds at 30 steps." in again
    assert [line for line in again.splitlines() if line.startswith("| b")] == [
        line for line in lines if line.startswith("| b")
    ]
    assert "480.5 ± 6.4 | ≥ 450 | met |" in again
    goals = {r["target"]: r["goal"] for r in json.loads((docs / "results.json").read_text())["targets"]}
    assert goals["popgym_concentration_easy"] is None and "| popgym_concentration_easy |" in again


def files_and_times(folder: Path) -> dict[Path, int]:
    return {path: path.stat().st_mtime_ns for path in folder.rglob("*") if path.is_file()}


def test_tiny_comparison_then_redraw(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    out = tmp_path / "cmp"
    argv = ["--preset", "debug", "--env", "popgym:RepeatPreviousEasy", "--steps", "150"]
    argv += ["--variants", "s3m:hidden,rssm", "--seeds", "0,1", "--out", str(out)]
    assert compare.main(argv) == 0, capsys.readouterr()
    page = (out / "results.md").read_text()
    for variant in ("s3m:hidden", "rssm"):
        row = next(line for line in page.splitlines() if line.startswith(f"| {variant} |"))
        assert row.count("±") == 2 and "| 2 |" in row, row
        assert (out / compare.variant_dir(variant) / "seed1" / compare.RUN_LOG).is_file()
    assert "popgym:RepeatPreviousEasy, 150 env steps" in page
    assert (out / "curves.png").read_bytes().startswith(PNG_SIGNATURE)
    assert plt.imread(out / "curves.png").ndim == 3

    # Finished runs are not run again, and --redraw only rewrites the table and the plot.
    runs_before = files_and_times(out / "s3m-hidden") | files_and_times(out / "rssm")
    (out / "results.md").unlink()
    (out / "curves.png").unlink()
    assert compare.main(argv) == 0
    assert "4 of 4 runs already finished" in capsys.readouterr().out
    assert compare.main(["--redraw", "--out", str(out)]) == 0
    assert (out / "results.md").read_text().splitlines()[:6] == page.splitlines()[:6]
    assert (out / "curves.png").is_file()
    assert files_and_times(out / "s3m-hidden") | files_and_times(out / "rssm") == runs_before

    # A smaller budget or other overrides in the same folder are refused rather than mixed in.
    assert compare.main([*argv[:4], "--steps", "100", *argv[6:]]) == 2
    assert compare.main([*argv, "agent.actor_lr=1e-3"]) == 2

    # A larger budget continues a finished run from its checkpoint; its wall time adds up.
    run = out / "rssm" / "seed0"
    before = json.loads((run / runlogs.MARKER).read_text())
    other_seed = files_and_times(out / "rssm" / "seed1")
    capsys.readouterr()
    longer = [*argv[:4], "--steps", "300", "--variants", "rssm", "--seeds", "0", "--out", str(out)]
    assert compare.main(longer) == 0, capsys.readouterr()
    assert "resuming rssm seed 0" in capsys.readouterr().out
    after = json.loads((run / runlogs.MARKER).read_text())
    assert after["args"] == [*before["args"][:5], "300", *before["args"][6:]]
    assert after["wall_s"] > before["wall_s"]
    log = (run / compare.RUN_LOG).read_text()
    assert "--resume" in log and re.search(r"env steps:\s+300 \(150 in this session\)", log), log
    assert files_and_times(out / "rssm" / "seed1") == other_seed


def test_run_killed_outright_resumes_from_its_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    """A run killed with no chance to record its end (e.g. with the session it ran in) keeps the
    marker written at its launch, so the next launch resumes it instead of starting over."""
    out = tmp_path / "cmp"
    argv = ["--preset", "debug", "--env", "popgym:RepeatPreviousEasy", "--steps", "100"]
    argv += ["--variants", "rssm", "--seeds", "0", "--out", str(out)]
    run = out / "rssm" / "seed0"
    markers_at_start = []
    real_run = subprocess.run

    def spy(*args, **kwargs):
        markers_at_start.append(runlogs.read_marker(run, runlogs.PARTIAL))
        return real_run(*args, **kwargs)

    monkeypatch.setattr(compare.subprocess, "run", spy)
    assert compare.main(argv) == 0, capsys.readouterr()
    assert markers_at_start[0]["args"] == json.loads((run / runlogs.MARKER).read_text())["args"]
    assert "started" in markers_at_start[0] and "ended" not in markers_at_start[0]
    # What a run of 150 steps killed after its checkpoint at 100 leaves: the marker its launch
    # wrote (no end, no exit status) and that checkpoint.
    argv[5] = "150"
    spec_args = [*json.loads((run / runlogs.MARKER).read_text())["args"]]
    spec_args[spec_args.index("--steps") + 1] = "150"
    (run / runlogs.MARKER).unlink()
    started = time.time() - 1000
    launch_marker = {"args": spec_args, "wall_s": 7.0, "started": started}
    (run / runlogs.PARTIAL).write_text(json.dumps(launch_marker))
    os.utime(run / "checkpoint", (started + 60, started + 60))
    assert runlogs.read_run(run) is None  # unfinished runs stay off the pages
    capsys.readouterr()
    assert compare.main(argv) == 0
    assert "resuming rssm seed 0" in capsys.readouterr().out
    resumed = json.loads((run / runlogs.MARKER).read_text())
    assert resumed["args"] == spec_args and resumed["wall_s"] >= 67.0
    log = (run / compare.RUN_LOG).read_text()
    assert re.search(r"env steps:\s+150 \(50 in this session\)", log), log
    assert not (run / runlogs.PARTIAL).exists()
    assert (run / compare.RUN_LOG).read_text().count("--resume") == 1


def test_failed_run_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    argv = ["--preset", "debug", "--env", "popgym:NoSuchTask", "--steps", "50", "--variants", "rssm"]
    assert compare.main([*argv, "--seeds", "0", "--out", str(tmp_path)]) == 1
    log = tmp_path / "rssm" / "seed0" / compare.RUN_LOG
    assert f"FAILED  rssm seed 0 (exit 2): see {log}" in capsys.readouterr().out
    assert "error:" in log.read_text()


def test_learning_archives_runs_and_keeps_lost_seeds(tmp_path: Path):
    """Finished runs are archived beside the page and read back from there once OUT is gone; a
    seed whose logs are lost keeps its recorded score, merged with the seeds that have logs."""
    out, docs = tmp_path / "runs", tmp_path / "docs"
    name = "bsuite_memory_len_30"
    target = learning.TARGETS[name]
    spec = learning.plan(name, target, out, 1)[0]  # an s3m:hidden run, with its real arguments
    assert spec.variant == "s3m:hidden"

    def args(seed: int) -> list[str]:
        given = list(spec.args)
        given[given.index("--seed") + 1] = str(seed)
        return given

    fake_run(out / name / "s3m-hidden" / "seed0", [1.0] * 1200, args=args(0))
    fake_run(out / name / "s3m-hidden" / "seed1", [1.0, -1.0] * 600, args=args(1))
    learning.main(["--redraw", "--out", str(out), "--docs", str(docs), "--targets", name])
    kept = docs / "runs" / name / "s3m-hidden" / "seed1"
    assert sorted(p.name for p in kept.iterdir()) == sorted(
        ["config.yaml", runlogs.MARKER, "episodes.jsonl.gz", "metrics.jsonl.gz"]
    )
    assert len(runlogs.read_run(kept).episode_returns) == 1200
    first = json.loads((docs / "results.json").read_text())["targets"]

    # The machine is gone: the page is rebuilt from the archive alone, to the same rows.
    import shutil

    shutil.rmtree(out)
    learning.main(["--redraw", "--out", str(out), "--docs", str(docs), "--targets", name])
    assert json.loads((docs / "results.json").read_text())["targets"] == first

    # The archive of seed 0 is lost too, and seed 2 runs: seed 0's recorded score stays.
    shutil.rmtree(docs / "runs" / name / "s3m-hidden" / "seed0")
    fake_run(out / name / "s3m-hidden" / "seed2", [-1.0] * 1200, args=args(2))
    learning.main(["--targets", name, "--redraw", "--out", str(out), "--docs", str(docs)])
    rows = json.loads((docs / "results.json").read_text())["targets"]
    row = next(r for r in rows if (r["target"], r["variant"]) == (name, "s3m:hidden"))
    assert row["seeds"] == [0, 1, 2]
    assert [row["per_seed"][s]["final"] for s in ("0", "1", "2")] == [1.0, 0.5, 0.0]
    assert [row["per_seed"][s]["logs"] for s in ("0", "1", "2")] == [False, True, True]
    assert row["mean"] == pytest.approx(0.5) and row["note"] == "seed 0: score as recorded, logs lost"
    assert "score as recorded, logs lost" in (docs / "results.md").read_text()
