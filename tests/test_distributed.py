"""Data-parallel training (agent/distributed.py): two CPU ranks on gloo.

The update tests start two ranks with torch.multiprocessing (forked) and compare them with one
process; the run tests start `torchrun --standalone --nproc_per_node=2 run_agent.py` as a user would.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from gymnasium.envs.classic_control import CartPoleEnv

import run_agent
from agent import Agent
from agent.distributed import World, WorldError, data_parallel
from configs import load_config
from loop.checkpoint import CheckpointError, find_checkpoint, load_loop_state, verify_checkpoint
from replay import SequenceReplay
from world_model.distributions import OneHotCategorical

ROOT = Path(__file__).resolve().parents[1]
OBS_SPACE = {"vector": ((4,), np.float32)}
ACTION_DIM = 2
WORLD_MODELS = ("s3m", "rssm")
# Two ranks of a short CartPole run: 20 random steps (10 per rank), then an update every second
# iteration (B·T = 16 replayed steps per rank and update, 8 per env step).
RUN = [
    "--preset",
    "debug",
    "train.prefill=20",
    "train.train_ratio=8",
    "train.log_every=20",
    "train.eval_every=0",
    "train.checkpoint_every=40",
]


# ---------------------------------------------------------------------------------------------
# One update on two ranks against one process


def make_agent(world_model: str) -> Agent:
    # reward_norm=max: the reward unit must be the max over both ranks' batches
    cfg = load_config(["debug"], [f"world_model={world_model}", "precision=32", "model.reward_norm=max"])
    return Agent(cfg, OBS_SPACE, ACTION_DIM, True, "cpu")


def make_batch(B: int, T: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    """A random (B, T) CartPole-shaped batch with episode starts and terminals inside."""
    rng = np.random.default_rng(seed)
    is_first = rng.random((B, T)) < 0.15
    is_first[:, 0] = True
    is_terminal = np.roll(is_first, -1, 1) & (rng.random((B, T)) < 0.5)
    is_terminal[:, -1] = False
    return {
        "vector": rng.normal(size=(B, T, 4)).astype(np.float32),
        "action": np.eye(ACTION_DIM, dtype=np.float32)[rng.integers(0, ACTION_DIM, (B, T))],
        "reward": rng.normal(size=(B, T)).astype(np.float32),
        "is_first": is_first,
        "is_last": is_terminal.copy(),
        "is_terminal": is_terminal,
    }


def rows(batch: dict[str, np.ndarray], part: slice) -> dict[str, np.ndarray]:
    return {key: value[part] for key, value in batch.items()}


def deterministic_sample(self: OneHotCategorical) -> torch.Tensor:
    """The mode with straight-through gradients: samples that do not depend on the RNG, so that
    two ranks and one process draw the same latents and imagined actions."""
    return self.mode() + (self.probs - self.probs.detach())


def gradients(agent: Agent) -> dict[str, torch.Tensor]:
    named = [*agent.world_model.named_parameters(), *agent.actor_critic.named_parameters()]
    return {name: p.grad.clone() for name, p in named if p.grad is not None}


def rank_worker(rank: int, folder: str) -> None:
    """Rank `rank` of two: one update on its half of the batch, then more on batches of its own."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=2)
    world = World(rank=rank, size=2, local_rank=rank)
    sample = OneHotCategorical.sample
    try:
        for world_model in WORLD_MODELS:
            torch.manual_seed(rank)  # other initial weights on each rank: rank 0's must win
            agent = make_agent(world_model)
            averager = data_parallel(agent, world)
            if world.main:
                torch.save(agent.state_dict(), f"{folder}/{world_model}-initial.pt")
            OneHotCategorical.sample = deterministic_sample
            metrics = agent.train(rows(make_batch(4), slice(2 * rank, 2 * rank + 2)))
            metrics["averaged"] = averager.averaged
            torch.save((gradients(agent), metrics), f"{folder}/{world_model}-rank{rank}.pt")
            OneHotCategorical.sample = sample
            torch.manual_seed(100 + rank)
            for update in range(3):  # random latents and batches of each rank's own
                agent.train(make_batch(2, seed=10 * rank + update))
            torch.save(agent.state_dict(), f"{folder}/{world_model}-final{rank}.pt")
    finally:
        OneHotCategorical.sample = sample
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files `rank_worker` left, of two ranks (fork: the children skip importing torch again)."""
    folder = tmp_path_factory.mktemp("ranks")
    mp.start_processes(rank_worker, args=(str(folder),), nprocs=2, start_method="fork")
    return folder


def load(path: Path) -> Any:
    return torch.load(path, weights_only=True)


def flat_tensors(tree: Any) -> list[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, dict):
        return [t for value in tree.values() for t in flat_tensors(value)]
    if isinstance(tree, (list, tuple)):
        return [t for value in tree for t in flat_tensors(value)]
    return []


@pytest.mark.parametrize("world_model", WORLD_MODELS)
def test_one_update_on_two_ranks_is_one_process_on_both_batches(two_ranks, world_model, monkeypatch):
    monkeypatch.setattr(OneHotCategorical, "sample", deterministic_sample)
    agent = make_agent(world_model)
    agent.load_state_dict(load(two_ranks / f"{world_model}-initial.pt"))
    metrics = agent.train(make_batch(4))  # both halves at once
    expected = gradients(agent)
    for rank in range(2):
        grads, rank_metrics = load(two_ranks / f"{world_model}-rank{rank}.pt")
        assert rank_metrics["averaged"] == 3  # world model, actor, critic: once each
        assert grads.keys() == expected.keys()
        for name, grad in expected.items():
            torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
        # Losses and gradient norms are means over the ranks: those of the whole batch.
        for key in ("wm/total_loss", "wm/grad_norm", "actor/loss", "critic/loss", "critic/grad_norm"):
            assert rank_metrics[key] == pytest.approx(metrics[key], rel=1e-4, abs=1e-6), key
        # The return normaliser took the percentiles of both ranks' returns together.
        for key in ("return/ema_low", "return/ema_high"):
            assert rank_metrics[key] == pytest.approx(metrics[key], rel=1e-5, abs=1e-7), key


@pytest.mark.parametrize("world_model", WORLD_MODELS)
def test_ranks_hold_the_same_weights_after_updates_on_their_own_batches(two_ranks, world_model):
    first, second = (load(two_ranks / f"{world_model}-final{rank}.pt") for rank in range(2))
    initial = load(two_ranks / f"{world_model}-initial.pt")
    assert first["updates"] == second["updates"] == 4
    # Networks, optimiser moments, slow critic and return normaliser: equal to the bit.
    pairs = list(zip(flat_tensors(first), flat_tensors(second)))
    assert len(pairs) > 50 and all(torch.equal(a, b) for a, b in pairs)
    moved = [
        not torch.equal(a, b)
        for a, b in zip(flat_tensors(first["world_model"]), flat_tensors(initial["world_model"]))
    ]
    assert all(moved)


def test_without_torchrun_there_is_one_process_and_no_group(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    world = World.from_env()
    assert (world.rank, world.size, world.distributed, world.main) == (0, 1, False, True)
    assert world.start(torch.device("cpu")) is world and not dist.is_initialized()
    agent = make_agent("s3m")
    retnorm = agent.actor_critic.retnorm
    assert data_parallel(agent, world) is None and agent.actor_critic.retnorm is retnorm
    assert world.sum([1, 2]) == [1.0, 2.0] and world.gather([3]) == [3] and world.any(True)
    with pytest.raises(WorldError, match="RANK=2"):
        World.from_env({"WORLD_SIZE": "2", "RANK": "2"})


# ---------------------------------------------------------------------------------------------
# Runs under torchrun


class DyingRankCartPole(gymnasium.Wrapper):
    """CartPole whose process SIGKILLs itself on its `at`-th step in rank 1 of a data-parallel
    run (the debug preset's envs run in the rank's process), unless the file `marker` exists."""

    def __init__(self, at: int, marker: str):
        super().__init__(CartPoleEnv())
        self.at, self.marker, self.steps = at, marker, 0

    def step(self, action: Any) -> Any:
        self.steps += 1
        if self.steps == self.at and os.environ.get("RANK") == "1" and not os.path.exists(self.marker):
            Path(self.marker).touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return self.env.step(action)


gymnasium.register("DyingRankCartPole-v0", entry_point=DyingRankCartPole)


def torchrun(*args: str, ranks: int = 2) -> subprocess.CompletedProcess[str]:
    """`torchrun --standalone --nproc_per_node=RANKS run_agent.py ARGS` from the repository root."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "tests")}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
    command += [str(ROOT / "run_agent.py"), *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The one `error:` line on stderr."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, lines
    return lines[0]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def replay_steps(directory: Path) -> int:
    replay = SequenceReplay(capacity=10_000)
    replay.load(str(directory))
    return len(replay)


def test_two_rank_run_resumes_with_two_ranks_only_and_keeps_its_checkpoint_when_a_rank_dies(tmp_path, capsys):
    logdir = tmp_path / "run"
    result = torchrun(*RUN, "--env", "gym:CartPole-v1", "--steps", "80", "--logdir", str(logdir))
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("env steps:") == 1  # rank 0 alone reports
    assert sorted(p.name for p in logdir.iterdir() if not p.name.startswith("events.out.")) == [
        "checkpoint",
        "checkpoint.prev",
        "config.yaml",
        "episodes.jsonl",
        "metrics.jsonl",
    ]
    assert len(list(logdir.glob("events.out.*"))) == 1
    metrics = read_jsonl(logdir / "metrics.jsonl")
    assert metrics[0] == {"step": 0, "event": "start", "world_size": 2}
    assert [m["step"] for m in metrics if "perf/env_steps_per_s" in m] == [20, 40, 60, 80]
    assert [m["replay/steps"] for m in metrics if "replay/steps" in m][-1] == 80  # both ranks'

    checkpoint = logdir / "checkpoint"
    digests = json.loads((checkpoint / "digests.json").read_text())["sha256"]
    assert {"rank1/loop.pt", "rank1/replay/replay.json", "agent.pt", "loop.pt"} <= set(digests)
    assert verify_checkpoint(str(checkpoint)) and (logdir / "checkpoint.prev" / "rank1").is_dir()
    (first, loop), (second, _) = (load_loop_state(str(checkpoint), rank) for rank in range(2))
    assert loop["world_size"] == 2 and first.env_steps == second.env_steps == 80
    # 40 steps per rank, half an update per iteration after the prefill (iterations 10..40).
    assert first.updates == second.updates == 15 and first.update_credit == 0.5
    assert replay_steps(checkpoint / "replay") == replay_steps(checkpoint / "rank1" / "replay") == 40
    # Every rank's episodes (rank 1's env is env 1), in step order, as many as the ranks counted.
    episodes = read_jsonl(logdir / "episodes.jsonl")
    assert len(episodes) == first.episodes + second.episodes
    assert 1 in {e["env"] for e in episodes} <= {0, 1}
    assert [e["step"] for e in episodes] == sorted(e["step"] for e in episodes)

    # Resumed with the same CartPole, but one whose rank 1 dies at its 22nd step, at 80 + 44 env
    # steps: both ranks go on from their checkpoint and save the next at 120, then torchrun ends
    # the run, which keeps that checkpoint complete and the one at 80 before it.
    marker = tmp_path / "died"
    dying = [
        "env.name=gym:test_distributed:DyingRankCartPole-v0",
        f"env.options={{at: 22, marker: '{marker}'}}",
    ]
    died = torchrun("--resume", str(logdir), "--steps", "160", *dying)
    assert died.returncode != 0 and marker.exists()
    assert "another rank died or hung" in died.stderr  # rank 0's one line
    # ... and its own status (EXIT_FAULT), not torchrun's SIGTERM, which it ignores once it ends.
    assert re.search(r"rank\s*: 0 \(local_rank: 0\)\n\s*exitcode\s*: 3 ", died.stderr), died.stderr[-1500:]
    assert {"step": 80, "event": "resume", "replay_steps": 80, "world_size": 2} in read_jsonl(
        logdir / "metrics.jsonl"
    )
    assert find_checkpoint(str(logdir)) == str(checkpoint) and verify_checkpoint(str(checkpoint))
    assert not (logdir / "checkpoint.tmp").exists()
    (first, _), (second, _) = (load_loop_state(str(checkpoint), rank) for rank in range(2))
    assert first.env_steps == second.env_steps == 120 and first.updates == second.updates == 25
    assert replay_steps(checkpoint / "replay") == replay_steps(checkpoint / "rank1" / "replay") == 60
    assert load_loop_state(str(logdir / "checkpoint.prev"), 1)[0].env_steps == 80

    # One process cannot continue the ranks' replays: refused, naming the world size it needs.
    assert run_agent.main(["--resume", str(logdir), "--steps", "200"]) == 2
    assert "saved by 2 rank(s)" in error_line(capsys) and not dist.is_initialized()

    # Every rank's files are under the digests: a damaged one of rank 1 is refused, naming it and
    # the checkpoint before, whose every rank's files are intact.
    loop_file = checkpoint / "rank1" / "loop.pt"
    data = bytearray(loop_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    loop_file.write_bytes(bytes(data))
    with pytest.raises(
        CheckpointError, match=r"rank1/loop\.pt' does not match .*\.prev' \(80 env steps\) is intact"
    ):
        verify_checkpoint(str(checkpoint))


def test_ranks_refuse_a_single_process_checkpoint_and_rank_0_alone_says_so(tmp_path, monkeypatch, capsys):
    logdir = tmp_path / "run"
    assert run_agent.main([*RUN, "--env", "gym:CartPole-v1", "--steps", "30", "--logdir", str(logdir)]) == 0
    assert load_loop_state(find_checkpoint(str(logdir)))[1]["world_size"] == 1
    capsys.readouterr()
    # Each rank checks before it joins the others (torchrun's variables as it sets them).
    monkeypatch.setattr(run_agent, "QUIET_EXIT_DELAY_S", 0.0)
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in ("1", "0"):
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("LOCAL_RANK", rank)
        assert run_agent.main(["--resume", str(logdir), "--steps", "60"]) == 2
    assert not dist.is_initialized()
    assert capsys.readouterr().err.splitlines() == [
        f"error: checkpoint '{logdir / 'checkpoint'}' was saved by 1 rank(s) and this run has 2: "
        "resume it without torchrun"
    ]
