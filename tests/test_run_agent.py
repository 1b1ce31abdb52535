"""End-to-end tests of run_agent.py: tiny runs on real envs, resume, eval-only and bad input.

The command-line tests start `python run_agent.py` as a user would; the variants (policy inputs,
RSSM, images, replay context) call `run_agent.main` in this process, which skips the seconds that
a fresh interpreter spends importing torch.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import run_agent
from configs import load_config_file
from replay import SequenceReplay

ROOT = Path(__file__).resolve().parents[1]
# A debug run of 60 steps: 30 random, then one update per step; POPGym episodes last 51 steps,
# so one training episode ends, and both periodic and final checkpoints happen.
DEBUG = [
    "--preset",
    "debug",
    "--env",
    "popgym:RepeatPreviousEasy",
    "train.steps=60",
    "train.prefill=30",
    "train.log_every=20",
    "train.eval_every=60",
    "train.checkpoint_every=30",
]
# Variants run shorter episodes (max_steps) so their evaluation takes a fraction of a second.
SHORT = ["--preset", "debug", "train.steps=40", "train.prefill=20", "env.options={max_steps: 16}"]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run `python run_agent.py ARGS` from the repository root."""
    # One thread each: tiny models on a shared CPU are much faster without thread contention.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(ROOT / "run_agent.py"), *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """A completed debug run (shared: tests that change a run work on a copy)."""
    logdir = tmp_path_factory.mktemp("runs") / "debug"
    result = cli(*DEBUG, "--logdir", str(logdir))
    assert result.returncode == 0, result.stderr[-3000:]
    return logdir, result


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def read_metrics(logdir: Path) -> list[dict]:
    return read_jsonl(logdir / "metrics.jsonl")


def replay_steps(checkpoint: Path) -> int:
    replay = SequenceReplay(capacity=10_000)
    replay.load(str(checkpoint / "replay"))
    return len(replay)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_debug_run_writes_its_run_folder(finished_run):
    logdir, result = finished_run
    cfg = load_config_file(logdir / "config.yaml")
    assert cfg.train.steps == 60 and cfg.logdir == str(logdir)
    for name in ("agent.pt", "loop.pt", "config.yaml", "replay/replay.json"):
        assert (logdir / "checkpoint" / name).is_file(), name
    assert not (logdir / "checkpoint.tmp").exists() and not (logdir / "checkpoint.old").exists()
    assert replay_steps(logdir / "checkpoint") == 60

    metrics = read_metrics(logdir)
    assert [m["step"] for m in metrics if "perf/env_steps_per_s" in m] == [20, 40, 60]
    assert any("episode/return" in m for m in metrics)
    assert [m["step"] for m in metrics if "eval/return" in m] == [60]  # periodic eval is the final one
    for line in ("env steps:         60", "wall time:", "env steps/s:", "final eval return:"):
        assert line in result.stdout


def test_tensorboard_holds_the_scalars(finished_run):
    logdir, _ = finished_run
    events = EventAccumulator(str(logdir))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    expected = {"episode/return", "episode/length", "perf/env_steps_per_s", "eval/return", "wm/total_loss"}
    assert expected <= tags, sorted(tags)
    assert any(tag.startswith("actor/") for tag in tags) and any(tag.startswith("critic/") for tag in tags)
    assert [event.step for event in events.Scalars("wm/total_loss")] == [40, 60]


