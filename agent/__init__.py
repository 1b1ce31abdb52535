"""The learner: `Agent` (acting and training), actor-critic in imagination, λ-returns (docs/design.md §4)."""

from agent.actor_critic import ActorCritic
from agent.agent import Agent, build_world_model
from agent.returns import ReturnNormalizer, lambda_returns

__all__ = ["ActorCritic", "Agent", "ReturnNormalizer", "build_world_model", "lambda_returns"]
