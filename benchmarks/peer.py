"""One agent update against sheeprl's DreamerV3 at the same widths (DreamerV3's "S" size).

Both sides train on CartPole-v1 at B x T = 16 x 64, imagining 15 steps from every one of the
B*T = 1024 posterior states, with 512-wide MLPs of 2 layers, a 512-wide deterministic state and
32 x 32 categorical latents:

- peer: sheeprl 0.8.4's DreamerV3, `exp=dreamer_v3 algo=dreamer_v3_S env=gym env.id=CartPole-v1`;
- ours: `Agent.train` under `--preset small`, once with `world_model=rssm` and once with
  `world_model=s3m agent.policy_input=output` (benchmarks/agent_update.measure).

Each is timed with its own default precision (the peer's `fabric.precision` is `32-true`; ours,
`precision=auto`, is `bf16-mixed` where the device computes bfloat16 natively, else `32`) and
again with both in 32-bit; a configuration whose default already is 32-bit is timed once and
shown in both tables. `peer/ours` is the peer's seconds over ours (above 1: ours is faster), for
the update and for each part (world model; actor-critic: imagination, actor and critic updates),
from the means and, for the update, from the medians over the timed updates.

How each side is timed: mean seconds over `--updates` updates after two warm-up ones, in a fresh
process per configuration, one after the other (`--rounds` alternates them that many times and
keeps each one's fastest round). Ours: `Agent.train` on batches replayed from
random-action steps, its two parts wrapped in timers (as agent_update.py). The peer: a driver run
in the peer's environment wraps sheeprl's `train`, `world_model_learning` and
`behaviour_learning` (functions of `sheeprl.algos.dreamer_v3.dreamer_v3` that its `main` looks up
at each call) in the same timers, then runs sheeprl's command line: 1024 random-action steps
(`algo.learning_starts`), then one update per env step (`algo.replay_ratio=1`), and stops the
process once it has timed enough updates. Acting between updates is not timed on either side.
Both count the matmul and convolution FLOPs of their first update with
`torch.utils.flop_counter.FlopCounterMode`, which gives GFLOP/s per side.

Both sides get the same thread count (`--threads`; 0, the default, is the project's default:
torch's, one per core) through `OMP_NUM_THREADS` and `torch.set_num_threads`, and the same glibc
malloc settings, those run_agent.py sets for its runs (freed memory kept; `--no-malloc-tuning`
leaves glibc's defaults to both). On a CPU that other jobs share, oversubscribed threads spin:
`--threads 1` gives the steadier figures there.

The peer's environment is made once, outside the repository (`--venv`): a virtual environment,
this project's torch version first (`pip install torch==<torch.__version__>`), then sheeprl with a
constraint pinning that torch, so pip keeps it. It needs the package registry the first time
(several minutes) and nothing after. It never runs in CI; tests/test_peer.py checks its commands
and the parsing of the driver's output without sheeprl.

    python benchmarks/peer.py                         # set up the peer once, then the tables
    python benchmarks/peer.py --json                  # one JSON object
    python benchmarks/peer.py --dry-run               # the commands it would run, nothing else
    python benchmarks/peer.py --threads 1 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PEER_VERSION = "0.8.4"
DEFAULT_VENV = Path.home() / ".cache" / "r2i-peer" / f"sheeprl-{PEER_VERSION}"
READY = ".r2i-peer-ready"  # written in the venv once both installs succeeded: their versions
RESULT_TAG = "R2I-PEER-RESULT "  # the driver's last stdout line: this tag, then a JSON object
ENV_ID = "gym:CartPole-v1"
B, T = 16, 64
WARMUP = 2  # untimed updates first, on both sides (agent_update.WARMUP); the first is FLOP-counted
PEER_LEARNING_STARTS = 1024  # sheeprl's default; its first update comes after as many env steps
PEER_DEFAULT_PRECISION = "32-true"  # sheeprl 0.8.4's configs/fabric/default.yaml
OURS = {
    "rssm": ["world_model=rssm"],
    "s3m": ["world_model=s3m", "agent.policy_input=output"],
}
# DreamerV3's "S" widths, which both sides must have: key -> value, as ours names them.
WIDTHS = {
    "model.units": 512,
    "model.mlp_units": 512,
    "model.mlp_layers": 2,
    "model.head_layers": 2,
    "model.hidden": 512,
    "model.stoch_groups": 32,
    "model.stoch_classes": 32,
    "agent.units": 512,
    "agent.layers": 2,
    "agent.horizon": 15,
}
# The same widths in the peer's resolved config (Hydra keys under `algo.`).
PEER_WIDTHS = {
    "model.units": "dense_units",
    "model.mlp_units": "dense_units",
    "model.mlp_layers": "mlp_layers",
    "model.head_layers": "mlp_layers",
    "model.hidden": "world_model.recurrent_model.recurrent_state_size",
    "model.stoch_groups": "world_model.stochastic_size",
    "model.stoch_classes": "world_model.discrete_size",
    "agent.units": "dense_units",
    "agent.layers": "mlp_layers",
    "agent.horizon": "horizon",
}


def malloc_env() -> dict[str, str]:
    """run_agent.keep_freed_memory's malloc settings as glibc's environment variables, for both
    sides (imported here, not at the top: importing this script must not import torch)."""
    from run_agent import KEEP_FREED_MEMORY

    return {variable: str(value) for _, variable, value in KEEP_FREED_MEMORY}


# The driver, run by the peer's python as `driver.py WARMUP UPDATES THREADS OVERRIDE...`. It only
# wraps sheeprl's functions in timers; sheeprl computes the update as it always does.
DRIVER = r"""
import contextlib, json, os, sys, time

