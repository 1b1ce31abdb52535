"""Faults and bad numbers: non-finite values, env workers that die or hang, damaged checkpoints.

The faulty envs come from tests/fault_envs.py (`gym:fault_envs:FaultyCartPole-v0`). Runs are the
debug preset on CartPole, called through `run_agent.main` in this process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import run_agent
from agent import Agent
from agent.guards import NonFiniteError, UpdateGuard, finite_actions, nonfinite_tensors
from configs import ConfigError, load_config
from envs import EnvError, VectorEnv
from envs.vector import EnvWorkerError
from loop.checkpoint import CheckpointError, Progress, find_checkpoint, load_loop_state, save_checkpoint
from loop.logger import Logger
from replay import ReplayLoadError, SequenceReplay

FAULTY = "gym:fault_envs:FaultyCartPole-v0"
RUN = ["--preset", "debug", "--env", "gym:CartPole-v1", "train.prefill=20", "train.log_every=20"]


def one_hot_actions(venv: VectorEnv, t: int) -> np.ndarray:
    return np.eye(venv.action_dim, dtype=np.float32)[
        [(t + i) % venv.action_dim for i in range(venv.num_envs)]
    ]


def read_metrics(logdir: Path) -> list[dict]:
    return [json.loads(line) for line in (logdir / "metrics.jsonl").read_text().splitlines()]


def pt_files_are_finite(folder: Path) -> None:
    files = sorted(folder.rglob("*.pt"))
    assert files
    for path in files:
        assert not nonfinite_tensors(torch.load(path, weights_only=True)), path


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The one line a failed run printed on stderr (warnings and progress bars aside)."""
    lines = [
        line for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if line.startswith("error:")
    ]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A completed debug run of 80 steps with checkpoints at 40 and 80 (shared: copy to change)."""
    logdir = tmp_path_factory.mktemp("runs") / "run"
    args = [
        *RUN,
        "--steps",
        "80",
        "train.checkpoint_every=40",
        "train.eval_every=40",
        "--logdir",
        str(logdir),
    ]
    assert run_agent.main(args) == 0
    return logdir


@pytest.fixture
def run_copy(finished_run: Path, tmp_path: Path) -> Path:
    shutil.copytree(finished_run, tmp_path / "run")
    return tmp_path / "run"


def flip(path: Path, at: float = 0.6, count: int = 64) -> None:
    """Invert `count` bytes of a file, starting at the fraction `at` of its length."""
    data = bytearray(path.read_bytes())
    start = int(len(data) * at)
    data[start : start + count] = bytes(b ^ 0xFF for b in data[start : start + count])
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------------------------------------
# Non-finite values


@pytest.mark.parametrize("override", ["model.lr=inf", "agent.discount=-inf", "env.worker_timeout=inf"])
def test_config_refuses_inf_like_nan(override):
    key = override.split("=")[0]
    for value in (override, key + "=nan"):
        with pytest.raises(ConfigError, match=f"'{key}' must be a finite number"):
            load_config("debug", [value])


def test_nan_observation_is_replaced_and_ends_the_episode():
    warnings: list[str] = []
    with VectorEnv(FAULTY, 1, seed=0, warn=warnings.append, fault="nan", at=3) as venv:
        steps = [venv.reset()] + [venv.step(one_hot_actions(venv, t)) for t in range(4)]
    hit = steps[3]
    assert np.isfinite(np.stack([s["vector"] for s in steps])).all()
    assert hit["vector"][0, 0] == 0.0
    if not steps[2]["is_last"][0]:  # the NaN did not come on a first step: the episode ends there
        assert hit["is_last"][0] and not hit["is_terminal"][0] and steps[4]["is_first"][0]
    assert venv.nonfinite == 1
    assert len(warnings) == 1 and "env 0" in warnings[0] and "vector" in warnings[0]


def test_nan_observation_in_a_run_reaches_no_weight_or_replay(tmp_path, capsys):
    logdir = tmp_path / "run"
    args = [
        *RUN,
        "--env",
        FAULTY,
        "--steps",
        "120",
        "env.options={fault: nan, at: 60}",
        "--logdir",
        str(logdir),
    ]
    assert run_agent.main(args) == 0
    assert "non-finite vector" in capsys.readouterr().err
    pt_files_are_finite(logdir / "checkpoint")
    replay = SequenceReplay(capacity=10_000)
    replay.load(str(logdir / "checkpoint" / "replay"))
    assert np.isfinite(replay.stream_steps(0)["vector"]).all()
    assert max(m.get("env/nonfinite_obs", 0) for m in read_metrics(logdir)) >= 1


def test_nonfinite_actions_never_reach_an_env():
    cfg = load_config("debug")
    with VectorEnv("gym:CartPole-v1", 2, seed=0) as venv:
        agent = Agent(cfg, venv.obs_space, venv.action_dim, venv.discrete)
        step = venv.reset()
        action, state = agent.policy(step)
        action[1] = np.nan
        state["z"][1] = np.nan
        fixed, state, rows = finite_actions(agent, action, state, lambda: np.eye(2, dtype=np.float32)[[0, 0]])
        assert rows == [1] and np.isfinite(fixed).all() and (fixed[1] == [1, 0]).all()
        assert all(torch.isfinite(v).all() for v in state.values())
        np.testing.assert_array_equal(fixed[0], action[0])
        with pytest.raises(EnvError, match="non-finite action"):
            venv.step(action)


def _batch(cfg, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A (B, T) batch of random CartPole-shaped steps."""
    replay = SequenceReplay(1000)
    for t in range(20):
        replay.add(
            {
                "vector": rng.normal(size=(1, 4)).astype(np.float32),
                "action": np.eye(2, dtype=np.float32)[[t % 2]],
                "reward": np.ones(1, np.float32),
                "is_first": np.array([t == 0]),
                "is_last": np.zeros(1, bool),
                "is_terminal": np.zeros(1, bool),
            }
        )
    return replay.sample(cfg.train.batch_size, cfg.train.seq_len)


