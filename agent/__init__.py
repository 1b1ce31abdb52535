"""The learner: `Agent` (acting and training), actor-critic in imagination, λ-returns (docs/design.md §4)."""

from agent.actor_critic import ActorCritic
from agent.agent import Agent, build_world_model
from agent.checkpoint import CheckpointError, Progress, find_checkpoint, load_loop_state, save_checkpoint
from agent.logger import Episodes, Logger
from agent.returns import ReturnNormalizer, lambda_returns

__all__ = ["ActorCritic", "Agent", "ReturnNormalizer", "build_world_model", "lambda_returns"]
__all__ += [
    "CheckpointError",
    "Episodes",
    "Logger",
    "Progress",
    "find_checkpoint",
    "load_loop_state",
    "save_checkpoint",
]
