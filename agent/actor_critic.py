"""Actor-critic learning in imagination (DreamerV3 `ImagActorCritic` + `VFunction`, as R2I uses it).

One update (docs/design.md §4):

1. Imagine H steps from every start state (B·T posterior states flattened, or a random
   `agent.imag_starts` of them) with the actor, which reads sg(features): `world_model.imagine`
   gives states 0..H and the action taken at each.
2. Rewards r_t and continuations c_t of the imagined states 1..H from the world model's heads; c_0
   is 1 - is_terminal of the start step. Continuations are the continue head's mode, as DreamerV3
   (`heads['cont'](traj).mode()`). Weights w_t = Π_{k≤t} γ c_k / γ (so w_0 = c_0) discount the
   losses of states the episode may never reach.
3. λ-returns R_t from the critic's values (`agent.returns`), normalised by the EMA percentile
   scale S: advantages A_t = (R_t - v_t) / S.
4. Actor: REINFORCE `-log π(a_t|s_t) sg(A_t)` (discrete) or dynamics backprop `-(R_t - v_t) / S`
   through the world model and the critic (continuous), minus `entropy` · H[π(·|s_t)]; weighted by
   w_t, mean over t < H.
5. Critic: two-hot NLL of sg(R_t) plus `slow_critic_reg` × NLL of the slow critic's value, on
   detached features, weighted by w_t; then the slow critic moves by `slow_critic_fraction`.

Imagination is the hot path on a CPU (docs/design.md §4). With REINFORCE the world model runs under
`torch.no_grad()`; only the actor's per-step distribution keeps a graph (to the actor's parameters,
on detached features), and the actor loss reuses it rather than running the actor again. One critic
pass with a graph serves both the returns (detached) and the critic loss. Dynamics backprop needs
the graph through the world model; its parameters (and the critic's) are frozen meanwhile, so the
actor loss neither builds nor leaves gradients on them.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager

import torch
from torch import Tensor, nn

from agent.returns import ReturnNormalizer, lambda_returns
from configs.schema import AgentConfig
from world_model.base import HEAD_KEYS, State, WorldModel
from world_model.distributions import BoundedNormal, OneHotCategorical, TwoHot
from world_model.networks import ActionHead, TwoHotHead


@contextlib.contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """Temporarily set `requires_grad=False` on every parameter of `modules`, then restore it.

    Gradients still flow *through* the modules to their inputs; their parameters get none.
    """
    params = [p for m in modules for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


def sample_action(dist: OneHotCategorical | BoundedNormal) -> Tensor:
    """(…, A) float32 sample that carries gradients to the policy where it can.

    Discrete: straight-through one-hot (DreamerV3); continuous: reparameterised, in [-1, 1].
    """
    return dist.sample() if isinstance(dist, OneHotCategorical) else dist.rsample()


def reinforce_loss(
    logpi: Tensor, returns: Tensor, value: Tensor, scale: Tensor, entropy: Tensor, weight: Tensor, eta: float
) -> Tensor:
    """REINFORCE actor loss (DreamerV3 `ImagActorCritic.loss`, discrete actions), a mean over (H, N):

        L = -mean[ w_t (log π(a_t | s_t) · sg((R_t - v_t) / S) + η H[π(· | s_t)]) ]

    Args:
        logpi, entropy: (H, N) float32 of the imagined steps 0..H-1, with graphs to the actor.
        returns, value: (H, N) float32 λ-returns R_t and values v_t; used without their graphs.
        scale: () the return scale S (`ReturnNormalizer.scale`).
        weight: (H, N) float32 w_t, the discount and continue weights of the steps.
        eta: η, the entropy coefficient.
    """
    adv = ((returns - value) / scale).detach()
    return -(weight * (logpi * adv + eta * entropy)).mean()


def dynamics_loss(
    logpi: Tensor, returns: Tensor, value: Tensor, scale: Tensor, entropy: Tensor, weight: Tensor, eta: float
) -> Tensor:
    """Dynamics-backprop actor loss (DreamerV3 and R2I, continuous actions), a mean over (H, N):

        L = -mean[ w_t ((R_t - v_t) / S + η H[π(· | s_t)]) ]

    R_t and the baseline v_t both keep their graphs, through the frozen critic and world model
    to the actor's reparameterised actions, so the gradient is (∂v_t - ∂R_t) / S (DreamerV3's
    `-(normed_ret - normed_base)`: the percentile offset cancels), not -∂R_t / S alone. `logpi`
    is unused; the arguments are those of `reinforce_loss`.
    """
    del logpi
    return -(weight * ((returns - value) / scale + eta * entropy)).mean()


class ActorCritic(nn.Module):
    """Actor, critic, slow critic, return normaliser and their two optimisers.

    Args:
        feature_dim: F, width of `world_model.features(state, policy_input)`.
        action_dim: A.
        discrete: one-hot actions (categorical policy with unimix) or continuous in [-1, 1].
        cfg: actor-critic settings.
        policy_input: what actor and critic read (`output`, `hidden`, `full`); default
            `cfg.policy_input`. The agent passes `output` for the RSSM.
    """

    # The context of the forward passes in `update`: mixed precision where the agent sets one
    # (agent/precision.py); backward passes run outside it.
    autocast: Callable[[], AbstractContextManager] = contextlib.nullcontext
    # Loss scaling of the actor's and the critic's steps (set by the agent:
    # agent.precision.make_grad_scaler, one per optimiser); pass-throughs unless 16-mixed.
    actor_scaler: torch.amp.GradScaler = torch.amp.GradScaler("cpu", enabled=False)
    critic_scaler: torch.amp.GradScaler = torch.amp.GradScaler("cpu", enabled=False)

    def __init__(
        self,
        feature_dim: int,
        action_dim: int,
        discrete: bool,
        cfg: AgentConfig,
        policy_input: str | None = None,
    ) -> None:
        super().__init__()
        assert feature_dim > 0 and action_dim > 0, f"ActorCritic: bad sizes F={feature_dim}, A={action_dim}"
        assert cfg.horizon >= 1, f"ActorCritic: horizon must be >= 1, got {cfg.horizon}"
        assert cfg.actor_grad in ("auto", "reinforce", "dynamics"), f"unknown actor_grad {cfg.actor_grad!r}"
        self.cfg = cfg
        self.feature_dim = feature_dim
        self.action_dim = action_dim
        self.discrete = discrete
        self.policy_input = policy_input or cfg.policy_input
        # DreamerV3: REINFORCE for discrete actions (no useful gradient through a one-hot), dynamics
        # backprop for continuous ones (low-variance reparameterised gradients).
        auto = "reinforce" if discrete else "dynamics"
        self.actor_grad = auto if cfg.actor_grad == "auto" else cfg.actor_grad
        self.actor = ActionHead(feature_dim, action_dim, discrete, cfg.units, cfg.layers, cfg.actor_unimix)
        # TwoHotHead zero-initialises its output layer: the critic starts at exactly 0 (DreamerV3).
        self.critic = TwoHotHead(feature_dim, cfg.units, cfg.layers, cfg.critic_bins)
        self.slow_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.retnorm = ReturnNormalizer(
            cfg.return_norm_decay, cfg.return_norm_low, cfg.return_norm_high, cfg.return_norm_floor
        )
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr, eps=cfg.eps)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr, eps=cfg.eps)

    # ----- the policy ------------------------------------------------------------------------

    def policy(self, features: Tensor) -> OneHotCategorical | BoundedNormal:
        """π(·|s): features (…, F) float32 -> distribution over actions (…, A)."""
        assert features.shape[-1] == self.feature_dim, (
            f"ActorCritic.policy: expected (…, {self.feature_dim}) features, got {tuple(features.shape)}"
        )
        return self.actor(features)

    def _imagine(self, world_model: WorldModel, start: State) -> tuple[State, Tensor, Tensor, Tensor]:
        """H imagined steps from `start` (leading (N,)) with the actor.

        Returns:
            traj: states 0..H (the heads' keys, `HEAD_KEYS`) and the action taken at each,
                leading (H + 1, N).
            feats: (H + 1, N, F) features of those states (float32; autocast's dtype under mixed
                precision), with a graph through the world model where gradients are enabled
                (dynamics backprop).
            logpi: (H + 1, N) float32 log π(a_t | sg(s_t)), with a graph to the actor's parameters.
            entropy: (H + 1, N) float32 entropy of π(· | sg(s_t)), likewise.
        """
        feats: list[Tensor] = []
        logpi: list[Tensor] = []
        entropy: list[Tensor] = []

        def act(state: State) -> Tensor:
            # In autocast's dtype already (cast once: the actor, critic and slow critic each read
            # f through a Linear first).
            f = world_model.features(state, self.policy_input)  # (N, F)
            # The actor reads sg(s) (DreamerV3): its loss must not shape the world model's states.
            # Its distribution keeps a graph to the actor's parameters even while imagination runs
            # under no_grad, so the actor loss reuses it instead of running the actor again.
            with torch.enable_grad():
                dist = self.policy(f.detach())
                action = sample_action(dist)
                logpi.append(dist.log_prob(action.detach()))
                entropy.append(dist.entropy())
            feats.append(f)
            return action

        # The trajectory keeps what the reward and continue heads read; the actor and critic
        # read `feats`, built per step above.
        traj = world_model.imagine(start, act, self.cfg.horizon, keep=HEAD_KEYS)
        assert len(feats) == self.cfg.horizon + 1, "world_model.imagine must call the policy once per state"
        with torch.enable_grad():
            return traj, torch.stack(feats), torch.stack(logpi), torch.stack(entropy)

    # ----- one update ------------------------------------------------------------------------

    def update(
        self, world_model: WorldModel, start: Mapping[str, Tensor], start_cont: Tensor
    ) -> dict[str, float]:
        """One actor step, one critic step and one slow-critic step from imagined trajectories.

        Args:
            world_model: gives `imagine`, `features`, `reward`, `cont`; its parameters are neither
                changed nor given gradients here.
            start: start states with leading (N,), e.g. the (B, T) posterior flattened to B·T:
                `z` (N, S·C), `h` (N, H), `x` (N, K, P) complex64 (S3M) — the world model's
                `state_keys`; detached here.
            start_cont: (N,) float32, 1 - is_terminal of each start step.

        Returns:
            metrics: floats under `actor/`, `critic/`, `return/`, `adv/` and `imag/`.
        """
        N = start_cont.shape[0]
        for key in world_model.state_keys:
            assert key in start, f"ActorCritic.update: start lacks {key!r}"
            assert start[key].shape[0] == N, (
                f"ActorCritic.update: start[{key!r}] has {start[key].shape[0]} rows, start_cont {N}"
            )
        start = {k: start[k].detach() for k in world_model.state_keys}
        start_cont = start_cont.detach().float()
        cfg = self.cfg
        actor_losses = {"reinforce": reinforce_loss, "dynamics": dynamics_loss}
        dynamics = self.actor_grad == "dynamics"

        # With REINFORCE nothing in imagination needs a graph but the actor's; with dynamics
        # backprop the graph runs from the actor's reparameterised actions through the (frozen)
        # world model and critic into the returns. Forward passes run under the mixed-precision
        # context, backward passes outside it.
        with frozen(world_model, self.critic) if dynamics else contextlib.nullcontext():
            with self.autocast(), torch.set_grad_enabled(dynamics):
                traj, feats, logpi, entropy = self._imagine(world_model, start)
                reward, cont = self._reward_and_cont(world_model, traj)  # (H, N) each
            with self.autocast():
                # Dynamics backprop: values with a graph through the frozen critic to the features.
                # REINFORCE: one critic pass serves the returns (detached) and the critic loss.
                critic_all = self.critic(feats if dynamics else feats.detach())
                value = critic_all.mean() if dynamics else critic_all.mean().detach()  # (H + 1, N)
                returns = lambda_returns(reward, cont, value, cfg.discount, cfg.return_lambda)  # (H, N)
            with torch.no_grad():
                conts = torch.cat([start_cont[None], cont], 0)  # (H + 1, N)
                weight = torch.cumprod(cfg.discount * conts, 0) / cfg.discount  # (H + 1, N)
                self.retnorm.update(returns)
                scale = self.retnorm.scale()
                adv = (returns - value[:-1]) / scale  # (H, N), for the metrics
            actor_loss = actor_losses[self.actor_grad](
                logpi[:-1], returns, value[:-1], scale, entropy[:-1], weight[:-1], cfg.entropy
            )
            actor_norm = self._step(self.actor_opt, self.actor_scaler, actor_loss, self.actor.parameters())

        # Critic loss (DreamerV3 VFunction.loss): targets and features carry no graph. Dynamics
        # backprop ran the critic frozen, so its loss needs a pass of its own.
        if dynamics:
            with self.autocast():
                critic_dist = self.critic(feats[:-1].detach())
        else:
            critic_dist = TwoHot(critic_all.logits[:-1], self.critic.bins)
        critic_loss, slow_value = self._critic_loss(
            critic_dist, feats[:-1].detach(), returns.detach(), weight[:-1]
        )
        critic_norm = self._step(self.critic_opt, self.critic_scaler, critic_loss, self.critic.parameters())
        self.update_slow_critic()

        with torch.no_grad():
            ret = returns.detach()
            quantiles = torch.tensor(self.retnorm.quantiles, device=ret.device)
            low, high = torch.quantile(ret.reshape(-1), quantiles)
            metrics = {
                "actor/loss": actor_loss.item(),
                "actor/entropy": entropy[:-1].mean().item(),
                "actor/grad_norm": float(actor_norm),
                "critic/loss": critic_loss.detach().item(),
                "critic/value_mean": value.mean().item(),
                "critic/slow_value_mean": slow_value.mean().item(),
                "critic/grad_norm": float(critic_norm),
                "return/mean": ret.mean().item(),
                "return/p5": low.item(),
                "return/p95": high.item(),
                "return/ema_low": self.retnorm.low.item(),
                "return/ema_high": self.retnorm.high.item(),
                "return/scale": scale.item(),
                "adv/mean": adv.mean().item(),
                "adv/std": adv.std().item(),
                "imag/reward_mean": reward.mean().item(),
                "imag/cont_mean": cont.mean().item(),
                "imag/weight_mean": weight.mean().item(),
            }
        return metrics

    def _reward_and_cont(self, world_model: WorldModel, traj: State) -> tuple[Tensor, Tensor]:
        """Rewards (H, N) and continue flags (H, N) of the imagined states 1..H."""
        arrived = {k: v[1:] for k, v in traj.items() if k != "action"}  # states 1..H
        reward, cont = world_model.reward_and_cont(arrived)  # cont: probabilities
        if self.cfg.imag_cont == "mode":
            # Bernoulli mode, as DreamerV3 (`heads['cont'](traj).mode()`).
            return reward, (cont > 0.5).float()
        # `mean` keeps the probability, as DreamerV2: an end the continue head half-expects
        # still discounts the return instead of counting as no end.
        return reward, cont

    def _critic_loss(
        self, dist: TwoHot, feats: Tensor, target: Tensor, weight: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The critic's loss: two-hot NLL of the λ-returns plus the slow-critic regulariser.

        Args:
            dist: the critic's distribution (batch (H, N)) with a graph to its parameters.
            feats: (H, N, F) detached features (float32; autocast's dtype under mixed precision),
                for the slow critic.
            target: (H, N) float32 detached λ-returns.
            weight: (H, N) float32 detached loss weights.

        Returns:
            loss () float32 with its graph, the slow critic's values (H, N).
        """
        with torch.no_grad(), self.autocast():
            slow_value = self.slow_critic(feats).mean()  # (H, N)
        # DreamerV3 `critic_slowreg: logprob`: the slow critic's mean is a second two-hot target.
        nll = -dist.log_prob(target) - self.cfg.slow_critic_reg * dist.log_prob(slow_value)
        return (nll * weight).mean(), slow_value

    def _step(
        self,
        opt: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler,
        loss: Tensor,
        params: Iterator[nn.Parameter],
    ) -> Tensor:
        """Backward `loss` (scaled by `scaler`), clip `params`' true gradient norm to `grad_clip`,
        step `opt` (which the scaler skips where the scaled gradients overflowed); the norm before
        clipping (inf after an overflow)."""
        params = list(params)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        norm = nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        scaler.step(opt)
        scaler.update()
        return norm

    @torch.no_grad()
    def update_slow_critic(self) -> None:
        """slow ← (1 - f) slow + f critic with f = `slow_critic_fraction` (DreamerV3 SlowUpdater)."""
        fraction = self.cfg.slow_critic_fraction
        for slow, fast in zip(self.slow_critic.parameters(), self.critic.parameters()):
            slow.lerp_(fast, fraction)

    def parameter_counts(self) -> dict[str, int]:
        """Trainable parameters of the actor and the critic (the slow critic is a copy, not counted)."""
        return {
            "actor": sum(p.numel() for p in self.actor.parameters()),
            "critic": sum(p.numel() for p in self.critic.parameters()),
        }
