"""Train, resume or evaluate an agent: the one training loop of this project, top to bottom.

    python run_agent.py                                     # POPGym RepeatPreviousEasy, CPU-sized
    python run_agent.py --preset popgym,cpu --steps 20000 agent.horizon=10
    python run_agent.py --preset debug --env gym:CartPole-v1 --logdir runs/smoke
    python run_agent.py --resume runs/smoke train.steps=400   # continue a run where it stopped
    python run_agent.py --eval-only runs/smoke/checkpoint     # evaluate saved weights

The loop (DESIGN.md §6): N vectorised envs act with the agent's policy (the world model's step
mode on a carried latent that resets per env at `is_first`); every step goes into the sequence
replay, one stream per env; after `train.prefill` steps of random actions the agent trains on
replayed (B, T) batches, `train.train_ratio` replayed steps per env step (DreamerV3). Along the
way it logs scalars, videos of open-loop predictions for image tasks, evaluates and checkpoints.

A run folder holds:

    config.yaml             the resolved config; `--resume` reads it
    metrics.jsonl           one JSON object per log event, each with its env `step`
    events.out.tfevents.*   TensorBoard: losses, returns, episode lengths, speed, eval returns, videos
    checkpoint/             agent.pt (networks, optimisers), loop.pt (counters, RNG states),
                            replay/ (the replay buffer), config.yaml (the config of the weights)

Ctrl-C (or SIGTERM) stops at the end of the current step and saves a checkpoint first.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import os
import random
import shutil
import signal
import sys
import time
from collections import defaultdict, deque
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tensorboard.compat.proto.summary_pb2 import Summary
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

import envs
from agent import Agent
from configs import Config, ConfigError, list_presets, load_config, load_config_file, save_config, validate
from replay import ReplayLoadError, SequenceReplay
from world_model import to_tensors

# What `python run_agent.py` trains when no --preset is given: the default config with the POPGym
# domain and the CPU model size, for a budget that finishes well within an hour on 2 CPU cores.
DEFAULT_PRESETS = "popgym,cpu"
DEFAULT_OVERRIDES = ("train.steps=20000", "train.eval_every=5000", "train.checkpoint_every=5000")

EXIT_ERROR = 2  # bad input: a flag, config key or value, env id, run folder or checkpoint
EXIT_INTERRUPTED = 130  # stopped by Ctrl-C / SIGTERM after saving a checkpoint (128 + SIGINT)
EVAL_SEED_OFFSET = 1_000_000  # evaluation envs never share seeds with training envs
RECENT_EPISODES = 20  # training episodes averaged for the progress bar's return
VIDEO_SEQUENCES = 4  # replayed sequences side by side in an open-loop video
VIDEO_CONTEXT = 5  # observed steps before the open-loop prediction starts (DreamerV3 uses 5)
VIDEO_FPS = 10

CHECKPOINT = "checkpoint"  # the latest complete checkpoint inside a run folder
RUN_FILES = ("config.yaml", "metrics.jsonl", CHECKPOINT, CHECKPOINT + ".old")  # a folder holding one is taken


class RunError(Exception):
    """Bad input the user can fix (flag, run folder, checkpoint): printed as one `error:` line."""


USER_ERRORS = (RunError, ConfigError, envs.EnvError, ReplayLoadError)


# ---------------------------------------------------------------------------------------------
# Factories: the three parts of a run, built from its config


def make_env(cfg: Config, num_envs: int, seed: int) -> envs.VectorEnv:
    """N copies of `cfg.env.name` (subprocesses when N > 1); env i is seeded `seed + i`."""
    # Subprocesses started while SIGINT is ignored keep ignoring it, so Ctrl-C reaches only this
    # process, which stops the loop cleanly and saves a checkpoint instead of losing its envs.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return envs.VectorEnv(cfg.env.name, num_envs, seed, **cfg.env.options)
    finally:
        signal.signal(signal.SIGINT, previous)


def make_replay(cfg: Config, num_streams: int) -> SequenceReplay:
    """The sequence replay, one FIFO stream per training env."""
    return SequenceReplay.from_config(cfg.replay, num_streams, cfg.seed)


def make_agent(cfg: Config, env: envs.VectorEnv) -> Agent:
    """World model (`cfg.world_model`) and actor-critic for `env`'s observations and actions."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RunError("device=cuda but torch sees no CUDA device; use device=cpu or device=auto")
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(auto if cfg.device == "auto" else cfg.device)
    return Agent(cfg, env.obs_space, env.action_dim, env.discrete, device)


