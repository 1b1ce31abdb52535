"""`model.reward_norm`: the reward head learns r / σ, σ the largest |r| replayed so far, and the
world model's reward predictions are σ times the head's (world_model/base.py `reward_unit`)."""

import pytest
import torch
from world_model_data import VECTOR, A, make_batch

from configs import load_config
from world_model import RSSM, S3M


def make_model(world_model, norm):
    cfg = load_config(["debug"], [f"model.reward_norm={norm}", "model.reward_head=symlog_mse"])
    torch.manual_seed(0)
    if world_model == "s3m":
        return S3M(VECTOR, A, cfg.model, cfg.s3m)
    return RSSM(VECTOR, A, cfg.model, cfg.rssm)


def small_rewards(seed, size):
    """A (2, 6) batch whose rewards are ±`size`, as POPGym pays ±1/L a step."""
    batch = make_batch(VECTOR, 2, 6, seed=seed)
    batch["reward"] = size * torch.sign(batch["reward"])
    return batch


@pytest.mark.parametrize("world_model", ["s3m", "rssm"])
def test_the_head_learns_rewards_in_units_of_the_largest_one_replayed(world_model):
    model = make_model(world_model, "max")
    assert model.reward_unit.item() == 1.0  # nothing replayed yet
    batch = small_rewards(0, 1 / 48)
    model.update(batch)
    assert model.reward_unit.item() == pytest.approx(1 / 48)
    # The loss is the head's NLL of r / σ, and predictions come back in the env's unit.
    post, losses, metrics, _ = model.observe(batch)
    feats = model.head_features(post)
    head = model.reward_head(feats)
    expected = -head.log_prob(batch["reward"] * 48).mean()
    torch.testing.assert_close(losses["reward"], expected)
    torch.testing.assert_close(model.reward(post), head.mean() / 48)
    reward, _ = model.reward_and_cont(post)
    torch.testing.assert_close(reward, head.mean() / 48)
    assert metrics["wm/reward_unit"] == pytest.approx(1 / 48)
    # Smaller rewards later do not shrink it; a larger one raises it.
    model.update(small_rewards(1, 1 / 416))
    assert model.reward_unit.item() == pytest.approx(1 / 48)
    model.update(small_rewards(2, 0.5))
    assert model.reward_unit.item() == pytest.approx(0.5)


@pytest.mark.parametrize("world_model", ["s3m", "rssm"])
def test_without_the_norm_or_any_reward_the_unit_is_one(world_model):
    plain = make_model(world_model, "none")
    batch = small_rewards(0, 1 / 48)
    plain.update(batch)
    assert plain.reward_unit.item() == 1.0 and plain.reward_max.item() == 0.0
    post, losses, _, _ = plain.observe(batch)
    head = plain.reward_head(plain.head_features(post))
    torch.testing.assert_close(losses["reward"], -head.log_prob(batch["reward"]).mean())
    normed = make_model(world_model, "max")
    zeros = small_rewards(0, 0.0)
    normed.update(zeros)
    assert normed.reward_unit.item() == 1.0  # all-zero rewards leave the unit at 1


def test_the_unit_is_saved_with_the_model():
    model = make_model("s3m", "max")
    model.update(small_rewards(0, 0.02))
    other = make_model("s3m", "max")
    other.load_state_dict(model.state_dict())
    assert other.reward_unit.item() == pytest.approx(0.02)
