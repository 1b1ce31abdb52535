"""benchmarks/published.py: DreamerV3's published curves, binned and read at a row's env steps."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from benchmarks import learning, published


def test_binning_averages_each_window_then_the_seeds(tmp_path: Path):
    # Two seeds of one DMC task, logged at uneven frames; the windows are (0, 10k], (10k, 20k], ...
    runs = [
        {"task": "dmc_walker_walk", "seed": 0, "xs": [5_000, 10_000, 15_000, 30_000], "ys": [10, 30, 50, 70]},
        {"task": "dmc_walker_walk", "seed": 1, "xs": [9_000, 19_000], "ys": [100, 200]},
        {"task": "dmc_cartpole_swingup", "seed": 0, "xs": [10_000], "ys": [5]},
    ]
    (tmp_path / "dmc_proprio-dreamerv3.json.gz").write_bytes(gzip.compress(json.dumps(runs).encode()))
    store = tmp_path / "store.json"
    published.rebuild(tmp_path, store)
    walker = published.stored(store)["dmc:walker_walk"]
    assert walker["frames"] == [10_000, 20_000, 30_000]
    # (10 + 30) / 2 and 100 averaged; 50 and 200; 70 from seed 0 alone.
    assert walker["mean"] == [pytest.approx(60.0), pytest.approx(125.0), pytest.approx(70.0)]
    assert walker["seeds"] == 2 and walker["repeat"] == 2
    # Agent steps x DreamerV3's action repeat 2: 5k steps are 10k frames; 8k steps (16k frames)
    # read the nearest window, 20k; past the curve's last window nothing is published.
    assert published.score("dmc:walker_walk", 5_000, path=store) == pytest.approx(60.0)
    assert published.score("dmc:walker_walk", 8_000, path=store) == pytest.approx(125.0)
    assert published.score("dmc:walker_walk", 5_000, repeat=4, path=store) == pytest.approx(125.0)
    assert published.score("dmc:walker_walk", 50_000, path=store) is None
    assert published.score("dmc_vision:walker_walk", 5_000, path=store) is None


def test_rebuild_without_published_files_names_the_folder(tmp_path: Path, capsys):
    assert published.main(["--rebuild", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {tmp_path}: none of") and "\n" not in err


def test_the_store_holds_the_curves_of_the_control_targets():
    # The page's DreamerV3 column reads the committed store: every return target on DMC or Atari
    # has a published score at its budget; the memory targets have none.
    for name, target in learning.TARGETS.items():
        suite = target.env.split(":")[0]
        score = learning.published_score(target)
        if suite in published.PREFIX and target.metric == "return":
            assert isinstance(score, float), f"{name}: no published DreamerV3 score at its budget"
        else:
            assert score is None, name
