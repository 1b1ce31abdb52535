"""benchmarks/cont_recall.py: the continue head's recall at terminal steps, split by observation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

from agent.agent import build_world_model  # noqa: E402
from benchmarks import cont_recall  # noqa: E402
from configs import load_config  # noqa: E402

OBS_DIM, ACTION_DIM = 3, 2


def batch(B: int = 2, T: int = 8) -> dict[str, torch.Tensor]:
    """Episodes ending at t=3 (cart far out: vector[0] = 3) and t=6 (vector[0] = 0)."""
    rng = np.random.default_rng(0)
    vector = rng.uniform(-1, 1, (B, T, OBS_DIM)).astype(np.float32)
    vector[:, 3, 0] = 3.0
    terminal = np.zeros((B, T), bool)
    terminal[:, 3] = terminal[:, 6] = True
    first = np.zeros((B, T), bool)
    first[:, 0] = first[:, 4] = first[:, 7] = True
    return {
        "vector": torch.as_tensor(vector),
        "action": torch.as_tensor(np.eye(ACTION_DIM, dtype=np.float32)[rng.integers(0, ACTION_DIM, (B, T))]),
        "reward": torch.ones(B, T),
        "is_first": torch.as_tensor(first),
        "is_last": torch.as_tensor(terminal),
        "is_terminal": torch.as_tensor(terminal),
    }


def test_recall_counts_the_ends_below_one_half_and_splits_them_by_the_observation(monkeypatch):
    model = build_world_model(load_config(["debug"]), {"vector": ((OBS_DIM,), np.float32)}, ACTION_DIM)
    data = batch()
    for p, called in ((0.2, 1.0), (0.9, 0.0)):
        # The continue head's probability, read from every posterior and every imagined state.
        monkeypatch.setattr(model, "cont", lambda state, p=p: torch.full(state["z"].shape[:-1], p))
        result = cont_recall.score(model, [data], dim=0, above=2.0)
        # Steps 1..T-1 are scored: each row ends at t=3 (|vector[0]| = 3) and t=6.
        assert result["ends"] == {"all": 4, "|v[0]|>2": 2, "other ends": 2}
        for view in ("post", "prior"):
            for group in ("all", "|v[0]|>2", "other ends"):
                recall, mean = result[(view, group)]
                assert recall == called and abs(mean - p) < 1e-6, (view, group)
            assert result[(view, "false")] == called
