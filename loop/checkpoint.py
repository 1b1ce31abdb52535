"""Checkpoints of a training run: save atomically and verified, find, load, restore the loop.

    save_checkpoint(logdir, cfg, agent, replay, progress, rng)   # logdir/checkpoint/, complete or absent
    checkpoint = find_checkpoint(path)                           # a checkpoint, or a run folder's latest
    progress, loop = load_loop_state(checkpoint)                 # verifies it; counters seed the envs
    check_world_size(checkpoint, loop, world.size)               # saved by as many ranks as resume it
    restore_checkpoint(checkpoint, loop, agent, replay, rng)     # weights, replay, RNG states

A checkpoint is a folder:

    agent.pt      `Agent.state_dict()`: networks, optimisers, return normaliser
    loop.pt       {"progress": `Progress` as a dict, "rng": torch / Python (/ CUDA) RNG states,
                   "numpy": the state of the loop's numpy Generator, "world_size": the ranks that
                   saved it (1 for one process; absent from older checkpoints, meaning 1)}
    replay/       `SequenceReplay.save`: the replay buffer, in chunk files that never change; its
                  index replay.json holds each chunk file's sha256
    config.yaml   the config the weights were built from
    rank<k>/      data-parallel runs (agent/distributed.py), one per rank k >= 1: that rank's own
                  loop.pt (its counters and RNG states) and replay/; rank 0's are those above,
                  and agent.pt and config.yaml, the same on every rank, are written by rank 0 only
    digests.json  {"format": 1, "sha256": {relative path: hex digest}} of agent.pt, loop.pt,
                  config.yaml and replay/replay.json, and of every rank<k>/loop.pt and
                  rank<k>/replay/replay.json, written last

A run folder keeps the last two checkpoints: `checkpoint` and the one before, `checkpoint.prev`.
A save writes `checkpoint.tmp` (in a data-parallel run, every rank its part, then rank 0 the
digests once all are done), fsyncs it, then rotates with renames (`checkpoint.prev` to
`checkpoint.old`, `checkpoint` to `checkpoint.prev`, `checkpoint.tmp` to `checkpoint`, then
`checkpoint.old` is deleted), so a crash at any moment leaves at least one complete checkpoint
and the next save puts the names back in order. Replay chunks already saved are hard-linked from
the previous checkpoint, so each save writes only what is new (the two checkpoints share those
files). Loading checks every file against its digest first and refuses a mismatch, naming the
file and the earlier checkpoint that is intact, if any; a checkpoint without digests.json (written
before digests) loads unverified. Weights are never saved, nor loaded, with a non-finite value.
Files are read with `weights_only=True`: tensors and plain containers only. A data-parallel run
resumes only with the world size that saved it (each rank continues its own replay and RNG
streams); the run folder must be on a filesystem that every rank's machine sees.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import shutil
from typing import Any

import numpy as np
import torch

from agent.agent import Agent
from agent.distributed import SINGLE, World
from agent.guards import NonFiniteError, nonfinite_tensors
from configs import Config, save_config
from replay import ReplayLoadError, SequenceReplay
from replay.storage import INDEX_NAME, file_sha256, verify_snapshot

CHECKPOINT = "checkpoint"  # the latest complete checkpoint inside a run folder
PREVIOUS = CHECKPOINT + ".prev"  # the one before it
_OLD = CHECKPOINT + ".old"  # mid-rotation only: the one before the previous (or, from older code, the latest)
_TMP = CHECKPOINT + ".tmp"  # a save in progress
# Newest first: the checkpoints a run folder may hold after a crash at any moment of a rotation.
NAMES = (CHECKPOINT, PREVIOUS, _OLD)
MANIFEST = "digests.json"
_MANIFEST_FORMAT = 1
_DIGESTED = ("agent.pt", "loop.pt", "config.yaml", os.path.join("replay", INDEX_NAME))
_RANK_PARTS = ("loop.pt", os.path.join("replay", INDEX_NAME))  # of each rank<k>/ of a data-parallel run
_RANK_RE = re.compile(r"rank([1-9][0-9]*)")


class CheckpointError(Exception):
    """A checkpoint that is missing, unreadable or does not fit the agent: the user's to fix."""