def test_nan_gradient_is_skipped_and_counted_then_stops_the_run():
    cfg = load_config("debug")
    agent = Agent(cfg, {"vector": ((4,), np.dtype(np.float32))}, 2, True)
    guard = UpdateGuard(agent, max_skipped=3)
    rng = np.random.default_rng(0)
    metrics, _ = guard.train(_batch(cfg, rng))  # a good update first: optimiser moments exist
    assert metrics is not None and guard.skipped == 0
    before = {k: v.clone() for k, v in agent.world_model.state_dict().items()}
    moments = [s["exp_avg"].clone() for s in agent.world_model.opt.state.values()]
    weight = next(agent.world_model.parameters())
    hook = weight.register_hook(lambda grad: torch.full_like(grad, float("nan")))
    for skipped in (1, 2):
        assert guard.train(_batch(cfg, rng)) == (None, None)
        assert guard.skipped == skipped and "wm/grad_norm=nan" in guard.last
    for key, value in agent.world_model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    for moment, state in zip(moments, agent.world_model.opt.state.values()):
        torch.testing.assert_close(state["exp_avg"], moment, rtol=0, atol=0)
    assert agent.updates == 1
    with pytest.raises(NonFiniteError, match="3 updates in a row.*wm/grad_norm=nan"):
        guard.train(_batch(cfg, rng))
    hook.remove()
    assert guard.train(_batch(cfg, rng))[0] is not None and guard.consecutive == 0


def test_diverging_run_stops_with_exit_2_and_keeps_finite_checkpoints(tmp_path, capsys):
    logdir = tmp_path / "run"
    # A learning rate that overflows from the first update: every update is undone, then the run
    # stops; the checkpoints saved meanwhile hold the weights from before.
    args = [*RUN, "--steps", "400", "model.lr=1e10", "train.checkpoint_every=10", "--logdir", str(logdir)]
    assert run_agent.main(args) == 2
    line = error_line(capsys)
    steps = load_loop_state(find_checkpoint(str(logdir)))[0].env_steps
    assert "20 updates in a row went non-finite" in line and "=nan" in line
    assert f"last good checkpoint, at {steps} env steps" in line and 20 <= steps < 400
    pt_files_are_finite(logdir)


def test_checkpoint_is_never_written_with_nonfinite_weights(run_copy):
    cfg = load_config("debug", [f"logdir={run_copy}"])
    agent = Agent(cfg, {"vector": ((4,), np.dtype(np.float32))}, 2, True)
    replay = SequenceReplay(1000)
    replay.add({"vector": np.zeros((1, 4), np.float32), "is_first": np.ones(1, bool)})
    with torch.no_grad():
        next(agent.actor_critic.parameters())[0] = float("inf")
    before = (run_copy / "checkpoint" / "agent.pt").read_bytes()
    with pytest.raises(NonFiniteError, match="actor"):
        save_checkpoint(str(run_copy), cfg, agent, replay, Progress(), np.random.default_rng())
    assert (run_copy / "checkpoint" / "agent.pt").read_bytes() == before


# ---------------------------------------------------------------------------------------------
# Env workers