def test_episodes_log_has_one_line_per_training_episode(finished_run):
    logdir, _ = finished_run
    episodes = read_jsonl(logdir / "episodes.jsonl")
    progress = torch.load(logdir / "checkpoint" / "loop.pt", weights_only=True)["progress"]
    assert len(episodes) == progress["episodes"] >= 1
    for episode in episodes:
        assert list(episode) == ["step", "return", "length", "env"]
        assert type(episode["step"]) is int and 0 < episode["step"] <= 60
        assert type(episode["return"]) is float and type(episode["length"]) is int
        assert episode["env"] == 0  # the debug preset has one training env
    assert [e["step"] for e in episodes] == sorted(e["step"] for e in episodes)

    # A log's episode/return and episode/length are the means over the episodes that finished
    # since the previous log, which acted before it: their step lies in [previous log, log).
    metrics = read_metrics(logdir)
    previous = 0
    for log in [m for m in metrics if "perf/env_steps_per_s" in m]:
        window = [e for e in episodes if previous <= e["step"] < log["step"]]
        assert ("episode/return" in log) == bool(window)
        if window:
            assert log["episode/return"] == pytest.approx(np.mean([e["return"] for e in window]))
            assert log["episode/length"] == pytest.approx(np.mean([e["length"] for e in window]))
        previous = log["step"]

    # Evaluations stay in metrics.jsonl, each with the env step it was taken at.
    evals = [m for m in metrics if "eval/return" in m]
    assert evals and all(set(m) == {"step", "eval/return", "eval/length"} for m in evals)


def test_resume_continues_counters_and_replay(finished_run, tmp_path):
    logdir = tmp_path / "run"
    shutil.copytree(finished_run[0], logdir)
    before = replay_steps(logdir / "checkpoint")

    result = cli("--resume", str(logdir), "train.steps=100")
    assert result.returncode == 0, result.stderr[-3000:]
    progress = torch.load(logdir / "checkpoint" / "loop.pt", weights_only=True)["progress"]
    assert progress["env_steps"] == 100
    assert progress["updates"] == 31 + 40  # steps 30..60 in the first run, then one per step
    assert replay_steps(logdir / "checkpoint") >= before
    assert replay_steps(logdir / "checkpoint") == 100
    assert load_config_file(logdir / "config.yaml").train.steps == 100
    metrics = read_metrics(logdir)
    assert {"step": 60, "event": "resume", "replay_steps": 60} in metrics
    assert metrics[-1]["step"] == 100
    episodes, before = read_jsonl(logdir / "episodes.jsonl"), read_jsonl(finished_run[0] / "episodes.jsonl")
    assert len(episodes) == progress["episodes"] and episodes[: len(before)] == before  # appended to

    # The budget is spent: resuming again without a larger one is refused.
    again = cli("--resume", str(logdir))
    assert again.returncode == 2 and again.stderr.startswith("error: ") and "train.steps" in again.stderr


