"""Can an SSM stack hold the first of T inputs while T-1 others arrive? Time-invariant vs selective S5.

The task of POPGym RepeatFirst in isolation, without an agent or a world model: a sequence of T
cards (one of `--cards`, uniform), and at every step the target is the first card. A GRU latches it
with one gate. A time-invariant S5 layer's output is a fixed convolution of its inputs, the same
kernel at every step, so it cannot weigh the first input by a position that moves with t; a stack
has to build the selection out of its GLUs across layers. A selective S5 layer
(`S5Layer(selective=True)`, world_model/ssm.py) can set its step size Δ_t → 0 after the first step:
hold the state, ignore the input.

Each variant is an `SSMStack` between a linear embedding of the one-hot card and a linear readout,
trained with Adam on cross-entropy over all steps (fresh random sequences every update). Printed
per variant and seed: the accuracy on the last quarter of the steps of held-out sequences every
`--every` updates, the first update at which it reaches 90% ("-" if never), and the wall time of the
run as a ratio to the time-invariant one.

    python benchmarks/selective_copy.py                       # T = 128, 2 layers, both variants
    python benchmarks/selective_copy.py --length 416 --updates 3000 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from world_model.ssm import SSMStack

GOAL = 0.9  # accuracy counted as "learned"
VARIANTS = {"time-invariant": False, "selective": True}  # name -> S5Layer(selective=...)


class CopyModel(nn.Module):
    """one-hot card (B, T, cards) -> SSMStack (B, T, H) -> logits (B, T, cards)."""

    def __init__(self, cards: int, width: int, state_size: int, layers: int, selective: bool):
        super().__init__()
        self.embed = nn.Linear(cards, width)
        self.stack = SSMStack(width, state_size, layers, blocks=1, selective=selective, scan="auto")
        self.readout = nn.Linear(width, cards)

    def forward(self, cards: torch.Tensor) -> torch.Tensor:
        B, T = cards.shape
        u = self.embed(nn.functional.one_hot(cards, self.readout.out_features).float())  # (B, T, H)
        is_first = torch.zeros(B, T, dtype=torch.bool)
        is_first[:, 0] = True
        y, _ = self.stack(u, is_first, self.stack.initial_state(B))
        return self.readout(y)


def batch(batch_size: int, length: int, cards: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Cards (B, T) int64 and targets (B, T) int64: the first card at every step."""
    seq = torch.randint(cards, (batch_size, length), generator=gen)
    return seq, seq[:, :1].expand(-1, length)


def accuracy(model: CopyModel, seq: torch.Tensor, target: torch.Tensor) -> float:
    """Accuracy over the last quarter of the steps, where the first card is furthest back."""
    with torch.no_grad():
        pred = model(seq).argmax(-1)
    tail = seq.shape[1] - seq.shape[1] // 4
    return (pred[:, tail:] == target[:, tail:]).float().mean().item()


def train(args: argparse.Namespace, selective: bool, seed: int) -> tuple[list[float], float]:
    """Accuracy every `--every` updates and the wall time in seconds."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = CopyModel(args.cards, args.width, args.state_size, args.layers, selective)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    test = batch(256, args.length, args.cards, torch.Generator().manual_seed(10_000 + seed))
    curve = []
    start = time.perf_counter()
    for update in range(1, args.updates + 1):
        seq, target = batch(args.batch, args.length, args.cards, gen)
        logits = model(seq)  # (B, T, cards)
        loss = nn.functional.cross_entropy(logits.reshape(-1, args.cards), target.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if update % args.every == 0:
            curve.append(accuracy(model, *test))
    return curve, time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    if args.length < 4 or args.cards < 2 or args.updates < args.every or args.every < 1:
        raise SystemExit("error: need --length >= 4, --cards >= 2 and 1 <= --every <= --updates")
    torch.set_num_threads(args.threads)

    print(
        f"selective copying: T={args.length}, {args.cards} cards, H={args.width}, P={args.state_size}, "
        f"{args.layers} layers, B={args.batch}, chance {1 / args.cards:.2f}; "
        f"accuracy on the last quarter of the steps every {args.every} updates"
    )
    print(f"{'variant':<15} {'seed':>4}  {'first >= 0.9':>12}  {'final':>6}  {'time':>5}  curve")
    base: dict[int, float] = {}
    for name, selective in VARIANTS.items():
        for seed in args.seeds:
            curve, wall = train(args, selective, seed)
            base.setdefault(seed, wall)
            reached = next((args.every * (i + 1) for i, acc in enumerate(curve) if acc >= GOAL), None)
            print(
                f"{name:<15} {seed:>4}  {reached if reached else '-':>12}  {curve[-1]:>6.3f}  "
                f"{wall / base[seed]:>4.2f}x  {' '.join(f'{acc:.2f}' for acc in curve)}",
                flush=True,
            )


if __name__ == "__main__":
    main()
