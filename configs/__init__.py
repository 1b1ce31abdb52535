"""Run configuration: the typed schema, YAML presets per domain and size, and the loader.

`load_config(["popgym", "cpu"], ["agent.horizon=10"])` returns a validated `Config`.
"""

from configs.loader import (
    ConfigError,
    config_to_dict,
    list_presets,
    load_config,
    load_config_file,
    save_config,
    validate,
)
from configs.schema import (
    CHOICES,
    AgentConfig,
    Config,
    EnvConfig,
    ModelConfig,
    ReplayConfig,
    RSSMConfig,
    S3MConfig,
    TrainConfig,
)

__all__ = [
    "CHOICES",
    "AgentConfig",
    "Config",
    "ConfigError",
    "EnvConfig",
    "ModelConfig",
    "ReplayConfig",
    "RSSMConfig",
    "S3MConfig",
    "TrainConfig",
    "config_to_dict",
    "list_presets",
    "load_config",
    "load_config_file",
    "save_config",
    "validate",
]
