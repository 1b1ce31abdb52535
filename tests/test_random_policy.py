"""benchmarks/random_policy.py: the random policy's floor beside each learning target."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import learning, random_policy


def test_random_policy_scores_as_the_targets_score_runs(tmp_path: Path):
    # Memory length 1: the final reward is +1 or -1 by a coin flip against the cue, so about half
    # of the random episodes succeed; each return is -1 or +1, so the mean return is near 0.
    success = random_policy.measure("bsuite:memory_len/0", "success", 400, seed=0)
    mean_return = random_policy.measure("bsuite:memory_len/0", "return", 400, seed=0)
    assert 0.4 < success < 0.6
    assert mean_return == pytest.approx(2 * success - 1)
    # The store: measured once, then read back without running the env again.
    store = tmp_path / "random.json"
    first = random_policy.score("bsuite:memory_len/0", "success", 400, path=store)
    assert first == pytest.approx(success, abs=1e-4)
    assert random_policy.stored(store) == {random_policy.key("bsuite:memory_len/0", "success", 400): first}
    store.write_text(store.read_text().replace(str(first), "0.125"))
    assert random_policy.score("bsuite:memory_len/0", "success", 400, path=store) == 0.125


@pytest.mark.parametrize("name", sorted(learning.TARGETS))
def test_every_target_has_its_random_score_stored(name: str, monkeypatch):
    # A page rebuild reads every target's floor from benchmarks/data/random_policy.json; one
    # missing would run its env for minutes (a thousand BSuite episodes) inside the rebuild.
    monkeypatch.setattr(random_policy, "measure", lambda *args: pytest.fail(f"{name}: no stored score"))
    score = learning.random_score(learning.TARGETS[name])
    assert isinstance(score, float)