def test_eval_only_loads_a_checkpoint_and_changes_nothing(finished_run):
    logdir, _ = finished_run
    before = snapshot(logdir)
    result = cli("--eval-only", str(logdir / "checkpoint"), "train.eval_episodes=2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "eval return" in result.stdout and "2 episodes" in result.stdout
    after = snapshot(logdir)
    assert {k: v for k, v in after.items() if not k.startswith("eval-")} == before
    [metrics] = list(logdir.glob("eval-*/metrics.jsonl"))
    assert json.loads(metrics.read_text())["step"] == 60


def test_existing_run_folder_is_refused(finished_run, capsys):
    logdir, _ = finished_run
    assert run_agent.main([*DEBUG, "--logdir", str(logdir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "already holds a run" in err


@pytest.mark.parametrize(
    "override",
    ["agent.policy_input=output", "agent.policy_input=hidden", "agent.policy_input=full", "world_model=rssm"],
)
def test_variants_run(override, tmp_path, one_thread):
    logdir = tmp_path / "run"
    assert run_agent.main([*SHORT, override, "--logdir", str(logdir)]) == 0
    assert (logdir / "checkpoint" / "agent.pt").is_file()


def test_replay_context_run_stores_states(tmp_path, one_thread):
    logdir = tmp_path / "run"
    assert run_agent.main([*SHORT, "replay.store_state=true", "--logdir", str(logdir)]) == 0
    index = json.loads((logdir / "checkpoint" / "replay" / "replay.json").read_text())
    assert {"state/z", "state/h", "state/x"} <= set(index["spec"])


def test_image_env_writes_open_loop_video(tmp_path, one_thread):
    logdir = tmp_path / "run"
    args = [*SHORT, "--env", "minigrid:MiniGrid-MemoryS7-v0", "train.video_every=40", "--logdir", str(logdir)]
    assert run_agent.main(args) == 0
    events = EventAccumulator(str(logdir), size_guidance={"images": 0})
    events.Reload()
    [video] = events.Images("open_loop/image")
    assert video.step == 40 and video.encoded_image_string.startswith(b"GIF8")
    assert (video.height, video.width) == (3 * 64, 4 * 64)  # truth / prediction / error, 4 sequences


@pytest.mark.parametrize(
    ("args", "culprit"),
    [
        (["--preset", "debug", "--bogus"], "--bogus"),
        (["--preset", "debug", "--steps", "many"], "--steps"),
        (["--preset", "debug", "agent.horizn=3"], "agent.horizn"),
        (["--preset", "debug", "train.steps=abc"], "train.steps"),
        (["--preset", "debug", "model.units=-1"], "model.units"),
        (["--preset", "nope"], "nope"),
        (["--preset", "debug", "--env", "popgym:NoSuchTask"], "NoSuchTask"),
        (["--preset", "debug", "--env", "nosuite:Task"], "nosuite"),
        (["--eval-only", "/no/such/checkpoint"], "/no/such/checkpoint"),
        (["--resume", "/no/such/run"], "/no/such/run"),
    ],
)
def test_bad_input_is_one_error_line(args, culprit, tmp_path, capsys):
    logdir = tmp_path / "run"
    logdir_flag = [] if "--resume" in args else ["--logdir", str(logdir)]
    assert run_agent.main([*args, *logdir_flag]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert culprit in err
    assert not logdir.exists()  # nothing is written for a run that cannot start


def test_corrupt_checkpoint_is_one_error_line(finished_run, tmp_path, capsys):
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(finished_run[0] / "checkpoint", checkpoint)
    (checkpoint / "agent.pt").write_bytes(b"not a checkpoint")
    assert run_agent.main(["--eval-only", str(checkpoint)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "agent.pt" in err


def test_help_documents_every_flag(capsys):
    with pytest.raises(SystemExit) as exit:
        run_agent.main(["--help"])
    assert exit.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # unwrapped
    for action in run_agent.make_parser()._actions:
        assert action.help, action.dest
        assert all(flag in text for flag in action.option_strings) and (action.metavar or "") in text
    assert f"--preset {run_agent.DEFAULT_PRESETS} {' '.join(run_agent.DEFAULT_OVERRIDES)}" in text
    assert "python run_agent.py --preset debug" in text


def test_command_line_error_exits_2_without_traceback():
    result = cli("--preset", "debug", "--no-such-flag")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("error: ") and "--no-such-flag" in result.stderr


@pytest.mark.parametrize("sample", [False, True])
def test_evaluate_uses_the_mode_or_samples(sample, one_thread):
    """train.eval_sample picks the policy's sampled actions ("explore") over its mode ("eval")."""
    cfg = run_agent.build_config(run_agent.parse_args([*SHORT, "--env", "popgym:RepeatPreviousEasy"]))
    modes: list[str] = []
    with run_agent.make_env(cfg, 2, 0) as env:
        agent = run_agent.make_agent(cfg, env)
        policy = agent.policy

        def recording(step, state, mode="explore"):
            modes.append(mode)
            return policy(step, state, mode)

        agent.policy = recording
        result = run_agent.evaluate(agent, env, 3, sample=sample)
    assert set(modes) == {"explore" if sample else "eval"}
    # 3 episodes of 16 steps over 2 envs: env 0 runs 2 of them, so 2 * 16 policy steps at least.
    assert result["eval/length"] == 16 and len(modes) >= 32
