"""Soak test of checkpoints: SIGKILL a debug run at random moments, resume it each time, check.

    python benchmarks/soak.py                     # 20 kills of a debug CartPole run; a table
    python benchmarks/soak.py --kills 5 --json    # one JSON object
    python benchmarks/soak.py --steps 3000 --checkpoint-every 25 --logdir /tmp/soak

A run of `run_agent.py` (debug preset, a checkpoint every `--checkpoint-every` env steps, so that
many kills land during a save) is started, then killed with SIGKILL at a random moment, `--kills`
times, each time continued with `--resume`; after the last kill it resumes to the end. Each run
is this script in child mode, which runs `run_agent.main` and records, through wrappers around
`save_checkpoint` and `restore_checkpoint`, a digest of the replay's contents as it is saved and as
it is loaded. The report, per kill: whether the next resume succeeded, the env steps it lost (those
taken since the checkpoint it went back to), and whether the replay it loaded equals the replay
that checkpoint saved; at the end, whether the interrupted run's final env steps and updates equal
those of the same run made without interruption.

A kill waits until the run has loaded its checkpoint (or, the first time, saved one), then a
uniform random time in [0, `--max-delay`] seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WAIT_S = 300.0  # longest wait for a run to load or save its checkpoint before it counts as failed


# ---------------------------------------------------------------------------------------------
# Child mode: one run of run_agent.py that records what its checkpoints save and load


def replay_digest(replay: Any) -> str:
    """sha256 over every stream's stored step range and the bytes of each stored key, in order."""
    digest = hashlib.sha256()
    for stream in range(replay.num_streams):
        digest.update(repr(replay.stored_range(stream)).encode())
        steps = replay.stream_steps(stream)
        for key in sorted(steps):
            digest.update(key.encode() + steps[key].tobytes())
    return digest.hexdigest()


def child(record: str, counter: str, argv: list[str]) -> int:
    """Run `run_agent.main(argv)`, appending {"saved"|"loaded": env steps, "replay": digest} to
    `record` (fsynced) and writing the env steps this session took into `counter` after each step."""
    import run_agent

    def append(entry: dict[str, Any]) -> None:
        with open(record, "a") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())

    save, restore, make_env = run_agent.save_checkpoint, run_agent.restore_checkpoint, run_agent.make_env

    def saving(logdir, cfg, agent, replay, progress, rng):
        # Recorded before the save starts: a kill during it leaves a record of a save that never
        # completed, which nothing loads.
        append({"saved": progress.env_steps, "replay": replay_digest(replay)})
        save(logdir, cfg, agent, replay, progress, rng)

    def restoring(checkpoint, loop, agent, replay, rng):
        restore(checkpoint, loop, agent, replay, rng)
        append({"loaded": loop["progress"]["env_steps"], "replay": replay_digest(replay)})

    fd = os.open(counter, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    made = []

    def making(cfg, num_envs, seed):
        env = make_env(cfg, num_envs, seed)
        made.append(env)
        if len(made) == 1:  # the first is the training env (the second evaluates)
            step, taken = env.step, [0]

            def counting(action):
                result = step(action)
                taken[0] += env.num_envs
                os.pwrite(fd, f"{taken[0]:>12d}".encode(), 0)
                return result

            env.step = counting
        return env

    run_agent.save_checkpoint, run_agent.restore_checkpoint, run_agent.make_env = saving, restoring, making
    return run_agent.main(argv)


# ---------------------------------------------------------------------------------------------
# Parent mode


def records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.endswith("}")]  # a kill may cut the last one


def start(run_args: list[str], record: Path, counter: Path, log: Path) -> subprocess.Popen:
    command = [sys.executable, str(Path(__file__).resolve()), "--child", str(record), str(counter), "--"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "ab") as out:
        return subprocess.Popen([*command, *run_args], cwd=ROOT, env=env, stdout=out, stderr=out)


