"""benchmarks/selective_copy.py: both S5 variants train on the same task and are reported."""

import pytest
import torch

from benchmarks.selective_copy import CopyModel, batch, main


def test_targets_are_the_first_card():
    seq, target = batch(5, 9, 3, torch.Generator().manual_seed(0))
    assert seq.shape == target.shape == (5, 9)
    assert (target == seq[:, :1]).all()


@pytest.mark.parametrize("selective", [False, True])
def test_model_shapes_and_selective_layers(selective):
    model = CopyModel(cards=3, width=8, state_size=4, layers=2, selective=selective)
    logits = model(torch.randint(3, (2, 7)))
    assert logits.shape == (2, 7, 3)
    assert all(block.ssm.selective == selective for block in model.stack.layers)


def test_prints_one_row_per_variant_and_seed(capsys):
    main("--length 8 --updates 4 --every 2 --width 8 --state-size 4 --seeds 0 1".split())
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    assert [(row[0], row[1]) for row in rows] == [
        ("time-invariant", "0"),
        ("time-invariant", "1"),
        ("selective", "0"),
        ("selective", "1"),
    ]
    assert all(len(row) == 5 + 2 for row in rows), "two accuracies per curve"


def test_bad_arguments_exit_with_one_line():
    with pytest.raises(SystemExit, match="--every"):
        main(["--updates", "3", "--every", "5"])
