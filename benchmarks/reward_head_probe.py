"""Why the two-hot reward head learns a cue-dependent reward slowly: a probe on fixed features.

`benchmarks/reward_recall.py` trains whole world models: with DreamerV3's two-hot reward head
neither the S3M nor the RSSM predicts BSuite memory_len's final reward (cue x last action) within
a CPU budget of updates, with the symlog-MSE head both do. That mixes two things: the head must
find the reward in the features, and the features must come to carry the cue, which they do only
once the head's gradient says so. This probe takes the second away.

1. A world model is trained offline with the symlog-MSE head (random-action episodes, as in
   `reward_recall.py`) until its features carry the answer: its own head's sign accuracy on
   held-out final rewards is printed first.
2. Fresh reward heads are then trained side by side on the *detached* features [h_t, z_t] of the
   same replayed batches, with the world model's optimiser settings, and scored every `--every`
   updates (balanced sign accuracy on held-out rewarded steps; 0.5 is chance).

A head that is slow here is slow by itself, whatever the world model does. `two-hot` is DreamerV3's
head (255 symlog bins, zero-initialised output layer); `two-hot β2 0.99` the same with Adam's
second-moment decay 0.99 instead of 0.999, which tests whether Adam's memory of the head's first
updates, when it fits the many zero rewards, holds it back; `two-hot 31 bins` a coarser grid.
`two-hot, central` scores the first head's prediction from its bins near 0 alone (`central_mean`):
whether its distribution has learned the sign before its mean shows it.

    python benchmarks/reward_head_probe.py                         # memory length 5, S3M
    python benchmarks/reward_head_probe.py --length 10 --world-updates 1500
    python benchmarks/reward_head_probe.py --world-model rssm
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from torch import nn

from benchmarks.reward_recall import GOAL, balanced_accuracy, offline_setup, sweep_id
from configs import load_config
from world_model.base import to_tensors
from world_model.distributions import TwoHot, symexp
from world_model.networks import SymlogHead, TwoHotHead

CENTRAL = 2.0  # `central_mean` reads the bins within this distance of 0 (symlog space)
# Head name -> (builder from (input width, units, layers), Adam's beta2).
HEADS: dict[str, tuple[Callable[[int, int, int], nn.Module], float]] = {
    "two-hot": (lambda d, units, layers: TwoHotHead(d, units, layers), 0.999),
    "two-hot β2 0.99": (lambda d, units, layers: TwoHotHead(d, units, layers), 0.99),
    "two-hot 31 bins": (lambda d, units, layers: TwoHotHead(d, units, layers, bins=31), 0.999),
    "symlog MSE": (lambda d, units, layers: SymlogHead(d, units, layers), 0.999),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--length", type=int, default=5, help="bsuite memory length (default: 5)")
    parser.add_argument("--world-model", default="s3m", choices=["s3m", "rssm"])
    parser.add_argument(
        "--preset", default="bsuite,cpu", help="comma-separated presets (default: bsuite,cpu)"
    )
    parser.add_argument("--world-updates", type=int, default=1000, help="world-model updates with symlog MSE")
    parser.add_argument("--head-updates", type=int, default=1500, help="updates of the fresh heads")
    parser.add_argument("--every", type=int, default=125, help="score the heads every this many updates")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "overrides",
        nargs="*",
        help="dotted config overrides (default latents 4x4, no representation KL, as `memory_cpu`)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    env_id = f"bsuite:memory_len/{sweep_id(args.length)}"
    overrides = [
        f"env.name={env_id}",
        f"world_model={args.world_model}",
        "model.stoch_groups=4",
        "model.stoch_classes=4",
        "model.rep_scale=0",
        *args.overrides,
        "model.reward_head=symlog_mse",
    ]
    cfg = load_config(args.preset.split(","), overrides)
    train, test, rewarded, model = offline_setup(env_id, cfg, args.seed)
    B, T = cfg.train.batch_size, cfg.train.seq_len
    for _ in range(args.world_updates):
        model.update(to_tensors(train.sample(B, T), "cpu"))
    with torch.no_grad():
        post, _, _, _ = model.observe(test)
        test_feats = model.head_features(post)  # (B, T, D + S·C)
        own = balanced_accuracy(model.reward(post)[rewarded], test["reward"][rewarded])
    print(
        f"{args.world_model} world model, memory length {args.length}, {args.world_updates} updates with "
        f"a symlog-MSE reward head: its own head's sign accuracy {own:.3f}"
    )

    m = cfg.model
    heads = {name: build(test_feats.shape[-1], m.units, m.head_layers) for name, (build, _) in HEADS.items()}
    opts = {
        name: torch.optim.Adam(heads[name].parameters(), lr=m.lr, eps=m.eps, betas=(0.9, beta2))
        for name, (_, beta2) in HEADS.items()
    }
    learned_at: dict[str, int | None] = dict.fromkeys(HEADS)
    print(f"fresh heads on the detached features, balanced sign accuracy every {args.every} updates:")
    print(f"{'update':>7} " + " ".join(f"{name:>16}" for name in HEADS) + f" {'two-hot, central':>16}")
    for update in range(1, args.head_updates + 1):
        batch = to_tensors(train.sample(B, T), "cpu")
        with torch.no_grad():
            feats = model.head_features(model.observe(batch)[0])
        for name, head in heads.items():
            loss = -head(feats).log_prob(batch["reward"]).mean()
            opts[name].zero_grad(set_to_none=True)
            loss.backward()
            opts[name].step()
        if update % args.every == 0:
            with torch.no_grad():
                dists = {name: head(test_feats) for name, head in heads.items()}
                scores = {
                    name: balanced_accuracy(dist.mean()[rewarded], test["reward"][rewarded])
                    for name, dist in dists.items()
                }
                central = balanced_accuracy(
                    central_mean(dists["two-hot"])[rewarded], test["reward"][rewarded]
                )
            for name, score in scores.items():
                if learned_at[name] is None and score >= GOAL:
                    learned_at[name] = update
            row = " ".join(f"{scores[name]:>16.3f}" for name in HEADS)
            print(f"{update:>7} {row} {central:>16.3f}", flush=True)
    first = " ".join(f"{'-' if at is None else at:>16}" for at in learned_at.values())
    print(f"{'learned':>7} {first}   (first update with accuracy >= {GOAL})")


def central_mean(dist: TwoHot) -> torch.Tensor:
    """(...,) the two-hot prediction from its bins within `CENTRAL` of 0 in symlog space alone.

    Its sign tells whether the head has learned which of the rewards' own bins (±1 is ±0.69 in
    symlog space) is likelier, whatever mass it still leaves on the far bins, whose symlog values
    of up to ±20 can outweigh that difference in `dist.mean()`.
    """
    near = (dist.bins.abs() <= CENTRAL).float()  # (K,)
    probs = dist.probs * near
    return symexp((probs * dist.bins).sum(-1) / probs.sum(-1))


if __name__ == "__main__":
    main()
