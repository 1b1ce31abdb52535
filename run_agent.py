"""Train, resume or evaluate an agent: the one training loop of this project, top to bottom.

examples:

    python run_agent.py                                     # POPGym RepeatPreviousEasy, CPU-sized
    python run_agent.py --preset popgym_cpu --steps 20000 agent.horizon=10
    python run_agent.py --preset debug --env gym:CartPole-v1 --logdir runs/smoke
    python run_agent.py --resume runs/smoke train.steps=400   # continue a run where it stopped
    python run_agent.py --eval-only runs/smoke/checkpoint     # evaluate saved weights
    torchrun --standalone --nproc_per_node=2 run_agent.py --preset debug --env gym:CartPole-v1

The loop (docs/design.md §6): N vectorised envs act with the agent's policy (the world model's step
mode on a carried latent that resets per env at `is_first`); every step goes into the sequence
replay, one stream per env; after `train.prefill` steps of random actions the agent trains on
replayed (B, T) batches, `train.train_ratio` replayed steps per env step (DreamerV3). With
`replay.store_state`, each step is stored with its latent and every update writes the posteriors it
trained on back over them (DreamerV3's replay context). Along the way it logs scalars, videos of
open-loop predictions for image tasks, evaluates and checkpoints.
Config keys, their defaults and meanings: configs/schema.py; presets: configs/presets/.

Data-parallel training (agent/distributed.py): under `torchrun --nproc_per_node=N` each of the N
ranks runs this loop with env.num_envs envs of its own (rank k seeded from seed + k·10^7) and a
replay of its own, and trains on its own (B, T) batches; every update averages the gradients over
the ranks, so all hold the same weights. `train.steps`, `prefill` and the periods count env steps
of all ranks, and `train_ratio` keeps its meaning over them (each rank makes the updates its own
env steps owe). Rank 0 writes the logs, config and shared checkpoint files, evaluates and records
videos; each rank saves its replay and RNG states in the checkpoint, and `--resume` needs the same
number of ranks. A world size of 1 (or no torchrun) is a plain single process.

A run folder holds (formats of the logs: loop/logger.py; of the checkpoint: loop/checkpoint.py):

    config.yaml             the resolved config; `--resume` reads it
    metrics.jsonl           one JSON object per log event with its env `step` (eval/return, ...)
    episodes.jsonl          one line per finished training episode: {"step", "return", "length", "env"}
    events.out.tfevents.*   TensorBoard: losses, returns, episode lengths, speed, eval returns, videos
    checkpoint/             agent.pt (networks, optimisers), loop.pt (counters, RNG states),
                            replay/ (the replay buffer), config.yaml (the config of the weights),
                            digests.json (sha256 of each file, checked before loading);
                            rank<k>/ (loop.pt, replay/) for each rank k >= 1 of a data-parallel run
    checkpoint.prev/        the checkpoint before, kept in case the latest one is damaged

Ctrl-C (or SIGTERM) stops at the end of the current step and saves a checkpoint first.

Faults: an update whose loss, gradient norm or weights come out non-finite is undone and counted
(`train/skipped_updates`); `train.max_skipped_updates` of them in a row stop the run. A
non-finite action is replaced by a random one (`train/nonfinite_actions`); an env's non-finite
observation is replaced by 0 and ends its episode (`env/nonfinite_obs`); an env subprocess that
dies or hangs is replaced (`env/restarts`, envs/vector.py). Any other crash saves a checkpoint
before it stops the run; in a data-parallel run it keeps the last one instead (a checkpoint holds
every rank's replay at one step), and a rank that dies makes torchrun stop the others.

Exit status: 0 done; 2 bad input (a flag, config value, env, run folder or damaged checkpoint) or
values that went non-finite for good (the last good checkpoint is kept); 3 an env subprocess that
kept dying (a checkpoint is saved first), or another rank of a data-parallel run that died or hung
(its last checkpoint is kept); 130 stopped early. Each but 0 and 130 prints one
`error:` line on stderr (under torchrun: rank 0's, and those of other ranks as `error: rank k:`
for what fails after the ranks joined; torchrun itself then exits 1, naming each rank's status).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import os
import random
import signal
import sys
import textwrap
import time
from collections import defaultdict, deque
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

import envs
from agent import Agent
from agent.distributed import SINGLE, RankLostError, World, WorldError, data_parallel
from agent.guards import NonFiniteError, UpdateGuard, finite_actions
from configs import Config, ConfigError, list_presets, load_config, load_config_file, save_config, validate
from envs.vector import EnvWorkerError
from loop.checkpoint import (
    NAMES,
    CheckpointError,
    Progress,
    check_world_size,
    find_checkpoint,
    load_loop_state,
    load_weights,
    restore_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from loop.logger import EPISODES, METRICS, Episodes, Logger, NullLogger, open_loop_video
from replay import ReplayLoadError, SequenceReplay

# What `python run_agent.py` trains when no --preset is given: the CPU recipe of the POPGym target
# of docs/results.md (configs/presets/popgym_cpu.yaml) for 20k env steps: a few minutes on 2 CPU
# cores, in which the greedy policy goes from a random policy's -0.5 to 0.246 and 0.525 (seeds 0
# and 1; of at most 1); the S3M as it was before it followed R2I's code reached 0.767 and 0.796
# (docs/results.md, Analysis).
DEFAULT_PRESETS = "popgym_cpu"
DEFAULT_OVERRIDES = ("train.steps=20000", "train.eval_every=5000", "train.checkpoint_every=5000")

EXIT_ERROR = 2  # bad input: a flag, config key or value, env id, run folder or checkpoint
EXIT_FAULT = 3  # an env subprocess kept dying (a checkpoint was saved), or another rank died
EXIT_INTERRUPTED = 130  # stopped by Ctrl-C / SIGTERM after saving a checkpoint (128 + SIGINT)
EVAL_SEED_OFFSET = 1_000_000  # evaluation envs never share seeds with training envs
# Rank k of a data-parallel run seeds from seed + k * this: its envs, replay and RNGs draw streams
# of their own (and seeds stay below 2**32, which some env suites need, up to rank 400).
RANK_SEED_OFFSET = 10_000_000
RECENT_EPISODES = 20  # training episodes averaged for the progress bar's return
QUIET_EXIT_DELAY_S = 3.0  # how long a rank > 0 waits to exit on an error that rank 0 reports

# A folder holding one of these (or TensorBoard events) is a run, and never written into anew.
RUN_FILES = ("config.yaml", METRICS, EPISODES, *NAMES)


class RunError(Exception):
    """Bad input the user can fix (flag, run folder): printed as one `error:` line."""


USER_ERRORS = (RunError, CheckpointError, ConfigError, envs.EnvError, ReplayLoadError, WorldError)


# ---------------------------------------------------------------------------------------------
# Factories: the three parts of a run, built from its config


def warn(message: str) -> None:
    """One warning line on stderr, above the progress bar."""
    tqdm.write(message, file=sys.stderr)


def make_env(cfg: Config, num_envs: int, seed: int) -> envs.VectorEnv:
    """N copies of `cfg.env.name` (subprocesses when N > 1); env i is seeded `seed + i`.

    Env subprocesses ignore Ctrl-C (envs/workers.py), so it reaches only this process, which
    stops the loop cleanly and saves a checkpoint instead of losing its envs.
    """
    return envs.VectorEnv(
        cfg.env.name,
        num_envs,
        seed,
        worker_timeout=cfg.env.worker_timeout,
        max_restarts=cfg.env.max_restarts,
        warn=warn,
        **cfg.env.options,
    )


def make_replay(cfg: Config, num_streams: int) -> SequenceReplay:
    """The sequence replay, one FIFO stream per training env."""
    return SequenceReplay.from_config(cfg.replay, num_streams, cfg.seed)


def resolve_device(cfg: Config, world: World = SINGLE) -> torch.device:
    """Where the networks of `cfg.device` live: under torchrun, a rank's CUDA device is
    cuda:<local rank>, one GPU per rank."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RunError("device=cuda but torch sees no CUDA device; use device=cpu or device=auto")
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if cfg.device == "auto" else cfg.device)
    if device.type == "cuda" and world.distributed:
        if world.local_rank >= torch.cuda.device_count():
            raise RunError(
                f"rank {world.rank} has local rank {world.local_rank} but torch sees "
                f"{torch.cuda.device_count()} CUDA devices; start at most one rank per GPU"
            )
        device = torch.device("cuda", world.local_rank)
    return device


