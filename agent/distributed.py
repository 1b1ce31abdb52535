"""Data-parallel training on torch.distributed: the ranks, their process group, and what they share.

    world = World.from_env()          # RANK / WORLD_SIZE / LOCAL_RANK as torchrun sets them; size 1 without
    world = world.start(device)       # the process group (size > 1 only): gloo on CPU, NCCL on CUDA
    data_parallel(agent, world)       # one set of weights: gradients, metrics, return statistics shared
    world.barrier(); world.any(flag); world.sum(values); world.gather(items)   # no-ops at size 1
    world.close()

`torchrun --nproc_per_node=N run_agent.py ...` starts N ranks (and `--nnodes` with a rendezvous
more on other machines). Each rank runs the whole training loop with its own envs and its own
replay, seeded apart (run_agent.py), and all ranks update in lockstep: every update is one step of
the same weights on the N batches of B sequences together. Without torchrun (no WORLD_SIZE in the
environment), or with a world size of 1, there is no process group and nothing here does anything.

What the ranks share, and how it stays the same on all of them:

- weights: rank 0's are broadcast once, at the start; from then on every rank takes the same
  optimiser steps from the same gradients, so the weights (and the optimisers' moments, and the
  slow critic that follows the critic) stay equal without being sent again;
- gradients: at the end of every backward pass that reached an optimiser's parameters, their
  gradients are summed over the ranks and divided by N, before the update clips them and steps.
  Every loss is a mean over its batch and every rank's batch has the same size, so this is the
  gradient one process would get from all N batches concatenated, clipped as it would clip it;
- the return normaliser: its percentiles are those of all ranks' imagined returns gathered
  together, as one process would take them over the whole batch;
- update metrics: the mean over ranks, so that every rank's `UpdateGuard` sees the same losses and
  gradient norms (a non-finite value on one rank makes the mean non-finite) and undoes the same
  updates, and the logged losses are those of the whole batch.

Collectives must be called by every rank in the same order: run_agent.py calls the helpers here
at the same env steps on every rank (its counters advance the same everywhere).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.autograd import Variable

from agent.returns import ReturnNormalizer

if TYPE_CHECKING:
    from agent.agent import Agent

# Rank 0 evaluates, records videos and writes the shared part of each checkpoint while the other
# ranks wait at their next collective: give that time (torch's default is 10 min for NCCL).
TIMEOUT = datetime.timedelta(minutes=60)


class WorldError(Exception):
    """torchrun's environment variables make no valid world (one line, naming the variable)."""


class RankLostError(Exception):
    """A collective failed: another rank died or hung (torchrun then stops the others)."""


@contextlib.contextmanager
def _collective(what: str) -> Iterator[None]:
    """Turn a failed collective into one `RankLostError` line (gloo and NCCL raise RuntimeError)."""
    try:
        yield
    except RuntimeError as err:
        # "[.../pair.cc:537] Read error [127.0.0.1]:38281: Connection reset by peer. This is..."
        reason = re.sub(r"^\[[^\]]*\]\s*", "", str(err).strip().splitlines()[0] if str(err).strip() else "")
        reason = reason.split(". ")[0] or type(err).__name__
        raise RankLostError(
            f"{what} with the other ranks failed ({reason}): another rank died or hung"
        ) from None


def _env_int(environ: Mapping[str, str], name: str, default: int) -> int:
    value = environ.get(name, str(default))
    try:
        return int(value)
    except ValueError:
        raise WorldError(f"environment variable {name}={value!r} is not an integer") from None