import torch
from torch.utils.flop_counter import FlopCounterMode

warmup, updates, threads = (int(a) for a in sys.argv[1:4])
torch.set_num_threads(threads)
import sheeprl.cli
from sheeprl.algos.dreamer_v3 import dreamer_v3 as dv3

times = {"update": [], "world_model": [], "actor_critic": []}
flops = {"update": 0, "world_model": 0, "actor_critic": 0}
info = {"threads": None, "precision": None, "widths": {}, "params": {}, "imag_starts": None}
counter = [None]


def timed(fn, key):
    def wrapper(*args, **kwargs):
        before = counter[0].get_total_flops() if counter[0] is not None else 0
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        times[key].append(time.perf_counter() - start)
        if counter[0] is not None:
            flops[key] += counter[0].get_total_flops() - before
        return out
    return wrapper


def report():
    print("@TAG@" + json.dumps({"times": times, "flops": flops, **info}), flush=True)


def build_agent(*args, **kwargs):
    cfg = args[3] if len(args) > 3 else kwargs["cfg"]
    algo = cfg["algo"]
    for key in @WIDTH_KEYS@:
        value = algo
        for part in key.split("."):
            value = value[part]
        info["widths"][key] = value
    info["precision"] = cfg["fabric"]["precision"]
    out = build(*args, **kwargs)
    for name, module in zip(("world_model", "actor", "critic"), out[:3]):
        info["params"][name] = sum(p.numel() for p in module.parameters())
    return out


def behaviour_learning(*args, **kwargs):
    recurrent_states = args[10] if len(args) > 10 else kwargs["recurrent_states"]
    info["imag_starts"] = recurrent_states.shape[0] * recurrent_states.shape[1]  # (T, B, ...)
    return behaviour(*args, **kwargs)


def train(*args, **kwargs):
    info["threads"] = torch.get_num_threads()
    # Only the first (warm-up) update runs under the counter, which costs time per op.
    with FlopCounterMode(display=False) if not times["update"] else contextlib.nullcontext() as mode:
        counter[0] = mode
        try:
            out = update(*args, **kwargs)
        finally:
            counter[0] = None
    if len(times["update"]) >= warmup + updates:
        report()
        os._exit(0)  # enough updates: the rest of the run would only add its teardown
    return out