@dataclasses.dataclass
class Progress:
    """The loop's counters; saved in every checkpoint so that `--resume` continues them."""

    env_steps: int = 0  # env steps taken, over all training envs
    updates: int = 0  # agent.train calls
    update_credit: float = 0.0  # updates owed by train_ratio but not yet made (fractional)
    episodes: int = 0  # training episodes finished
    skipped_updates: int = 0  # updates undone because a loss, gradient or weight went non-finite
    nonfinite_actions: int = 0  # actions replaced because the policy gave non-finite ones
    env_restarts: int = 0  # training envs replaced after their worker died or hung
    nonfinite_obs: int = 0  # non-finite observations or rewards from training envs, replaced by 0


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


def rank_dir(checkpoint: str, rank: int) -> str:
    """The folder of `checkpoint` that holds rank `rank`'s loop.pt and replay/: itself for rank 0."""
    return checkpoint if rank == 0 else os.path.join(checkpoint, f"rank{rank}")


def _rank_dirs(checkpoint: str) -> list[str]:
    """Every rank's folder in `checkpoint`, rank 0's (the checkpoint itself) first."""
    names = os.listdir(checkpoint) if os.path.isdir(checkpoint) else []
    ranks = sorted(int(m.group(1)) for m in map(_RANK_RE.fullmatch, names) if m)
    return [rank_dir(checkpoint, rank) for rank in [0, *ranks]]


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