@dataclasses.dataclass(frozen=True)
class World:
    """This process's place among the ranks of a data-parallel run.

    Attributes:
        rank: 0 .. size - 1; rank 0 alone writes the run folder's logs and shared files.
        size: the number of ranks (torchrun's world size); 1 means a single process.
        local_rank: the rank on this machine, which picks its CUDA device.
        device: where the collectives' tensors live: cuda:<local_rank> under NCCL, else the CPU.
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> World:
        """The world torchrun describes in `environ`; a single process where it set nothing."""
        size = _env_int(environ, "WORLD_SIZE", 1)
        rank = _env_int(environ, "RANK", 0)
        local_rank = _env_int(environ, "LOCAL_RANK", 0)
        if size < 1:
            raise WorldError(f"environment variable WORLD_SIZE={size} must be at least 1")
        if not 0 <= rank < size:
            raise WorldError(f"environment variable RANK={rank} must be in [0, WORLD_SIZE={size})")
        return cls(rank, size, local_rank)

    @property
    def main(self) -> bool:
        """Whether this is rank 0, which logs, evaluates and writes what the ranks share."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def start(self, device: torch.device) -> World:
        """Join the process group of the ranks that train on `device`'s type (blocks until all
        have joined): NCCL for CUDA, with this rank on `device`; gloo for the CPU. The address of
        the rendezvous comes from torchrun (MASTER_ADDR, MASTER_PORT). At size 1: nothing."""
        if not self.distributed:
            return self
        if device.type == "cuda":
            torch.cuda.set_device(device)  # NCCL's and the object collectives' device
            dist.init_process_group("nccl", timeout=TIMEOUT)
            return dataclasses.replace(self, device=device)
        dist.init_process_group("gloo", timeout=TIMEOUT)
        return dataclasses.replace(self, device=torch.device("cpu"))

    def close(self) -> None:
        """Leave the process group (if this process joined one)."""
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()

    # ----- collectives: every rank calls them at the same point; at size 1 they only return ----

    def barrier(self) -> None:
        """Wait until every rank got here."""
        if self.distributed:
            with _collective("a barrier"):
                dist.barrier(device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def any(self, flag: bool) -> bool:
        """Whether `flag` is true on any rank."""
        if not self.distributed:
            return flag
        return bool(self.sum([float(flag)])[0] > 0)

    def sum(self, values: Sequence[float]) -> list[float]:
        """The element-wise sum of `values` over the ranks (each rank passes as many, in the same
        order). Float64: integer counts below 2**53 come back exact."""
        if not self.distributed:
            return [float(v) for v in values]
        buffer = torch.tensor(values, dtype=torch.float64, device=self.device)
        with _collective("a sum"):
            dist.all_reduce(buffer)
        return buffer.tolist()

    def max(self, value: Tensor) -> Tensor:
        """The max of a () tensor over the ranks (a new tensor; `value` itself at size 1)."""
        if not self.distributed:
            return value
        value = value.detach().clone()
        with _collective("a max"):
            dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return value

    def mean(self, metrics: Mapping[str, float]) -> dict[str, float]:
        """Each metric's mean over the ranks; every rank passes the same keys. A non-finite value
        on any rank makes that metric's mean non-finite."""
        if not self.distributed:
            return dict(metrics)
        keys = sorted(metrics)
        totals = self.sum([metrics[key] for key in keys])
        means = {key: total / self.size for key, total in zip(keys, totals)}
        return {key: means[key] for key in metrics}

    def gather(self, items: list[Any]) -> list[Any]:
        """Every rank's `items` (picklable), concatenated in rank order, on rank 0; [] elsewhere."""
        if not self.distributed:
            return list(items)
        lists: list[Any] | None = [None] * self.size if self.main else None
        with _collective("gathering episodes"):
            dist.gather_object(items, lists, dst=0)
        return [item for part in lists for item in part] if lists is not None else []

    def all_gather(self, tensor: Tensor) -> Tensor:
        """Every rank's `tensor` (the same shape on each), concatenated along axis 0 in rank order."""
        if not self.distributed:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.size)]
        with _collective("gathering returns"):
            dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    def broadcast(self, tensors: Iterable[Tensor]) -> None:
        """Overwrite `tensors`, in place, with rank 0's."""
        if self.distributed:
            with _collective("a broadcast"):
                for tensor in tensors:
                    dist.broadcast(tensor, src=0)


SINGLE = World()  # one process, no process group: the default wherever a world is passed


