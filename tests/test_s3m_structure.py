"""The S3M's structure follows R2I's code: a separate output width, one-layer latent MLPs, widths
of the vector encoder apart from the heads'."""

import pytest
import torch
from torch import nn
from world_model_data import VECTOR, A, make_batch

from configs import load_config
from world_model import S3M
from world_model.rssm import RSSM


def _config(*overrides):
    return load_config(["debug"], list(overrides))


def _hidden_linears(mlp):
    return sum(isinstance(layer, nn.Linear) for layer in mlp.hidden)


def test_output_state_has_its_own_width():
    """h_t = SiLU(Linear(y_t)) maps the SSM width H to D (R2I `out_proj` to `deter`), not H to H."""
    cfg = _config("s3m.width=24", "model.hidden=40")
    model = S3M(VECTOR, A, cfg.model, cfg.s3m)
    assert model.ssm.hidden == 24 and model.inp[0].out_features == 24
    assert (model.out[0].in_features, model.out[0].out_features) == (24, 40)
    batch = make_batch(VECTOR, 2, 6)
    post, _, _, last = model.observe(batch)
    assert post["h"].shape == (2, 6, 40) and last["h"].shape == (2, 40)
    assert model.feature_dim("output") == model.stoch_dim + 40
    assert model.features(post, "output").shape == (2, 6, model.stoch_dim + 40)
    state = model.step(
        last | {"action": batch["action"][:, -1]}, {"vector": batch["vector"][:, 0]}, batch["is_first"][:, 0]
    )
    assert state["h"].shape == (2, 40)


@pytest.mark.parametrize("model_cls", ["s3m", "rssm"])
def test_posterior_and_prior_have_one_hidden_layer_whatever_the_encoder_depth(model_cls):
    """DreamerV3 and R2I: `obs_out` and `img_out` are one layer; `mlp_layers` is the encoder's."""
    cfg = _config("model.mlp_layers=3")
    model = S3M(VECTOR, A, cfg.model, cfg.s3m) if model_cls == "s3m" else RSSM(VECTOR, A, cfg.model, cfg.rssm)
    assert _hidden_linears(model.posterior) == 1 and _hidden_linears(model.prior) == 1
    assert _hidden_linears(model.encoder.mlp) == 3
    deeper = _config("model.mlp_layers=3", "model.latent_layers=2")
    model = (
        S3M(VECTOR, A, deeper.model, deeper.s3m)
        if model_cls == "s3m"
        else RSSM(VECTOR, A, deeper.model, deeper.rssm)
    )
    assert _hidden_linears(model.posterior) == 2 and _hidden_linears(model.prior) == 2


def test_vector_encoder_width_apart_from_the_heads():
    """R2I's dmc patterns set the heads to 512 x 2 but leave the vector encoder/decoder at 5 x 1024."""
    cfg = load_config(["dmc_proprio"])
    assert (cfg.model.mlp_units, cfg.model.mlp_layers, cfg.model.units) == (1024, 5, 512)
    cfg = _config("model.mlp_units=20", "model.units=12")
    model = S3M(VECTOR, A, cfg.model, cfg.s3m)
    widths = {layer.out_features for layer in model.encoder.mlp.hidden if isinstance(layer, nn.Linear)}
    assert widths == {20}
    assert model.posterior.hidden[0].out_features == 12 and model.encoder.out_dim == 20


def test_learned_initial_state_gets_gradients_through_resets():
    """With R2I's learned reset state (the default), the loss reaches x_init through every reset."""
    cfg = _config()
    assert cfg.s3m.learn_initial_state
    model = S3M(VECTOR, A, cfg.model, cfg.s3m)
    batch = make_batch(VECTOR, 2, 6, reset_at=(3,))
    _, losses, _, _ = model.observe(batch)
    losses["total"].backward()
    x_init = model.ssm.layers[0].ssm.x_init
    assert isinstance(x_init, nn.Parameter) and x_init.grad is not None
    assert torch.count_nonzero(x_init.grad) > 0