def wait_for(process: subprocess.Popen, ready: Any) -> bool:
    """Poll until `ready()` holds (True) or the process exits or WAIT_S pass (False)."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if ready():
            return True
        if process.poll() is not None:
            return bool(ready())
        time.sleep(0.05)
    return False


def run_args(args: argparse.Namespace, logdir: Path) -> list[str]:
    return [
        "--preset",
        "debug",
        "--env",
        args.env,
        "--steps",
        str(args.steps),
        "--seed",
        str(args.seed),
        f"train.checkpoint_every={args.checkpoint_every}",
        "train.log_every=50",
        "train.eval_episodes=0",
        "--logdir",
        str(logdir),
    ]


def final_progress(logdir: Path) -> dict[str, int]:
    import torch

    from loop.checkpoint import find_checkpoint

    loop = torch.load(Path(find_checkpoint(str(logdir))) / "loop.pt", weights_only=True)
    return {key: loop["progress"][key] for key in ("env_steps", "updates")}


def soak(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    rng = random.Random(args.seed)
    logdir, record = folder / "run", folder / "record.jsonl"
    counter, log = folder / "counter", folder / "log.txt"
    first = run_args(args, logdir)
    kills: list[dict[str, Any]] = []
    process = start(first, record, counter, log)
    # The first run has nothing to load: wait for its first complete checkpoint instead.
    ready = wait_for(process, lambda: (logdir / "checkpoint" / "digests.json").exists())
    loaded: dict[str, Any] | None = None
    for kill in range(args.kills + 1):
        if kill > 0:
            seen = len(records(record))
            process = start(["--resume", str(logdir)], record, counter, log)
            ready = wait_for(process, lambda seen=seen: any("loaded" in r for r in records(record)[seen:]))
            loaded = next((r for r in records(record)[seen:] if "loaded" in r), None)
            entry = kills[-1]
            entry["resumed"] = loaded is not None
            if loaded is not None:
                # What the checkpoint it went back to saved: the last record of a save at that step.
                saved = [r for r in records(record)[:seen] if r.get("saved") == loaded["loaded"]]
                entry["resumed_from"] = loaded["loaded"]
                entry["steps_lost"] = entry["steps_at_kill"] - loaded["loaded"]
                entry["replay_equal"] = bool(saved) and saved[-1]["replay"] == loaded["replay"]
        if kill == args.kills or not ready:
            break
        time.sleep(rng.uniform(0.0, args.max_delay))
        start_steps = loaded["loaded"] if loaded else 0
        if process.poll() is not None:
            raise SystemExit(f"the run ended before kill {kill + 1}; give it more --steps (see {log})")
        process.send_signal(signal.SIGKILL)
        process.wait()
        taken = int(counter.read_text() or 0) if counter.exists() else 0
        kills.append({"kill": kill + 1, "steps_at_kill": start_steps + taken})
    # After the last resume: let it finish, then do the same run without interruption.
    finished = process.wait() == 0
    reference_dir = folder / "uninterrupted"
    reference = subprocess.run(
        [sys.executable, str(ROOT / "run_agent.py"), *run_args(args, reference_dir)],
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
    )
    final = final_progress(logdir) if finished else {}
    uninterrupted = final_progress(reference_dir) if reference.returncode == 0 else {}
    failed = sum(not k.get("resumed", False) for k in kills)
    return {
        "kills": kills,
        "failed_resumes": failed,
        "replay_equal_after_every_resume": all(k.get("replay_equal", False) for k in kills),
        "final": final,
        "uninterrupted": uninterrupted,
        "final_equals_uninterrupted": bool(final) and final == uninterrupted,
        "steps_lost_mean": sum(k.get("steps_lost", 0) for k in kills) / max(len(kills), 1),
    }


def report(result: dict[str, Any]) -> None:
    print("| kill | env steps at kill | resumed from | env steps lost | replay equal |")
    print("| ---: | ---: | ---: | ---: | --- |")
    for k in result["kills"]:
        resumed = k.get("resumed_from", "failed")
        print(
            f"| {k['kill']} | {k['steps_at_kill']} | {resumed} | {k.get('steps_lost', '-')} "
            f"| {'yes' if k.get('replay_equal') else 'NO'} |"
        )
    final, reference = result["final"], result["uninterrupted"]
    print(
        f"final run: {final.get('env_steps', '?')} env steps, {final.get('updates', '?')} updates; "
        f"uninterrupted: {reference.get('env_steps', '?')}, {reference.get('updates', '?')} "
        f"({'equal' if result['final_equals_uninterrupted'] else 'DIFFERENT'})"
    )
    equal = "replay equal after every resume"
    if not result["replay_equal_after_every_resume"]:
        equal = "replay DIFFERED"
    print(
        f"{len(result['kills'])} kills, {result['failed_resumes']} failed resumes, {equal}, "
        f"{result['steps_lost_mean']:.1f} env steps lost per kill on average"
    )


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        record, counter, separator, *argv = sys.argv[2:]
        assert separator == "--", "usage: soak.py --child RECORD COUNTER -- RUN_AGENT_ARGS"
        return child(record, counter, argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs, each followed by --resume")
    parser.add_argument("--steps", type=int, default=2000, help="train.steps of the run")
    parser.add_argument("--checkpoint-every", type=int, default=25, help="train.checkpoint_every")
    parser.add_argument("--max-delay", type=float, default=4.0, help="most seconds from load to kill")
    parser.add_argument("--env", default="gym:CartPole-v1", help="env id of the run")
    parser.add_argument("--seed", type=int, default=0, help="seed of the run and of the kill times")
    parser.add_argument("--logdir", help="folder for the runs (default: a temporary one, removed)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        if args.logdir:
            folder = Path(args.logdir)
            folder.mkdir(parents=True, exist_ok=False)
        else:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="soak-")))
        result = soak(args, folder)
    if args.json:
        print(json.dumps(result))
    else:
        report(result)
    ok = not result["failed_resumes"] and result["replay_equal_after_every_resume"]
    return 0 if ok and result["final_equals_uninterrupted"] else 1


if __name__ == "__main__":
    sys.exit(main())
