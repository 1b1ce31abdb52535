"""Can a sequence model hold the first of T inputs while T-1 others arrive? S5 stacks against a GRU.

The task of POPGym RepeatFirst in isolation, without an agent or a world model: a sequence of T
cards (one of `--cards`, uniform), and at every step the target is the first card. A GRU latches it
with one gate. A time-invariant S5 layer's output is a fixed convolution of its inputs, the same
kernel at every step, so it cannot weigh the first input by a position that moves with t; a stack
has to build the selection out of its GLUs across layers. A selective S5 layer
(`S5Layer(selective=True)`, world_model/ssm.py) can set its step size Δ_t → 0 after the first step:
hold the state, ignore the input. A GRU of the same width and depth is the RSSM's kind of
recurrence.

`--task reward` asks what a world model's reward head must predict on RepeatFirst under a random
policy: with the card and the previous action a_{t-1} as inputs, whether a_{t-1} named the first
card, which needs the held card and the current input combined.

Each variant is an `SSMStack` between a linear embedding of the one-hot inputs and a linear
readout, trained with Adam on cross-entropy over all steps (fresh random sequences every update).
Printed per variant and seed: the balanced accuracy on the last quarter of the steps of held-out
sequences every `--every` updates, the first update at which it reaches 90% ("-" if never), and
the wall time of the run as a ratio to the first variant's.

    python benchmarks/selective_copy.py                       # T = 128, 2 layers, both variants
    python benchmarks/selective_copy.py --length 416 --updates 3000 --seeds 0 1 2
    python benchmarks/selective_copy.py --task reward --length 416
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from world_model.ssm import SSMStack

GOAL = 0.9  # accuracy counted as "learned"
VARIANTS = ("time-invariant", "selective", "gru")  # S5 stacks without and with selection, a GRU


class CopyModel(nn.Module):
    """inputs (B, T, I) float -> SSMStack (B, T, H) -> logits (B, T, classes)."""

    def __init__(self, inputs: int, classes: int, width: int, state_size: int, layers: int, variant: str):
        super().__init__()
        assert variant in VARIANTS, f"unknown variant {variant!r}, expected one of {VARIANTS}"
        self.embed = nn.Linear(inputs, width)
        if variant == "gru":  # the RSSM's kind of recurrence, as deep as the stack
            self.core = nn.GRU(width, width, num_layers=layers, batch_first=True)
        else:
            self.core = SSMStack(
                width, state_size, layers, blocks=1, selective=variant == "selective", scan="auto"
            )
        self.readout = nn.Linear(width, classes)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        B, T, _ = inputs.shape
        u = self.embed(inputs)  # (B, T, H)
        if isinstance(self.core, nn.GRU):
            y, _ = self.core(u)
        else:
            is_first = torch.zeros(B, T, dtype=torch.bool)
            is_first[:, 0] = True
            y, _ = self.core(u, is_first, self.core.initial_state(B))
        return self.readout(y)


def sizes(task: str, cards: int) -> tuple[int, int]:
    """(input width, classes) of a task."""
    return (cards, cards) if task == "copy" else (2 * cards, 2)


def batch(
    task: str, batch_size: int, length: int, cards: int, gen: torch.Generator
) -> tuple[torch.Tensor, ...]:
    """Inputs (B, T, I) float32 and targets (B, T) int64.

    copy: one-hot cards in, the first card out at every step. reward: the card and a uniformly
    random previous action a_{t-1} in (one-hot each), and out whether a_{t-1} named the first card
    (RepeatFirst's reward under a random policy; 0 at t = 0, before any action).
    """
    seq = torch.randint(cards, (batch_size, length), generator=gen)
    card = nn.functional.one_hot(seq, cards).float()  # (B, T, cards)
    if task == "copy":
        return card, seq[:, :1].expand(-1, length)
    action = torch.randint(cards, (batch_size, length), generator=gen)
    action[:, 0] = -1  # no action before the first step
    prev = nn.functional.one_hot(action.clamp(min=0), cards).float() * (action >= 0)[..., None]
    return torch.cat([card, prev], -1), (action == seq[:, :1]).long()


def accuracy(model: CopyModel, inputs: torch.Tensor, target: torch.Tensor) -> float:
    """Balanced accuracy (mean recall over the classes) on the last quarter of the steps, where
    the first card is furthest back; chance is 1 / classes whatever the class frequencies."""
    with torch.no_grad():
        pred = model(inputs).argmax(-1)
    tail = inputs.shape[1] - inputs.shape[1] // 4
    pred, target = pred[:, tail:], target[:, tail:]
    recalls = [(pred[target == c] == c).float().mean() for c in target.unique()]
    return torch.stack(recalls).mean().item()


def train(args: argparse.Namespace, variant: str, seed: int) -> tuple[list[float], float]:
    """Accuracy every `--every` updates and the wall time in seconds."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    inputs, classes = sizes(args.task, args.cards)
    model = CopyModel(inputs, classes, args.width, args.state_size, args.layers, variant)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    test = batch(args.task, 256, args.length, args.cards, torch.Generator().manual_seed(10_000 + seed))
    curve = []
    start = time.perf_counter()
    for update in range(1, args.updates + 1):
        inputs, target = batch(args.task, args.batch, args.length, args.cards, gen)
        logits = model(inputs)  # (B, T, classes)
        loss = nn.functional.cross_entropy(logits.reshape(-1, classes), target.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if update % args.every == 0:
            curve.append(accuracy(model, *test))
    return curve, time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=("copy", "reward"), default="copy", help="what to predict")
    parser.add_argument("--length", type=int, default=128, help="T, the sequence length")
    parser.add_argument("--cards", type=int, default=4, help="how many distinct cards")
    parser.add_argument("--width", type=int, default=64, help="H of the SSM stack")
    parser.add_argument("--state-size", type=int, default=32, help="P of every S5 layer")
    parser.add_argument("--layers", type=int, default=2, help="SSM blocks")
    parser.add_argument("--batch", type=int, default=32, help="sequences per update")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    parser.add_argument("--updates", type=int, default=1500, help="updates per run")
    parser.add_argument("--every", type=int, default=250, help="evaluate every this many updates")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    if args.length < 4 or args.cards < 2 or args.updates < args.every or args.every < 1:
        raise SystemExit("error: need --length >= 4, --cards >= 2 and 1 <= --every <= --updates")
    torch.set_num_threads(args.threads)

    what = "the first card" if args.task == "copy" else "whether a_{t-1} named the first card"
    print(
        f"selective copying, predict {what}: T={args.length}, {args.cards} cards, H={args.width}, "
        f"P={args.state_size}, {args.layers} layers, B={args.batch}, chance "
        f"{1 / sizes(args.task, args.cards)[1]:.2f}; balanced accuracy on the last quarter of the "
        f"steps every {args.every} updates"
    )
    print(f"{'variant':<15} {'seed':>4}  {'first >= 0.9':>12}  {'final':>6}  {'time':>5}  curve")
    base: dict[int, float] = {}
    for name in args.variants:
        for seed in args.seeds:
            curve, wall = train(args, name, seed)
            base.setdefault(seed, wall)
            reached = next((args.every * (i + 1) for i, acc in enumerate(curve) if acc >= GOAL), None)
            print(
                f"{name:<15} {seed:>4}  {reached if reached else '-':>12}  {curve[-1]:>6.3f}  "
                f"{wall / base[seed]:>4.2f}x  {' '.join(f'{acc:.2f}' for acc in curve)}",
                flush=True,
            )


if __name__ == "__main__":
    main()
