"""Tests of world_model.networks: shapes over leading axes, initialisation, gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from world_model.distributions import BoundedNormal, OneHotCategorical, TwoHot
from world_model.networks import (
    MLP,
    ActionHead,
    BernoulliHead,
    ImageDecoder,
    ImageEncoder,
    MultiDecoder,
    MultiEncoder,
    TwoHotHead,
)

LEADS = [(3,), (2, 3)]  # (B,) and (B, T)
SMALL = dict(units=16, mlp_layers=1, cnn_depth=4, cnn_stages=3)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _image(lead: tuple[int, ...], shape: tuple[int, int, int] = (16, 16, 3)) -> torch.Tensor:
    return torch.randint(0, 256, (*lead, *shape), dtype=torch.uint8)


def test_mlp_structure_and_shapes() -> None:
    mlp = MLP(5, 7, units=8, layers=2)
    linears = [m for m in mlp.hidden if isinstance(m, nn.Linear)]
    norms = [m for m in mlp.hidden if isinstance(m, nn.LayerNorm)]
    assert len(linears) == 2 and all(m.bias is None for m in linears)
    assert len(norms) == 2 and all(m.eps == 1e-3 for m in norms)
    for lead in LEADS:
        assert mlp(torch.randn(*lead, 5)).shape == (*lead, 7)
    trunk = MLP(5, None, units=8, layers=2)
    assert trunk.out_dim == 8 and trunk(torch.randn(4, 5)).shape == (4, 8)
    assert MLP(5, None, units=8, layers=0).out_dim == 5


def test_mlp_zero_init_output() -> None:
    mlp = MLP(5, 3, units=8, layers=2, zero_init_output=True)
    assert torch.all(mlp(torch.randn(4, 5)) == 0)


@pytest.mark.parametrize("lead", LEADS)
def test_image_encoder_decoder_shapes(lead: tuple[int, ...]) -> None:
    encoder = ImageEncoder((16, 16, 3), depth=4, stages=3)
    assert encoder.out_dim == 16 * 2 * 2
    embed = encoder(_image(lead))
    assert embed.shape == (*lead, encoder.out_dim) and embed.dtype == torch.float32
    decoder = ImageDecoder(10, (16, 16, 3), depth=4, stages=3)
    features = torch.randn(*lead, 10)
    assert decoder(features).shape == (*lead, 16, 16, 3)
    assert decoder.loss(features, _image(lead)).shape == lead


def test_image_encoder_default_64x64_output_size() -> None:
    encoder = ImageEncoder((64, 64, 3), depth=32, stages=4)
    assert encoder.out_dim == 256 * 4 * 4
    assert encoder(_image((2,), (64, 64, 3))).shape == (2, 4096)


def test_image_encoder_rejects_float_images() -> None:
    encoder = ImageEncoder((16, 16, 3), depth=4, stages=3)
    with pytest.raises(AssertionError, match="uint8"):
        encoder(torch.rand(2, 16, 16, 3))


def test_image_loss_is_sum_of_squared_errors() -> None:
    decoder = ImageDecoder(6, (8, 8, 1), depth=2, stages=2)
    features, image = torch.randn(4, 6), _image((4,), (8, 8, 1))
    target = image.float() / 255.0 - 0.5
    expected = ((decoder(features) - target) ** 2).sum((-1, -2, -3))
    torch.testing.assert_close(decoder.loss(features, image), expected)


SPACES = {
    "image": {"image": ((16, 16, 3), np.uint8)},
    "vector": {"vector": ((5,), np.float32)},
    "dict": {"image": ((16, 16, 3), np.uint8), "vector": ((5,), np.float32), "speed": ((), np.float32)},
}


def _obs(space: dict, lead: tuple[int, ...]) -> dict[str, torch.Tensor]:
    obs = {}
    for key, (shape, dtype) in space.items():
        if dtype == np.uint8:
            obs[key] = _image(lead, shape)
        else:
            obs[key] = 10.0 * torch.randn(*lead, *shape)
    return obs


@pytest.mark.parametrize("name", sorted(SPACES))
@pytest.mark.parametrize("lead", LEADS)
def test_multi_encoder_decoder_shapes_and_gradients(name: str, lead: tuple[int, ...]) -> None:
    space = SPACES[name]
    encoder = MultiEncoder(space, **SMALL)
    decoder = MultiDecoder(encoder.out_dim, space, **SMALL)
    obs = _obs(space, lead)
    embed = encoder(obs)
    assert embed.shape == (*lead, encoder.out_dim)
    pred = decoder(embed)
    assert set(pred) == set(space)
    for key, (shape, _) in space.items():
        assert pred[key].shape == (*lead, *shape), key
    losses = decoder.loss(embed, obs)
    assert set(losses) == set(space) and all(v.shape == lead for v in losses.values())
    recon = decoder.reconstruct(embed)
    assert all(recon[k].shape == pred[k].shape for k in space)
    sum(v.mean() for v in losses.values()).backward()
    for module in (encoder, decoder):
        for pname, param in module.named_parameters():
            assert param.grad is not None and torch.isfinite(param.grad).all(), pname
            assert param.grad.abs().sum() > 0, pname


def test_multi_encoder_out_dim_adds_parts() -> None:
    encoder = MultiEncoder(SPACES["dict"], **SMALL)
    assert encoder.out_dim == 16 * 2 * 2 + 16


def test_multi_encoder_rejects_bad_space() -> None:
    with pytest.raises(ValueError, match="neither"):
        MultiEncoder({"grid": ((4, 4), np.float32)}, **SMALL)


@pytest.mark.parametrize("lead", LEADS)
def test_heads(lead: tuple[int, ...]) -> None:
    features = torch.randn(*lead, 12, requires_grad=True)
    reward = TwoHotHead(12, units=16, layers=2, bins=255)
    dist = reward(features)
    assert isinstance(dist, TwoHot) and dist.logits.shape == (*lead, 255)
    assert dist.mean().shape == lead and dist.mean().abs().max() < 1e-5
    cont = BernoulliHead(12, units=16, layers=2)(features)
    assert cont.probs.shape == lead
    loss = -dist.log_prob(torch.ones(lead)).mean() - cont.log_prob(torch.ones(lead)).mean()
    loss.backward()
    assert reward.mlp.out.weight.grad.abs().sum() > 0
    assert features.grad is not None


@pytest.mark.parametrize("discrete", [True, False])
def test_action_head(discrete: bool) -> None:
    head = ActionHead(12, 4, discrete, units=16, layers=1)
    dist = head(torch.randn(2, 3, 12))
    assert isinstance(dist, OneHotCategorical if discrete else BoundedNormal)
    action = dist.sample()
    assert action.shape == (2, 3, 4) and action.abs().max() <= 1.0
    assert dist.log_prob(action).shape == (2, 3) and dist.entropy().shape == (2, 3)
