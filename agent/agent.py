"""The agent: a world model (S3M or RSSM) and an actor-critic that learns in its imagination.

    agent = Agent(cfg, env.obs_space, env.action_dim, env.discrete, device)
    action, state = agent.policy(step, state)          # acting, one contract step of N envs
    metrics = agent.train(replay.sample(B, T))         # world model, then actor-critic
    metrics, states = agent.train_with_states(batch)   # the same, plus fresh replay-context states

Acting runs the world model's step mode on the carried latent state (docs/design.md §6): per-env
resets come from `is_first`, and `state["action"]` holds the action just chosen, which the next
step reads as a_{t-1}. Training updates the world model on the (B, T) batch, then the
actor-critic from the B·T posterior states (R2I / DreamerV3), or a random `agent.imag_starts` of them.

Replay context (docs/design.md §5, DreamerV3): with `replay.store_state`, the loop stores
`replay_state(state)` with every step; a sampled batch then holds `start/<name>` (the stored latent
of the step before each sequence) and `start/valid`, from which `train` builds the world model's
initial state instead of starting from scratch. `train_with_states` also returns the posterior of
every step of the batch in the stored format, which the loop writes back into replay (DreamerV3
refreshes replayed latents after every update), so that sequences start from latents of a recent
model rather than of the one that acted.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch

from agent.actor_critic import ActorCritic
from agent.precision import autocast_context, make_grad_scaler, resolve_precision
from configs.schema import Config
from replay import START_PREFIX, STATE_PREFIX
from world_model.base import ObsSpace, State, WorldModel, flatten_state, to_tensors

MODES = ("explore", "eval")
OPTIMIZER_KEYS = ("world_model_opt", "actor_opt", "critic_opt")
CHECKPOINT_KEYS = ("world_model", "world_model_opt", "actor_critic", "actor_opt", "critic_opt", "updates")
# The loss scalers' states ({} each unless 16-mixed); checkpoints written before them lack the key.
SCALER_KEY = "loss_scalers"


def build_world_model(cfg: Config, obs_space: ObsSpace, action_dim: int) -> WorldModel:
    """The world model `cfg.world_model` names: the S3M of R2I or the RSSM of DreamerV3."""

    def s3m() -> WorldModel:
        from world_model.s3m import S3M

        return S3M(obs_space, action_dim, cfg.model, cfg.s3m)

    def rssm() -> WorldModel:
        from world_model.rssm import RSSM

        return RSSM(obs_space, action_dim, cfg.model, cfg.rssm)

    builders = {"s3m": s3m, "rssm": rssm}
    assert cfg.world_model in builders, (
        f"unknown world_model {cfg.world_model!r}, expected one of {list(builders)}"
    )
    return builders[cfg.world_model]()


class Agent:
    """World model + actor-critic, with numpy in and out.

    Args:
        cfg: the run's config (`world_model`, `model`, `s3m`, `rssm`, `agent` are read here).
        obs_space: key -> (shape, dtype) of the observations, e.g. `{"vector": ((4,), float32)}`.
        action_dim: A (one-hot width for discrete actions).
        discrete: one-hot actions, else continuous in [-1, 1].
        device: where the networks live.

    `precision` is the resolved `cfg.precision` (`32`, `bf16-mixed` or `16-mixed`).
    """

    def __init__(
        self,
        cfg: Config,
        obs_space: ObsSpace,
        action_dim: int,
        discrete: bool,
        device: torch.device | str = "cpu",
    ) -> None:
        assert action_dim > 0, f"Agent: action_dim must be positive, got {action_dim}"
        self.cfg = cfg
        self.device = torch.device(device)
        self.action_dim = action_dim
        self.discrete = discrete
        self.world_model = build_world_model(cfg, obs_space, action_dim).to(self.device)
        # Made now rather than on the first update, so that `load_state_dict` can restore it.
        self.world_model.opt = self.world_model.make_optimizer()
        # The RSSM has no SSM state: its actor reads (z, h) whatever the config says.
        self.policy_input = cfg.agent.policy_input if cfg.world_model == "s3m" else "output"
        feature_dim = self.world_model.feature_dim(self.policy_input)
        self.actor_critic = ActorCritic(feature_dim, action_dim, discrete, cfg.agent, self.policy_input)
        self.actor_critic.to(self.device)  # in place: the optimisers keep their parameters
        # Mixed precision: forward passes of both updates run under `autocast`.
        self.precision = resolve_precision(cfg.precision, self.device)
        self.autocast = autocast_context(self.precision, self.device)
        self.world_model.autocast = self.actor_critic.autocast = self.autocast
        # One loss scaler per optimiser: each loss has its own gradient range, and a world-model
        # overflow need not skip the actor's step. Pass-throughs unless `16-mixed`.
        self.world_model.scaler = make_grad_scaler(self.precision, self.device)
        self.actor_critic.actor_scaler = make_grad_scaler(self.precision, self.device)
        self.actor_critic.critic_scaler = make_grad_scaler(self.precision, self.device)
        # Acting on a CPU stays float32: one step of a few envs has no matmul large enough for
        # bfloat16 to pay, and autocast casts every weight again at each call (its cache lasts
        # one context): 1.1 ms against 1.8-2.3 ms a `policy` call at `popgym_cpu`. On a GPU
        # acting follows `precision`.
        act_precision = self.precision if self.device.type == "cuda" else "32"
        self.act_autocast = autocast_context(act_precision, self.device)
        # Data-parallel training (agent/distributed.py) sets the mean over ranks here, so that
        # every rank logs, and checks for non-finite values, the metrics of the whole batch.
        self.reduce_metrics: Callable[[Mapping[str, float]], dict[str, float]] = dict
        self.updates = 0

    # ----- acting ----------------------------------------------------------------------------

    def initial_state(self, num_envs: int) -> State:
        """The latent before any observation, leading (num_envs,); `action` zeros (N, A)."""
        with torch.no_grad():
            return self.world_model.initial_state(num_envs)

    @torch.no_grad()
    def policy(
        self, obs: Mapping[str, np.ndarray], state: State | None = None, mode: str = "explore"
    ) -> tuple[np.ndarray, State]:
        """Observe one step of N envs and choose their actions.

        Args:
            obs: a contract step from `envs.VectorEnv`: observation keys (N, ...) (images uint8),
                `is_first` (N,) bool (others, e.g. `reward`, are ignored here).
            state: the state returned by the previous call; None means the initial state.
            mode: `explore` samples the policy; `eval` takes its mode.

        Returns:
            action: (N, A) float32, one-hot for discrete, in [-1, 1] for continuous.
            state: the latent after observing `obs`, its `action` (N, A) the action just chosen.
        """
        assert mode in MODES, f"Agent.policy: mode must be one of {MODES}, got {mode!r}"
        assert "is_first" in obs, "Agent.policy: obs lacks 'is_first'"
        num_envs = len(obs["is_first"])
        if state is None:
            state = self.initial_state(num_envs)
        assert state["action"].shape == (num_envs, self.action_dim), (
            f"Agent.policy: state is for {tuple(state['action'].shape)} actions, obs has {num_envs} envs"
        )
        if self.world_model.training:  # `eval()` walks every submodule: only when it changes
            self.world_model.eval()
        inputs = to_tensors({key: obs[key] for key in self.world_model.obs_space}, self.device)
        is_first = torch.as_tensor(np.asarray(obs["is_first"], dtype=bool), device=self.device)
        with self.act_autocast():
            state = self.world_model.step(state, inputs, is_first)
            dist = self.actor_critic.policy(self.world_model.features(state, self.policy_input))
        action = dist.sample() if mode == "explore" else dist.mode()
        state = {**state, "action": action}
        return action.float().cpu().numpy(), state

    def replay_state(self, state: State) -> dict[str, np.ndarray]:
        """What the loop stores with a step for replay context: `state/<name>` -> (N, ...) numpy.

        `state` is the one `policy` returned for that step (its `action` the action taken); any
        leading shape works, e.g. (B, T) for the posteriors of a batch. Values are float32 numpy;
        complex SSM states are stored as real views: `state/x` (N, K, P, 2).
        """
        out = {}
        for key, value in state.items():
            value = value.detach()
            if value.is_complex():
                value = torch.view_as_real(value)  # (N, ..., 2) float32
            out[STATE_PREFIX + key] = value.float().cpu().numpy()
        return out

    # ----- training ----------------------------------------------------------------------------

    def _start_state(self, batch: Mapping[str, np.ndarray]) -> State:
        """The world model's state before each sequence from `start/<name>`; initial where not valid."""
        valid = torch.as_tensor(np.asarray(batch[START_PREFIX + "valid"], dtype=bool), device=self.device)
        init = self.world_model.initial_state(valid.shape[0])
        state = {}
        for key, default in init.items():
            name = START_PREFIX + key
            assert name in batch, f"Agent.train: batch has start/valid but lacks {name!r}"
            stored = torch.as_tensor(np.asarray(batch[name]), device=self.device)
            if default.is_complex() and not stored.is_complex():
                stored = torch.view_as_complex(stored.float().contiguous())  # (B, ..., 2) -> (B, ...)
            assert stored.shape == default.shape, (
                f"Agent.train: {name} has shape {tuple(stored.shape)}, expected {tuple(default.shape)}"
            )
            keep = valid.reshape(-1, *([1] * (default.dim() - 1)))
            state[key] = torch.where(keep, stored.to(default.dtype), default.detach())
        return state

    def _posterior_states(
        self, post: State, action: torch.Tensor, keys: Iterable[str]
    ) -> dict[str, np.ndarray]:
        """The posterior of every step of a batch as `replay_state` stores it: `state/<name>` ->
        (B, T, ...) float32 numpy, for the state keys `keys` (those of `initial_state`, `action`
        included).

        The stored state of step i is the latent after observing step i together with the action
        taken there, and `post[:, t]` is exactly that latent for step t, so it pairs with
        `action[:, t]` (B, A) (the batch's action, not one the policy would choose now).
        """
        B, T = action.shape[:2]
        state = {"action": action}
        for key in keys:
            if key == "action":
                continue
            assert key in post, f"Agent.train: the posterior lacks {key!r} (has {sorted(post)})"
            assert post[key].shape[:2] == (B, T), (
                f"Agent.train: posterior {key} has shape {tuple(post[key].shape)}, expected ({B}, {T}, ...)"
            )
            state[key] = post[key]
        return self.replay_state(state)

    def train(self, batch: Mapping[str, np.ndarray]) -> dict[str, float]:
        """One world-model update, then one actor-critic update: `train_with_states` without the
        states (the batch and metrics are as documented there)."""
        return self.train_with_states(batch)[0]

    def train_with_states(
        self, batch: Mapping[str, np.ndarray]
    ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """One world-model update, then one actor-critic update from its posterior.

        Args:
            batch: the data contract with leading (B, T) (observation keys, `action` (B, T, A)
                float32, `reward` (B, T) float32, `is_first` / `is_last` / `is_terminal` (B, T)
                bool), optionally with replay context `start/valid` (B,) bool and `start/<name>`
                (B, ...) as written by `replay_state`.

        Returns:
            metrics: floats, `wm/...` from the world model and `actor/`, `critic/`, `return/`,
                `adv/`, `imag/` from the actor-critic (in data-parallel training, their means
                over the ranks: `reduce_metrics`).
            states: with replay context, the posterior of every step as `replay_state` stores it,
                `state/<name>` -> (B, T, ...) float32 numpy (`state/action` the batch's action),
                for `SequenceReplay.update_state(batch["start/stream"], batch["start/index"],
                states)`; empty without replay context. The latents are those this update
                trained on, computed by the world model before its gradient step.
        """
        self.world_model.train()
        start = self._start_state(batch) if START_PREFIX + "valid" in batch else None
        data = to_tensors({k: v for k, v in batch.items() if not k.startswith(START_PREFIX)}, self.device)
        post, metrics, _ = self.world_model.update(data, start)
        # DreamerV3's replay context writes the training posteriors back into replay; without it,
        # stored latents would stay those of the model that acted (prefill: the untrained one).
        states = {} if start is None else self._posterior_states(post, data["action"], start.keys())
        starts = flatten_state({k: post[k] for k in self.world_model.state_keys}, 2)  # (B·T, ...)
        start_cont = (~data["is_terminal"]).float().reshape(-1)  # (B·T,)
        count = self.cfg.agent.imag_starts
        if 0 < count < start_cont.shape[0]:
            # A uniform subset is an unbiased estimate of the same objective at a fraction of the
            # cost: on a CPU, imagining from all B·T states is ~90% of an update on vector tasks.
            keep = torch.randperm(start_cont.shape[0], device=self.device)[:count]
            starts = {k: v[keep] for k, v in starts.items()}  # (imag_starts, ...)
            start_cont = start_cont[keep]
        metrics.update(self.actor_critic.update(self.world_model, starts, start_cont))
        if self.scales_loss:  # 16-mixed: each scaler's current scale (halved at each overflow)
            metrics.update(
                {f"{name}/loss_scale": scaler.get_scale() for name, scaler in self._scalers().items()}
            )
        self.updates += 1
        return self.reduce_metrics(metrics), states

    # ----- checkpoints -----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs: networks (slow critic and return normaliser included
        with the actor-critic), the three optimisers and the update count."""
        assert self.world_model.opt is not None
        return {
            "world_model": self.world_model.state_dict(),
            "world_model_opt": self.world_model.opt.state_dict(),
            "actor_critic": self.actor_critic.state_dict(),
            "actor_opt": self.actor_critic.actor_opt.state_dict(),
            "critic_opt": self.actor_critic.critic_opt.state_dict(),
            "updates": self.updates,
            SCALER_KEY: {name: scaler.state_dict() for name, scaler in self._scalers().items()},
        }

    def _scalers(self) -> dict[str, torch.amp.GradScaler]:
        return {
            "wm": self.world_model.scaler,
            "actor": self.actor_critic.actor_scaler,
            "critic": self.actor_critic.critic_scaler,
        }

    @property
    def scales_loss(self) -> bool:
        """Whether the updates scale their losses (`16-mixed`): an overflowed step is then
        skipped by its scaler, not a fault."""
        return self.world_model.scaler.is_enabled()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what `state_dict` returned (strict: every key must be there, but the loss
        scalers', which checkpoints from before them lack)."""
        expected = set(CHECKPOINT_KEYS)
        assert set(state) - {SCALER_KEY} == expected, (
            f"Agent.load_state_dict: keys {sorted(state)}, expected {sorted(expected)}"
        )
        assert self.world_model.opt is not None
        # Optimizer.load_state_dict keeps the given tensors (e.g. `step`, and moments already of the
        # right dtype) instead of copying them; copies keep this agent independent of `state`.
        state = {**state, **{k: copy.deepcopy(state[k]) for k in OPTIMIZER_KEYS}}
        self.world_model.load_state_dict(state["world_model"])
        self.world_model.opt.load_state_dict(state["world_model_opt"])
        self.actor_critic.load_state_dict(state["actor_critic"])
        self.actor_critic.actor_opt.load_state_dict(state["actor_opt"])
        self.actor_critic.critic_opt.load_state_dict(state["critic_opt"])
        self.updates = int(state["updates"])
        for name, scaler in self._scalers().items():
            saved = state.get(SCALER_KEY, {}).get(name, {})
            # A disabled scaler saves {}: from a run of another precision a scaler starts afresh.
            if saved and scaler.is_enabled():
                scaler.load_state_dict(copy.deepcopy(saved))

    def parameter_counts(self) -> dict[str, int]:
        """Trainable parameters: `world_model` and its parts (`world_model/<child>`), `actor`,
        `critic` and `total`."""
        counts = {"world_model": sum(p.numel() for p in self.world_model.parameters())}
        for name, child in self.world_model.named_children():
            counts[f"world_model/{name}"] = sum(p.numel() for p in child.parameters())
        counts.update(self.actor_critic.parameter_counts())
        counts["total"] = counts["world_model"] + counts["actor"] + counts["critic"]
        return counts
