"""The typed configuration schema: every knob of a run, with its default and meaning.

The dataclasses here are the source of truth. YAML presets in `configs/presets/` and dotted
command-line overrides (`agent.horizon=10`) are merged on top of them by `configs.loader`, which
rejects unknown keys and badly typed values with a one-line error naming the key.

Defaults follow R2I / DreamerV3 (see docs/design.md §3, §4, §7) unless a comment says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Fields whose value must be one of a fixed set; checked by `configs.loader.validate`.
CHOICES: dict[str, tuple[str, ...]] = {
    "world_model": ("s3m", "rssm"),
    "device": ("auto", "cpu", "cuda"),
    "precision": ("auto", "32", "bf16-mixed", "16-mixed"),
    "model.reward_head": ("twohot", "symlog_mse"),
    "model.reward_norm": ("none", "max"),
    "s3m.discretization": ("bilinear", "zoh"),
    "s3m.bc_init": ("r2i", "unit"),
    "s3m.scan": ("auto", "chunked", "associative", "loop"),
    "agent.policy_input": ("output", "hidden", "full"),
    "agent.actor_grad": ("auto", "reinforce", "dynamics"),
    "agent.imag_cont": ("mode", "mean"),
}


@dataclass
class EnvConfig:
    name: str = "popgym:RepeatPreviousEasy"  # environment id `suite:task` (see envs.make_env)
    num_envs: int = 1  # parallel training envs; subprocesses when > 1
    eval_envs: int = 1  # parallel evaluation envs
    options: dict[str, Any] = field(default_factory=dict)  # adapter options, e.g. {size: 64}
    worker_timeout: float = 60.0  # seconds an env subprocess may take per step; then it is replaced (0: none)
    max_restarts: int = 3  # deaths of one env subprocess in 10 minutes that are replaced; one more: exit 3


@dataclass
class ReplayConfig:
    capacity: int = 1_000_000  # FIFO capacity in env steps, over all streams
    store_state: bool = False  # store every step's latent; samples start from the one before (replay context)
    chunk_steps: int = 1024  # steps per file when saving to disk


@dataclass
class ModelConfig:
    """Parts shared by the S3M and RSSM world models."""

    stoch_groups: int = 32  # S: number of categorical latents in z_t
    stoch_classes: int = 32  # C: classes per categorical latent
    unimix: float = 0.01  # uniform mixture on posterior/prior probabilities (DV3)
    hidden: int = 512  # D: width of the output state h_t (S3M, R2I `deter`) / GRU state (RSSM)
    units: int = 512  # width of hidden MLP layers (posterior, prior, heads)
    mlp_units: int = 512  # width of the vector encoder/decoder MLPs (R2I/DV3 `encoder.mlp_units`)
    mlp_layers: int = 2  # hidden layers of the vector encoder/decoder MLPs
    latent_layers: int = 1  # hidden layers of the posterior and prior MLPs (DV3/R2I `obs_out`, `img_out`)
    head_layers: int = 2  # hidden layers of the reward and continue heads
    cnn_depth: int = 32  # channels of the first image conv; doubled at every stage
    cnn_stages: int = 4  # stride-2 conv stages (64x64 -> 4x4)
    # twohot: DV3's discrete regression; symlog_mse: one output in symlog space (DV3 symlog_mse),
    # which escapes the symmetric plateau of a +-1 reward far sooner (docs/results.md, Analysis)
    reward_head: str = "twohot"
    reward_bins: int = 255  # symlog two-hot bins of the reward head (twohot only)
    # none: the head learns r (DV3); max: it learns r / σ, σ the largest |r| replayed so far, and
    # imagination uses σ × its prediction: the same loss size for ±1 and POPGym's ±1/L steps
    reward_norm: str = "none"
    dyn_scale: float = 0.5  # beta_dyn: weight of KL[sg(q) || p] (trains the prior)
    rep_scale: float = 0.1  # beta_rep: weight of KL[q || sg(p)] (trains the posterior)
    free_nats: float = 1.0  # free bits: KL terms are clipped below this many nats
    image_scale: float = 1.0  # weight of the image reconstruction loss
    vector_scale: float = 1.0  # weight of the vector reconstruction loss
    reward_scale: float = 1.0  # weight of the reward loss
    cont_scale: float = 1.0  # weight of the continue loss
    lr: float = 1e-4  # Adam learning rate of the world model
    eps: float = 1e-8  # Adam epsilon
    weight_decay: float = 0.0  # decoupled weight decay (AdamW) of Linear/conv weight matrices outside the SSM
    grad_clip: float = 1000.0  # gradient-norm clip, per set: all non-S5 parameters, then each S5 kind


@dataclass
class S3MConfig:
    """The S5 stack of the S3M world model (docs/design.md §3)."""

    layers: int = 3  # K: SSM blocks in the stack
    width: int = 512  # H: input/output width of every SSM block (R2I `rssm.units`)
    state_size: int = 128  # P: complex state size of each S5 layer
    blocks: int = 8  # HiPPO-N blocks on the diagonal at initialisation (R2I `n_blocks`)
    # r2i: B fan-in P, C fan-in P*H per real part (R2I `lecun_normal`, `trunc_standard_normal`);
    # unit: B fan-in H, C variance 1/P per complex entry (y_t at unit scale)
    bc_init: str = "r2i"
    discretization: str = "bilinear"  # bilinear (R2I default) or zoh
    dt_min: float = 1e-3  # lower end of the log-uniform init of the step size Delta
    dt_max: float = 1e-1  # upper end of the log-uniform init of the step size Delta
    learn_initial_state: bool = True  # learned x_init (else zeros); resets load it (R2I `initial: learned`)
    scan: str = "auto"  # recurrence implementation: auto picks chunked on CPU, associative on GPU
    dropout: float = 0.0  # dropout after the GLU in each block
    # input-dependent step size Delta_t = softplus(W u_t + b) (Mamba's selection), so a layer can
    # hold one input and ignore the rest; a departure from R2I (time-invariant S5), off by default
    selective: bool = False
    # under bf16-mixed, the S5 projections B u and C x run in bfloat16 like every Linear (the
    # recurrence and its complex states stay float32); false keeps them float32
    mixed_projections: bool = True


@dataclass
class RSSMConfig:
    """The DreamerV3 RSSM baseline (docs/design.md §8); widths come from `model`."""

    gru_layer_norm: bool = True  # DV3's normalised GRU cell


@dataclass
class AgentConfig:
    """Actor-critic learning in imagination (docs/design.md §4)."""

    policy_input: str = "hidden"  # output=(z,h), hidden=(z,x), full=(z,h,x); RSSM always reads (z,h)
    horizon: int = 15  # imagination horizon H
    imag_starts: int = (
        0  # imagine from this many of the B*T posterior states, drawn anew each update; 0: all (DV3)
    )
    discount: float = 0.997  # gamma = 1 - 1/333
    imag_cont: str = "mode"  # imagined continuation: mode=Bernoulli mode (DV3), mean=its probability (DV2)
    return_lambda: float = 0.95  # lambda of the lambda-returns
    units: int = 512  # width of actor and critic MLPs
    layers: int = 2  # hidden layers of actor and critic MLPs
    actor_grad: str = "auto"  # auto: REINFORCE for discrete, dynamics backprop for continuous
    entropy: float = 3e-4  # actor entropy bonus
    actor_unimix: float = 0.01  # uniform mixture on discrete policies
    critic_bins: int = 255  # symlog two-hot bins of the critic
    slow_critic_fraction: float = 0.02  # EMA step of the slow critic
    slow_critic_reg: float = 1.0  # weight of the regulariser towards the slow critic
    return_norm_decay: float = 0.99  # EMA decay of the return percentiles
    return_norm_low: float = 5.0  # lower return percentile
    return_norm_high: float = 95.0  # upper return percentile
    return_norm_floor: float = 1.0  # smallest return scale: scale = max(this, P_high - P_low) (DV3 1.0)
    actor_lr: float = 3e-5  # Adam learning rate of the actor
    critic_lr: float = 3e-5  # Adam learning rate of the critic
    eps: float = 1e-5  # Adam epsilon of actor and critic
    grad_clip: float = 100.0  # global gradient-norm clip of actor and critic


@dataclass
class TrainConfig:
    """The online training loop (docs/design.md §6)."""

    steps: int = 50_000  # total env steps, over all training envs
    train_ratio: float = 64.0  # replayed steps per env step: one update every B*T/train_ratio env steps
    batch_size: int = 16  # B: sequences per update
    seq_len: int = 64  # T: steps per sequence
    prefill: int = 1000  # env steps of random actions before the first update
    log_every: int = 1000  # env steps between logged scalars
    eval_every: int = 10_000  # env steps between evaluations (0: only the final one)
    eval_episodes: int = 10  # episodes per evaluation
    eval_sample: bool = False  # evaluate the sampled policy (DreamerV3's evaluation), not its mode
    checkpoint_every: int = 10_000  # env steps between checkpoints (and one at the end)
    video_every: int = 10_000  # env steps between open-loop prediction videos (image tasks)
    max_skipped_updates: int = 20  # consecutive updates skipped for non-finite losses or grads; then exit 2


@dataclass
class Config:
    seed: int = 0  # seeds torch, numpy and the environments
    logdir: str = ""  # run folder; empty means runs/<env>-<world_model>-<time>
    device: str = "auto"  # auto picks cuda when available
    # 32, or bf16-mixed: the networks' matmuls in bfloat16, scan, losses and optimiser in float32
    # (agent/precision.py); auto takes bf16-mixed where the device has native bfloat16 (AVX-512
    # BF16 or AMX CPUs, Ampere or newer GPUs), else 32. 16-mixed (float16 with loss scaling, for
    # GPUs without fast bfloat16) only when asked for
    precision: str = "auto"
    # torch intra-op CPU threads; 0 keeps torch's default (one per core). On an idle 2-core CPU two
    # threads against one: updates 1.3x (popgym_cpu, bsuite_cpu) to 1.6x (cpu, small) faster, the
    # default run 1.17x. Runs sharing a CPU should split it (compare.py gives each run
    # `--threads`, 1 by default): oversubscribed OpenMP threads spin and can be many times slower.
    threads: int = 0
    world_model: str = "s3m"  # s3m (R2I) or rssm (DreamerV3 baseline)
    env: EnvConfig = field(default_factory=EnvConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    s3m: S3MConfig = field(default_factory=S3MConfig)
    rssm: RSSMConfig = field(default_factory=RSSMConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
