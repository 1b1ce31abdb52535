"""The RSSM world model of DreamerV3 (Hafner et al. 2023), the baseline of docs/design.md §8.

    e_t          = Encoder(o_t)
    u_t          = SiLU(LN(Linear([z_{t-1}, a_{t-1}])))     DV3 `img_in`
    h_t          = GRU(h_{t-1}, u_t)                        DV3's normalised GRU cell (`_gru`)
    p(z_t|h_t)   = Cat(MLP(h_t))                            prior (DV3 `img_out`, `img_stats`)
    q(z_t|h_t,e_t) = Cat(MLP([h_t, e_t]))                   recurrent posterior (`obs_out`, `obs_stats`)

At `is_first_t` the previous (h, z, a) are replaced by the initial state as DV3's `obs_step` does
with its `_mask`: h_{t-1} := tanh(w) with w learned (DV3 2023 default `initial: learned`), z_{t-1}
:= the mode of the prior at that h (DV3 `get_stoch`), a_{t-1} := 0. Gradients reach w through every
reset. The posterior reads h_t, so observing a sequence is a loop over T, one step at a time: that
is the RSSM's cost against the S3M, whose posterior does not read the sequence model.

The prior and posterior MLPs have `cfg.latent_layers` hidden layers (DV3: one, the default), as
the S3M's do. Differences from DV3's code, all of them no-ops or shared with the S3M for a
like-for-like comparison: DV3 divides actions by sg(max(1, |a|)), the identity here because the
data contract keeps actions in [-1, 1]; heads, losses and optimiser are the shared ones of
`world_model.base`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from configs.schema import ModelConfig, RSSMConfig
from world_model.base import ObsSpace, State, WorldModel
from world_model.networks import LN_EPS, MLP, init_weights_, to_autocast_dtype


class NormGRUCell(nn.Module):
    """DreamerV3's GRU cell: one Linear over [h, u] to 3H gates, LayerNorm over all of them.

        reset, cand, update = split(LN(W [h_{t-1}, u_t]))
        reset = σ(reset);  cand = tanh(reset · cand);  update = σ(update - 1)
        h_t = update · cand + (1 - update) · h_{t-1}

    The -1 biases the update gate towards keeping h (DV3 `_gru`). Without layer norm the Linear
    has a bias (DV3's Linear adds one only when it has no norm).

    Args:
        in_dim: width of the input u (…, in_dim).
        hidden: H, width of the state h (…, H).
        layer_norm: normalise the gate pre-activations (DV3 default).
    """

    def __init__(self, in_dim: int, hidden: int, layer_norm: bool = True) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden + in_dim, 3 * hidden, bias=not layer_norm)
        self.norm: nn.Module = nn.LayerNorm(3 * hidden, eps=LN_EPS) if layer_norm else nn.Identity()
        self.in_dim, self.hidden = in_dim, hidden
        init_weights_(self)

    def forward(self, u: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """u (…, in_dim) float32, h (…, H) float32 -> the next h (…, H) float32."""
        gates = self.norm(self.linear(torch.cat([h, u], -1)))
        reset, cand, update = gates.chunk(3, -1)
        cand = torch.tanh(torch.sigmoid(reset) * cand)
        update = torch.sigmoid(update - 1.0)
        # = update · cand + (1 - update) · h as one op: the observe loop is bound by per-op overhead.
        # h stays in its own dtype (float32) under mixed precision, as the S3M's states do.
        return torch.lerp(h, cand.to(h.dtype), update.to(h.dtype))


class RSSM(WorldModel):
    """DreamerV3's world model: GRU sequence model, recurrent posterior, categorical latents.

    State keys (leading shape (…)): `z` (…, S·C) one-hot sample, `h` (…, H) the GRU state (DV3's
    `deter`), `action` (…, A) the previous action, and in posterior states from `observe` also
    `logits` (…, S·C). Actor and critic read (z, h) whatever `policy_input` asks for: the RSSM has
    no separate hidden state x.

    Args:
        obs_space: key -> (shape, dtype) of the observations.
        action_dim: A.
        cfg: shared widths (`hidden` is the GRU width H, `units` the MLP and input width), latents,
            losses and optimiser.
        rssm_cfg: RSSM-only settings (`gru_layer_norm`).
    """

    state_keys = ("z", "h")

    def __init__(self, obs_space: ObsSpace, action_dim: int, cfg: ModelConfig, rssm_cfg: RSSMConfig):
        stoch = cfg.stoch_groups * cfg.stoch_classes
        super().__init__(obs_space, action_dim, cfg, head_dim=cfg.hidden + stoch)
        assert cfg.latent_layers >= 1, "RSSM: the posterior and prior need latent_layers >= 1"
        self.rssm_cfg = rssm_cfg
        H, U = cfg.hidden, cfg.units
        # DV3 `img_in`: Linear (no bias, the norm's offset replaces it) -> LayerNorm -> SiLU.
        self.inp = nn.Sequential(
            nn.Linear(stoch + action_dim, U, bias=False), nn.LayerNorm(U, eps=LN_EPS), nn.SiLU()
        )
        init_weights_(self.inp)
        self.gru = NormGRUCell(U, H, rssm_cfg.gru_layer_norm)
        self.posterior = MLP(H + self.encoder.out_dim, stoch, cfg.units, cfg.latent_layers)
        self.prior = MLP(H, stoch, cfg.units, cfg.latent_layers)
        # The initial h is tanh(w), w starting at 0 so h_init = 0 (DV3 `initial: learned`).
        self.initial_deter = nn.Parameter(torch.zeros(H))

    # ----- initial state and resets ------------------------------------------------------------

    def _initial(self) -> tuple[torch.Tensor, torch.Tensor]:
        """h_init (H,) = tanh(w) with gradient, and z_init (S·C,) = mode of p(z | h_init), without."""
        h = torch.tanh(self.initial_deter)
        with torch.no_grad():
            z = self._latent_dist(self.prior(h)).mode().flatten(-2)
        return h, z

    def initial_state(self, batch_size: int) -> State:
        h, z = self._initial()
        return {
            "z": z.expand(batch_size, -1).clone(),
            "h": h.expand(batch_size, -1).clone(),
            "action": torch.zeros(batch_size, self.action_dim, device=h.device),
        }

    # ----- one recurrent step, shared by observe, step and imagine -----------------------------

    def _split_weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Column blocks of the two Linears whose inputs are concatenations.

        `inp` reads [z, a] and the posterior's first layer reads [h, e]; splitting their weights
        lets the a- and e-parts be computed for all T steps at once, outside the sequential loop.
        The result equals DV3's Linear on the concatenation: `inp` and `posterior` hold the
        weights but are not called on these paths, and `test_fused_steps_equal_the_modules_whose_
        weights_they_split` (tests/test_rssm.py) checks values and gradients against calling them.

        Returns: W_z (U, S·C), W_a (U, A), W_h (U, H), W_e (U, E).
        """
        w_in = self.inp[0].weight
        w_post = self.posterior.hidden[0].weight
        H = self.cfg.hidden
        return w_in[:, : self.stoch_dim], w_in[:, self.stoch_dim :], w_post[:, :H], w_post[:, H:]

    def _reset(
        self,
        h: torch.Tensor,
        z: torch.Tensor,
        is_first: torch.Tensor,
        init: tuple[torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """h (B, H), z (B, S·C) replaced by the initial state where is_first (B,) is True (DV3 `_mask`)."""
        first = is_first.unsqueeze(-1)
        return torch.where(first, init[0], h), torch.where(first, init[1], z)

    def _deter(
        self, h: torch.Tensor, z: torch.Tensor, a_proj: torch.Tensor, w_z: torch.Tensor
    ) -> torch.Tensor:
        """h_t from h_{t-1} (B, H), z_{t-1} (B, S·C) and a_proj = W_a a_{t-1} (B, U): (B, H)."""
        ln = self.inp[1]
        u = F.silu(F.layer_norm(F.linear(z, w_z) + a_proj, ln.normalized_shape, ln.weight, ln.bias, ln.eps))
        return self.gru(u, h)

    def _post_logits(self, h: torch.Tensor, e_proj: torch.Tensor, w_h: torch.Tensor) -> torch.Tensor:
        """Posterior logits (B, S·C) from h_t (B, H) and e_proj = W_e e_t (B, U)."""
        x = F.linear(h, w_h) + e_proj
        for layer in self.posterior.hidden[1:]:
            x = layer(x)
        return self.posterior.out(x)

    def _check_state(self, state: State, batch_size: int) -> None:
        """A carried state must hold this model's z (B, S·C), h (B, H) and action (B, A)."""
        expected = {"z": self.stoch_dim, "h": self.cfg.hidden, "action": self.action_dim}
        for key, width in expected.items():
            assert key in state and state[key].shape == (batch_size, width), (
                f"RSSM: state[{key!r}] must be ({batch_size}, {width}), "
                f"got {tuple(state[key].shape) if key in state else 'nothing'}"
            )

    # ----- the WorldModel interface ------------------------------------------------------------

    def _latents(
        self, embed: torch.Tensor, action: torch.Tensor, is_first: torch.Tensor, state: State
    ) -> tuple[State, torch.Tensor, State]:
        """Sequential over T. embed (B, T, E), action (B, T, A), is_first (B, T) bool.

        The prior does not feed the recurrence when observing, so it runs once over all (B, T)
        after the loop; inside the loop are only the GRU, the posterior and its sample.
        """
        B, T, _ = embed.shape
        self._check_state(state, B)
        w_z, w_a, w_h, w_e = self._split_weights()
        # The step at t reads a_{t-1}: shift right, the carried action first; zero it at resets.
        a_prev = torch.cat([state["action"].unsqueeze(1), action[:, :-1]], 1)  # (B, T, A)
        a_prev = a_prev * (~is_first).unsqueeze(-1).to(a_prev.dtype)
        a_proj = F.linear(a_prev, w_a)  # (B, T, U)
        e_proj = F.linear(embed, w_e)  # (B, T, U)
        # Unbind once: indexing [:, t] inside the loop would make every step's backward write a
        # full (B, T, U) gradient, O(T^2) in all; unbind's backward stacks them once.
        a_steps, e_steps = a_proj.unbind(1), e_proj.unbind(1)  # T x (B, U)
        init = self._initial()
        # Steps where no sequence restarts skip the two `where`s (and their backward).
        restarts = is_first.any(0).tolist()
        h, z = state["h"], state["z"]
        hs, zs, logits = [], [], []
        for t in range(T):
            if restarts[t]:
                h, z = self._reset(h, z, is_first[:, t], init)
            h = self._deter(h, z, a_steps[t], w_z)
            logit = self._post_logits(h, e_steps[t], w_h)
            z = self._sample_latent(logit)
            hs.append(h)
            zs.append(z)
            logits.append(logit)
        post = {"z": torch.stack(zs, 1), "h": torch.stack(hs, 1), "logits": torch.stack(logits, 1)}
        prior_logits = self.prior(post["h"])  # (B, T, S·C)
        last = {"z": z, "h": h, "action": action[:, -1]}
        return post, prior_logits, last

    def _obs_step(self, state: State, embed: torch.Tensor, is_first: torch.Tensor) -> State:
        """One posterior step: embed (B, E), is_first (B,) bool."""
        self._check_state(state, embed.shape[0])
        w_z, w_a, w_h, w_e = self._split_weights()
        h, z = self._reset(state["h"], state["z"], is_first, self._initial())
        a_prev = state["action"] * (~is_first).unsqueeze(-1).to(state["action"].dtype)
        h = self._deter(h, z, F.linear(a_prev, w_a), w_z)
        z = self._sample_latent(self._post_logits(h, F.linear(embed, w_e), w_h))
        return {"z": z, "h": h, "action": state["action"]}

    def _img_step(self, state: State, action: torch.Tensor) -> State:
        """One prior step from (z_t, h_t, a_t): the next h and z ~ p(z | h); no resets."""
        w_z, w_a, _, _ = self._split_weights()
        h = self._deter(state["h"], state["z"], F.linear(action, w_a), w_z)
        return {"z": self._sample_latent(self.prior(h)), "h": h}

    def prior_logits(self, state: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Prior logits (…, S·C) from the GRU state h."""
        return self.prior(state["h"])

    def feature_dim(self, policy_input: str) -> int:
        assert policy_input in ("output", "hidden", "full"), f"unknown policy_input {policy_input!r}"
        return self.stoch_dim + self.cfg.hidden

    def features(self, state: Mapping[str, torch.Tensor], policy_input: str) -> torch.Tensor:
        """What actor and critic read (…, S·C + H): (z, h) for every `policy_input` (DV3 reads
        [deter, stoch]; the RSSM has no x, so `hidden` and `full` fall back to the output state).
        In autocast's dtype under mixed precision, as the S3M's."""
        assert policy_input in ("output", "hidden", "full"), f"unknown policy_input {policy_input!r}"
        return torch.cat([to_autocast_dtype(state["z"]), to_autocast_dtype(state["h"])], -1)
