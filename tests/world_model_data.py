"""Synthetic batches and helpers shared by the world-model tests (S3M and RSSM)."""

import numpy as np
import torch
import torch.nn.functional as F

A = 3
VECTOR = {"vector": ((5,), np.float32)}
IMAGE = {"image": ((16, 16, 3), np.uint8)}
DICT = {"image": ((16, 16, 3), np.uint8), "vector": ((4,), np.float32)}


def make_batch(obs_space, B, T, reset_at=(), seed=0):
    """A (B, T) contract batch of random observations and one-hot actions; episodes start at t=0
    and at every index in `reset_at`."""
    gen = torch.Generator().manual_seed(seed)
    batch = {}
    for key, (shape, dtype) in obs_space.items():
        if dtype == np.uint8:
            batch[key] = torch.randint(0, 256, (B, T, *shape), generator=gen, dtype=torch.uint8)
        else:
            batch[key] = torch.randn(B, T, *shape, generator=gen)
    batch["action"] = F.one_hot(torch.randint(A, (B, T), generator=gen), A).float()
    batch["reward"] = torch.randn(B, T, generator=gen)
    batch["is_first"] = torch.zeros(B, T, dtype=torch.bool)
    batch["is_first"][:, 0] = True
    for t in reset_at:
        batch["is_first"][:, t] = True
    batch["is_last"] = torch.zeros(B, T, dtype=torch.bool)
    batch["is_terminal"] = torch.zeros(B, T, dtype=torch.bool)
    return batch


def deterministic_latents(model):
    """Replace sampling by the straight-through mode so two runs can be compared exactly."""

    def mode(logits):
        dist = model._latent_dist(logits)
        return (dist.mode() + dist.probs - dist.probs.detach()).flatten(-2)

    model._sample_latent = mode