def _write_manifest(directory: str, world_size: int) -> None:
    ranks = [os.path.join(f"rank{k}", name) for k in range(1, world_size) for name in _RANK_PARTS]
    digests = {name: file_sha256(os.path.join(directory, name)) for name in (*_DIGESTED, *ranks)}
    path = os.path.join(directory, MANIFEST)
    with open(path, "w") as f:
        json.dump({"format": _MANIFEST_FORMAT, "sha256": digests}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def _settle(logdir: str) -> None:
    """Put the checkpoint names of `logdir` back in order after a save that stopped midway.

    Whatever moment a crash hit, the newest complete checkpoint becomes `checkpoint` and the next
    one `checkpoint.prev`; a half-written `checkpoint.tmp` and anything older are deleted.
    """
    final, prev, old, tmp = (os.path.join(logdir, name) for name in (CHECKPOINT, PREVIOUS, _OLD, _TMP))
    shutil.rmtree(tmp, ignore_errors=True)
    for newer, older in ((final, prev), (prev, old), (final, prev)):
        if not os.path.isdir(newer) and os.path.isdir(older):
            os.replace(older, newer)
    shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(
    logdir: str,
    cfg: Config,
    agent: Agent,
    replay: SequenceReplay,
    progress: Progress,
    rng: np.random.Generator,
    world: World = SINGLE,
) -> None:
    """Write `logdir/checkpoint`: weights and optimisers, counters, RNG states, replay, config.

    Everything goes into `checkpoint.tmp` with its digests, is fsynced, then rotated into place;
    the previous checkpoint stays as `checkpoint.prev` (unless it no longer matches its digests).
    In a data-parallel run every rank calls this at the same step and writes its own replay and
    loop state (`rank_dir`); rank 0 writes the rest and, once every rank is done, rotates.

    Raises:
        NonFiniteError: a weight or optimiser state is non-finite; nothing is written. The ranks'
            weights are equal, so all of them raise it.
    """
    state = agent.state_dict()
    bad = nonfinite_tensors(state)
    if bad:
        raise NonFiniteError(f"not saving a checkpoint: non-finite values in {', '.join(bad[:4])}")
    final, prev, old, tmp = (os.path.join(logdir, name) for name in (CHECKPOINT, PREVIOUS, _OLD, _TMP))
    if world.main:
        _settle(logdir)
    world.barrier()  # checkpoint.tmp is empty and the names are in order before any rank writes
    own_final, own = rank_dir(final, world.rank), rank_dir(tmp, world.rank)
    if os.path.isdir(os.path.join(own_final, "replay")):
        _link_tree(os.path.join(own_final, "replay"), os.path.join(own, "replay"))
    # The replay saves to the same `tmp` path every time, so it recognises its earlier chunks there.
    replay.save(os.path.join(own, "replay"))
    loop = {
        "progress": dataclasses.asdict(progress),
        "rng": rng_states(),
        "numpy": rng.bit_generator.state,
        "world_size": world.size,
    }
    _torch_save(loop, os.path.join(own, "loop.pt"))
    _fsync(own)
    world.barrier()  # every rank's part is written
    if not world.main:
        world.barrier()  # rank 0 rotates
        return
    _torch_save(state, os.path.join(tmp, "agent.pt"))
    save_config(cfg, os.path.join(tmp, "config.yaml"))
    _fsync(os.path.join(tmp, "config.yaml"))
    _write_manifest(tmp, world.size)
    _fsync(tmp)
    if os.path.isdir(final):
        if _mismatch(final) is None:
            if os.path.isdir(prev):
                os.replace(prev, old)
            os.replace(final, prev)
        else:
            # `checkpoint` went bad on disk since it was saved: keep the good one before it.
            os.replace(final, old)
    os.replace(tmp, final)
    _fsync(logdir)
    shutil.rmtree(old, ignore_errors=True)
    world.barrier()  # the new checkpoint is in place before any rank goes on


# ---------------------------------------------------------------------------------------------
# Loading


def _complete(directory: str) -> bool:
    return all(os.path.isfile(os.path.join(directory, name)) for name in ("agent.pt", "loop.pt"))


def find_checkpoint(path: str) -> str:
    """The checkpoint folder `path` names: a checkpoint itself, or a run folder's newest one."""
    for candidate in (path, *(os.path.join(path, name) for name in NAMES)):
        if _complete(candidate):
            return candidate
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint '{path}' not found")
    raise CheckpointError(
        f"no checkpoint in '{path}' (expected agent.pt and loop.pt in it or in {CHECKPOINT}/)"
    )


def _mismatch(checkpoint: str) -> str | None:
    """Why `checkpoint`'s files do not match their digests (naming the file), or None if they do
    (or if it predates digests). Replay chunk files are not read here."""
    path = os.path.join(checkpoint, MANIFEST)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            digests = json.load(f)["sha256"]
        assert isinstance(digests, dict) and all(isinstance(v, str) for v in digests.values())
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        return f"checkpoint file '{path}' is unreadable or corrupt"
    # The files every checkpoint has, then those of the other ranks of a data-parallel run.
    for name in dict.fromkeys([*_DIGESTED, *sorted(digests)]):
        file = os.path.join(checkpoint, name)
        if name not in digests:
            return f"checkpoint file '{path}' has no digest of {name}"
        if not os.path.isfile(file):
            return f"checkpoint file '{file}' is missing"
        if file_sha256(file) != digests[name]:
            return f"checkpoint file '{file}' does not match its sha256 in {MANIFEST}: it is corrupt"
    return None


def _intact(checkpoint: str) -> int | None:
    """The env steps of `checkpoint` if every file of it, replay chunks included, is intact."""
    if not _complete(checkpoint) or _mismatch(checkpoint) is not None:
        return None
    try:
        for directory in _rank_dirs(checkpoint):
            verify_snapshot(os.path.join(directory, "replay"))
        return int(_torch_load(os.path.join(checkpoint, "loop.pt"))["progress"]["env_steps"])
    except (ReplayLoadError, CheckpointError, KeyError, TypeError, ValueError):
        return None


def _earlier(checkpoint: str) -> str:
    """Which checkpoint of the same run folder, older than `checkpoint`, is intact: for a message."""
    checkpoint = os.path.abspath(checkpoint)
    run, name = os.path.split(checkpoint)
    if name not in NAMES:
        return "no other checkpoint of it is known"
    for older in NAMES[NAMES.index(name) + 1 :]:
        steps = _intact(os.path.join(run, older))
        if steps is not None:
            return (
                f"the earlier checkpoint '{os.path.join(run, older)}' ({steps} env steps) is intact "
                f"(move '{name}' aside and --resume takes it)"
            )
    return "no earlier checkpoint of the run is intact"


def verify_checkpoint(checkpoint: str) -> bool:
    """Check `checkpoint`'s weights, loop state, config and replay index against their digests.

    Returns False for a checkpoint written before digests (nothing to check), True otherwise.
    Replay chunk files are checked as `restore_checkpoint` reads them.

    Raises:
        CheckpointError: a file is missing or does not match; the message names it and the
            earlier checkpoint that is intact, if any.
    """
    problem = _mismatch(checkpoint)
    if problem is not None:
        raise CheckpointError(f"{problem}; {_earlier(checkpoint)}")
    return os.path.exists(os.path.join(checkpoint, MANIFEST))


def _torch_load(path: str) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unreadable file is the user's to fix, not a crash
        message = str(err).splitlines()[0] if str(err) else ""
        raise CheckpointError(
            f"checkpoint file '{path}' is truncated, corrupt or not a checkpoint file "
            f"({type(err).__name__}: {message})"
        ) from None


def load_weights(checkpoint: str, agent: Agent) -> None:
    """Load `agent.pt` into `agent`, which must have been built from a matching config."""
    path = os.path.join(checkpoint, "agent.pt")
    state = _torch_load(path)
    bad = nonfinite_tensors(state)
    if bad:
        raise CheckpointError(
            f"checkpoint file '{path}' holds non-finite values (in {', '.join(bad[:4])}); "
            f"{_earlier(checkpoint)}"
        )
    try:
        agent.load_state_dict(state)
    except (AssertionError, RuntimeError, KeyError, ValueError) as err:
        message = " ".join(str(err).split())[:300]
        raise CheckpointError(
            f"checkpoint '{checkpoint}' does not fit the config's agent: {message}"
        ) from None


def check_world_size(checkpoint: str, loop: dict[str, Any], world_size: int) -> None:
    """Refuse to resume `checkpoint` (whose loop.pt `loop` is, from `load_loop_state`) with another
    number of ranks than saved it: each rank goes on with its own replay and RNG streams.

    Raises:
        CheckpointError: one line with the world size to resume it with.
    """
    saved = int(loop.get("world_size", 1))
    if saved == world_size:
        return
    how = (
        f"with torchrun and {saved} ranks (e.g. --nproc_per_node={saved})"
        if saved > 1
        else "without torchrun"
    )
    raise CheckpointError(
        f"checkpoint '{checkpoint}' was saved by {saved} rank(s) and this run has {world_size}: "
        f"resume it {how}"
    )


def load_loop_state(checkpoint: str, rank: int = 0) -> tuple[Progress, dict[str, Any]]:
    """Verify `checkpoint` (`verify_checkpoint`), then read rank `rank`'s counters and RNG states:
    its `Progress` and the whole of its loop.pt."""
    verify_checkpoint(checkpoint)
    path = os.path.join(rank_dir(checkpoint, rank), "loop.pt")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint file '{path}' is missing")
    loop = _torch_load(path)
    try:
        return Progress(**loop["progress"]), loop
    except (KeyError, TypeError) as err:
        raise CheckpointError(
            f"checkpoint '{checkpoint}' has a bad loop.pt: {type(err).__name__}: {err}"
        ) from None


def restore_checkpoint(
    checkpoint: str,
    loop: dict[str, Any],
    agent: Agent,
    replay: SequenceReplay,
    rng: np.random.Generator,
    rank: int = 0,
) -> None:
    """Put a run (or rank `rank` of one) back where `checkpoint` left it: weights, its replay,
    and the RNG states of `loop`.

    `loop` is what `load_loop_state` returned for that rank; the counters in it are the caller's.
    """
    load_weights(checkpoint, agent)
    try:
        replay.load(os.path.join(rank_dir(checkpoint, rank), "replay"))
    except ReplayLoadError as err:
        raise CheckpointError(f"{err}; {_earlier(checkpoint)}") from None
    set_rng_states(loop["rng"])
    rng.bit_generator.state = loop["numpy"]
