"""A quick learning check: the S3M world model recalls a cue across distractors, in imagination.

Synthetic episodes of L steps: a cue of ±1 at the first step only, Gaussian distractors after it,
zero reward until the last step, whose reward is the cue. After a short offline training, the
world model observes only the first step and imagines the rest with its prior; the reward it
predicts for the last imagined step must have the cue's sign. A control trained on the same data
with every step marked `is_first` (the SSM state, previous latent and action reset each step, so
nothing crosses steps) must stay at chance.
"""

import numpy as np
import pytest
import torch

from configs import load_config
from world_model import S3M

L, D, A = 8, 4, 1
UPDATES, BATCH = 300, 32
OVERRIDES = [
    "model.hidden=64", "model.units=64", "model.stoch_groups=8", "model.stoch_classes=8",
    "model.mlp_layers=1", "model.head_layers=1", "model.lr=3e-3", "s3m.layers=2", "s3m.state_size=32",
    "s3m.width=64",
]  # fmt: skip


def episodes(batch_size: int, gen: torch.Generator) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    cue = torch.randint(0, 2, (batch_size,), generator=gen)
    sign = cue.float() * 2 - 1
    vector = torch.zeros(batch_size, L, D)
    vector[:, 0, 0] = sign
    vector[:, 1:, 1:] = torch.randn(batch_size, L - 1, D - 1, generator=gen)
    reward = torch.zeros(batch_size, L)
    reward[:, -1] = sign
    flags = torch.zeros(batch_size, L, dtype=torch.bool)
    is_first = flags.clone()
    is_first[:, 0] = True
    batch = {
        "vector": vector,
        "action": torch.ones(batch_size, L, A),
        "reward": reward,
        "is_first": is_first,
        "is_last": flags,
        "is_terminal": flags,
    }
    return batch, cue


def train(control: bool) -> S3M:
    cfg = load_config(["debug"], OVERRIDES)
    torch.manual_seed(0)
    model = S3M({"vector": ((D,), np.float32)}, A, cfg.model, cfg.s3m)
    gen = torch.Generator().manual_seed(1)
    for _ in range(UPDATES):
        batch, _ = episodes(BATCH, gen)
        if control:
            batch["is_first"] = torch.ones_like(batch["is_first"])
        model.update(batch)
    return model


@torch.no_grad()
def imagined_final_reward(model: S3M, batch: dict[str, torch.Tensor], control: bool) -> torch.Tensor:
    if control:
        # The control's world knows no steps but the current one: each observed alone.
        batch = {**batch, "is_first": torch.ones_like(batch["is_first"])}
        post, _, _, _ = model.observe(batch)
        return model.reward({k: v[:, -1] for k, v in post.items()})
    _, _, _, last = model.observe({k: v[:, :1] for k, v in batch.items()})
    start = {k: last[k] for k in model.state_keys}
    traj = model.imagine(start, lambda s: torch.ones(s["z"].shape[0], A), horizon=L - 1)
    return model.reward({k: v[-1] for k, v in traj.items()})


@pytest.mark.slow
def test_recalls_cue_in_imagination_where_control_cannot():
    test_batch, cue = episodes(400, torch.Generator().manual_seed(123))
    accuracy = {}
    for control in (False, True):
        model = train(control)
        predicted = imagined_final_reward(model, test_batch, control)
        accuracy[control] = ((predicted > 0).long() == cue).float().mean().item()
    assert accuracy[False] >= 0.9, f"memory model recalls the cue with accuracy {accuracy[False]:.2f}"
    assert abs(accuracy[True] - 0.5) <= 0.1, f"control should be at chance, got {accuracy[True]:.2f}"