def test_killed_worker_is_replaced_and_its_episode_ends():
    warnings: list[str] = []
    with VectorEnv("gym:CartPole-v1", 2, seed=0, worker_timeout=60, warn=warnings.append) as venv:
        steps = [venv.reset()]
        old = venv.worker_pids[1]
        os.kill(old, signal.SIGKILL)
        for t in range(30):
            steps.append(venv.step(one_hot_actions(venv, t)))
        assert venv.restarts == 1 and venv.worker_pids[1] not in (None, old)
    died = steps[1]
    assert died["is_last"][1] and not died["is_terminal"][1] and died["reward"][1] == 0
    np.testing.assert_array_equal(died["vector"][1], steps[0]["vector"][1])  # the episode's last obs, again
    assert steps[2]["is_first"][1] and not steps[2]["is_last"][1]
    assert len(warnings) == 1 and "env 1" in warnings[0] and "exit code -9" in warnings[0]


def test_hung_worker_is_replaced_after_its_timeout():
    warnings: list[str] = []
    options = {"fault": "hang", "at": 2}
    with VectorEnv(FAULTY, 2, seed=0, worker_timeout=1, warn=warnings.append, **options) as venv:
        venv.reset()
        # Both envs hang at their second step, and each fresh one would again: stop after two.
        for t in range(2):
            step = venv.step(one_hot_actions(venv, t))
        assert step["is_last"].all() and not step["is_terminal"].any()
        assert venv.restarts == 2
    assert all("did not answer within 1 s" in w for w in warnings)


def test_worker_that_keeps_dying_stops_the_run_after_a_checkpoint(tmp_path, capsys):
    logdir = tmp_path / "run"
    # No evaluation: its env runs in this process, where `exit` would end the test itself.
    args = [
        *RUN,
        "--env",
        FAULTY,
        "--steps",
        "400",
        "env.num_envs=2",
        "env.max_restarts=2",
        "train.eval_episodes=0",
    ]
    args += ["env.options={fault: exit, at: 30}", "--logdir", str(logdir)]
    assert run_agent.main(args) == run_agent.EXIT_FAULT
    line = error_line(capsys)
    assert "worker failed 3 times" in line and "exit code 1" in line and "saved a checkpoint" in line
    progress = load_loop_state(find_checkpoint(str(logdir)))[0]
    # Both envs die at their 30th, 60th and 90th step; the third death of env 0 stops the run.
    assert 0 < progress.env_steps < 400 and progress.env_restarts == 4


def test_run_whose_worker_is_killed_finishes(tmp_path):
    logdir = tmp_path / "run"
    options = f"env.options={{fault: kill_once, at: 30, marker: {tmp_path / 'killed'}}}"
    args = [*RUN, "--env", FAULTY, "--steps", "100", "env.num_envs=2", "train.eval_episodes=0", options]
    args += ["--logdir", str(logdir)]
    assert run_agent.main(args) == 0
    assert (tmp_path / "killed").exists()
    assert load_loop_state(find_checkpoint(str(logdir)))[0].env_restarts == 1
    assert [m["env/restarts"] for m in read_metrics(logdir) if "env/restarts" in m][-1] == 1


# ---------------------------------------------------------------------------------------------
# Verified checkpoints


@pytest.mark.parametrize("name", ["agent.pt", "loop.pt", "config.yaml", "replay/replay.json"])
def test_flipped_bytes_are_refused_naming_the_file_and_the_intact_one(run_copy, name, capsys):
    flip(run_copy / "checkpoint" / name)
    assert run_agent.main(["--resume", str(run_copy), "train.steps=200"]) == 2
    line = error_line(capsys)
    assert f"checkpoint/{name}" in line and "corrupt" in line
    assert f"'{run_copy / 'checkpoint.prev'}' (40 env steps) is intact" in line
    assert run_agent.main(["--eval-only", str(run_copy)]) == 2
    assert f"checkpoint/{name}" in error_line(capsys)


def test_flipped_replay_chunk_is_refused_and_the_earlier_one_used_once_moved_aside(run_copy, capsys):
    chunks = sorted((run_copy / "checkpoint" / "replay").glob("chunk-*.npz"))
    newest = chunks[-1]  # steps 0..80, written by the second save (the first one's holds 0..40)
    flip(newest, at=0.5)
    assert run_agent.main(["--resume", str(run_copy), "train.steps=120"]) == 2
    line = error_line(capsys)
    assert newest.name in line and "does not match its sha256" in line and "checkpoint.prev" in line
    os.replace(run_copy / "checkpoint", run_copy / "checkpoint.bad")
    assert run_agent.main(["--resume", str(run_copy), "train.steps=120"]) == 0
    assert load_loop_state(str(run_copy / "checkpoint"))[0].env_steps == 120
    assert load_loop_state(str(run_copy / "checkpoint.prev"))[0].env_steps == 80  # its own save at 80


