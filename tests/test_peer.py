"""Tests of benchmarks/peer.py that need no sheeprl: its commands, the driver's source, and the
parsing of a fake peer output. The comparison itself runs by hand (see the script's docstring).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

from benchmarks import peer  # noqa: E402


def fake_output(updates: int) -> str:
    """What the driver prints: sheeprl's own lines, then the result line."""
    result = {
        "times": {
            "update": [9.0] * 2 + [3.0] * (updates - 2),
            "world_model": [5.0] * 2 + [1.0] * (updates - 2),
            "actor_critic": [4.0] * 2 + [2.0] * (updates - 2),
        },
        "flops": {"update": 30, "world_model": 10, "actor_critic": 20},
        "threads": 2,
        "precision": "32-true",
        "imag_starts": 1024,
        "params": {"world_model": 7, "actor": 1, "critic": 2},
        "widths": {
            "dense_units": 512,
            "mlp_layers": 2,
            "world_model.recurrent_model.recurrent_state_size": 512,
            "world_model.stochastic_size": 32,
            "world_model.discrete_size": 32,
            "horizon": 15,
        },
    }
    return f"Log dir: /tmp/x\nRank-0: policy_step=3\n{peer.RESULT_TAG}{json.dumps(result)}\n"


def test_import_is_cheap():
    # Importing the script must run nothing: no torch, no sheeprl, no venv.
    code = "import sys; import benchmarks.peer; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_parse_peer_output_means_the_timed_updates():
    r = peer.parse_peer_output(fake_output(7), warmup=2, updates=5)
    assert (r["world_model_s"], r["actor_critic_s"]) == (1.0, 2.0)
    assert (r["world_model_flops"], r["actor_critic_flops"]) == (10, 20)
    assert r["precision"] == "32-true" and r["imag_starts"] == 1024
    assert peer.width_mismatches(r["widths"]) == []
    assert r["update_s_each"] == [3.0] * 5
    ours = {"world_model_s": 0.5, "actor_critic_s": 2.0, "update_s_each": [2.0, 1.5, 9.0]}
    assert peer.ratios(r, ours) == {
        "world_model": 2.0,
        "actor_critic": 1.0,
        "update": 1.2,
        "update_median": 1.5,
    }


def test_parse_peer_output_refuses_short_or_missing_results():
    with pytest.raises(peer.PeerError, match="3 updates, 7 needed"):
        peer.parse_peer_output(fake_output(3), warmup=2, updates=5)
    with pytest.raises(peer.PeerError, match="no result line"):
        peer.parse_peer_output("Traceback ...\n", warmup=2, updates=5)


def test_width_mismatches_name_the_key():
    widths = dict(peer.WIDTHS, **{"model.hidden": 256})
    assert peer.width_mismatches(widths) == ["model.hidden=256 (want 512)"]


def test_commands_pin_torch_and_set_the_peer_up():
    venv = Path("/tmp/v")
    venv_cmd, torch_cmd, sheeprl_cmd = peer.setup_commands(venv, "2.13.0+cpu", python="py")
    assert venv_cmd == ["py", "-m", "venv", "/tmp/v"]
    assert torch_cmd[-1] == "torch==2.13.0+cpu"  # the project's torch, before sheeprl can pick one
    assert f"sheeprl=={peer.PEER_VERSION}" in sheeprl_cmd and sheeprl_cmd[-2:] == [
        "-c",
        "/tmp/v/r2i-constraints.txt",
    ]
    default = peer.peer_overrides(None, updates=5, warmup=2, threads=1, logdir=Path("/tmp/l"))
    assert "algo=dreamer_v3_S" in default and "exp=dreamer_v3" in default
    assert f"algo.per_rank_batch_size={peer.B}" in default and not any("precision" in o for o in default)
    assert peer.peer_overrides("32-true", 5, 2, 1, Path("/tmp/l"))[-1] == "fabric.precision=32-true"


def test_driver_compiles():
    compile(peer.driver_source(), "r2i_peer_driver.py", "exec")


def test_dry_run_prints_commands_and_makes_nothing(tmp_path, capsys):
    venv = tmp_path / "peer-venv"
    assert peer.main(["--dry-run", "--venv", str(venv), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "algo=dreamer_v3_S" in out and '"model": "s3m"' in out and "OMP_NUM_THREADS=1" in out
    assert not venv.exists()


def test_bad_input_exits_non_zero(capsys):
    assert peer.main(["--updates", "0"]) == 2
    assert "--updates" in capsys.readouterr().err
    assert peer.main(["--rounds", "0"]) == 2
    assert "--rounds" in capsys.readouterr().err
    assert peer.main(["--dry-run", "--venv", str(ROOT / "peer-venv")]) == 2
    assert "inside the repository" in capsys.readouterr().err
