"""Checkpoints of a training run: save atomically, find, load, and restore the loop where it stopped.

    save_checkpoint(logdir, cfg, agent, replay, progress, rng)   # logdir/checkpoint/, complete or absent
    checkpoint = find_checkpoint(path)                           # a checkpoint, or a run folder's latest
    progress, loop = load_loop_state(checkpoint)                 # counters first: they seed the envs
    restore_checkpoint(checkpoint, loop, agent, replay, rng)     # weights, replay, RNG states

A checkpoint is a folder:

    agent.pt      `Agent.state_dict()`: networks, optimisers, return normaliser
    loop.pt       {"progress": `Progress` as a dict, "rng": torch / Python (/ CUDA) RNG states,
                   "numpy": the state of the loop's numpy Generator}
    replay/       `SequenceReplay.save`: the replay buffer, in chunk files that never change
    config.yaml   the config the weights were built from

It is written into `checkpoint.tmp`, fsynced, then renamed to `checkpoint`, so a crash at any
moment leaves one complete checkpoint (`checkpoint`, or `checkpoint.old` mid-swap) behind.
Replay chunks already saved are hard-linked from the previous checkpoint, so each save writes
only what is new. Files are read with `weights_only=True`: tensors and plain containers only.
"""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
from typing import Any

import numpy as np
import torch

from agent.agent import Agent
from configs import Config, save_config
from replay import SequenceReplay

CHECKPOINT = "checkpoint"  # the latest complete checkpoint inside a run folder


class CheckpointError(Exception):
    """A checkpoint that is missing, unreadable or does not fit the agent: the user's to fix."""


@dataclasses.dataclass
class Progress:
    """The loop's counters; saved in every checkpoint so that `--resume` continues them."""

    env_steps: int = 0  # env steps taken, over all training envs
    updates: int = 0  # agent.train calls
    update_credit: float = 0.0  # updates owed by train_ratio but not yet made (fractional)
    episodes: int = 0  # training episodes finished


# ---------------------------------------------------------------------------------------------
# RNG states


def rng_states() -> dict[str, Any]:
    """The global RNG states the agent draws from (torch, and Python's for completeness)."""
    states: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what `rng_states` returned; CUDA states only where CUDA is there to take them."""
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


# ---------------------------------------------------------------------------------------------
# Saving


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _torch_save(obj: Any, path: str) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def _link_tree(src: str, dst: str) -> None:
    """Hard-link every file of `src` into a new folder `dst` (copy where links are unsupported).

    Replay chunk files never change once written (a save writes new names, then renames), so a
    link shares them safely and the next save writes only the chunks that are new.
    """
    os.makedirs(dst)
    for name in os.listdir(src):
        try:
            os.link(os.path.join(src, name), os.path.join(dst, name))
        except OSError:
            shutil.copy2(os.path.join(src, name), os.path.join(dst, name))


def save_checkpoint(
    logdir: str,
    cfg: Config,
    agent: Agent,
    replay: SequenceReplay,
    progress: Progress,
    rng: np.random.Generator,
) -> None:
    """Write `logdir/checkpoint`: weights and optimisers, counters, RNG states, replay, config.

    Everything goes into `checkpoint.tmp`, is fsynced, then renamed into place; the previous
    checkpoint is kept (as `checkpoint.old` during the swap) until the new one is complete.
    """
    final = os.path.join(logdir, CHECKPOINT)
    tmp, old = final + ".tmp", final + ".old"
    if not os.path.isdir(final) and os.path.isdir(old):
        os.replace(old, final)  # a previous save stopped mid-swap: `old` is the complete one
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)
    if os.path.isdir(os.path.join(final, "replay")):
        _link_tree(os.path.join(final, "replay"), os.path.join(tmp, "replay"))
    # The replay saves to the same `tmp` path every time, so it recognises its earlier chunks there.
    replay.save(os.path.join(tmp, "replay"))
    _torch_save(agent.state_dict(), os.path.join(tmp, "agent.pt"))
    loop = {"progress": dataclasses.asdict(progress), "rng": rng_states(), "numpy": rng.bit_generator.state}
    _torch_save(loop, os.path.join(tmp, "loop.pt"))
    save_config(cfg, os.path.join(tmp, "config.yaml"))
    _fsync(os.path.join(tmp, "config.yaml"))
    _fsync(tmp)
    if os.path.isdir(final):
        os.replace(final, old)
    os.replace(tmp, final)
    _fsync(logdir)
    shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Loading


def find_checkpoint(path: str) -> str:
    """The checkpoint folder `path` names: a checkpoint itself, or a run folder that holds one."""
    for candidate in (path, os.path.join(path, CHECKPOINT), os.path.join(path, CHECKPOINT + ".old")):
        if all(os.path.isfile(os.path.join(candidate, name)) for name in ("agent.pt", "loop.pt")):
            return candidate
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint '{path}' not found")
    raise CheckpointError(
        f"no checkpoint in '{path}' (expected agent.pt and loop.pt in it or in {CHECKPOINT}/)"
    )


def _torch_load(path: str) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unreadable file is the user's to fix, not a crash
        message = str(err).splitlines()[0] if str(err) else ""
        raise CheckpointError(
            f"cannot read checkpoint file '{path}': {type(err).__name__}: {message}"
        ) from None


def load_weights(checkpoint: str, agent: Agent) -> None:
    """Load `agent.pt` into `agent`, which must have been built from a matching config."""
    try:
        agent.load_state_dict(_torch_load(os.path.join(checkpoint, "agent.pt")))
    except (AssertionError, RuntimeError, KeyError, ValueError) as err:
        message = " ".join(str(err).split())[:300]
        raise CheckpointError(
            f"checkpoint '{checkpoint}' does not fit the config's agent: {message}"
        ) from None


def load_loop_state(checkpoint: str) -> tuple[Progress, dict[str, Any]]:
    """Counters and RNG states of a checkpoint: its `Progress` and the whole of `loop.pt`."""
    loop = _torch_load(os.path.join(checkpoint, "loop.pt"))
    try:
        return Progress(**loop["progress"]), loop
    except (KeyError, TypeError) as err:
        raise CheckpointError(
            f"checkpoint '{checkpoint}' has a bad loop.pt: {type(err).__name__}: {err}"
        ) from None


def restore_checkpoint(
    checkpoint: str, loop: dict[str, Any], agent: Agent, replay: SequenceReplay, rng: np.random.Generator
) -> None:
    """Put a run back where `checkpoint` left it: weights, replay, and the RNG states of `loop`.

    `loop` is what `load_loop_state` returned; the counters in it are the caller's to keep.
    """
    load_weights(checkpoint, agent)
    replay.load(os.path.join(checkpoint, "replay"))
    set_rng_states(loop["rng"])
    rng.bit_generator.state = loop["numpy"]
