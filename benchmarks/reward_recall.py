"""How many world-model updates it takes to predict a reward that depends on a remembered cue.

BSuite `memory_len` with memory length L shows a ±1 cue at the start of each episode; the reward
at the last step is +1 if the last action matches the cue, -1 otherwise. Under random actions the
reward is the product cue x action: neither alone says anything about it, so the reward head
learns nothing until the sequence model carries the cue for L steps *and* the head combines it
with the action. That is what the agent's imagination needs before its actor can learn anything
on the memory tasks.

For each memory length and latent size (groups x classes), the world model is trained offline on
random-action episodes (B x T from the size preset) and, every `--every` updates, predicts the
rewards of held-out episodes from its posterior states (teacher forcing), on sequences long
enough to hold whole episodes. Training sequences are the preset's T: a final step whose cue
fell before the start of its sampled sequence cannot be predicted, so keep T well above L.
Printed per row: the first update at which the sign of the predicted final reward is right on at
least 90% of held-out episodes ("-" if never; balanced accuracy, the mean over positive and
negative rewards), the final accuracy, and the posterior entropy (nats, summed over groups): the
sampling noise that every step feeds into the sequence model.

`--env` scores another env's rewarded steps the same way, e.g. POPGym RepeatPrevious, whose reward
says whether the action names the suit dealt k steps earlier.

    python benchmarks/reward_recall.py                                   # S3M, L in 1 5, 4x4 and 16x16
    python benchmarks/reward_recall.py --lengths 1 --latents 4x4 8x8 16x16 --updates 3000
    python benchmarks/reward_recall.py --world-model rssm
    python benchmarks/reward_recall.py --env popgym:RepeatPreviousEasy --preset popgym,cpu --latents 4x4
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch

import envs
from agent.agent import build_world_model
from configs import load_config
from replay import SequenceReplay
from world_model.base import to_tensors

TRAIN_STEPS, TEST_STEPS, TEST_SEQUENCES, TEST_LENGTH = 20_000, 4_000, 64, 256
GOAL = 0.9  # sign accuracy counted as "learned"
WIDTHS = (8, 7, 10, 9, 13, 8)


def sweep_id(memory_length: int) -> int:
    """bsuite's memory_len sweep id of a memory length."""
    from bsuite.experiments.memory_len import sweep

    for i, setting in enumerate(sweep.SETTINGS):
        if setting["memory_length"] == memory_length:
            return i
    lengths = [s["memory_length"] for s in sweep.SETTINGS]
    raise SystemExit(f"error: memory length {memory_length} is not in bsuite's memory_len sweep {lengths}")


def collect(env_id: str, steps: int, seed: int, replay_cfg) -> SequenceReplay:
    """`steps` uniform random-action steps of `env_id` in a one-stream replay (agent_update.py too).

    Random-action steps carry no latent state, so the replay stores none (`store_state` off) and
    every sample starts from the initial state, whatever the recipe's `replay.store_state`.
    """
    replay = SequenceReplay.from_config(dataclasses.replace(replay_cfg, store_state=False), 1, seed)
    rng = np.random.default_rng(seed)
    with envs.VectorEnv(env_id, 1, seed) as env:
        step = env.reset()
        for _ in range(steps):
            action = env.random_actions(rng)
            replay.add({**step, "action": action})
            step = env.step(action)
    return replay


