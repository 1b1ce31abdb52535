"""Networks shared by the world models and the actor-critic, built as in DreamerV3 (2023).

- `MLP`: hidden layers Linear(no bias) -> LayerNorm(eps 1e-3) -> SiLU, optional output Linear.
- `ImageEncoder` / `ImageDecoder`: stride-2 4x4 convolutions with channel LayerNorm and SiLU,
  depth doubling per stage (DreamerV3 `ImageEncoderResnet` with 0 residual blocks, resize=stride).
- `MultiEncoder` / `MultiDecoder`: dict observations, images through the CNN, vectors (symlog)
  through an MLP.
- Heads: `TwoHotHead` (reward, critic), `SymlogHead` (reward, optional), `BernoulliHead`
  (continue), `ActionHead` (policy).
- `to_autocast_dtype`: a tensor that only Linear layers read, cast once to autocast's dtype.

Initialisation follows DreamerV3's `winit=normal, fan=avg`: truncated normal with variance
1 / mean(fan_in, fan_out), biases zero. Every module accepts arbitrary leading axes `(...)`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from world_model.distributions import (
    BoundedNormal,
    OneHotCategorical,
    SymlogGaussian,
    TwoHot,
    bernoulli,
    mse,
    symexp,
    symlog,
    symlog_mse,
)

# DreamerV3 normalises with epsilon 1e-3 (`jax.nn.standardize(..., epsilon=1e-3)`).
LN_EPS = 1e-3

# Observation space as the envs describe it: key -> (shape, dtype).
ObsSpace = Mapping[str, tuple[Sequence[int], Any]]


def to_autocast_dtype(x: torch.Tensor) -> torch.Tensor:
    """Floating `x` in autocast's dtype where autocast is on, else `x` itself.

    For a tensor that only Linear layers read (the actor's and critic's features, the heads'
    [h, z]): autocast would cast it at every layer that reads it, so casting once gives the same
    numbers with one copy instead of several, and stores it at half the size.
    """
    device_type = x.device.type
    if x.is_floating_point() and torch.is_autocast_enabled(device_type):
        return x.to(torch.get_autocast_dtype(device_type))
    return x


def init_weights_(module: nn.Module, scale: float = 1.0) -> None:
    """DreamerV3 init for every Linear / Conv2d / ConvTranspose2d inside `module`, in place.

    Weights ~ truncated normal on [-2, 2] standard deviations with variance scale / fan_avg (the
    0.8796 factor undoes the truncation's variance loss); biases zero; scale 0 gives zeros.
    """
    for layer in module.modules():
        if not isinstance(layer, nn.Linear | nn.Conv2d | nn.ConvTranspose2d):
            continue
        weight = layer.weight
        receptive = math.prod(weight.shape[2:])
        fan_avg = (weight.shape[0] + weight.shape[1]) * receptive / 2.0
        if scale == 0.0:
            nn.init.zeros_(weight)
        else:
            std = math.sqrt(scale / fan_avg) / 0.87962566103423978
            nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-2.0 * std, b=2.0 * std)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)


class MLP(nn.Module):
    """`layers` x [Linear(bias=False) -> LayerNorm -> SiLU], then an optional output Linear.

    Args:
        in_dim: input features.
        out_dim: output Linear width; None returns the last hidden layer.
        units: hidden width.
        layers: hidden layers (0 allowed: just the output Linear, or the identity).
        zero_init_output: zero the output layer (DreamerV3 reward and critic heads, outscale 0).
    Attributes:
        out_dim: width of the output (..., out_dim).
    """

    def __init__(
        self, in_dim: int, out_dim: int | None, units: int, layers: int, zero_init_output: bool = False
    ) -> None:
        super().__init__()
        assert in_dim > 0 and layers >= 0, f"MLP: bad in_dim {in_dim} or layers {layers}"
        assert out_dim is not None or not zero_init_output, "MLP: zero_init_output needs an output layer"
        hidden: list[nn.Module] = []
        width = in_dim
        for _ in range(layers):
            # No bias: the LayerNorm's offset plays its role (DreamerV3 Linear with norm).
            hidden += [nn.Linear(width, units, bias=False), nn.LayerNorm(units, eps=LN_EPS), nn.SiLU()]
            width = units
        self.hidden = nn.Sequential(*hidden)
        self.out = nn.Linear(width, out_dim) if out_dim is not None else None
        self.in_dim = in_dim
        self.out_dim = out_dim if out_dim is not None else width
        init_weights_(self)
        if self.out is not None and zero_init_output:
            init_weights_(self.out, scale=0.0)

    def forward(self, x: Tensor) -> Tensor:
        """(..., in_dim) float -> (..., out_dim) float; Linear and LayerNorm act on the last axis."""
        assert x.shape[-1] == self.in_dim, f"MLP: expected (..., {self.in_dim}), got {tuple(x.shape)}"
        x = self.hidden(x)
        return self.out(x) if self.out is not None else x


class ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channel axis of (N, C, H, W) maps, as DreamerV3 normalises conv outputs."""

    def forward(self, x: Tensor) -> Tensor:
        # (N, C, H, W) -> (N, H, W, C) view, normalise C, and back; the result is channels-last in
        # memory, which the next convolution accepts without a copy.
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def image_to_float(image: Tensor) -> Tensor:
    """uint8 pixels (..., h, w, c) -> float32 in [-0.5, 0.5] (DreamerV3: x / 255 - 0.5)."""
    assert image.dtype == torch.uint8, f"image observations must be uint8, got {image.dtype}"
    return image.float() / 255.0 - 0.5


def _check_image_shape(shape: Sequence[int], stages: int) -> tuple[int, int, int]:
    assert len(shape) == 3, f"image shape must be (h, w, c), got {tuple(shape)}"
    h, w, c = (int(s) for s in shape)
    size = 2**stages
    assert stages >= 1 and h % size == 0 and w % size == 0, (
        f"image {h}x{w} must be divisible by 2**stages = {size} (stages={stages})"
    )
    return h, w, c


class ImageEncoder(nn.Module):
    """DreamerV3 CNN encoder: `stages` x [Conv 4x4 stride 2 (no bias) -> channel LN -> SiLU].

    Channels are depth, 2 depth, 4 depth, ...; a 64x64 image with 4 stages ends at 4x4 (DreamerV3's
    minres 4). Padding 1 equals JAX 'SAME' padding for these even sizes.

    Args:
        shape: (h, w, c) of the image; h and w divisible by 2**stages.
        depth: channels of the first stage.
        stages: stride-2 stages.
    Attributes:
        out_dim: E = (depth * 2**(stages-1)) * (h / 2**stages) * (w / 2**stages).
    """

    def __init__(self, shape: Sequence[int], depth: int = 32, stages: int = 4) -> None:
        super().__init__()
        h, w, c = _check_image_shape(shape, stages)
        layers: list[nn.Module] = []
        channels = c
        for i in range(stages):
            out_channels = depth * 2**i
            layers += [
                nn.Conv2d(channels, out_channels, 4, stride=2, padding=1, bias=False),
                ChannelNorm(out_channels, eps=LN_EPS),
                nn.SiLU(),
            ]
            channels = out_channels
        self.net = nn.Sequential(*layers)
        self.shape = (h, w, c)
        self.out_dim = channels * (h // 2**stages) * (w // 2**stages)
        init_weights_(self)

    def forward(self, image: Tensor) -> Tensor:
        """uint8 (..., h, w, c) -> float32 (..., E)."""
        assert tuple(image.shape[-3:]) == self.shape, (
            f"ImageEncoder: expected (..., {self.shape}), got {tuple(image.shape)}"
        )
        lead = image.shape[:-3]
        x = image_to_float(image.reshape(-1, *self.shape))  # (N, h, w, c), N = prod(lead), e.g. B*T
        x = self.net(x.permute(0, 3, 1, 2))  # (N, C', h', w')
        return x.reshape(*lead, self.out_dim)  # (..., E)


class ImageDecoder(nn.Module):
    """DreamerV3 CNN decoder: Linear to the smallest map, then transposed stride-2 convolutions.

    Linear(in_dim -> depth * 2**(stages-1) x h' x w') (plain, as DreamerV3 2023), then `stages - 1`
    x [ConvT 4x4 stride 2 (no bias) -> channel LN -> SiLU] halving channels, then a last ConvT 4x4
    stride 2 to c channels with bias. The output is the mean of a unit-variance Gaussian over pixels
    in the shifted space x / 255 - 0.5 (DreamerV3 outputs mean + 0.5 against pixels in [0, 1]; the
    same thing). Its loss is the sum of squared errors over pixels (`mse`), i.e. the Gaussian's
    negative log-likelihood up to a constant.

    Args:
        in_dim: features read (..., in_dim).
        shape: (h, w, c) of the image.
        depth, stages: as for `ImageEncoder`, which this mirrors.
    """

    def __init__(self, in_dim: int, shape: Sequence[int], depth: int = 32, stages: int = 4) -> None:
        super().__init__()
        h, w, c = _check_image_shape(shape, stages)
        channels = depth * 2 ** (stages - 1)
        self.start = (channels, h // 2**stages, w // 2**stages)
        self.linear = nn.Linear(in_dim, math.prod(self.start))
        layers: list[nn.Module] = []
        for _ in range(stages - 1):
            layers += [
                nn.ConvTranspose2d(channels, channels // 2, 4, stride=2, padding=1, bias=False),
                ChannelNorm(channels // 2, eps=LN_EPS),
                nn.SiLU(),
            ]
            channels //= 2
        layers.append(nn.ConvTranspose2d(channels, c, 4, stride=2, padding=1))
        self.net = nn.Sequential(*layers)
        self.in_dim = in_dim
        self.shape = (h, w, c)
        init_weights_(self)

    def forward(self, features: Tensor) -> Tensor:
        """float (..., in_dim) -> float32 (..., h, w, c) mean in the [-0.5, 0.5] pixel space."""
        assert features.shape[-1] == self.in_dim, (
            f"ImageDecoder: expected (..., {self.in_dim}), got {tuple(features.shape)}"
        )
        lead = features.shape[:-1]
        x = self.linear(features.reshape(-1, self.in_dim))  # (N, in_dim), N = prod(lead), e.g. B*T
        x = self.net(x.reshape(-1, *self.start))  # (N, c, h, w)
        return x.permute(0, 2, 3, 1).reshape(*lead, *self.shape).float()  # (..., h, w, c)

    def loss(self, features: Tensor, image: Tensor) -> Tensor:
        """Sum of squared pixel errors: features (..., in_dim), image uint8 (..., h, w, c) -> (...,)."""
        return mse(self(features), image_to_float(image), dims=3)


def _split_space(obs_space: ObsSpace) -> tuple[dict[str, tuple[int, ...]], dict[str, tuple[int, ...]]]:
    """Image keys (uint8, rank 3) and vector keys (rank 0 or 1), each key -> shape, in sorted order."""
    images: dict[str, tuple[int, ...]] = {}
    vectors: dict[str, tuple[int, ...]] = {}
    for key in sorted(obs_space):
        shape, dtype = obs_space[key]
        shape = tuple(int(s) for s in shape)
        if len(shape) == 3:
            assert "uint8" in str(dtype), f"observation {key!r}: images must be uint8, got {dtype}"
            images[key] = shape
        elif len(shape) <= 1:
            vectors[key] = shape
        else:
            raise ValueError(f"observation {key!r}: shape {shape} is neither an image nor a vector")
    assert images or vectors, "obs_space has no observation keys"
    if images:
        first = next(iter(images.values()))
        assert all(s[:2] == first[:2] for s in images.values()), (
            f"image keys must share height and width to be stacked on channels: {images}"
        )
    return images, vectors


class MultiEncoder(nn.Module):
    """Encodes a dict observation into one embedding e_t (DreamerV3 `MultiEncoder`).

    Image keys are stacked on channels and go through one `ImageEncoder`; vector keys are
    concatenated, symlog-transformed and go through an `MLP` (DreamerV3 symlog_inputs). The two
    embeddings are concatenated.

    Args:
        obs_space: key -> (shape, dtype); (h, w, c) uint8 for images, (d,) or () for vectors.
        units, mlp_layers: the vector MLP.
        cnn_depth, cnn_stages: the image encoder.
    Attributes:
        out_dim: E, the embedding width.
    """

    def __init__(
        self,
        obs_space: ObsSpace,
        units: int = 512,
        mlp_layers: int = 2,
        cnn_depth: int = 32,
        cnn_stages: int = 4,
    ) -> None:
        super().__init__()
        self.image_shapes, self.vector_shapes = _split_space(obs_space)
        self.cnn = None
        self.mlp = None
        self.out_dim = 0
        if self.image_shapes:
            h, w, _ = next(iter(self.image_shapes.values()))
            channels = sum(s[2] for s in self.image_shapes.values())
            self.cnn = ImageEncoder((h, w, channels), cnn_depth, cnn_stages)
            self.out_dim += self.cnn.out_dim
        if self.vector_shapes:
            dim = sum(math.prod(s) for s in self.vector_shapes.values())
            self.mlp = MLP(dim, None, units, mlp_layers)
            self.out_dim += self.mlp.out_dim

    def forward(self, obs: Mapping[str, Tensor]) -> Tensor:
        """obs: key -> (..., *shape) (other keys ignored) -> float32 (..., E)."""
        outputs = []
        if self.cnn is not None:
            images = [obs[k] for k in self.image_shapes]
            for (key, shape), image in zip(self.image_shapes.items(), images):
                assert tuple(image.shape[-3:]) == shape, (
                    f"MultiEncoder: {key!r} expected (..., {shape}), got {tuple(image.shape)}"
                )
            outputs.append(self.cnn(torch.cat(images, -1)))
        if self.mlp is not None:
            vectors = []
            for key, shape in self.vector_shapes.items():
                value = obs[key]
                lead = value.shape[: value.dim() - len(shape)]
                assert tuple(value.shape[len(lead) :]) == shape, (
                    f"MultiEncoder: {key!r} expected (..., {shape}), got {tuple(value.shape)}"
                )
                vectors.append(value.float().reshape(*lead, math.prod(shape)))  # (..., d)
            outputs.append(self.mlp(symlog(torch.cat(vectors, -1))))
        return torch.cat(outputs, -1)


class MultiDecoder(nn.Module):
    """Reconstructs every observation key from features (DreamerV3 `MultiDecoder`).

    Images: one `ImageDecoder` over the channel-stacked image keys; loss = sum of squared errors
    over pixels in the [-0.5, 0.5] space. Vectors: one MLP trunk and a linear output per key in
    symlog space; loss = symlog-MSE summed over dimensions (DreamerV3 vector_dist symlog_mse).

    Args:
        in_dim: features read (..., in_dim), e.g. [h_t, z_t].
        obs_space, units, mlp_layers, cnn_depth, cnn_stages: as for `MultiEncoder`.
    """

    def __init__(
        self,
        in_dim: int,
        obs_space: ObsSpace,
        units: int = 512,
        mlp_layers: int = 2,
        cnn_depth: int = 32,
        cnn_stages: int = 4,
    ) -> None:
        super().__init__()
        self.image_shapes, self.vector_shapes = _split_space(obs_space)
        self.cnn = None
        self.mlp = None
        if self.image_shapes:
            h, w, _ = next(iter(self.image_shapes.values()))
            channels = sum(s[2] for s in self.image_shapes.values())
            self.cnn = ImageDecoder(in_dim, (h, w, channels), cnn_depth, cnn_stages)
        if self.vector_shapes:
            # One output Linear for all keys equals one per key (DreamerV3), in a single matmul.
            dim = sum(math.prod(s) for s in self.vector_shapes.values())
            self.mlp = MLP(in_dim, dim, units, mlp_layers)
        self.in_dim = in_dim

    def forward(self, features: Tensor) -> dict[str, Tensor]:
        """float (..., in_dim) -> key -> float32 prediction in loss space.

        Images (..., h, w, c) in the [-0.5, 0.5] pixel space; vectors (..., *shape) in symlog space.
        """
        assert features.shape[-1] == self.in_dim, (
            f"MultiDecoder: expected (..., {self.in_dim}), got {tuple(features.shape)}"
        )
        lead = features.shape[:-1]
        out: dict[str, Tensor] = {}
        if self.cnn is not None:
            sizes = [s[2] for s in self.image_shapes.values()]
            out.update(zip(self.image_shapes, self.cnn(features).split(sizes, -1)))
        if self.mlp is not None:
            sizes = [math.prod(s) for s in self.vector_shapes.values()]
            parts = self.mlp(features).float().split(sizes, -1)
            for (key, shape), part in zip(self.vector_shapes.items(), parts):
                out[key] = part.reshape(*lead, *shape)
        return out

    def loss(self, features: Tensor, obs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Per-key negative log-likelihoods (up to constants): key -> (...,) float32."""
        pred = self(features)
        losses = {k: mse(pred[k], image_to_float(obs[k]), dims=3) for k in self.image_shapes}
        for key, shape in self.vector_shapes.items():
            losses[key] = symlog_mse(pred[key], obs[key], dims=len(shape))
        return losses

    def reconstruct(self, features: Tensor) -> dict[str, Tensor]:
        """Predictions in observation space: images float32 in [0, 1], vectors symexp'd."""
        pred = self(features)
        out = {k: (pred[k] + 0.5).clamp(0.0, 1.0) for k in self.image_shapes}
        out.update({k: symexp(pred[k]) for k in self.vector_shapes})
        return out


class TwoHotHead(nn.Module):
    """MLP -> `TwoHot` over `bins` symlog bins on linspace(-20, 20) (reward head, critic).

    The output layer starts at zero (DreamerV3 outscale 0.0), so the initial prediction is exactly
    0 instead of a random value that would dominate early bootstrapped returns.
    """

    def __init__(self, in_dim: int, units: int, layers: int, bins: int = 255) -> None:
        super().__init__()
        self.mlp = MLP(in_dim, bins, units, layers, zero_init_output=True)
        self.register_buffer("bins", torch.linspace(-20.0, 20.0, bins), persistent=False)

    def forward(self, features: Tensor) -> TwoHot:
        """float (..., in_dim) -> TwoHot with batch shape (...)."""
        return TwoHot(self.mlp(features), self.bins)


class SymlogHead(nn.Module):
    """MLP -> one output -> `SymlogGaussian` (DreamerV3 `symlog_mse`; reward head option).

    The output layer starts at zero like `TwoHotHead`'s, so the first prediction is exactly 0.
    """

    def __init__(self, in_dim: int, units: int, layers: int) -> None:
        super().__init__()
        self.mlp = MLP(in_dim, 1, units, layers, zero_init_output=True)

    def forward(self, features: Tensor) -> SymlogGaussian:
        """float (..., in_dim) -> SymlogGaussian with batch shape (...)."""
        return SymlogGaussian(self.mlp(features).squeeze(-1))


class BernoulliHead(nn.Module):
    """MLP -> Bernoulli over (...) (continue head; DreamerV3 `binary`, outscale 1.0)."""

    def __init__(self, in_dim: int, units: int, layers: int) -> None:
        super().__init__()
        self.mlp = MLP(in_dim, 1, units, layers)

    def forward(self, features: Tensor) -> torch.distributions.Bernoulli:
        """float (..., in_dim) -> Bernoulli with batch shape (...)."""
        return bernoulli(self.mlp(features).squeeze(-1))


class ActionHead(nn.Module):
    """MLP -> policy distribution over A actions (DreamerV3 actor, outscale 1.0).

    Discrete: `OneHotCategorical` with `unimix`; continuous: `BoundedNormal` with std in
    [min_std, max_std] (DreamerV3 minstd 0.1, maxstd 1.0).
    """

    def __init__(
        self,
        in_dim: int,
        action_dim: int,
        discrete: bool,
        units: int,
        layers: int,
        unimix: float = 0.01,
        min_std: float = 0.1,
        max_std: float = 1.0,
    ) -> None:
        super().__init__()
        self.mlp = MLP(in_dim, action_dim if discrete else 2 * action_dim, units, layers)
        self.discrete = discrete
        self.unimix = unimix
        self.min_std = min_std
        self.max_std = max_std

    def forward(self, features: Tensor) -> OneHotCategorical | BoundedNormal:
        """float (..., in_dim) -> distribution with batch shape (...) and actions (..., A)."""
        out = self.mlp(features)
        if self.discrete:
            return OneHotCategorical(out, self.unimix)
        raw_mean, raw_std = out.chunk(2, -1)
        return BoundedNormal(raw_mean, raw_std, self.min_std, self.max_std)
