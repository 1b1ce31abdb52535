"""What the S3M and RSSM world models share: encoder, heads, losses, optimiser, imagination.

A subclass supplies the sequence model through these methods, abstract in `WorldModel`:

- `initial_state(batch_size) -> state`: the state before any observation, `action` zeros;
- `_latents(embed, action, is_first, state) -> (post, prior_logits, last_state)`: the posterior
  states of a whole (B, T) sequence and the prior logits at every step (parallel for S3M,
  sequential for RSSM);
- `_obs_step(state, embed, is_first) -> state`: one posterior step (acting);
- `_img_step(state, action) -> state`: one prior step (imagining);
- `features(state, policy_input)`, `feature_dim(policy_input)`: what actor and critic read;
- `prior_logits(state) -> logits`: p(z_t | ·) of given states (tests and analysis read it).

The state protocol: a state is a dict of tensors with a leading batch shape. `step` and `observe`
read `state["action"]` as a_{t-1}, the action taken after the previous observation; the caller
sets it to the action it takes after each `step` (`Agent.policy` returns such a state).

Losses follow DreamerV3 (and R2I on top of it):

    L = L_pred + β_dyn · max(free, KL[sg(q) ‖ p]) + β_rep · max(free, KL[q ‖ sg(p)])

with the KL summed over the S latent groups before the free-bits clip, and L_pred the decoder,
reward (symlog two-hot, or symlog MSE) and continue (Bernoulli, target 1 - is_terminal)
negative log-likelihoods.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager

import numpy as np
import torch
from torch import nn

from configs.schema import ModelConfig
from world_model.distributions import OneHotCategorical, kl_categorical
from world_model.networks import (
    BernoulliHead,
    MultiDecoder,
    MultiEncoder,
    ObsSpace,
    SymlogHead,
    TwoHotHead,
    to_autocast_dtype,
)
from world_model.ssm import S5Layer

State = dict[str, torch.Tensor]
CONTRACT_KEYS = ("action", "reward", "is_first", "is_last", "is_terminal")
# S5Layer parameter -> R2I's SSM optimiser group. R2I's B̃ and C̃ are complex, so their real and
# imaginary parts form one group here.
S5_KINDS = {
    "lam_re": "Lambda_re",
    "lam_im": "Lambda_im",
    "B_re": "B",
    "B_im": "B",
    "C_re": "C",
    "C_im": "C",
    "D": "D",
    "log_dt": "log_step",
}


def to_tensors(batch: Mapping[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    """numpy batch -> torch tensors on `device`; uint8 images and bool flags keep their dtype."""
    out = {}
    for key, value in batch.items():
        tensor = torch.as_tensor(value)
        if tensor.dtype == torch.float64:
            tensor = tensor.float()
        out[key] = tensor.to(device, non_blocking=True)
    return out


# The state keys the decoder, reward and continue heads read (`WorldModel.head_features`).
HEAD_KEYS = ("h", "z")


def stack_states(states: list[State], dim: int = 0) -> State:
    """A list of states with equal keys -> one state with a new axis `dim`."""
    return {key: torch.stack([s[key] for s in states], dim) for key in states[0]}


def flatten_state(state: State, dims: int) -> State:
    """Merge the first `dims` leading axes of every entry: (B, T, ...) -> (B*T, ...)."""
    return {k: v.reshape(-1, *v.shape[dims:]) for k, v in state.items()}


class WorldModel(nn.Module, abc.ABC):
    """Encoder, decoder, reward and continue heads, losses and optimiser around a sequence model.

    Args:
        obs_space: key -> (shape, dtype) of the observations (images uint8 (h, w, c), vectors (d,)).
        action_dim: A (one-hot width for discrete actions).
        cfg: shared model settings.
        head_dim: width of [h_t, z_t], what the decoder and heads read.
    """

    # The context of `update`'s forward pass: mixed precision where the agent sets one
    # (agent/precision.py); the backward pass runs outside it.
    autocast: Callable[[], AbstractContextManager] = contextlib.nullcontext
    # Loss scaling for `update` (set by the agent: agent.precision.make_grad_scaler); disabled,
    # every call a pass-through, unless the precision is 16-mixed.
    scaler: torch.amp.GradScaler = torch.amp.GradScaler("cpu", enabled=False)

    def __init__(self, obs_space: ObsSpace, action_dim: int, cfg: ModelConfig, head_dim: int):
        super().__init__()
        self.cfg = cfg
        self.obs_space = dict(obs_space)
        self.action_dim = action_dim
        self.stoch_dim = cfg.stoch_groups * cfg.stoch_classes
        self.encoder = MultiEncoder(obs_space, cfg.mlp_units, cfg.mlp_layers, cfg.cnn_depth, cfg.cnn_stages)
        self.decoder = MultiDecoder(
            head_dim, obs_space, cfg.mlp_units, cfg.mlp_layers, cfg.cnn_depth, cfg.cnn_stages
        )
        reward_heads = {
            "twohot": lambda: TwoHotHead(head_dim, cfg.units, cfg.head_layers, cfg.reward_bins),
            "symlog_mse": lambda: SymlogHead(head_dim, cfg.units, cfg.head_layers),
        }
        self.reward_head = reward_heads[cfg.reward_head]()
        self.cont_head = BernoulliHead(head_dim, cfg.units, cfg.head_layers)
        # The largest |reward| replayed so far (`model.reward_norm=max`; 0 until one is nonzero).
        self.register_buffer("reward_max", torch.zeros(()))
        self.opt: torch.optim.Optimizer | None = None
        self._clip_sets: list[list[nn.Parameter]] = []  # set with the optimiser (`make_optimizer`)

    state_keys: tuple[str, ...] = ()  # the keys an imagined state carries; set by the subclass

    # ----- what a subclass supplies: its sequence model (module doc) --------------------------

    @abc.abstractmethod
    def initial_state(self, batch_size: int) -> State:
        """The state before any observation, leading (batch_size,); `action` zeros (B, A)."""

    @abc.abstractmethod
    def _latents(
        self, embed: torch.Tensor, action: torch.Tensor, is_first: torch.Tensor, state: State
    ) -> tuple[State, torch.Tensor, State]:
        """embed (B, T, E), action (B, T, A), is_first (B, T) bool, state (leading (B,)) ->
        posterior states (leading (B, T), `logits` included), prior logits (B, T, S·C), last state."""

    @abc.abstractmethod
    def _obs_step(self, state: State, embed: torch.Tensor, is_first: torch.Tensor) -> State:
        """One posterior step: state (leading (B,)), embed (B, E), is_first (B,) -> state."""

    @abc.abstractmethod
    def _img_step(self, state: State, action: torch.Tensor) -> State:
        """One prior step: state (leading (N,)) and the action (N, A) taken there -> next state."""

    @abc.abstractmethod
    def prior_logits(self, state: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Prior logits (…, S·C) of states with leading (…)."""

    @abc.abstractmethod
    def feature_dim(self, policy_input: str) -> int:
        """F, the width of `features(state, policy_input)`."""

    @abc.abstractmethod
    def features(self, state: Mapping[str, torch.Tensor], policy_input: str) -> torch.Tensor:
        """What actor and critic read (…, F) for `policy_input` (`output`, `hidden`, `full`): in
        autocast's dtype under mixed precision (`to_autocast_dtype`), float32 otherwise."""

    # ----- pieces the subclasses share -------------------------------------------------------

    def _latent_dist(self, logits: torch.Tensor) -> OneHotCategorical:
        """(…, S·C) logits -> categorical over (…, S, C) with the configured unimix."""
        shape = (*logits.shape[:-1], self.cfg.stoch_groups, self.cfg.stoch_classes)
        return OneHotCategorical(logits.reshape(shape), self.cfg.unimix)

    def _sample_latent(self, logits: torch.Tensor) -> torch.Tensor:
        """(…, S·C) logits -> (…, S·C) straight-through one-hot sample."""
        return self._latent_dist(logits).sample().flatten(-2)

    def head_features(self, state: State) -> torch.Tensor:
        """[h_t, z_t] (…, H + S·C): what the decoder, reward and continue heads read; in
        autocast's dtype under mixed precision (`to_autocast_dtype`: they read it through a
        Linear first, which would cast it anyway), float32 otherwise."""
        return torch.cat([to_autocast_dtype(state[key]) for key in HEAD_KEYS], -1)

    @property
    def reward_unit(self) -> torch.Tensor:
        """σ () float32: the reward head predicts r / σ. With `model.reward_norm=max`, σ is the
        largest |r| replayed so far, so the reward loss has the size of a ±1 reward's whatever
        unit the env pays in (a POPGym step pays ±1/L); 1 otherwise and before any reward."""
        return torch.where(self.reward_max > 0, self.reward_max, torch.ones_like(self.reward_max))

    def track_rewards(self, reward: torch.Tensor) -> None:
        """Fold a replayed (B, T) `reward` into the running max behind `reward_unit`. Under data
        parallelism `reduce_max` makes it the max over every rank's batch."""
        if self.cfg.reward_norm == "max":
            with torch.no_grad():
                largest = self.reduce_max(reward.abs().max().float())
                self.reward_max.copy_(torch.maximum(self.reward_max, largest))

    # Max of a () tensor over the ranks; one process: the tensor (agent/distributed.py sets it).
    reduce_max: Callable[[torch.Tensor], torch.Tensor] = staticmethod(lambda value: value)

    def reward(self, state: State) -> torch.Tensor:
        """Predicted reward (…,) on arriving at `state`, in the env's unit."""
        return self.reward_head(self.head_features(state)).mean() * self.reward_unit

    def cont(self, state: State) -> torch.Tensor:
        """Predicted probability (…,) that the episode continues after `state`."""
        return self.cont_head(self.head_features(state)).mean

    def reward_and_cont(self, state: State) -> tuple[torch.Tensor, torch.Tensor]:
        """`reward(state)` (…,) with its graph and `cont(state)` (…,) without one, from one build
        of the head features: imagination needs both on (H, N) states, and the features of 1024
        starts are a (H, N, H + S·C) copy each time."""
        feats = self.head_features(state)
        reward = self.reward_head(feats).mean() * self.reward_unit
        with torch.no_grad():  # the continue flags discount the returns; no gradient through them
            cont = self.cont_head(feats).mean
        return reward, cont

    # ----- parallel path: observe a replayed batch -------------------------------------------

    def observe(
        self, batch: Mapping[str, torch.Tensor], state: State | None = None
    ) -> tuple[State, dict[str, torch.Tensor], dict[str, float], State]:
        """Posterior states, losses and metrics of a (B, T) batch.

        Args:
            batch: the data contract with leading (B, T): observation keys, `action` (B, T, A),
                `reward` (B, T), `is_first`/`is_last`/`is_terminal` (B, T) bool.
            state: the latent state before the first step (leading (B,)); None for the initial one.

        Returns:
            post: states with leading (B, T); losses: scalar tensors, `total` included;
            metrics: floats; last_state: leading (B,), the state after the last step.
        """
        for key in CONTRACT_KEYS:
            assert key in batch, f"observe: batch lacks {key!r}"
        B, T = batch["is_first"].shape
        assert batch["action"].shape == (B, T, self.action_dim), (
            f"observe: action must be ({B}, {T}, {self.action_dim}), got {tuple(batch['action'].shape)}"
        )
        if state is None:
            state = self.initial_state(B)
        embed = self.encoder(batch)  # (B, T, E)
        post, prior_logits, last_state = self._latents(embed, batch["action"], batch["is_first"], state)

        cfg = self.cfg
        feats = self.head_features(post)  # (B, T, H + S·C)
        nll = self.decoder.loss(feats, batch)
        reward_dist = self.reward_head(feats)
        unit = self.reward_unit
        nll["reward"] = -reward_dist.log_prob(batch["reward"] / unit)
        cont_target = (~batch["is_terminal"]).float()
        nll["cont"] = -self.cont_head(feats).log_prob(cont_target)
        scales = {"reward": cfg.reward_scale, "cont": cfg.cont_scale}
        for key in self.decoder.image_shapes:
            scales[key] = cfg.image_scale
        for key in self.decoder.vector_shapes:
            scales[key] = cfg.vector_scale

        # KL balancing (DV3): the dynamics term trains the prior towards sg(q), the representation
        # term trains the posterior towards sg(p); each summed over groups, then clipped below.
        # The unimixed log-probabilities are normalised already, so they are computed once here
        # and the KL and entropies skip re-normalising them.
        groups = (B, T, cfg.stoch_groups, cfg.stoch_classes)
        log_q = self._latent_dist(post["logits"]).logits.reshape(groups)
        log_p = self._latent_dist(prior_logits).logits.reshape(groups)
        kl_dyn = kl_categorical(log_q.detach(), log_p, normalized=True).sum(-1)  # (B, T)
        kl_rep = kl_categorical(log_q, log_p.detach(), normalized=True).sum(-1)
        dyn = torch.clamp(kl_dyn, min=cfg.free_nats)
        rep = torch.clamp(kl_rep, min=cfg.free_nats)

        losses = {key: value.mean() for key, value in nll.items()}
        losses["dyn"] = dyn.mean()
        losses["rep"] = rep.mean()
        losses["total"] = (
            sum(scales[k] * (nll[k]) for k in nll) + cfg.dyn_scale * dyn + cfg.rep_scale * rep
        ).mean()
        with torch.no_grad():
            metrics = {f"wm/{k}_loss": v.item() for k, v in losses.items()}
            metrics["wm/kl"] = kl_dyn.mean().item()
            metrics["wm/post_entropy"] = -(log_q.exp() * log_q).sum((-2, -1)).mean().item()
            metrics["wm/prior_entropy"] = -(log_p.exp() * log_p).sum((-2, -1)).mean().item()
            metrics["wm/reward_mae"] = (reward_dist.mean() * unit - batch["reward"]).abs().mean().item()
            metrics["wm/reward_unit"] = unit.item()
        return post, losses, metrics, last_state

    def _optimizer_sets(self) -> tuple[list[nn.Parameter], list[nn.Parameter], dict[str, list[nn.Parameter]]]:
        """Every trainable parameter once, by how R2I's optimiser (jaxutils.Optimizer) treats it.

        Returns:
            decayed: weight matrices and kernels of Linear and (transposed) convolution layers
                outside the S5 layers, R2I's weight-decay pattern `/(w|kernel)$`.
            plain: every other non-S5 parameter (norm scales, biases, learned initial states).
            s5: S5 kind -> its parameters over all layers, R2I's SSM groups `Lambda_re`,
                `Lambda_im`, `B`, `C`, `D`, `log_step`.
        """
        s5_kind = {}
        for module in self.modules():
            if isinstance(module, S5Layer):
                for name, param in module.named_parameters(recurse=False):
                    # x_init is not in R2I's SSM groups: it stays with the default set.
                    if name in S5_KINDS:
                        s5_kind[id(param)] = S5_KINDS[name]
        kernels = {
            id(m.weight)
            for m in self.modules()
            if isinstance(m, nn.Linear | nn.Conv2d | nn.ConvTranspose2d) and m.weight.dim() >= 2
        }
        decayed, plain = [], []
        s5: dict[str, list[nn.Parameter]] = {kind: [] for kind in dict.fromkeys(S5_KINDS.values())}
        for param in self.parameters():
            if id(param) in s5_kind:
                s5[s5_kind[id(param)]].append(param)
            elif id(param) in kernels:
                decayed.append(param)
            else:
                plain.append(param)
        return decayed, plain, {kind: params for kind, params in s5.items() if params}

    def make_optimizer(self) -> torch.optim.Optimizer:
        """AdamW; weight decay only on Linear and convolution weight matrices (R2I `/(w|kernel)$`).

        Also fixes the sets `update` clips on their own (R2I's one optax chain per parameter group,
        each with its own `clip_by_global_norm`): every non-S5 parameter together, and each S5 kind
        (Λ real, Λ imaginary, B̃, C̃, D, log Δ) over all layers.
        """
        cfg = self.cfg
        decayed, plain, s5 = self._optimizer_sets()
        self._clip_sets = [decayed + plain, *s5.values()]
        ssm = [p for params in s5.values() for p in params]
        groups = [
            {"params": params, "weight_decay": decay}
            for params, decay in ((decayed, cfg.weight_decay), (plain, 0.0), (ssm, 0.0))
            if params
        ]
        return torch.optim.AdamW(groups, lr=cfg.lr, eps=cfg.eps, weight_decay=cfg.weight_decay)

    def update(
        self, batch: Mapping[str, torch.Tensor], state: State | None = None
    ) -> tuple[State, dict[str, float], State]:
        """One gradient step on a (B, T) batch: observe, backward, clip, step.

        Each of the clip sets `make_optimizer` fixed is clipped to `grad_clip` on its own (R2I);
        `wm/grad_norm` is the global norm over all of them, before clipping.

        Returns the posterior states (detached, leading (B, T)), metrics and the last state.
        """
        if self.opt is None:
            self.opt = self.make_optimizer()
        self.opt.zero_grad(set_to_none=True)
        self.track_rewards(batch["reward"])
        with self.autocast():
            post, losses, metrics, last_state = self.observe(batch, state)
        self.scaler.scale(losses["total"]).backward()
        assert self._clip_sets, "update: the optimiser must come from make_optimizer"
        self.scaler.unscale_(self.opt)  # clip the true gradients (a no-op without loss scaling)
        norms = [nn.utils.clip_grad_norm_(params, self.cfg.grad_clip) for params in self._clip_sets]
        self.scaler.step(self.opt)  # skipped by a loss scaler whose gradients overflowed
        self.scaler.update()
        # A set without gradients has a 0-dim CPU norm, which `sum` (unlike `stack`) adds to CUDA ones.
        metrics["wm/grad_norm"] = float(sum(norm.square() for norm in norms) ** 0.5)
        detach = lambda s: {k: v.detach() for k, v in s.items()}  # noqa: E731
        return detach(post), metrics, detach(last_state)

    # ----- step path: act and imagine --------------------------------------------------------

    def fixed_step_weights(self) -> AbstractContextManager:
        """A context in which many `_img_step` calls see unchanged parameters, for a subclass to
        build its per-step constants once (the S3M's discretised S5 layers); none here."""
        return contextlib.nullcontext()

    def step(self, state: State, obs: Mapping[str, torch.Tensor], is_first: torch.Tensor) -> State:
        """One posterior step for acting.

        Args:
            state: leading (B,), whose `action` is the action taken after the previous observation.
            obs: observation keys with leading (B,).
            is_first: (B,) bool; where True the state restarts (previous z, action and SSM state reset).

        Returns:
            the new state, leading (B,); its `action` still holds the previous action until the
            caller sets the one it takes now.
        """
        embed = self.encoder(obs)  # (B, E)
        return self._obs_step(state, embed, is_first)

    def imagine(
        self,
        start: State,
        policy: Callable[[State], torch.Tensor],
        horizon: int,
        keep: Iterable[str] | None = None,
    ) -> State:
        """Roll the prior forward from `start` with actions from `policy`.

        Args:
            start: leading (N,), e.g. every posterior step of a batch flattened.
            policy: state (leading (N,)) -> action (N, A); it sees every key of every state.
            horizon: imagined steps.
            keep: the state keys the trajectory holds (default all `state_keys`). The
                actor-critic keeps `HEAD_KEYS`: what the policy needs it reads per step, and
                stacking the S3M's x (K·P complex per start) would only copy it once more.

        Returns:
            trajectory with leading (horizon + 1, N): the start and imagined states (the `keep`
            keys), and `action`, the action taken at each of them (the last one too, for the
            actor's loss).
        """
        state = {k: start[k] for k in self.state_keys}
        keep = self.state_keys if keep is None else tuple(keep)
        assert set(keep) <= set(self.state_keys), f"imagine: keep {keep} not in {self.state_keys}"
        states, actions = [], []
        with self.fixed_step_weights():
            for _ in range(horizon):
                action = policy(state)
                states.append({k: state[k] for k in keep})
                actions.append(action)
                state = self._img_step(state, action)
        states.append({k: state[k] for k in keep})
        actions.append(policy(state))
        traj = stack_states(states)
        traj["action"] = torch.stack(actions)
        return traj

    @torch.no_grad()
    def open_loop(self, batch: Mapping[str, torch.Tensor], context: int) -> dict[str, torch.Tensor]:
        """Reconstructions of a (B, T) batch: posterior for the first `context` steps, then the
        prior driven by the recorded actions (what the open-loop prediction videos show).

        Returns key -> (B, T, ...) predictions in observation space (images float in [0, 1]).
        """
        T = batch["is_first"].shape[1]
        assert 0 < context <= T, f"open_loop: context {context} must be in [1, {T}]"
        post, _, _, last = self.observe({k: v[:, :context] for k, v in batch.items()})
        states = [{k: post[k] for k in self.state_keys}]
        state = {k: last[k] for k in self.state_keys}
        imagined = []
        with self.fixed_step_weights():
            for t in range(context, T):
                state = self._img_step(state, batch["action"][:, t - 1])
                imagined.append(state)
        if imagined:
            states.append(stack_states(imagined, dim=1))
        feats = torch.cat([self.head_features(s) for s in states], 1)  # (B, T, H + S·C)
        return self.decoder.reconstruct(feats)