def make_agent(cfg: Config, env: envs.VectorEnv, device: torch.device | None = None) -> Agent:
    """World model (`cfg.world_model`) and actor-critic for `env`'s observations and actions, on
    `device` (default: `resolve_device(cfg)`)."""
    device = resolve_device(cfg) if device is None else device
    if cfg.threads > 0:
        # Fewer intra-op threads than cores helps when env subprocesses or other runs share the CPU.
        torch.set_num_threads(cfg.threads)
    return Agent(cfg, env.obs_space, env.action_dim, env.discrete, device)


# ---------------------------------------------------------------------------------------------
# Acting and evaluating


def evaluate(agent: Agent, env: envs.VectorEnv, episodes: int, sample: bool = False) -> dict[str, float]:
    """Mean return and length of `episodes` fresh episodes with the greedy policy (mode="eval"),
    or with sampled actions (mode="explore", the policy that training optimises and runs).

    Each env runs a fixed share of the episodes, so short episodes are not over-represented
    (taking the first `episodes` to finish over all envs would favour them).
    """
    share = [episodes // env.num_envs + (i < episodes % env.num_envs) for i in range(env.num_envs)]
    results: list[list[tuple[float, int]]] = [[] for _ in range(env.num_envs)]
    tracker = Episodes(env.num_envs)
    rng = np.random.default_rng(0)  # actions for envs whose policy output went non-finite
    step, state = env.reset(), agent.initial_state(env.num_envs)
    while any(len(done) < want for done, want in zip(results, share)):
        for i, ret, length in tracker.observe(step):
            if len(results[i]) < share[i]:
                results[i].append((ret, length))
        action, state = agent.policy(step, state, mode="explore" if sample else "eval")
        action, state, _ = finite_actions(agent, action, state, lambda: env.random_actions(rng))
        step = env.step(action)
    flat = [result for done in results for result in done]
    return {
        "eval/return": float(np.mean([ret for ret, _ in flat])),
        "eval/length": float(np.mean([length for _, length in flat])),
    }


# ---------------------------------------------------------------------------------------------
# The training loop


class StopRequest:
    """Turns the first Ctrl-C / SIGTERM into a request to stop after the current step.

    A second Ctrl-C interrupts at once (the previous handler is back), e.g. during a long save;
    with `again` set to False later signals only repeat the request. A rank of a data-parallel run
    gets two (the terminal's Ctrl-C reaches every process, then torchrun passes its own on), and
    torchrun kills the ranks that have not exited 30 s later.
    """

    again = True  # whether a second signal interrupts at once

    def __init__(self) -> None:
        self.requested = False
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            return
        self.requested = True
        if self.again:
            self.restore()
            tqdm.write("stopping after this step to save a checkpoint (Ctrl-C again to quit at once)")
        else:
            tqdm.write("stopping after this step to save a checkpoint")

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def ignore_sigterm(self) -> None:
        """For a rank of a data-parallel run leaving the loop: ignore SIGTERM until the process
        ends. torchrun sends it to the other ranks as soon as one dies; with the default handler
        back (Python also puts it back while it shuts down) a rank would die of it before it
        reports why, or with a status other than its own. torchrun still kills it 30 s later."""
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def crossed(every: int, before: int, after: int) -> bool:
    """Whether a multiple of `every` lies in (before, after]; never when `every` is 0."""
    return every > 0 and after // every > before // every


def updates_ahead(
    cfg: Config, progress: Progress, replay: SequenceReplay, num_envs: int, world_size: int = 1
) -> float:
    """The updates this session's remaining env steps owe, counting only the steps after which
    the loop trains: the prefill is done and a stream holds a sequence of train.seq_len steps.

    `num_envs` is each rank's; an iteration takes num_envs · world_size env steps in all, and owes
    each rank the updates of its own env steps (each update trains on every rank's batch)."""
    tc = cfg.train
    start, longest = progress.env_steps, int(replay.stream_lengths.max())
    steps = num_envs * world_size
    last = -(-(tc.steps - start) // steps)  # loop iterations left; iteration k ends at start + k·N
    first = max(1, -(-(tc.prefill - start) // steps), tc.seq_len - longest)
    eligible = max(0, last - first + 1)
    return progress.update_credit + eligible * num_envs * tc.train_ratio / (tc.batch_size * tc.seq_len)


def last_good_checkpoint(logdir: str) -> str:
    """Where the run's newest checkpoint is, for a message: it was saved with finite weights."""
    try:
        checkpoint = find_checkpoint(logdir)
        steps = load_loop_state(checkpoint)[0].env_steps
    except CheckpointError:
        return "no checkpoint was saved before"
    return f"its last good checkpoint, at {steps} env steps, is {os.path.abspath(checkpoint)}"


def rank_config(cfg: Config, world: World) -> Config:
    """The config rank `world.rank` trains with: the run's, seeded `RANK_SEED_OFFSET` apart per
    rank (rank 0, and a single process, keep `cfg` itself)."""
    if world.rank == 0:
        return cfg
    return dataclasses.replace(cfg, seed=cfg.seed + world.rank * RANK_SEED_OFFSET)


def train(cfg: Config, resume: str | None, world: World = SINGLE, device: torch.device | None = None) -> int:
    """Train the agent of `cfg` in the run folder `cfg.logdir`, or continue it from checkpoint `resume`.

    In a data-parallel run every rank calls this with its `world` (joined) and `device`; they
    act, train, log, checkpoint and stop at the same env steps.

    Returns the exit status: 0 when done, EXIT_INTERRUPTED when stopped early (checkpoint saved).

    Raises:
        NonFiniteError: `train.max_skipped_updates` updates in a row went non-finite; the message
            says where the last good checkpoint is (none is saved now).
        EnvWorkerError: an env subprocess kept dying; a checkpoint was saved first (not in a
            data-parallel run, whose last checkpoint stays the latest).
        RankLostError: another rank died or hung (a data-parallel run); its last checkpoint stays.
    """
    tc, logdir = cfg.train, cfg.logdir
    cfg = rank_config(cfg, world)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)  # the prefill's random actions
    progress, loop_state = Progress(), {}
    if resume:
        progress, loop_state = load_loop_state(resume, world.rank)

    with contextlib.ExitStack() as stack:
        # Resumed envs start new episodes with new seeds, so they do not replay the run's first ones.
        env = stack.enter_context(make_env(cfg, cfg.env.num_envs, cfg.seed + progress.env_steps))
        eval_env = None
        if tc.eval_episodes > 0 and world.main:
            eval_seed = cfg.seed + EVAL_SEED_OFFSET + progress.env_steps
            eval_env = stack.enter_context(make_env(cfg, cfg.env.eval_envs, eval_seed))
        agent = make_agent(cfg, env, device)
        data_parallel(agent, world)  # before the checkpoint loads: its return normaliser is shared
        guard = UpdateGuard(agent, tc.max_skipped_updates)
        replay = make_replay(cfg, env.num_envs)
        # One process calls these as it always has (benchmarks/soak.py wraps the calls); each rank
        # of a data-parallel run saves and restores its own part.
        this_world, this_rank = ((world,), (world.rank,)) if world.distributed else ((), ())
        if resume:
            restore_checkpoint(resume, loop_state, agent, replay, rng, *this_rank)
            if world.main:
                # The run's config now holds this session's overrides (e.g. a larger train.steps).
                save_config(cfg, os.path.join(logdir, "config.yaml.tmp"))
                os.replace(os.path.join(logdir, "config.yaml.tmp"), os.path.join(logdir, "config.yaml"))
        elif world.main:
            os.makedirs(logdir, exist_ok=True)
            save_config(cfg, os.path.join(logdir, "config.yaml"))
        resumed_at = progress.env_steps if resume else None
        logger = stack.enter_context(Logger(logdir, resumed_at=resumed_at) if world.main else NullLogger())
        # Data-parallel runs record their world size: `--resume` needs the same.
        ranks = {"world_size": world.size} if world.distributed else {}
        if resume:
            replay_steps = int(world.sum([len(replay)])[0])
            logger.event(progress.env_steps, event="resume", replay_steps=replay_steps, **ranks)
        else:
            if ranks:
                logger.event(progress.env_steps, event="start", **ranks)
            if world.main:
                logger.text("config", "```\n" + Path(logdir, "config.yaml").read_text() + "\n```")

        counts = agent.parameter_counts()
        per_rank = f" on each of {world.size} ranks" if world.distributed else ""
        if world.main:
            print(
                f"{cfg.world_model} agent on {cfg.env.name} ({env.num_envs} envs{per_rank}) in {logdir}: "
                f"{counts['total']:,} parameters (world model {counts['world_model']:,}, "
                f"actor {counts['actor']:,}, critic {counts['critic']:,})"
            )
        if world.main and updates_ahead(cfg, progress, replay, env.num_envs, world.size) < 1.0:
            warn(
                f"warning: this run makes no updates: an update needs train.prefill={tc.prefill} env "
                f"steps and train.seq_len={tc.seq_len} steps in one env's replay, but the run ends at "
                f"train.steps={tc.steps} with env.num_envs={env.num_envs}{per_rank}"
            )
        B, T = tc.batch_size, tc.seq_len
        # DreamerV3: train_ratio replayed steps per env step. Each rank's env steps owe it updates
        # at this rate, and each update replays B·T steps on every rank: over all ranks, still
        # train_ratio replayed steps per env step.
        updates_per_step = tc.train_ratio / (B * T)
        steps_per_iteration = env.num_envs * world.size  # env steps of all ranks per loop iteration
        first_env = world.rank * env.num_envs  # this rank's env 0 among all ranks' envs
        episodes, recent = Episodes(env.num_envs), deque(maxlen=RECENT_EPISODES)
        finished: list[tuple[int, int, float, int]] = []  # (step, env, return, length), not logged yet
        window: dict[str, list[float]] = defaultdict(list)  # what happened since the last log
        window_start, window_steps = time.time(), progress.env_steps
        session_start, session_steps = time.time(), progress.env_steps
        # Fault counters of the envs count from 0 in each session; Progress carries them on.
        counted = {"env_restarts": 0, "nonfinite_obs": 0}
        last_eval: dict[str, float] = {}
        saved_at = evaluated_at = -1
        stop = StopRequest()
        stop.again = not world.distributed
        stack.callback(stop.ignore_sigterm if world.distributed else stop.restore)
        bar = stack.enter_context(
            tqdm(
                total=tc.steps,
                initial=progress.env_steps,
                unit="step",
                dynamic_ncols=True,
                smoothing=0.05,
                disable=not world.main,
            )
        )

        resume_hint = f"--resume {os.path.abspath(logdir)}"

        def log_episodes() -> None:
            """Log the episodes every rank finished since the last call, ordered by step and env."""
            for at, i, ret, length in sorted(world.gather(finished)):
                logger.episode(at, i, ret, length)
                window["episode/return"].append(ret)
                window["episode/length"].append(length)
                recent.append(ret)
            finished.clear()

        def save() -> None:
            nonlocal saved_at
            log_episodes()  # the episodes log holds every episode up to the checkpoint's step
            save_checkpoint(logdir, cfg, agent, replay, progress, rng, *this_world)
            saved_at = progress.env_steps

        def count_env_faults() -> None:
            for key, now in (("env_restarts", env.restarts), ("nonfinite_obs", env.nonfinite)):
                setattr(progress, key, getattr(progress, key) + now - counted[key])
                counted[key] = now

        def totals() -> dict[str, float]:
            """The fault counters of all ranks together (each rank's Progress counts its own)."""
            keys = ("nonfinite_actions", "env_restarts", "nonfinite_obs")
            return dict(zip(keys, world.sum([getattr(progress, key) for key in keys])))

        try:
            step, state = env.reset(), agent.initial_state(env.num_envs)
            stopping = world.any(stop.requested)  # every rank stops at the same step
            while progress.env_steps < tc.steps and not stopping:
                # Act: the policy observes step t (resetting its state where is_first) and picks a_t.
                for i, ret, length in episodes.observe(step):
                    finished.append((progress.env_steps, first_env + i, ret, length))
                    progress.episodes += 1
                if not world.distributed:
                    log_episodes()  # as they end; ranks gather theirs when they log or save
                action, state = agent.policy(step, state, mode="explore")
                if progress.env_steps < tc.prefill:
                    # Random actions, but the latent still tracks them, for replay context and the switch.
                    action = env.random_actions(rng)
                    state = {**state, "action": torch.as_tensor(action, device=state["action"].device)}
                action, state, repaired = finite_actions(
                    agent, action, state, lambda: env.random_actions(rng)
                )
                if repaired:
                    if not progress.nonfinite_actions:
                        warn(
                            f"warning: the policy gave non-finite actions or latents for env(s) {repaired} "
                            f"at {progress.env_steps} env steps; sent random actions and restarted their "
                            f"latents (later ones are counted in train/nonfinite_actions)"
                        )
                    progress.nonfinite_actions += len(repaired)
                transition = {**step, "action": action}
                if cfg.replay.store_state:
                    transition.update(agent.replay_state(state))
                replay.add(transition)
                step = env.step(action)
                count_env_faults()
                before, progress.env_steps = progress.env_steps, progress.env_steps + steps_per_iteration
                bar.update(steps_per_iteration)

                # Train: as many updates as the ratio owes, once prefill is done and a sequence fits.
                # Every rank's replay grows alike, so all ranks make the same updates, in lockstep.
                if progress.env_steps >= tc.prefill and replay.stream_lengths.max() >= T:
                    progress.update_credit += env.num_envs * updates_per_step
                    while progress.update_credit >= 1.0:
                        progress.update_credit -= 1.0
                        batch = replay.sample(B, T)
                        metrics, states = guard.train(batch)
                        if metrics is None:
                            # Undone: nothing of it reaches the weights, the logs or the replay.
                            if progress.skipped_updates == 0 and world.main:  # all ranks skip it
                                warn(
                                    f"warning: an update went non-finite at {progress.env_steps} env "
                                    f"steps ({guard.last}); undid it (later ones are counted in "
                                    f"train/skipped_updates)"
                                )
                            progress.skipped_updates += 1
                            continue
                        if cfg.replay.store_state:
                            # Replay context (DreamerV3): the posteriors just trained on replace the
                            # stored latents of these steps, so later samples start from a recent
                            # model's latents instead of those of the model that acted back then.
                            replay.update_state(batch["start/stream"], batch["start/index"], states)
                        for key, value in metrics.items():
                            window[key].append(value)
                        progress.updates += 1

                # Log, evaluate, record videos and checkpoint when their period comes round.
                now = progress.env_steps
                if crossed(tc.log_every, before, now):
                    log_episodes()
                    faults = totals()
                    elapsed = time.time() - window_start
                    scalars = {key: float(np.mean(values)) for key, values in window.items()}
                    scalars["perf/env_steps_per_s"] = (now - window_steps) / max(elapsed, 1e-9)
                    scalars["perf/updates"] = progress.updates
                    scalars["replay/steps"] = world.sum([len(replay)])[0]
                    scalars["train/skipped_updates"] = progress.skipped_updates
                    scalars["train/nonfinite_actions"] = faults["nonfinite_actions"]
                    scalars["env/restarts"] = faults["env_restarts"]
                    scalars["env/nonfinite_obs"] = faults["nonfinite_obs"]
                    logger.scalars(now, scalars)
                    window.clear()
                    window_start, window_steps = time.time(), now
                if crossed(tc.eval_every, before, now) and eval_env is not None:
                    last_eval, evaluated_at = evaluate(agent, eval_env, tc.eval_episodes, tc.eval_sample), now
                    logger.scalars(now, last_eval)
                    tqdm.write(f"step {now}: eval return {last_eval['eval/return']:.3f}")
                video = crossed(tc.video_every, before, now) and "image" in env.obs_space
                if video and progress.updates and world.main:
                    logger.video(now, "open_loop/image", open_loop_video(agent, replay, T))
                if crossed(tc.checkpoint_every, before, now):
                    save()
                if recent:
                    bar.set_postfix(ret=f"{np.mean(recent):.3f}", refresh=False)
                stopping = world.any(stop.requested)
            bar.close()

            if stopping:
                save()
                if world.main:
                    print(f"stopped at {progress.env_steps} env steps; continue with {resume_hint}")
                return EXIT_INTERRUPTED
            if eval_env is not None and evaluated_at != progress.env_steps:
                last_eval = evaluate(agent, eval_env, tc.eval_episodes, tc.eval_sample)
                logger.scalars(progress.env_steps, last_eval)
            if saved_at != progress.env_steps:
                save()
            faults = totals()
        except NonFiniteError as err:
            # The weights are the last finite ones, but they led here: keep the checkpoint before.
            bar.close()
            raise NonFiniteError(
                f"{err}; stopped at {progress.env_steps} env steps, {last_good_checkpoint(logdir)}"
            ) from None
        except Exception as err:
            bar.close()
            if world.distributed:
                # A checkpoint holds every rank's replay at one step: one rank cannot save one alone,
                # and the others may be gone. The last complete one stays the latest.
                where = (
                    f"a data-parallel run saves no checkpoint on a crash; {last_good_checkpoint(logdir)}; "
                    f"continue with {resume_hint}"
                )
            else:
                # Save what the run has (its weights are finite: the guard saw to it) before it stops.
                try:
                    save()
                    where = (
                        f"saved a checkpoint at {progress.env_steps} env steps first: continue with "
                        f"{resume_hint}"
                    )
                except Exception as save_err:
                    where = f"could not save a checkpoint ({type(save_err).__name__}: {save_err})"
            if isinstance(err, (EnvWorkerError, RankLostError)):
                raise type(err)(f"{err}; {where}") from None
            print(f"crashed at {progress.env_steps} env steps; {where}", file=sys.stderr)
            raise

    if not world.main:
        return 0
    wall = time.time() - session_start
    steps = progress.env_steps - session_steps
    final = f"{last_eval['eval/return']:.3f}" if last_eval else "n/a (train.eval_episodes=0)"
    print(f"env steps:         {progress.env_steps} ({steps} in this session)")
    print(f"wall time:         {wall:.1f} s")
    print(f"env steps/s:       {steps / max(wall, 1e-9):.1f}")
    print(f"final eval return: {final}")
    print(f"run folder:        {logdir}")
    if world.distributed:
        print(f"ranks:             {world.size} ({env.num_envs} envs each)")
    actions, observations = int(faults["nonfinite_actions"]), int(faults["nonfinite_obs"])
    if progress.skipped_updates or actions or observations:
        print(
            f"non-finite values: {progress.skipped_updates} updates skipped, {actions} "
            f"actions and {observations} observations replaced"
        )
    if faults["env_restarts"]:
        print(f"env restarts:      {int(faults['env_restarts'])}")
    return 0


def eval_only(checkpoint_path: str, overrides: list[str], logdir: str | None, seed: int | None) -> int:
    """Evaluate a checkpoint's weights for `train.eval_episodes` episodes; log into a new folder."""
    checkpoint = find_checkpoint(checkpoint_path)
    verify_checkpoint(checkpoint)  # before its config.yaml is read
    run = os.path.dirname(os.path.abspath(checkpoint))
    # The checkpoint's own config describes its weights; the run's config beside it is the fallback.
    config = os.path.join(checkpoint, "config.yaml")
    cfg = load_config_file(config if os.path.isfile(config) else os.path.join(run, "config.yaml"), overrides)
    cfg.seed = cfg.seed if seed is None else seed
    if cfg.train.eval_episodes < 1:
        raise RunError("--eval-only needs train.eval_episodes >= 1")
    logdir = logdir or os.path.join(run, "eval-" + time.strftime("%Y%m%d-%H%M%S"))
    check_new_logdir(logdir)
    torch.manual_seed(cfg.seed)
    with make_env(cfg, cfg.env.eval_envs, cfg.seed + EVAL_SEED_OFFSET) as env:
        agent = make_agent(cfg, env)
        load_weights(checkpoint, agent)
        step = load_loop_state(checkpoint)[0].env_steps
        start = time.time()
        result = evaluate(agent, env, cfg.train.eval_episodes, cfg.train.eval_sample)
    os.makedirs(logdir, exist_ok=True)
    with Logger(logdir, episode_log=False) as logger:
        logger.scalars(step, {**result, "eval/episodes": cfg.train.eval_episodes})
    print(
        f"eval return {result['eval/return']:.3f} (mean over {cfg.train.eval_episodes} episodes, "
        f"length {result['eval/length']:.1f}) of {checkpoint} at {step} env steps "
        f"in {time.time() - start:.1f} s; logged in {logdir}"
    )
    return 0


# ---------------------------------------------------------------------------------------------
# Command line


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse prints usage plus the message and exits; a run reports one `error:` line.
        raise RunError(f"{message} (see --help)")


def make_parser() -> argparse.ArgumentParser:
    """The command line: every flag with its default; --help adds the examples of the module doc."""
    defaults = f"default (no --preset): --preset {DEFAULT_PRESETS} {' '.join(DEFAULT_OVERRIDES)}"
    parser = _ArgumentParser(
        prog="run_agent.py",
        description=__doc__.split("\n\n")[0] + "\n\n" + textwrap.fill(defaults, 96, subsequent_indent="    "),
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add = parser.add_argument
    add(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted config overrides after the presets, e.g. agent.horizon=10 'env.options={max_steps: 16}' "
        "(every key: configs/schema.py); with --resume or --eval-only, on top of the run's saved config",
    )
    add(
        "--preset",
        metavar="NAME[,NAME...]",
        help=f"config presets, later ones win (default: {DEFAULT_PRESETS} with "
        f"{' '.join(DEFAULT_OVERRIDES)}); available: {', '.join(list_presets())}",
    )
    add("--env", metavar="ID", help=f"env id suite:task, sets env.name; suites: {', '.join(envs.SUITES)}")
    add(
        "--logdir",
        metavar="DIR",
        help="folder of a new run (default: runs/<env>-<world_model>-<time>), or of --eval-only's "
        "results (default: <run folder>/eval-<time>); it must not hold a run",
    )
    add("--steps", type=int, metavar="N", help="env steps over all training envs, sets train.steps")
    add("--seed", type=int, metavar="S", help="seed of torch, numpy and the envs, sets seed (default: 0)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint, with its config"
    )
    mode.add_argument(
        "--eval-only",
        metavar="CHECKPOINT",
        help="evaluate a checkpoint (or a run folder's latest) for train.eval_episodes greedy episodes "
        "(sampled with train.eval_sample=true); "
        "eval/return and eval/length go to metrics.jsonl",
    )
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = make_parser()
    args = parser.parse_intermixed_args(argv)
    if (args.resume or args.eval_only) and (args.preset or args.env):
        parser.error("--preset and --env cannot change the config of an existing run")
    if args.eval_only and args.steps is not None:
        parser.error("--steps means nothing to --eval-only; set train.eval_episodes=N instead")
    if args.resume and args.logdir:
        parser.error("--resume continues the run in its own folder; --logdir cannot move it")
    return args


def check_new_logdir(logdir: str) -> None:
    """Refuse a folder that already holds a run: a run's data is never overwritten."""
    if os.path.exists(logdir) and not os.path.isdir(logdir):
        raise RunError(f"logdir '{logdir}' is a file")
    if not os.path.isdir(logdir):
        return
    taken = [name for name in os.listdir(logdir) if name in RUN_FILES or name.startswith("events.out.")]
    if taken:
        raise RunError(
            f"logdir '{logdir}' already holds a run ({sorted(taken)[0]}); "
            f"continue it with --resume {logdir} or choose another --logdir"
        )


def build_config(args: argparse.Namespace) -> Config:
    """The config of the run the flags ask for; flags win over positional overrides."""
    if args.resume:
        if not os.path.isfile(os.path.join(args.resume, "config.yaml")):
            what = "holds no run (no config.yaml)" if os.path.isdir(args.resume) else "not found"
            raise RunError(f"run folder '{args.resume}' {what}")
        cfg = load_config_file(os.path.join(args.resume, "config.yaml"), args.overrides)
    elif args.preset is None:
        cfg = load_config(DEFAULT_PRESETS, [*DEFAULT_OVERRIDES, *args.overrides])
    else:
        cfg = load_config(args.preset, args.overrides)
    if args.env is not None:
        cfg.env.name = args.env
    if args.steps is not None:
        cfg.train.steps = args.steps
    if args.seed is not None:
        cfg.seed = args.seed
    if args.resume:
        cfg.logdir = args.resume  # the folder may have moved since the run began
    elif args.logdir is not None:
        cfg.logdir = args.logdir
    elif not cfg.logdir:
        env = cfg.env.name.replace(":", "-").replace("/", "-")
        cfg.logdir = os.path.join("runs", f"{env}-{cfg.world_model}-{time.strftime('%Y%m%d-%H%M%S')}")
    validate(cfg)
    return cfg


# glibc's malloc settings of `keep_freed_memory`: (mallopt parameter number, the environment
# variable that sets the same in a process started with it, value).
KEEP_FREED_MEMORY = (
    (-3, "MALLOC_MMAP_THRESHOLD_", 32 * 2**20),  # M_MMAP_THRESHOLD: the largest value glibc accepts
    (-1, "MALLOC_TRIM_THRESHOLD_", 2**30),  # M_TRIM_THRESHOLD
    (-4, "MALLOC_MMAP_MAX_", 0),  # M_MMAP_MAX: no block is mmapped
)


def keep_freed_memory() -> None:
    """Ask glibc to keep freed blocks for reuse instead of returning them to the OS.

    Every update allocates and frees the same large activations; by default glibc unmaps blocks
    above a dynamic threshold and trims the heap, so each update pays again for fresh zeroed pages
    (measured: `Agent.train` about 10% faster at the `cpu` size, up to 1.7x for image updates).
    The mmap threshold cannot go above 32 MiB, and an imagined trajectory's tensors at the `small`
    size are larger (16 x 1024 x 1536 features), so no block is mmapped at all: the heap serves
    them too and keeps them (5% off a `small` S3M update in bfloat16, `benchmarks/peer.py`).
    A no-op where the C library is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    for parameter, _, value in KEEP_FREED_MEMORY:
        libc.mallopt(parameter, value)


def check_resume(cfg: Config, checkpoint: str, world: World) -> None:
    """Refuse to resume `checkpoint` with another world size, or with no env steps left to take."""
    progress, loop = load_loop_state(checkpoint)
    check_world_size(checkpoint, loop, world.size)
    if progress.env_steps >= cfg.train.steps:
        raise RunError(
            f"the run in '{cfg.logdir}' already took train.steps={cfg.train.steps} env steps; "
            f"continue it with a larger budget, e.g. train.steps={2 * cfg.train.steps}"
        )


def main(argv: list[str] | None = None) -> int:
    keep_freed_memory()
    world, joined = SINGLE, False

    def report(err: BaseException) -> None:
        # What fails before the ranks join fails alike on all of them (flags, config, run folder):
        # rank 0 says it. After that, every rank reports what went wrong on it.
        if world.main:
            print(f"error: {err}", file=sys.stderr)
        elif joined:
            print(f"error: rank {world.rank}: {err}", file=sys.stderr)
        else:
            time.sleep(QUIET_EXIT_DELAY_S)  # torchrun stops all ranks once one exits: rank 0 first

    try:
        world = World.from_env()  # torchrun's variables; a single process without them
        args = parse_args(argv)
        if args.eval_only:
            if world.distributed:
                raise RunError("--eval-only runs in one process: start it with python, not torchrun")
            return eval_only(args.eval_only, args.overrides, args.logdir, args.seed)
        cfg = build_config(args)
        device = resolve_device(cfg, world)
        resume = find_checkpoint(args.resume) if args.resume else None
        if resume:
            check_resume(cfg, resume, world)
        else:
            check_new_logdir(cfg.logdir)  # on every rank before any rank writes into it
        world, joined = world.start(device), True
        status = train(cfg, resume, world, device)
        # Only after a clean end: leaving a group whose peers are gone can block (NCCL).
        world.close()
        return status
    except (*USER_ERRORS, NonFiniteError) as err:
        report(err)
        return EXIT_ERROR
    except (EnvWorkerError, RankLostError) as err:
        report(err)
        return EXIT_FAULT
    except KeyboardInterrupt:
        print("interrupted; the run folder keeps its last complete checkpoint", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