# ---------------------------------------------------------------------------------------------
# Counters and logging


@dataclasses.dataclass
class Progress:
    """The loop's counters; saved in every checkpoint so that `--resume` continues them."""

    env_steps: int = 0  # env steps taken, over all training envs
    updates: int = 0  # agent.train calls
    update_credit: float = 0.0  # updates owed by train_ratio but not yet made (fractional)
    episodes: int = 0  # training episodes finished


class Episodes:
    """Return and length of each env's current episode, from the contract steps it sees."""

    def __init__(self, num_envs: int) -> None:
        self.returns = np.zeros(num_envs, np.float64)
        self.lengths = np.zeros(num_envs, np.int64)

    def observe(self, step: dict[str, np.ndarray]) -> list[tuple[int, float, int]]:
        """Account one step of every env; return (env, return, length) of the episodes it ends.

        The length counts the actions an episode took: its steps after the first one.
        """
        first = step["is_first"]
        self.returns[first] = 0.0
        self.lengths[first] = 0
        self.returns += step["reward"]
        self.lengths += ~first
        return [
            (int(i), float(self.returns[i]), int(self.lengths[i])) for i in np.flatnonzero(step["is_last"])
        ]


class Logger:
    """Scalars to TensorBoard and `metrics.jsonl` (one JSON object per event), videos to TensorBoard."""

    def __init__(self, logdir: str, purge_step: int | None = None) -> None:
        # purge_step: a resumed run drops TensorBoard events written after its checkpoint.
        self.writer = SummaryWriter(logdir, purge_step=purge_step)
        self.jsonl = open(os.path.join(logdir, "metrics.jsonl"), "a")

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.jsonl.write(json.dumps({"step": step, **{k: float(v) for k, v in values.items()}}) + "\n")
        self.jsonl.flush()
        self.writer.flush()

    def event(self, step: int, **fields: Any) -> None:
        """A non-scalar event (e.g. a resume) in metrics.jsonl only."""
        self.jsonl.write(json.dumps({"step": step, **fields}) + "\n")
        self.jsonl.flush()

    def video(self, step: int, tag: str, frames: torch.Tensor) -> None:
        """frames: (T, C, H, W) float in [0, 1], written as an animated GIF image summary.

        This is the summary `SummaryWriter.add_video` writes; it is encoded here with Pillow
        because `add_video` needs the `moviepy.editor` module, which moviepy 2 no longer has.
        """
        T, C, H, W = frames.shape
        pixels = (frames.clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()  # (T, H, W, C)
        images = [Image.fromarray(frame[..., 0] if C == 1 else frame) for frame in pixels]
        gif = io.BytesIO()
        images[0].save(
            gif, "GIF", save_all=True, append_images=images[1:], duration=1000 // VIDEO_FPS, loop=0
        )
        image = Summary.Image(height=H, width=W, colorspace=C, encoded_image_string=gif.getvalue())
        self.writer.file_writer.add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
        self.jsonl.close()

    def __enter__(self) -> Logger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def crossed(every: int, before: int, after: int) -> bool:
    """Whether a multiple of `every` lies in (before, after]; never when `every` is 0."""
    return every > 0 and after // every > before // every


# ---------------------------------------------------------------------------------------------
# Acting, evaluating, videos


def random_actions(rng: np.random.Generator, env: envs.VectorEnv) -> np.ndarray:
    """Uniform random actions (N, A) float32: one-hot for discrete envs, in [-1, 1] otherwise."""
    if env.discrete:
        return np.eye(env.action_dim, dtype=np.float32)[rng.integers(env.action_dim, size=env.num_envs)]
    return rng.uniform(-1.0, 1.0, (env.num_envs, env.action_dim)).astype(np.float32)


def evaluate(agent: Agent, env: envs.VectorEnv, episodes: int) -> dict[str, float]:
    """Mean return and length of `episodes` fresh episodes with the greedy policy (mode="eval").

    Each env runs a fixed share of the episodes, so short episodes are not over-represented
    (taking the first `episodes` to finish over all envs would favour them).
    """
    share = [episodes // env.num_envs + (i < episodes % env.num_envs) for i in range(env.num_envs)]
    results: list[list[tuple[float, int]]] = [[] for _ in range(env.num_envs)]
    tracker = Episodes(env.num_envs)
    step, state = env.reset(), agent.initial_state(env.num_envs)
    while any(len(done) < want for done, want in zip(results, share)):
        for i, ret, length in tracker.observe(step):
            if len(results[i]) < share[i]:
                results[i].append((ret, length))
        action, state = agent.policy(step, state, mode="eval")
        step = env.step(action)
    flat = [result for done in results for result in done]
    return {
        "eval/return": float(np.mean([ret for ret, _ in flat])),
        "eval/length": float(np.mean([length for _, length in flat])),
    }


def open_loop_video(agent: Agent, replay: SequenceReplay, seq_len: int) -> torch.Tensor:
    """Replayed sequences above the world model's open-loop predictions of them, and the error.

    The model observes the first `VIDEO_CONTEXT` steps, then imagines the rest from the recorded
    actions alone: how far the prediction stays on track shows what the model remembers.

    Returns: (T, C, 3·h, S·w) float in [0, 1]: rows truth / prediction / |error|, S sequences.
    """
    batch = replay.sample(VIDEO_SEQUENCES, seq_len)
    # Replay-context keys (start/...) have no time axis; open-loop starts from the initial state.
    batch = {key: value for key, value in batch.items() if not key.startswith("start/")}
    device = next(agent.world_model.parameters()).device
    with torch.no_grad():
        data = to_tensors(batch, device)
        pred = agent.world_model.open_loop(data, min(VIDEO_CONTEXT, seq_len))["image"]  # (S, T, h, w, C)
        truth = data["image"].float() / 255.0
        frames = torch.cat([truth, pred, (pred - truth).abs()], 2)  # (S, T, 3h, w, C)
    S, T, H, W, C = frames.shape
    return frames.permute(1, 4, 2, 0, 3).reshape(T, C, H, S * W).cpu()  # sequences side by side


# ---------------------------------------------------------------------------------------------
# Checkpoints: written to a temporary folder, then swapped in, so one complete checkpoint always exists


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


def rng_states() -> dict[str, Any]:
    """The global RNG states the agent draws from (torch, and Python's for completeness)."""
    states: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


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


def find_checkpoint(path: str) -> str:
    """The checkpoint folder `path` names: a checkpoint itself, or a run folder that holds one."""
    for candidate in (path, os.path.join(path, CHECKPOINT), os.path.join(path, CHECKPOINT + ".old")):
        if all(os.path.isfile(os.path.join(candidate, name)) for name in ("agent.pt", "loop.pt")):
            return candidate
    if not os.path.exists(path):
        raise RunError(f"checkpoint '{path}' not found")
    raise RunError(f"no checkpoint in '{path}' (expected agent.pt and loop.pt in it or in {CHECKPOINT}/)")


def _torch_load(path: str) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unreadable file is the user's to fix, not a crash
        message = str(err).splitlines()[0] if str(err) else ""
        raise RunError(f"cannot read checkpoint file '{path}': {type(err).__name__}: {message}") from None


def load_weights(checkpoint: str, agent: Agent) -> None:
    try:
        agent.load_state_dict(_torch_load(os.path.join(checkpoint, "agent.pt")))
    except (AssertionError, RuntimeError, KeyError, ValueError) as err:
        message = " ".join(str(err).split())[:300]
        raise RunError(f"checkpoint '{checkpoint}' does not fit the config's agent: {message}") from None


def load_loop_state(checkpoint: str) -> tuple[Progress, dict[str, Any]]:
    """Counters and RNG states of a checkpoint."""
    loop = _torch_load(os.path.join(checkpoint, "loop.pt"))
    try:
        return Progress(**loop["progress"]), loop
    except (KeyError, TypeError) as err:
        raise RunError(f"checkpoint '{checkpoint}' has a bad loop.pt: {type(err).__name__}: {err}") from None


# ---------------------------------------------------------------------------------------------
# The training loop


class StopRequest:
    """Turns the first Ctrl-C / SIGTERM into a request to stop after the current step.

    A second Ctrl-C interrupts at once (the previous handler is back), e.g. during a long save.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
        self.restore()
        tqdm.write("stopping after this step to save a checkpoint (Ctrl-C again to quit at once)")

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def train(cfg: Config, resume: str | None) -> int:
    """Train the agent of `cfg` in the run folder `cfg.logdir`, or continue it from checkpoint `resume`.

    Returns the exit status: 0 when done, EXIT_INTERRUPTED when stopped early (checkpoint saved).
    """
    tc, logdir = cfg.train, cfg.logdir
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)  # the prefill's random actions
    progress, loop_state = Progress(), {}
    if resume:
        progress, loop_state = load_loop_state(resume)
        if progress.env_steps >= tc.steps:
            raise RunError(
                f"the run in '{logdir}' already took train.steps={tc.steps} env steps; "
                f"continue it with a larger budget, e.g. train.steps={2 * tc.steps}"
            )

    with contextlib.ExitStack() as stack:
        # Resumed envs start new episodes with new seeds, so they do not replay the run's first ones.
        env = stack.enter_context(make_env(cfg, cfg.env.num_envs, cfg.seed + progress.env_steps))
        eval_env = None
        if tc.eval_episodes > 0:
            eval_seed = cfg.seed + EVAL_SEED_OFFSET + progress.env_steps
            eval_env = stack.enter_context(make_env(cfg, cfg.env.eval_envs, eval_seed))
        agent = make_agent(cfg, env)
        replay = make_replay(cfg, env.num_envs)
        if resume:
            load_weights(resume, agent)
            replay.load(os.path.join(resume, "replay"))
            set_rng_states(loop_state["rng"])
            rng.bit_generator.state = loop_state["numpy"]
            # The run's config now holds this session's overrides (e.g. a larger train.steps).
            save_config(cfg, os.path.join(logdir, "config.yaml.tmp"))
            os.replace(os.path.join(logdir, "config.yaml.tmp"), os.path.join(logdir, "config.yaml"))
        else:
            os.makedirs(logdir, exist_ok=True)
            save_config(cfg, os.path.join(logdir, "config.yaml"))
        logger = stack.enter_context(Logger(logdir, purge_step=progress.env_steps if resume else None))
        if resume:
            logger.event(progress.env_steps, event="resume", replay_steps=len(replay))
        else:
            logger.writer.add_text("config", "```\n" + Path(logdir, "config.yaml").read_text() + "\n```")

        counts = agent.parameter_counts()
        print(
            f"{cfg.world_model} agent on {cfg.env.name} ({env.num_envs} envs) in {logdir}: "
            f"{counts['total']:,} parameters (world model {counts['world_model']:,}, "
            f"actor {counts['actor']:,}, critic {counts['critic']:,})"
        )
        B, T = tc.batch_size, tc.seq_len
        updates_per_step = tc.train_ratio / (B * T)  # DreamerV3: train_ratio replayed steps per env step
        episodes, recent = Episodes(env.num_envs), deque(maxlen=RECENT_EPISODES)
        window: dict[str, list[float]] = defaultdict(list)  # what happened since the last log
        window_start, window_steps = time.time(), progress.env_steps
        session_start, session_steps = time.time(), progress.env_steps
        last_eval: dict[str, float] = {}
        saved_at = evaluated_at = -1
        stop = StopRequest()
        stack.callback(stop.restore)
        bar = stack.enter_context(
            tqdm(total=tc.steps, initial=progress.env_steps, unit="step", dynamic_ncols=True, smoothing=0.05)
        )

        step, state = env.reset(), agent.initial_state(env.num_envs)
        while progress.env_steps < tc.steps and not stop.requested:
            # Act: the policy observes step t (resetting its state where is_first) and picks a_t.
            for _, ret, length in episodes.observe(step):
                window["episode/return"].append(ret)
                window["episode/length"].append(length)
                recent.append(ret)
                progress.episodes += 1
            action, state = agent.policy(step, state, mode="explore")
            if progress.env_steps < tc.prefill:
                # Random actions, but the latent still tracks them, for replay context and the switch.
                action = random_actions(rng, env)
                state = {**state, "action": torch.as_tensor(action, device=state["action"].device)}
            transition = {**step, "action": action}
            if cfg.replay.store_state:
                transition.update(agent.replay_state(state))
            replay.add(transition)
            step = env.step(action)
            before, progress.env_steps = progress.env_steps, progress.env_steps + env.num_envs
            bar.update(env.num_envs)

            # Train: as many updates as the ratio owes, once prefill is done and a sequence fits.
            if progress.env_steps >= tc.prefill and replay.stream_lengths.max() >= T:
                progress.update_credit += env.num_envs * updates_per_step
                while progress.update_credit >= 1.0:
                    for key, value in agent.train(replay.sample(B, T)).items():
                        window[key].append(value)
                    progress.update_credit -= 1.0
                    progress.updates += 1

            # Log, evaluate, record videos and checkpoint when their period comes round.
            now = progress.env_steps
            if crossed(tc.log_every, before, now):
                elapsed = time.time() - window_start
                scalars = {key: float(np.mean(values)) for key, values in window.items()}
                scalars["perf/env_steps_per_s"] = (now - window_steps) / max(elapsed, 1e-9)
                scalars["perf/updates"] = progress.updates
                scalars["replay/steps"] = len(replay)
                logger.scalars(now, scalars)
                window.clear()
                window_start, window_steps = time.time(), now
            if crossed(tc.eval_every, before, now) and eval_env is not None:
                last_eval, evaluated_at = evaluate(agent, eval_env, tc.eval_episodes), now
                logger.scalars(now, last_eval)
                tqdm.write(f"step {now}: eval return {last_eval['eval/return']:.3f}")
            if crossed(tc.video_every, before, now) and "image" in env.obs_space and progress.updates:
                logger.video(now, "open_loop/image", open_loop_video(agent, replay, T))
            if crossed(tc.checkpoint_every, before, now):
                save_checkpoint(logdir, cfg, agent, replay, progress, rng)
                saved_at = now
            if recent:
                bar.set_postfix(ret=f"{np.mean(recent):.3f}", refresh=False)
        bar.close()

        if stop.requested:
            save_checkpoint(logdir, cfg, agent, replay, progress, rng)
            print(f"stopped at {progress.env_steps} env steps; continue with --resume {logdir}")
            return EXIT_INTERRUPTED
        if eval_env is not None and evaluated_at != progress.env_steps:
            last_eval = evaluate(agent, eval_env, tc.eval_episodes)
            logger.scalars(progress.env_steps, last_eval)
        if saved_at != progress.env_steps:
            save_checkpoint(logdir, cfg, agent, replay, progress, rng)

    wall = time.time() - session_start
    steps = progress.env_steps - session_steps
    final = f"{last_eval['eval/return']:.3f}" if last_eval else "n/a (train.eval_episodes=0)"
    print(f"env steps:         {progress.env_steps} ({steps} in this session)")
    print(f"wall time:         {wall:.1f} s")
    print(f"env steps/s:       {steps / max(wall, 1e-9):.1f}")
    print(f"final eval return: {final}")
    print(f"run folder:        {logdir}")
    return 0


def eval_only(checkpoint_path: str, overrides: list[str], logdir: str | None, seed: int | None) -> int:
    """Evaluate a checkpoint's weights for `train.eval_episodes` episodes; log into a new folder."""
    checkpoint = find_checkpoint(checkpoint_path)
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
        result = evaluate(agent, env, cfg.train.eval_episodes)
    os.makedirs(logdir, exist_ok=True)
    with Logger(logdir) as logger:
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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _ArgumentParser(
        prog="run_agent.py",
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides, e.g. agent.horizon=10"
    )
    parser.add_argument(
        "--preset",
        metavar="NAME[,NAME...]",
        help=f"config presets, later ones win (default: {DEFAULT_PRESETS} with "
        f"{' '.join(DEFAULT_OVERRIDES)}); available: {', '.join(list_presets())}",
    )
    parser.add_argument("--env", metavar="ID", help="environment id suite:task (sets env.name)")
    parser.add_argument("--logdir", metavar="DIR", help="run folder (default: runs/<env>-<model>-<time>)")
    parser.add_argument("--steps", type=int, metavar="N", help="env steps to train for (sets train.steps)")
    parser.add_argument("--seed", type=int, metavar="S", help="seed of torch, numpy and the envs")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint")
    mode.add_argument(
        "--eval-only", metavar="CHECKPOINT", help="evaluate a checkpoint (or a run folder's latest one)"
    )
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


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        if args.eval_only:
            return eval_only(args.eval_only, args.overrides, args.logdir, args.seed)
        cfg = build_config(args)
        if args.resume:
            return train(cfg, resume=find_checkpoint(args.resume))
        check_new_logdir(cfg.logdir)
        return train(cfg, resume=None)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted; the run folder keeps its last complete checkpoint", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