build, behaviour = dv3.build_agent, dv3.behaviour_learning
dv3.build_agent = build_agent
dv3.world_model_learning = timed(dv3.world_model_learning, "world_model")
dv3.behaviour_learning = timed(behaviour_learning, "actor_critic")
update = timed(dv3.train, "update")
dv3.train = train
sys.argv = ["sheeprl", *sys.argv[4:]]
sheeprl.cli.run()
report()
"""


class PeerError(Exception):
    """A peer or ours run that failed or printed no result; the message names it."""


def driver_source() -> str:
    keys = repr(sorted(set(PEER_WIDTHS.values())))
    return DRIVER.replace("@TAG@", RESULT_TAG).replace("@WIDTH_KEYS@", keys)


def setup_commands(venv: Path, torch_version: str, python: str = sys.executable) -> list[list[str]]:
    """The commands that make the peer's environment: a venv, this torch, then sheeprl with torch pinned."""
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install"]
    return [
        [python, "-m", "venv", str(venv)],
        [*pip, f"torch=={torch_version}"],
        [*pip, f"sheeprl=={PEER_VERSION}", "-c", str(venv / "r2i-constraints.txt")],
    ]


def peer_overrides(precision: str | None, updates: int, warmup: int, threads: int, logdir: Path) -> list[str]:
    """sheeprl's Hydra overrides for a timed run; `precision` None keeps the peer's default."""
    overrides = [
        "exp=dreamer_v3",
        "algo=dreamer_v3_S",
        "env=gym",
        "env.id=CartPole-v1",
        "env.num_envs=1",
        "env.sync_env=True",
        "env.capture_video=False",
        "algo.cnn_keys.encoder=[]",
        "algo.mlp_keys.encoder=[state]",
        "algo.cnn_keys.decoder=[]",  # exp=dreamer_v3 decodes `rgb`: CartPole's state only here
        "algo.mlp_keys.decoder=[state]",
        f"algo.per_rank_batch_size={B}",
        f"algo.per_rank_sequence_length={T}",
        f"algo.learning_starts={PEER_LEARNING_STARTS}",
        "algo.replay_ratio=1",
        # A margin of env steps past the last timed update; the driver stops the run there.
        f"algo.total_steps={PEER_LEARNING_STARTS + warmup + updates + 16}",
        "algo.run_test=False",
        "buffer.size=4096",
        "buffer.memmap=False",
        "buffer.checkpoint=False",
        "checkpoint.every=0",
        "checkpoint.save_last=False",
        "metric.log_level=0",
        "model_manager.disabled=True",
        "fabric.accelerator=cpu",
        "fabric.devices=1",
        "seed=0",
        f"num_threads={threads}",  # sheeprl sets OMP_NUM_THREADS from it; the driver sets torch's too
        f"log_root={logdir}",
        f"hydra.run.dir={logdir / 'hydra'}",
    ]
    if precision is not None:
        overrides.append(f"fabric.precision={precision}")
    return overrides


def parse_peer_output(stdout: str, warmup: int, updates: int) -> dict[str, Any]:
    """The driver's result line in `stdout` as a measurement like `agent_update.measure`'s."""
    lines = [line for line in stdout.splitlines() if line.startswith(RESULT_TAG)]
    if not lines:
        raise PeerError("peer printed no result line")
    raw = json.loads(lines[-1][len(RESULT_TAG) :])
    done = len(raw["times"]["update"])
    if done < warmup + updates:
        raise PeerError(f"peer made {done} updates, {warmup + updates} needed")

    def timed(key: str) -> list[float]:
        return raw["times"][key][warmup : warmup + updates]

    return {
        "world_model_s": sum(timed("world_model")) / updates,
        "actor_critic_s": sum(timed("actor_critic")) / updates,
        "update_s_each": [w + a for w, a in zip(timed("world_model"), timed("actor_critic"))],
        "world_model_flops": raw["flops"]["world_model"],
        "actor_critic_flops": raw["flops"]["actor_critic"],
        "precision": raw["precision"],
        "threads": raw["threads"],
        "imag_starts": raw["imag_starts"],
        "params": raw["params"],
        "widths": {ours: raw["widths"][peer] for ours, peer in PEER_WIDTHS.items()},
    }


