"""Guards against non-finite values (NaN, ±inf): keep them out of the weights and the envs.

    guard = UpdateGuard(agent, max_skipped=20)
    metrics, states = guard.train(batch)            # (None, None) if the update was skipped
    action, state, rows = finite_actions(agent, action, state, fallback)   # repair NaN actions
    nonfinite_tensors(agent.state_dict())            # ["world_model.encoder.0.weight", ...]

One bad update (a NaN in a batch, an overflow, a learning rate far too high) would otherwise
poison every weight, every later loss, every action and every checkpoint. `UpdateGuard` takes a
copy of everything an update changes (networks, optimiser moments, return normaliser, counters)
before each update and puts it back when a loss or gradient norm came out non-finite or a weight
did, so such an update never reaches the weights; after `max_skipped` skips in a row it raises
`NonFiniteError`, naming what went non-finite.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from agent.agent import Agent
from world_model.base import State

SHOWN = 4  # names listed in a message; the rest are counted


class NonFiniteError(Exception):
    """Values went non-finite and could not be kept out: the message names them (one line)."""


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN])
    return shown + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")


def _tensors(tree: Any, prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    """(dotted name, tensor) for every tensor in nested dicts, lists and tuples, in order."""
    if isinstance(tree, torch.Tensor):
        return [(prefix, tree)]
    if isinstance(tree, Mapping):
        items = tree.items()
    elif isinstance(tree, (list, tuple)):
        items = enumerate(tree)
    else:
        return []
    pairs = []
    for key, value in items:
        pairs += _tensors(value, f"{prefix}.{key}" if prefix else str(key))
    return pairs


def nonfinite_tensors(tree: Any) -> list[str]:
    """Dotted names of the floating-point (or complex) tensors in `tree` that hold a NaN or ±inf."""
    by_device: dict[torch.device, list[tuple[str, torch.Tensor]]] = {}
    for name, t in _tensors(tree):
        if t.is_floating_point() or t.is_complex():
            by_device.setdefault(t.device, []).append((name, t))
    bad = []
    for named in by_device.values():
        # A sum is NaN or ±inf if any entry is: one cheap pass over everything (this runs after
        # every update), then a closer look only if it fails. Read in one transfer per device.
        sums = [(torch.view_as_real(t) if t.is_complex() else t).detach().float().sum() for _, t in named]
        if bool(torch.isfinite(torch.stack(sums)).all()):
            continue
        finite = torch.stack([torch.isfinite(t).all() for _, t in named]).tolist()
        bad += [name for (name, _), ok in zip(named, finite) if not ok]
    return bad


def _watched(key: str, scales_loss: bool) -> bool:
    """Metrics whose value decides an update: every loss and every gradient norm; only the
    losses under loss scaling, whose scalers skip an overflowed step themselves (its norm inf)."""
    return "loss" in key or ("grad_norm" in key and not scales_loss)


class UpdateGuard:
    """`Agent.train_with_states` that skips updates with non-finite losses, gradients or weights.

    Args:
        agent: the agent to train; its `state_dict` must hold everything an update changes.
        max_skipped: consecutive skipped updates after which `train` raises `NonFiniteError`.

    Attributes: `skipped` (updates skipped so far), `consecutive` (in a row, now).
    """

    def __init__(self, agent: Agent, max_skipped: int) -> None:
        self.agent = agent
        self.max_skipped = max_skipped
        self.skipped = 0
        self.consecutive = 0
        self.last = ""  # what the last skipped update found non-finite
        self._copies: list[torch.Tensor] = []  # reused from update to update: no allocation

    def _snapshot(self) -> Any:
        """A copy of `agent.state_dict()`: its tensors copied into buffers kept between updates."""
        state = self.agent.state_dict()
        live = [t for _, t in _tensors(state)]
        fits = len(live) == len(self._copies) and all(
            c.shape == t.shape and c.dtype == t.dtype and c.device == t.device
            for c, t in zip(self._copies, live)
        )
        with torch.no_grad():
            if fits:
                for c, t in zip(self._copies, live):
                    c.copy_(t)
            else:  # first update, or the optimisers just made their moments
                self._copies = [t.detach().clone() for t in live]
        copies = iter(self._copies)
        return _rebuild(state, lambda _: next(copies))

    def train(
        self, batch: Mapping[str, np.ndarray]
    ) -> tuple[dict[str, float], dict[str, np.ndarray]] | tuple[None, None]:
        """One update on `batch`, or none: (metrics, states) as `Agent.train_with_states` returns
        them, or (None, None) when the update was undone because something went non-finite.

        Raises:
            NonFiniteError: the `max_skipped`-th skip in a row; the message names the culprits.
        """
        snapshot = self._snapshot()
        try:
            metrics, states = self.agent.train_with_states(batch)
        except BaseException:
            self.agent.load_state_dict(snapshot)  # an update cut short leaves no half-step behind
            raise
        scales_loss = self.agent.scales_loss
        culprits = [
            f"{k}={v}" for k, v in metrics.items() if _watched(k, scales_loss) and not math.isfinite(v)
        ]
        if not culprits:
            culprits = [f"weight {name}" for name in nonfinite_tensors(self.agent.state_dict())]
        if not culprits:
            self.consecutive = 0
            return metrics, states
        self.agent.load_state_dict(snapshot)
        self.skipped += 1
        self.consecutive += 1
        self.last = _listing(culprits)
        if self.consecutive >= self.max_skipped:
            raise NonFiniteError(
                f"{self.consecutive} updates in a row went non-finite (train.max_skipped_updates="
                f"{self.max_skipped}), the last in {self.last}"
            )
        return None, None


def _rebuild(tree: Any, tensor: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """`tree` with every tensor replaced by `tensor(t)` and every other leaf deep-copied."""
    if isinstance(tree, torch.Tensor):
        return tensor(tree)
    if isinstance(tree, Mapping):
        return type(tree)((key, _rebuild(value, tensor)) for key, value in tree.items())
    if isinstance(tree, (list, tuple)):
        return type(tree)(_rebuild(value, tensor) for value in tree)
    return copy.deepcopy(tree)


def finite_actions(
    agent: Agent, action: np.ndarray, state: State, fallback: Callable[[], np.ndarray]
) -> tuple[np.ndarray, State, list[int]]:
    """Replace the actions of envs whose action or latent is non-finite, and restart their latent.

    Args:
        action: (N, A) float32 from `Agent.policy`.
        state: the latent `Agent.policy` returned with it (leading N; `action` (N, A) inside).
        fallback: returns (N, A) float32 actions to use instead (e.g. uniform random ones).

    Returns:
        action (N, A) float32 and state, both finite; the env indices that were repaired.
    """
    N = action.shape[0]
    bad = ~np.isfinite(action).reshape(N, -1).all(1)
    for value in state.values():
        bad |= ~torch.isfinite(value).reshape(N, -1).all(1).cpu().numpy()
    rows = np.flatnonzero(bad).tolist()
    if not rows:
        return action, state, rows
    action = np.where(bad[:, None], fallback(), action).astype(np.float32)
    mask = torch.as_tensor(bad, device=state["action"].device)
    init = agent.initial_state(N)
    state = {
        key: torch.where(mask.reshape(-1, *([1] * (value.dim() - 1))), init[key].to(value.dtype), value)
        for key, value in state.items()
    }
    state["action"] = torch.as_tensor(action, device=mask.device, dtype=state["action"].dtype)
    return action, state, rows