def held_out(env_id: str, seed: int, replay_cfg) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Held-out sequences long enough to hold whole episodes, and the mask (B, T) of their rewarded
    steps whose episode starts inside the sequence (their cue is in it)."""
    test = to_tensors(
        collect(env_id, TEST_STEPS, seed, replay_cfg).sample(TEST_SEQUENCES, TEST_LENGTH), "cpu"
    )
    rewarded = (test["reward"] != 0) & (test["is_first"].cumsum(1) > 0)
    signs = test["reward"][rewarded] > 0
    if signs.all() or not signs.any():  # an empty set too
        # The balanced accuracy averages the accuracies on both signs; one missing leaves it undefined.
        found = "no" if signs.numel() == 0 else ("only positive" if signs.all() else "only negative")
        raise SystemExit(f"error: {env_id}: held-out episodes have {found} rewards; scoring needs both signs")
    return test, rewarded


def balanced_accuracy(predicted: torch.Tensor, reward: torch.Tensor) -> float:
    """Sign accuracy of `predicted` (n,) rewards against `reward` (n,), balanced: the mean of the
    accuracies on positive and on negative rewards, so that always guessing the commoner sign
    scores 0.5 (POPGym pays -1 three times in four)."""
    positive = reward > 0
    right = (predicted > 0) == positive
    return 0.5 * (right[positive].float().mean() + right[~positive].float().mean()).item()


def offline_setup(env_id: str, cfg, seed: int):
    """Seeded from `seed`: random-action training replay, held-out sequences with their rewarded
    mask (`held_out`), and a fresh world model of `cfg` for `env_id` (reward_head_probe.py too).

    Returns: (train replay, test batch (B, T), rewarded (B, T) bool, world model).
    """
    torch.manual_seed(seed)
    train = collect(env_id, TRAIN_STEPS, seed, cfg.replay)
    test, rewarded = held_out(env_id, seed + 1, cfg.replay)
    with envs.VectorEnv(env_id, 1, seed) as env:
        model = build_world_model(cfg, env.obs_space, env.action_dim)
    return train, test, rewarded, model


def run(args: argparse.Namespace, env_id: str, groups: int, classes: int) -> dict[str, float | int | None]:
    overrides = [
        f"env.name={env_id}",
        f"world_model={args.world_model}",
        f"model.stoch_groups={groups}",
        f"model.stoch_classes={classes}",
        *args.overrides,
    ]
    cfg = load_config(args.preset.split(","), overrides)
    train, test, rewarded, model = offline_setup(env_id, cfg, args.seed)
    B, T = cfg.train.batch_size, cfg.train.seq_len
    learned_at, accuracy, entropy, start = None, 0.0, 0.0, time.time()
    for update in range(1, args.updates + 1):
        model.update(to_tensors(train.sample(B, T), "cpu"))
        if update % args.every == 0:
            with torch.no_grad():
                post, _, metrics, _ = model.observe(test)
                predicted = model.reward(post)[rewarded]
            accuracy = balanced_accuracy(predicted, test["reward"][rewarded])
            entropy = metrics["wm/post_entropy"]
            if learned_at is None and accuracy >= GOAL:
                learned_at = update
    seconds = (time.time() - start) / args.updates
    return {"learned_at": learned_at, "accuracy": accuracy, "entropy": entropy, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1, 5], help="bsuite memory lengths")
    parser.add_argument("--latents", nargs="+", default=["4x4", "16x16"], help="groups x classes of z_t")
    parser.add_argument(
        "--env", default=None, help="score this env's rewarded steps instead of bsuite memory_len (--lengths)"
    )
    parser.add_argument("--world-model", default="s3m", choices=["s3m", "rssm"])
    parser.add_argument(
        "--preset", default="bsuite,cpu", help="comma-separated presets (default: bsuite,cpu)"
    )
    parser.add_argument("--updates", type=int, default=2000, help="world-model updates per row")
    parser.add_argument("--every", type=int, default=100, help="evaluate every this many updates")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. model.lr=1e-3")
    args = parser.parse_args()
    torch.set_num_threads(1)
    latents = []
    for text in args.latents:
        try:
            groups, classes = (int(n) for n in text.lower().split("x"))
        except ValueError:
            raise SystemExit(f"error: --latents takes GROUPSxCLASSES, e.g. 4x4, not {text!r}") from None
        latents.append((groups, classes))

    print(
        f"{args.world_model} world model, presets {args.preset}, {args.updates} updates, random actions; "
        f"'learned': first update with sign accuracy >= {GOAL} on held-out final rewards"
    )
    header = ("memory L", "latent", "learned at", "final acc", "post H (nats)", "s/update")
    print(" ".join(f"{name:>{width}}" for name, width in zip(header, WIDTHS)))
    rows = [(args.env, "-")] if args.env else [(f"bsuite:memory_len/{sweep_id(n)}", n) for n in args.lengths]
    for env_id, length in rows:
        for groups, classes in latents:
            row = run(args, env_id, groups, classes)
            learned = "-" if row["learned_at"] is None else str(row["learned_at"])
            print(
                f"{length!s:>8} {f'{groups}x{classes}':>7} {learned:>10} {row['accuracy']:>9.3f} "
                f"{row['entropy']:>13.2f} {row['seconds']:>8.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