def width_mismatches(widths: dict[str, Any]) -> list[str]:
    """`key=value (want W)` for each of `WIDTHS` that `widths` does not match."""
    return [f"{k}={widths.get(k)} (want {v})" for k, v in WIDTHS.items() if widths.get(k) != v]


def run_env(threads: int, malloc_tuning: bool) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    if malloc_tuning:
        env.update(malloc_env())
    return env


def ours_command(model: str, precision: str | None, updates: int, threads: int) -> list[str]:
    spec = {"model": model, "precision": precision, "updates": updates, "threads": threads}
    return [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]


def ours_overrides(model: str, precision: str | None) -> list[str]:
    return [*OURS[model], *([] if precision is None else [f"precision={precision}"])]


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Ours, one configuration, in this (fresh) process."""
    import torch

    torch.set_num_threads(spec["threads"])
    from benchmarks.agent_update import WARMUP as AGENT_UPDATE_WARMUP
    from benchmarks.agent_update import measure

    assert WARMUP == AGENT_UPDATE_WARMUP, "peer.WARMUP must be agent_update.WARMUP"
    result = measure(ENV_ID, ["small"], ours_overrides(spec["model"], spec["precision"]), spec["updates"])
    return {**result, "threads": torch.get_num_threads()}


def run_ours(model: str, precision: str | None, args: argparse.Namespace) -> dict[str, Any]:
    cmd = ours_command(model, precision, args.updates, args.threads)
    out = subprocess.run(
        cmd, capture_output=True, text=True, check=False, env=run_env(args.threads, args.malloc_tuning)
    )
    if out.returncode != 0:
        raise PeerError(f"ours ({model}, precision {precision or 'default'}) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def peer_command(precision: str | None, args: argparse.Namespace, driver: Path, logdir: Path) -> list[str]:
    """The driver's command line: the peer's python, WARMUP UPDATES THREADS, then sheeprl's overrides."""
    counts = [str(args.warmup), str(args.updates), str(args.threads)]
    return [
        str(args.venv / "bin" / "python"),
        str(driver),
        *counts,
        *peer_overrides(precision, args.updates, args.warmup, args.threads, logdir),
    ]


def run_peer(precision: str | None, args: argparse.Namespace, driver: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="r2i-peer-") as logdir:
        cmd = peer_command(precision, args, driver, Path(logdir))
        out = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            check=False,
            cwd=logdir,  # whatever sheeprl writes beside its logs stays out of the repository
            env=run_env(args.threads, args.malloc_tuning),
        )
    try:
        return parse_peer_output(out.stdout, args.warmup, args.updates)
    except PeerError as err:
        tail = (out.stdout[-1500:] + out.stderr[-2500:]).strip()
        raise PeerError(f"{err} (precision {precision or 'default'}, rc {out.returncode}):\n{tail}") from None


def setup_peer(venv: Path, torch_version: str, quiet: bool) -> None:
    """Make the peer's environment unless `venv` already holds one made for `torch_version`."""
    ready = venv / READY
    want = f"sheeprl=={PEER_VERSION} torch=={torch_version}"
    if ready.exists() and ready.read_text().strip() == want:
        return
    commands = setup_commands(venv, torch_version)
    if not (venv / "bin" / "python").exists():
        subprocess.run(commands[0], check=True)
    (venv / "r2i-constraints.txt").write_text(f"torch=={torch_version}\n")
    for cmd in commands[1:]:
        if not quiet:
            print(f"setting up the peer: {shlex.join(cmd)}", file=sys.stderr)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL if quiet else None)
    ready.write_text(want + "\n")


def update_s(r: dict[str, Any]) -> float:
    return r["world_model_s"] + r["actor_critic_s"]


def median_update_s(r: dict[str, Any]) -> float:
    """The median of the timed updates' seconds: a burst of load elsewhere moves it less than the mean."""
    return statistics.median(r["update_s_each"])


def ratios(peer: dict[str, Any], ours: dict[str, Any]) -> dict[str, float]:
    """peer seconds / ours seconds, per part and for the whole update (mean, and median: above 1,
    ours is faster)."""
    return {
        "world_model": peer["world_model_s"] / ours["world_model_s"],
        "actor_critic": peer["actor_critic_s"] / ours["actor_critic_s"],
        "update": update_s(peer) / update_s(ours),
        "update_median": median_update_s(peer) / median_update_s(ours),
    }


