"""Environments behind one interface: `make_env('suite:task', seed, **options)` and `VectorEnv`.

Every env speaks the data contract of docs/architecture.md: a Dict observation with `image`
uint8 (h, w, c) and/or `vector` float32 (d,), Discrete(n) or Box(-1, 1, (A,)) actions, and
`terminated` (true end) kept apart from `truncated` (time limit).
"""

from envs.errors import EnvError
from envs.factory import SUITES, make_env
from envs.vector import VectorEnv

__all__ = ["SUITES", "EnvError", "VectorEnv", "make_env"]
