"""benchmarks/selective_copy.py: both S5 variants train on the same task and are reported."""

import pytest
import torch

from benchmarks.selective_copy import CopyModel, batch, main


def test_copy_targets_are_the_first_card():
    inputs, target = batch("copy", 5, 9, 3, torch.Generator().manual_seed(0))
    assert inputs.shape == (5, 9, 3) and target.shape == (5, 9)
    assert (target == inputs[:, :1].argmax(-1)).all()


def test_reward_targets_say_whether_the_last_action_named_the_first_card():
    inputs, target = batch("reward", 64, 9, 3, torch.Generator().manual_seed(0))
    assert inputs.shape == (64, 9, 6) and target.shape == (64, 9)
    card, prev = inputs[..., :3], inputs[..., 3:]
    assert (prev[:, 0] == 0).all() and (target[:, 0] == 0).all(), "no action before the first step"
    match = (prev[:, 1:].argmax(-1) == card[:, :1].argmax(-1)).long()
    assert torch.equal(target[:, 1:], match)
    assert 0 < target.float().mean() < 1


@pytest.mark.parametrize("variant", ["time-invariant", "selective"])
def test_model_shapes_and_selective_layers(variant):
    model = CopyModel(inputs=6, classes=2, width=8, state_size=4, layers=2, variant=variant)
    logits = model(torch.randn(2, 7, 6))
    assert logits.shape == (2, 7, 2)
    assert all(block.ssm.selective == (variant == "selective") for block in model.core.layers)


def test_gru_variant():
    model = CopyModel(inputs=6, classes=2, width=8, state_size=4, layers=2, variant="gru")
    assert isinstance(model.core, torch.nn.GRU) and model.core.num_layers == 2
    assert model(torch.randn(2, 7, 6)).shape == (2, 7, 2)


@pytest.mark.parametrize("task", ["copy", "reward"])
def test_prints_one_row_per_variant_and_seed(capsys, task):
    main(f"--task {task} --length 8 --updates 4 --every 2 --width 8 --state-size 4 --seeds 0 1".split())
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    assert [(row[0], row[1]) for row in rows] == [
        ("time-invariant", "0"),
        ("time-invariant", "1"),
        ("selective", "0"),
        ("selective", "1"),
        ("gru", "0"),
        ("gru", "1"),
    ]
    assert all(len(row) == 5 + 2 for row in rows), "two accuracies per curve"


def test_bad_arguments_exit_with_one_line():
    with pytest.raises(SystemExit, match="--every"):
        main(["--updates", "3", "--every", "5"])
