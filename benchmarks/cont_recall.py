"""How well a world model predicts the ends of episodes, on the replay of a finished run.

On a task whose reward is the same every step (gym CartPole: 1 a step), the only thing that
tells good states from bad ones in imagination is the continue head: an imagined trajectory
ends only where it predicts the episode ends. This reads the replay that a run saved with its
checkpoint and scores the continue head on terminal steps (`is_terminal`), two ways:

- `post`: from the posterior state of the terminal step itself, which has seen the terminal
  observation (teacher forcing; what the world-model loss trains);
- `prior`: from one imagined step, the prior after the posterior of the step before with the
  recorded action: what imagination sees when it reaches such a state.

Printed per row: recall (the share of terminal steps with a continue probability below 0.5,
i.e. where the Bernoulli mode says "ends"), the mean continue probability there, and the false
alarms (the share of other steps below 0.5). `--split-dim D --split-above X` also scores the
terminal steps whose observation `vector[D]` has |value| > X apart (CartPole: dim 0, the cart's
position, 2.4 where the track ends).

With `--updates 0` the run's own trained world model is scored; with `--updates N` a fresh one
(the run's config plus the overrides given) is trained on the replay and scored every `--every`
updates, to see how many updates the continue head needs.

    python benchmarks/cont_recall.py RUN --split-dim 0 --split-above 2.4
    python benchmarks/cont_recall.py RUN --updates 3000 --every 500 model.cont_scale=10
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

import envs
from agent.agent import Agent, build_world_model
from configs import ConfigError, load_config, load_config_file
from loop.checkpoint import CheckpointError, find_checkpoint, load_weights
from replay import START_PREFIX, ReplayLoadError, SequenceReplay
from world_model.base import WorldModel, to_tensors

EVAL_BATCHES, EVAL_B, EVAL_T = 12, 16, 64  # held-in scoring batches (the replay is the data)


def contract(batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The data-contract keys of a replay sample as CPU tensors (replay context dropped)."""
    return to_tensors({k: v for k, v in batch.items() if not k.startswith(START_PREFIX)}, "cpu")


@torch.no_grad()
def score(model: WorldModel, batches: list[dict[str, torch.Tensor]], dim: int | None, above: float) -> dict:
    """Continue-head recall at terminal steps from the posterior and from one prior step."""
    model.eval()
    post_p, prior_p, terminal, split = [], [], [], []
    for data in batches:
        post, _, _, _ = model.observe(data)
        B, T = data["is_first"].shape
        post_p.append(model.cont(post)[:, 1:].reshape(-1))  # (B * (T - 1),)
        # The state before each step t >= 1, flattened, then one imagined step with a_{t-1}.
        before = {k: post[k][:, :-1].reshape(B * (T - 1), *post[k].shape[2:]) for k in model.state_keys}
        action = data["action"][:, :-1].reshape(B * (T - 1), -1)  # (B * (T - 1), A)
        traj = model.imagine(before, lambda state, action=action: action, 1)
        prior_p.append(model.cont({k: v[1] for k, v in traj.items() if k != "action"}))
        terminal.append(data["is_terminal"][:, 1:].reshape(-1))
        if dim is not None:
            split.append(data["vector"][:, 1:, dim].reshape(-1).abs() > above)
    model.train()
    is_end = torch.cat(terminal)
    groups = {"all": is_end}
    if dim is not None:
        beyond = torch.cat(split)
        groups[f"|v[{dim}]|>{above:g}"] = is_end & beyond
        groups["other ends"] = is_end & ~beyond
    out = {"ends": {name: int(mask.sum()) for name, mask in groups.items()}}
    for view, probs in (("post", torch.cat(post_p)), ("prior", torch.cat(prior_p))):
        for name, mask in groups.items():
            said = probs[mask] < 0.5
            out[(view, name)] = (
                (said.float().mean().item(), probs[mask].mean().item()) if mask.any() else None
            )
        out[(view, "false")] = (probs[~is_end] < 0.5).float().mean().item()
    return out


def print_row(label: str, result: dict) -> None:
    parts = [f"{label:>10}"]
    for view in ("post", "prior"):
        cells = []
        for name in result["ends"]:
            value = result[(view, name)]
            cells.append(f"{name} {'-' if value is None else f'{value[0]:.2f} (p {value[1]:.2f})'}")
        cells.append(f"false {result[(view, 'false')]:.4f}")
        parts.append(f"{view}: " + ", ".join(cells))
    print(" | ".join(parts), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", help="a run folder (or its checkpoint folder) whose checkpoint holds a replay")
    parser.add_argument(
        "--updates", type=int, default=0, help="train a fresh world model this long (0: score the run's)"
    )
    parser.add_argument("--every", type=int, default=500, help="score every this many updates")
    parser.add_argument(
        "--split-dim", type=int, help="also score ends whose |vector[D]| exceeds --split-above"
    )
    parser.add_argument("--split-above", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", help="dotted config overrides of a fresh world model")
    args = parser.parse_intermixed_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    try:
        checkpoint = find_checkpoint(args.run)
        cfg = load_config_file(os.path.join(checkpoint, "config.yaml"))
        if args.overrides:
            cfg = load_config([os.path.join(checkpoint, "config.yaml")], args.overrides)
    except (CheckpointError, ConfigError) as e:
        raise SystemExit(f"error: {args.run}: {e}") from None
    replay = SequenceReplay.from_config(cfg.replay, 1, args.seed)
    try:
        replay.load(os.path.join(checkpoint, "replay"))
    except (ReplayLoadError, FileNotFoundError) as e:
        raise SystemExit(f"error: {checkpoint}: no replay to read ({e})") from None
    with envs.VectorEnv(cfg.env.name, 1, args.seed) as env:
        if args.updates == 0:
            agent = Agent(cfg, env.obs_space, env.action_dim, env.discrete, torch.device("cpu"))
            load_weights(checkpoint, agent)
            model = agent.world_model
        else:
            model = build_world_model(cfg, env.obs_space, env.action_dim)
    if args.split_dim is not None and "vector" not in model.obs_space:
        raise SystemExit("error: --split-dim needs a `vector` observation")
    batches = [contract(replay.sample(EVAL_B, EVAL_T)) for _ in range(EVAL_BATCHES)]
    print(f"{cfg.env.name}, replay of {checkpoint} ({len(replay)} steps)")
    print("recall: share of ends with p(continue) < 0.5 (p: their mean); false: other steps below 0.5")
    if args.updates == 0:
        print_row("trained", score(model, batches, args.split_dim, args.split_above))
        return
    B, T = cfg.train.batch_size, cfg.train.seq_len
    start = time.time()
    for update in range(1, args.updates + 1):
        model.update(contract(replay.sample(B, T)))
        if update % args.every == 0:
            print_row(str(update), score(model, batches, args.split_dim, args.split_above))
    print(f"{(time.time() - start) / args.updates:.3f} s per update, scoring included")


if __name__ == "__main__":
    main()