class GradientAverager:
    """Averages the gradients of fixed parameter sets over the ranks after every backward pass.

    A hook on each parameter notes which set a backward pass reached; when the pass ends (its
    gradients accumulated, before `backward()` returns, so before the caller clips and steps),
    every set it reached is averaged with one all-reduce over all its parameters. The whole set
    goes, in a fixed order, whether or not this rank's batch gave each parameter a gradient (a
    learned initial state gets none from a batch without episode starts): the ranks' collectives
    always match. A parameter with a gradient on no rank keeps none, as in one process.

    Each backward pass must reach the same sets on every rank: true of the agent's three losses
    (world model, actor, critic), which each reach one optimiser's parameters whatever the data.

    Args:
        world: the ranks; size > 1.
        sets: parameter sets, e.g. each optimiser's parameters.
    """

    def __init__(self, world: World, sets: Sequence[Sequence[nn.Parameter]]) -> None:
        self.world = world
        self.sets = [list(params) for params in sets]
        # Sets the running backward pass gave gradients to. A pass that raises leaves it set, but
        # the error ends the run (UpdateGuard passes it on).
        self.reached: set[int] = set()
        self.averaged = 0  # sets averaged so far
        for index, params in enumerate(self.sets):
            for param in params:
                param.register_post_accumulate_grad_hook(functools.partial(self._accumulated, index))

    def _accumulated(self, index: int, param: Tensor) -> None:
        if not self.reached:
            # The autograd engine runs queued callbacks once the whole pass is done (as DDP does).
            Variable._execution_engine.queue_callback(self._average)
        self.reached.add(index)

    def _average(self) -> None:
        reached, self.reached = sorted(self.reached), set()
        for index in reached:
            average_gradients(self.world, self.sets[index])
            self.averaged += 1


def average_gradients(world: World, params: Sequence[Tensor]) -> None:
    """Replace each parameter's gradient by its mean over the ranks (a missing one counts as 0).

    One all-reduce per dtype carries the gradients flattened and, after them, one count per
    parameter of the ranks that had a gradient for it: where no rank had one, `grad` stays None.
    Parameters are real floating point (the SSMs keep complex values as real and imaginary parts).
    """
    by_dtype: dict[torch.dtype, list[Tensor]] = {}
    for param in params:
        assert param.is_floating_point(), f"average_gradients: a {param.dtype} parameter"
        by_dtype.setdefault(param.dtype, []).append(param)
    for dtype, group in by_dtype.items():
        parts = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in group]
        had = [float(p.grad is not None) for p in group]
        flat = torch.cat([*parts, torch.tensor(had, dtype=dtype, device=parts[0].device)])
        with _collective("averaging gradients"):
            dist.all_reduce(flat)
        flat.div_(world.size)
        means = flat[: -len(group)].split([part.numel() for part in parts])
        for param, mean, count in zip(group, means, flat[-len(group) :].tolist()):
            if count == 0:
                continue  # no rank's batch reached it
            if param.grad is None:
                param.grad = mean.view(param.shape).clone()
            else:
                param.grad.copy_(mean.view(param.shape))


class SharedReturnNormalizer(ReturnNormalizer):
    """`ReturnNormalizer` whose percentiles are taken over every rank's returns together.

    All ranks imagine as many returns per update (the same config), gathered here before the
    percentiles: the EMAs move as one process's would on the whole batch, equal on every rank.
    The buffers (`low`, `high`) and their state-dict keys are those of `local`.
    """

    def __init__(self, local: ReturnNormalizer, world: World) -> None:
        super().__init__()
        self.decay, self.quantiles, self.min_scale = local.decay, local.quantiles, local.min_scale
        self.to(local.low.device)
        self.load_state_dict(local.state_dict())
        self.world = world

    @torch.no_grad()
    def update(self, returns: Tensor) -> None:
        """Move the EMAs towards the percentiles of all ranks' `returns` (any shape, float)."""
        super().update(self.world.all_gather(returns.detach().float().reshape(-1)))


def data_parallel(agent: Agent, world: World) -> GradientAverager | None:
    """Make `agent` train as one with its copies on the other ranks (module doc); call it on every
    rank right after building the agent, before loading a checkpoint into it.

    Returns the gradient averager (None at size 1, where the agent is left as it is).
    """
    if not world.distributed:
        return None
    modules = (agent.world_model, agent.actor_critic)
    world.broadcast(t for module in modules for t in module.state_dict().values())
    agent.actor_critic.retnorm = SharedReturnNormalizer(agent.actor_critic.retnorm, world)
    assert agent.world_model.opt is not None
    optimizers = (agent.world_model.opt, agent.actor_critic.actor_opt, agent.actor_critic.critic_opt)
    sets = [[p for group in opt.param_groups for p in group["params"]] for opt in optimizers]
    averager = GradientAverager(world, sets)
    agent.reduce_metrics = world.mean
    agent.world_model.reduce_max = world.max  # the reward unit (model.reward_norm) of all batches
    return averager