def print_table(title: str, rows: dict[str, dict[str, Any]]) -> None:
    print(f"\n{title}")
    print(
        f"{'side':<12} {'precision':>10} {'world model':>11} {'actor-critic':>12} {'update':>8} "
        f"{'median':>8} {'GFLOP/update':>12} {'GFLOP/s':>8} {'params (M)':>10}  "
        "peer/ours: wm    ac update median"
    )
    peer = rows["peer"]
    for name, r in rows.items():
        update = r["world_model_s"] + r["actor_critic_s"]
        flops = r["world_model_flops"] + r["actor_critic_flops"]
        line = (
            f"{name:<12} {r['precision']:>10} {r['world_model_s']:>10.3f}s {r['actor_critic_s']:>11.3f}s "
            f"{update:>7.3f}s {median_update_s(r):>7.3f}s {flops / 1e9:>12.1f} {flops / update / 1e9:>8.1f} "
            f"{sum(r['params'].values()) / 1e6:>10.2f}"
        )
        if name != "peer":
            q = ratios(peer, r)
            line += f"  {q['world_model']:>13.2f}x {q['actor_critic']:>4.2f}x {q['update']:>5.2f}x"
            line += f" {q['update_median']:>5.2f}x"
        print(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="the peer's virtual environment")
    parser.add_argument("--updates", type=int, default=5, help="timed updates per configuration")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads, both sides (0: torch's default, one per core)"
    )
    parser.add_argument(
        "--no-malloc-tuning",
        dest="malloc_tuning",
        action="store_false",
        help="run both sides with glibc's default malloc settings",
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="times each configuration, alternating; the fastest is kept"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    for name in ("updates", "rounds"):
        if getattr(args, name) < 1:
            print(f"error: --{name} must be at least 1, got {getattr(args, name)}", file=sys.stderr)
            return 2
    args.warmup = WARMUP
    if args.threads < 0:
        print(f"error: --threads must be 0 or more, got {args.threads}", file=sys.stderr)
        return 2

    import torch  # here, not at the top: importing this file stays cheap and does nothing

    from agent.precision import resolve_precision
    from configs import load_config

    args.threads = args.threads or torch.get_num_threads()
    args.venv = args.venv.expanduser().resolve()
    if args.venv.is_relative_to(REPO):
        print(f"error: --venv {args.venv} is inside the repository; put it elsewhere", file=sys.stderr)
        return 2
    cfg = load_config(["small"], [f"env.name={ENV_ID}"])
    widths = {key: getattr(getattr(cfg, key.split(".")[0]), key.split(".")[1]) for key in WIDTHS}
    bad = width_mismatches(widths)
    if bad:
        print(f"error: configs/presets/small.yaml is not DreamerV3's S: {', '.join(bad)}", file=sys.stderr)
        return 2
    if (cfg.train.batch_size, cfg.train.seq_len) != (B, T) or cfg.agent.imag_starts not in (0, B * T):
        print(
            f"error: ours trains on {cfg.train.batch_size}x{cfg.train.seq_len} with agent.imag_starts="
            f"{cfg.agent.imag_starts}; the comparison needs {B}x{T} from all {B * T} starts",
            file=sys.stderr,
        )
        return 2
    ours_default = resolve_precision(cfg.precision, torch.device("cpu"))

    # (table, side) -> precision override; None is the side's default.
    plan = {("defaults", "peer"): None, ("32-bit", "peer"): "32-true"}
    for model in OURS:
        plan[("defaults", f"ours {model}")] = None
        plan[("32-bit", f"ours {model}")] = "32"
    if args.dry_run:
        driver = args.venv / "r2i_peer_driver.py"
        torch_version = torch.__version__
        print(f"# setup, once (until {args.venv / READY} exists; the constraint file pins torch)")
        for cmd in setup_commands(args.venv, torch_version):
            print(shlex.join(cmd))
        print(f"# the driver is written to {driver}; both sides run with OMP_NUM_THREADS={args.threads}")
        for (table, side), precision in plan.items():
            note = ""
            if table == "32-bit" and side != "peer" and ours_default == "32":
                note = " (skipped: the default resolves to 32 here)"
            if table == "32-bit" and side == "peer":
                note = f" (skipped when the default run reports {PEER_DEFAULT_PRECISION})"
            if side == "peer":
                cmd = peer_command(precision, args, driver, Path("LOGDIR"))
            else:
                cmd = ours_command(side.split()[1], precision, args.updates, args.threads)
            print(f"# {table}, {side}{note}\n{shlex.join(cmd)}")
        return 0

    try:
        setup_peer(args.venv, torch.__version__, quiet=args.json)
    except (subprocess.CalledProcessError, OSError) as err:
        print(f"error: setting up the peer in {args.venv} failed: {err}", file=sys.stderr)
        return 1
    driver = args.venv / "r2i_peer_driver.py"
    driver.write_text(driver_source())

    # Rounds alternate the configurations, so that a burst of load elsewhere on the machine
    # slows one round of each rather than all the rounds of one; each keeps its fastest round.
    measured: dict[tuple[str, str], list[dict[str, Any]]] = {}
    try:
        for round_ in range(args.rounds):
            for (table, side), precision in plan.items():
                default = measured.get(("defaults", side))
                if table == "32-bit" and default and default[0]["precision"] in ("32", "32-true"):
                    continue  # the default is this configuration: timed once, shown in both tables
                if not args.json:
                    print(f"round {round_ + 1}: timing {side}, {table} ...", file=sys.stderr, flush=True)
                if side == "peer":
                    result = run_peer(precision, args, driver)
                else:
                    result = run_ours(side.split()[1], precision, args)
                measured.setdefault((table, side), []).append(result)
    except PeerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for (table, side), runs in measured.items():
        if any(r["threads"] != args.threads for r in runs):
            threads = sorted({r["threads"] for r in runs})
            print(f"error: {side} ({table}) ran {threads} threads, not {args.threads}", file=sys.stderr)
            return 1
    results: dict[str, dict[str, dict[str, Any]]] = {"defaults": {}, "32-bit": {}}
    for table, side in plan:
        runs = measured.get((table, side)) or measured[("defaults", side)]
        best = min(runs, key=update_s)
        results[table][side] = {**best, "update_s_per_round": [update_s(r) for r in runs]}

    peer = results["defaults"]["peer"]
    bad = width_mismatches(peer["widths"])
    if bad or peer["imag_starts"] != B * T:
        starts = peer["imag_starts"]
        print(f"error: the peer ran other widths or starts: {bad}, {starts} starts", file=sys.stderr)
        return 1
    summary = {
        "env": ENV_ID,
        "B": B,
        "T": T,
        "threads": args.threads,
        "malloc_tuning": args.malloc_tuning,
        "updates": args.updates,
        "rounds": args.rounds,
        "peer": f"sheeprl {PEER_VERSION}",
        "torch": torch.__version__,
        "results": results,
        "ratios": {
            table: {side: ratios(rows["peer"], r) for side, r in rows.items() if side != "peer"}
            for table, rows in results.items()
        },
    }
    if args.json:
        print(json.dumps(summary))
        return 0
    print(
        f"one update on {ENV_ID}, B x T = {B} x {T}, all {B * T} starts imagined 15 steps; "
        f"{args.threads} thread(s) both sides, malloc tuning {'on' if args.malloc_tuning else 'off'}, "
        f"mean of {args.updates} updates, fastest of {args.rounds} round(s); "
        f"peer: sheeprl {PEER_VERSION} DreamerV3 S; torch {torch.__version__}"
    )
    print("peer/ours: the peer's seconds over ours (above 1: ours is faster)")
    for table, rows in results.items():
        print_table(f"{table} (each side's own precision)" if table == "defaults" else table, rows)
    print("\nparameters (world model / actor / critic):")
    for side, r in results["defaults"].items():
        p = r["params"]
        print(f"  {side:<10} {p['world_model']:>10,} / {p['actor']:>9,} / {p['critic']:>9,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