def test_damaged_files_without_digests_say_what_is_wrong(run_copy):
    checkpoint = run_copy / "checkpoint"
    (checkpoint / "digests.json").unlink(missing_ok=True)  # as a checkpoint written before digests
    loop = checkpoint / "loop.pt"
    loop.write_bytes(loop.read_bytes()[: loop.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="loop.pt' is truncated, corrupt"):
        load_loop_state(str(checkpoint))
    replay = checkpoint / "replay"
    index = json.loads((replay / "replay.json").read_text())
    index["format"] = 1
    for entry in index["files"]:
        del entry["sha256"]  # as a replay snapshot written before digests
    (replay / "replay.json").write_text(json.dumps(index))
    chunk = sorted(replay.glob("chunk-*.npz"))[0]
    flip(chunk, at=0.0, count=80)  # the zip and npy headers
    with pytest.raises(ReplayLoadError, match=f"{chunk.name} is corrupt or truncated"):
        SequenceReplay(10_000).load(str(replay))


def test_saves_keep_the_last_two_checkpoints_and_recover_from_a_cut_rotation(run_copy):
    run = str(run_copy)
    steps = lambda name: load_loop_state(os.path.join(run, name))[0].env_steps  # noqa: E731
    assert (steps("checkpoint"), steps("checkpoint.prev")) == (80, 40)
    # Cut after `checkpoint` became `checkpoint.prev` and before the new one took its name: the
    # newest complete one is found, and the next save puts the names back in order.
    os.replace(os.path.join(run, "checkpoint.prev"), os.path.join(run, "checkpoint.old"))
    os.replace(os.path.join(run, "checkpoint"), os.path.join(run, "checkpoint.prev"))
    os.makedirs(os.path.join(run, "checkpoint.tmp", "replay"))
    assert find_checkpoint(run).endswith("checkpoint.prev")
    assert run_agent.main(["--resume", run, "train.steps=100", "train.checkpoint_every=1000"]) == 0
    assert sorted(n for n in os.listdir(run) if n.startswith("checkpoint")) == [
        "checkpoint",
        "checkpoint.prev",
    ]
    assert (steps("checkpoint"), steps("checkpoint.prev")) == (100, 80)


# ---------------------------------------------------------------------------------------------
# Logs and messages


def test_tensorboard_keeps_the_checkpoint_step_on_resume(tmp_path):
    with Logger(str(tmp_path)) as logger:
        for step in (100, 200, 300):
            logger.scalars(step, {"eval/return": float(step)})
    with Logger(str(tmp_path), resumed_at=200) as logger:  # the run went back to its checkpoint at 200
        logger.scalars(300, {"eval/return": -300.0})
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("eval/return")] == [(100, 100), (200, 200), (300, -300)]


def test_resumed_run_keeps_every_point_before_its_checkpoint(run_copy):
    assert run_agent.main(["--resume", str(run_copy), "train.steps=120"]) == 0
    events = EventAccumulator(str(run_copy))
    events.Reload()
    assert [e.step for e in events.Scalars("eval/return")] == [40, 80, 120]


def test_run_too_short_for_a_sequence_warns_that_it_makes_no_updates(tmp_path, capsys):
    args = [
        *RUN,
        "--steps",
        "30",
        "train.seq_len=40",
        "train.eval_episodes=0",
        "--logdir",
        str(tmp_path / "r"),
    ]
    assert run_agent.main(args) == 0
    assert "warning: this run makes no updates" in capsys.readouterr().err
    assert load_loop_state(str(tmp_path / "r" / "checkpoint"))[0].updates == 0


def test_stop_hint_is_an_absolute_path(tmp_path, monkeypatch, capsys):
    class StopAtOnce(run_agent.StopRequest):
        def __init__(self) -> None:
            super().__init__()
            self.requested = True

    monkeypatch.setattr(run_agent, "StopRequest", StopAtOnce)
    monkeypatch.chdir(tmp_path)
    assert run_agent.main([*RUN, "--steps", "40", "--logdir", "relative/run"]) == run_agent.EXIT_INTERRUPTED
    assert f"--resume {tmp_path / 'relative' / 'run'}" in capsys.readouterr().out


def test_worker_error_is_an_env_worker_error():
    with VectorEnv(
        FAULTY, 2, seed=0, worker_timeout=60, max_restarts=0, warn=print, fault="exit", at=1
    ) as venv:
        venv.reset()
        with pytest.raises(EnvWorkerError, match="env 0 .*failed 1 times"):
            venv.step(one_hot_actions(venv, 0))
