"""The S3M world model of R2I (docs/design.md §3).

    e_t        = Encoder(o_t)
    q(z_t|o_t) = Cat(MLP(e_t))                          non-recurrent: all T steps at once
    u_t        = SiLU(LN(Linear([z_{t-1}, a_{t-1}])))   (…, H); zeros for z_{t-1}, a_{t-1} at is_first
    y_t, x_t   = SSMStack(u_t, x_{t-1})                 (…, H), (…, K, P); x_{t-1} := x_init at is_first
    h_t        = SiLU(Linear(y_t))                      (…, D), R2I's `out_proj` to its `deter` width
    p(z_t|h_t) = Cat(MLP(h_t))

H is the SSM's width (`s3m.width`, R2I `rssm.units`) and D the output state's (`model.hidden`, R2I
`rssm.deter`); the posterior and prior MLPs have `model.latent_layers` hidden layers (R2I's
`obs_out` and `img_out`: one).

Because the posterior does not read h_t, the whole sequence of z_t is sampled first and the SSM
stack then runs in parallel over T (`_latents`); acting (`_obs_step`) and imagining (`_img_step`)
run the same stack one step at a time. The policy can read h_t, x_t or both (`features`).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager

import torch
from torch import nn

from configs.schema import ModelConfig, S3MConfig
from world_model.base import ObsSpace, State, WorldModel
from world_model.networks import LN_EPS, MLP, init_weights_, to_autocast_dtype
from world_model.ssm import SSMStack


class S3M(WorldModel):
    """R2I's world model: non-recurrent posterior, S5 stack as the sequence model.

    State keys (leading shape (…)): `z` (…, S·C) one-hot sample, `h` (…, D) output state,
    `x` (…, K, P) complex64 SSM states, `action` (…, A) the previous action, and in posterior
    states from `observe` also `logits` (…, S·C).
    """

    state_keys = ("z", "h", "x")

    def __init__(self, obs_space: ObsSpace, action_dim: int, cfg: ModelConfig, ssm_cfg: S3MConfig):
        stoch = cfg.stoch_groups * cfg.stoch_classes
        super().__init__(obs_space, action_dim, cfg, head_dim=cfg.hidden + stoch)
        self.ssm_cfg = ssm_cfg
        H, D = ssm_cfg.width, cfg.hidden
        self.posterior = MLP(self.encoder.out_dim, stoch, cfg.units, cfg.latent_layers)
        self.inp = nn.Sequential(
            nn.Linear(stoch + action_dim, H, bias=False), nn.LayerNorm(H, eps=LN_EPS), nn.SiLU()
        )
        init_weights_(self.inp)
        self.ssm = SSMStack(
            hidden=H,
            state_size=ssm_cfg.state_size,
            layers=ssm_cfg.layers,
            dropout=ssm_cfg.dropout,
            blocks=ssm_cfg.blocks,
            discretization=ssm_cfg.discretization,
            dt_min=ssm_cfg.dt_min,
            dt_max=ssm_cfg.dt_max,
            learn_initial_state=ssm_cfg.learn_initial_state,
            scan=ssm_cfg.scan,
            bc_init=ssm_cfg.bc_init,
            selective=ssm_cfg.selective,
            mixed_projections=ssm_cfg.mixed_projections,
        )
        self.out = nn.Sequential(nn.Linear(H, D), nn.SiLU())
        init_weights_(self.out)
        self.prior = MLP(D, stoch, cfg.units, cfg.latent_layers)

    def initial_state(self, batch_size: int) -> State:
        device = self.out[0].weight.device
        return {
            "z": torch.zeros(batch_size, self.stoch_dim, device=device),
            "h": torch.zeros(batch_size, self.cfg.hidden, device=device),
            "x": self.ssm.initial_state(batch_size),
            "action": torch.zeros(batch_size, self.action_dim, device=device),
        }

    def _seq_input(
        self, z_prev: torch.Tensor, a_prev: torch.Tensor, is_first: torch.Tensor | None
    ) -> torch.Tensor:
        """u_t from (z_{t-1}, a_{t-1}), both zeroed where the episode restarts: (…, H) with H the SSM width.

        `is_first=None` means no step restarts (imagination).
        """
        if is_first is None:
            return self.inp(torch.cat([z_prev, a_prev], -1))
        keep = (~is_first).unsqueeze(-1).to(z_prev.dtype)
        return self.inp(torch.cat([z_prev * keep, a_prev * keep], -1))

    def _latents(
        self, embed: torch.Tensor, action: torch.Tensor, is_first: torch.Tensor, state: State
    ) -> tuple[State, torch.Tensor, State]:
        """Parallel over T. embed (B, T, E), action (B, T, A), is_first (B, T) bool."""
        logits = self.posterior(embed)  # (B, T, S·C)
        z = self._sample_latent(logits)
        # The sequence model at t reads (z_{t-1}, a_{t-1}): shift right, the carried state first.
        z_prev = torch.cat([state["z"].unsqueeze(1), z[:, :-1]], 1)  # (B, T, S·C)
        a_prev = torch.cat([state["action"].unsqueeze(1), action[:, :-1]], 1)  # (B, T, A)
        u = self._seq_input(z_prev, a_prev, is_first)
        y, x = self.ssm(u, is_first, state["x"])  # (B, T, H), (B, T, K, P)
        h = self.out(y)  # (B, T, D)
        prior_logits = self.prior(h)
        post = {"z": z, "h": h, "x": x, "logits": logits}
        last = {"z": z[:, -1], "h": h[:, -1], "x": x[:, -1], "action": action[:, -1]}
        return post, prior_logits, last

    def _obs_step(self, state: State, embed: torch.Tensor, is_first: torch.Tensor) -> State:
        """One posterior step: embed (B, E), is_first (B,) bool."""
        u = self._seq_input(state["z"], state["action"], is_first)
        y, x = self.ssm.step(u, is_first, state["x"])
        z = self._sample_latent(self.posterior(embed))
        return {"z": z, "h": self.out(y), "x": x, "action": state["action"]}

    def _img_step(self, state: State, action: torch.Tensor) -> State:
        """One prior step from (z_t, a_t, x_t): the next z from p(z | h), no resets."""
        u = self._seq_input(state["z"], action, None)
        y, x = self.ssm.step(u, None, state["x"])
        h = self.out(y)
        return {"z": self._sample_latent(self.prior(h)), "h": h, "x": x}

    def fixed_step_weights(self) -> AbstractContextManager:
        """Imagined steps reuse one discretisation of every S5 layer (`SSMStack.fixed_weights`)."""
        return self.ssm.fixed_weights()

    def prior_logits(self, state: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Prior logits (…, S·C) from the output state h (…, D)."""
        return self.prior(state["h"])

    def feature_dim(self, policy_input: str) -> int:
        x_dim = 2 * self.ssm.num_layers * self.ssm.state_size
        return {
            "output": self.stoch_dim + self.cfg.hidden,
            "hidden": self.stoch_dim + x_dim,
            "full": self.stoch_dim + self.cfg.hidden + x_dim,
        }[policy_input]

    def features(self, state: Mapping[str, torch.Tensor], policy_input: str) -> torch.Tensor:
        """What actor and critic read (…, F): output (z, h), hidden (z, x) or full (z, h, x).

        x enters as its real and imaginary parts, every layer's state flattened (2·K·P floats).
        Under mixed precision the parts are cast to autocast's dtype before they are joined (the
        actor and critic read them through a Linear first): one copy, not a float32 one and then
        a cast; float32 otherwise.
        """
        z, h = to_autocast_dtype(state["z"]), to_autocast_dtype(state["h"])
        if policy_input == "output":
            return torch.cat([z, h], -1)
        x = to_autocast_dtype(torch.view_as_real(state["x"]).flatten(-3))  # (…, K·P·2)
        if policy_input == "hidden":
            return torch.cat([z, x], -1)
        assert policy_input == "full", f"unknown policy_input {policy_input!r}"
        return torch.cat([z, h, x], -1)
