"""Build a run's `Config`: schema defaults, then YAML presets, then dotted overrides, then checks.

Order of precedence, lowest first:

1. the dataclass defaults of `configs.schema.Config` (these *are* the defaults; the preset name
   `defaults` is accepted and means "no preset");
2. each preset in the order given: `configs/presets/<name>.yaml`, or a path to a `.yaml` file. A
   preset may start with `extends: <name>` (or a list of names) to load other presets first;
3. dotted overrides `section.key=value`, parsed as YAML values (`agent.horizon=10`,
   `env.options={size: 64}`, `train.steps=1e6`).

Merging and type conversion are OmegaConf's (structured configs). This module adds what a run
needs on top: every problem raises `ConfigError` with a one-line message naming the key, preset
or override at fault (with a close-match suggestion), and `validate` checks `CHOICES` and ranges.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from collections.abc import Callable, Iterable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from configs.schema import CHOICES, Config, ModelConfig

PRESET_DIR = Path(__file__).parent / "presets"
DEFAULTS_ALIAS = "defaults"  # a preset name that loads nothing: the schema defaults are the defaults
EXTENDS_KEY = "extends"  # top-level preset key naming presets to load before this one
_YAML_SUFFIXES = (".yaml", ".yml")


class ConfigError(ValueError):
    """A bad preset, override or value; the message is one line and names the culprit."""

    def __init__(self, message: str) -> None:
        # Messages may embed text from YAML or OmegaConf errors, which span lines; keep one line
        # so a CLI can print it as is.
        super().__init__(" ".join(message.split()))


# ---------------------------------------------------------------------------------------------
# The schema as a table of dotted keys


@dataclasses.dataclass(frozen=True)
class _Schema:
    """Dotted keys of `Config`: leaf fields with their types, sections, and free-form dicts."""

    leaves: dict[str, type]  # e.g. "agent.horizon" -> int
    sections: frozenset[str]  # dataclass-typed fields, e.g. "agent"
    open_dicts: frozenset[str]  # dict-typed fields whose sub-keys are free, e.g. "env.options"

    def all_keys(self) -> list[str]:
        return [*self.leaves, *self.sections]


@cache
def _schema() -> _Schema:
    leaves: dict[str, type] = {}
    sections: set[str] = set()
    open_dicts: set[str] = set()

    def walk(cls: type, prefix: str) -> None:
        # get_type_hints resolves the string annotations that `from __future__ import annotations`
        # leaves in the schema module.
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            key = prefix + f.name
            hint = hints[f.name]
            origin = typing.get_origin(hint) or hint
            if dataclasses.is_dataclass(origin):
                sections.add(key)
                walk(origin, key + ".")
            elif origin is dict:
                open_dicts.add(key)
                leaves[key] = dict
            else:
                leaves[key] = origin

    walk(Config, "")
    return _Schema(leaves, frozenset(sections), frozenset(open_dicts))


def _suggest(key: str, candidates: Iterable[str]) -> str:
    """` (did you mean 'x'?)` for the closest candidate, or '' when nothing is close."""
    candidates = list(candidates)
    match = difflib.get_close_matches(key, candidates, n=1)
    if not match:
        # A right field name in the wrong section (`horizon` for `agent.horizon`).
        last = key.rsplit(".", 1)[-1]
        by_last = {c.rsplit(".", 1)[-1]: c for c in candidates}
        close = difflib.get_close_matches(last, list(by_last), n=1)
        match = [by_last[close[0]]] if close else []
    return f" (did you mean '{match[0]}'?)" if match else ""


# ---------------------------------------------------------------------------------------------
# Checking and merging one source (a preset file or one override)


def _type_name(t: type) -> str:
    return "a mapping" if t is dict else t.__name__


def _check_tree(tree: dict[str, Any], source: str, prefix: str = "") -> dict[str, Any]:
    """Check the keys of a nested dict against the schema; return it with light coercions.

    Coercions: an integral float for an int field (`steps: 1e6` in YAML reads as a float) becomes
    an int, and null for a string field becomes "" (an empty `logdir=` override).
    """
    schema = _schema()
    checked: dict[str, Any] = {}
    for name, value in tree.items():
        key = prefix + str(name)
        if key in schema.sections:
            if not isinstance(value, dict):
                raise ConfigError(
                    f"config key '{key}' is a section and expects a mapping, got {value!r} {source}"
                )
            value = _check_tree(value, source, key + ".")
        elif key in schema.leaves:
            expected = schema.leaves[key]
            if expected is dict and not isinstance(value, dict):
                raise ConfigError(f"config key '{key}' expects a mapping, got {value!r} {source}")
            if expected is not dict and isinstance(value, dict):
                raise ConfigError(
                    f"config key '{key}' expects {_type_name(expected)}, got a mapping {source}"
                )
            if expected is int and isinstance(value, float) and value.is_integer():
                value = int(value)
            if expected is str and value is None:
                value = ""
        else:
            raise ConfigError(f"unknown config key '{key}' {source}{_suggest(key, schema.all_keys())}")
        checked[name] = value
    return checked


def _merge(cfg: DictConfig, tree: dict[str, Any], source: str) -> DictConfig:
    """Merge a checked nested dict into `cfg`; OmegaConf converts and type-checks the values."""
    try:
        return OmegaConf.merge(cfg, _check_tree(tree, source))  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        key = e.full_key
        if key and key in _schema().leaves:
            expected = _type_name(_schema().leaves[key])
            raise ConfigError(f"config key '{key}' expects {expected}, got {e.value!r} {source}") from None
        raise ConfigError(f"{str(e).splitlines()[0]} {source}") from None


# ---------------------------------------------------------------------------------------------
# Presets


def list_presets() -> list[str]:
    """Names accepted as presets: `defaults` and every `configs/presets/<name>.yaml`, sorted."""
    return sorted([DEFAULTS_ALIAS, *(p.stem for p in PRESET_DIR.glob("*.yaml"))])


def _is_path(name: str) -> bool:
    return name.endswith(_YAML_SUFFIXES) or "/" in name or "\\" in name


def _preset_path(name: str, relative_to: Path | None) -> Path:
    """The YAML file a preset name or path refers to."""
    if _is_path(name):
        path = Path(name).expanduser()
        if not path.is_absolute() and relative_to is not None:
            path = relative_to / path
        if not path.is_file():
            raise ConfigError(f"preset file '{name}' not found")
        return path
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        available = ", ".join(list_presets())
        hint = _suggest(name, list_presets())
        raise ConfigError(
            f"unknown preset '{name}'{hint}; available: {available} (or a path to a .yaml file)"
        )
    return path


def _read_yaml(path: Path, label: str) -> dict[str, Any]:
    """A YAML file as a plain nested dict (empty file: {}); interpolations are kept unresolved."""
    try:
        loaded = OmegaConf.load(path)
    except (yaml.YAMLError, OmegaConfBaseException, OSError) as e:
        raise ConfigError(f"{label} is not valid YAML: {e}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{label} must be a mapping of config keys, got a list")
    return OmegaConf.to_container(loaded, resolve=False)  # type: ignore[return-value]


def _apply_preset(
    cfg: DictConfig, name: str, relative_to: Path | None = None, chain: tuple[Path, ...] = ()
) -> DictConfig:
    """Merge preset `name` (after the presets it extends) into `cfg`."""
    if name == DEFAULTS_ALIAS:
        return cfg
    path = _preset_path(name, relative_to).resolve()
    label = f"preset '{name}'"
    if path in chain:
        raise ConfigError(f"{label} extends itself (through {' -> '.join(p.stem for p in chain)})")
    tree = _read_yaml(path, label)
    bases = tree.pop(EXTENDS_KEY, [])
    for base in [bases] if isinstance(bases, str) else bases:
        if not isinstance(base, str):
            raise ConfigError(f"'{EXTENDS_KEY}' in {label} expects preset names, got {base!r}")
        cfg = _apply_preset(cfg, base, path.parent, (*chain, path))
    return _merge(cfg, tree, f"in {label}")


# ---------------------------------------------------------------------------------------------
# Overrides


def _apply_override(cfg: DictConfig, override: str) -> DictConfig:
    """Merge one `section.key=value` override into `cfg`."""
    key, sep, _ = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"malformed override '{override}': expected key=value, e.g. agent.horizon=10")
    try:
        tree = OmegaConf.to_container(OmegaConf.from_dotlist([override]), resolve=False)
    except (yaml.YAMLError, OmegaConfBaseException) as e:
        raise ConfigError(f"malformed override '{override}': {e}") from None
    return _merge(cfg, tree, f"in override '{override}'")  # type: ignore[arg-type]


def _apply_overrides(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """Merge overrides in order, each on its own so an error names the one at fault."""
    if isinstance(overrides, str):
        # A bare string would be iterated character by character.
        raise ConfigError(f"overrides must be a list of key=value strings, got the string {overrides!r}")
    for override in overrides:
        cfg = _apply_override(cfg, override)
    return cfg


# ---------------------------------------------------------------------------------------------
# Validation of a finished config

# Ranges of single fields: key -> (predicate, what the message says the value must be).
_POSITIVE = (lambda v: v > 0, "> 0")
_NON_NEGATIVE = (lambda v: v >= 0, ">= 0")
_RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    **{
        key: _POSITIVE
        for key in (
            "env.num_envs",
            "env.eval_envs",
            "replay.capacity",
            "replay.chunk_steps",
            "model.stoch_groups",
            "model.stoch_classes",
            "model.hidden",
            "model.units",
            "model.mlp_units",
            "model.latent_layers",
            "model.cnn_depth",
            "model.cnn_stages",
            "model.lr",
            "model.eps",
            "model.grad_clip",
            "s3m.layers",
            "s3m.state_size",
            "s3m.width",
            "s3m.blocks",
            "s3m.dt_min",
            "agent.horizon",
            "agent.units",
            "agent.actor_lr",
            "agent.critic_lr",
            "agent.eps",
            "agent.grad_clip",
            "agent.return_norm_floor",
            "train.steps",
            "train.train_ratio",
            "train.batch_size",
            "train.seq_len",
            "train.log_every",
            "train.max_skipped_updates",
        )
    },
    **{
        key: _NON_NEGATIVE
        for key in (
            "seed",
            "threads",
            "agent.imag_starts",
            "model.mlp_layers",
            "model.head_layers",
            "model.dyn_scale",
            "model.rep_scale",
            "model.free_nats",
            "model.image_scale",
            "model.vector_scale",
            "model.reward_scale",
            "model.cont_scale",
            "model.weight_decay",
            "agent.layers",
            "agent.entropy",
            "agent.slow_critic_reg",
            "train.prefill",
            "train.eval_every",
            "train.eval_episodes",
            "train.checkpoint_every",
            "train.video_every",
            "env.worker_timeout",
            "env.max_restarts",
        )
    },
    # Two-hot encoding spreads a value over two neighbouring bins, so it needs at least two.
    "model.reward_bins": (lambda v: v >= 2, ">= 2"),
    "agent.critic_bins": (lambda v: v >= 2, ">= 2"),
    # A mixture weight of 1 would make the distribution uniform and ignore the network.
    "model.unimix": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "agent.actor_unimix": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "s3m.dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "agent.discount": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "agent.return_lambda": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "agent.slow_critic_fraction": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "agent.return_norm_decay": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "agent.return_norm_low": (lambda v: 0 <= v <= 100, "a percentile in [0, 100]"),
    "agent.return_norm_high": (lambda v: 0 <= v <= 100, "a percentile in [0, 100]"),
}


def _get(cfg: Config, key: str) -> Any:
    value: Any = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def validate(cfg: Config) -> None:
    """Check types, `CHOICES`, ranges and cross-field rules; raise `ConfigError` on the first problem."""
    try:
        OmegaConf.structured(cfg)  # type check of a Config built or edited in Python
    except OmegaConfBaseException as e:
        raise ConfigError(f"config key '{e.full_key}' has a bad value: {str(e).splitlines()[0]}") from None
    for key, allowed in CHOICES.items():
        value = _get(cfg, key)
        if value not in allowed:
            options = ", ".join(allowed)
            raise ConfigError(
                f"config key '{key}' must be one of {options}; got {value!r}{_suggest(str(value), allowed)}"
            )
    for key, expected in _schema().leaves.items():
        # NaN fails every range check, but inf passes `> 0`: no knob means anything at either.
        value = _get(cfg, key)
        if expected is float and isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"config key '{key}' must be a finite number, got {value!r}")
    for key, (ok, must_be) in _RANGES.items():
        value = _get(cfg, key)
        if not ok(value):
            raise ConfigError(f"config key '{key}' must be {must_be}, got {value!r}")
    s3m, agent = cfg.s3m, cfg.agent
    if not s3m.dt_min < s3m.dt_max:
        raise ConfigError(f"config key 's3m.dt_min' ({s3m.dt_min}) must be below s3m.dt_max ({s3m.dt_max})")
    if s3m.state_size % s3m.blocks:
        # HiPPO-N is initialised as `blocks` equal diagonal blocks of the P-dimensional state.
        raise ConfigError(
            f"config key 's3m.state_size' ({s3m.state_size}) must be divisible by s3m.blocks ({s3m.blocks})"
        )
    if not agent.return_norm_low < agent.return_norm_high:
        raise ConfigError(
            f"config key 'agent.return_norm_low' ({agent.return_norm_low}) must be below "
            f"agent.return_norm_high ({agent.return_norm_high})"
        )
    if cfg.replay.capacity // cfg.env.num_envs < cfg.train.seq_len:
        # Each env's stream gets capacity // num_envs steps and a sequence comes from one stream.
        raise ConfigError(
            f"config key 'replay.capacity' ({cfg.replay.capacity}) must hold at least one sequence "
            f"of train.seq_len ({cfg.train.seq_len}) steps per env (env.num_envs={cfg.env.num_envs})"
        )


# ---------------------------------------------------------------------------------------------
# Public entry points


def _finish(cfg: DictConfig) -> Config:
    """Resolve interpolations, convert to the `Config` dataclass and validate it."""
    try:
        result = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(f"config key '{e.full_key}' cannot be resolved: {str(e).splitlines()[0]}") from None
    assert isinstance(result, Config), f"expected a Config, got {type(result).__name__}"
    validate(result)
    return result


def _split_names(presets: Sequence[str] | str) -> list[str]:
    # "popgym,cpu" and ["popgym", "cpu"] mean the same, so a CLI can pass its flag through.
    items = [presets] if isinstance(presets, str) else list(presets)
    return [name.strip() for item in items for name in item.split(",") if name.strip()]


def load_config(presets: Sequence[str] | str = (), overrides: Sequence[str] = ()) -> Config:
    """The config of a run: schema defaults, then `presets` in order, then `overrides` in order.

    Args:
        presets: preset names (see `list_presets`) or paths to YAML files; comma-separated lists
            are split, so `["popgym,cpu"]` equals `["popgym", "cpu"]`. Later presets win.
        overrides: dotted `key=value` strings, values parsed as YAML; later overrides win.

    Raises:
        ConfigError: an unknown preset, unknown key, malformed override, badly typed value, a value
            outside `CHOICES` or a value out of range; the one-line message names it.
    """
    cfg: DictConfig = OmegaConf.structured(Config)
    for name in _split_names(presets):
        cfg = _apply_preset(cfg, name)
    return _finish(_apply_overrides(cfg, overrides))


# Fields added after runs were saved: for a saved config without one, the value that builds the
# model the run trained (then, h_t was as wide as the SSM, the vector encoder as wide as the
# heads, the posterior and prior as deep as the encoder, and B̃, C̃ drawn at unit scale).
_SAVED_BEFORE: dict[str, Callable[[dict[str, Any]], Any]] = {
    "s3m.width": lambda saved: saved.get("model", {}).get("hidden", ModelConfig.hidden),
    "model.mlp_units": lambda saved: saved.get("model", {}).get("units", ModelConfig.units),
    "model.latent_layers": lambda saved: saved.get("model", {}).get("mlp_layers", ModelConfig.mlp_layers),
    "s3m.bc_init": lambda saved: "unit",
}


# Fields renamed since runs were saved: old name -> new name (same meaning and value).
_RENAMED = {"agent.return_norm_max": "agent.return_norm_floor"}


def _fill_saved_before(saved: dict[str, Any]) -> dict[str, Any]:
    """`saved` with renamed fields under their new names (`_RENAMED`) and the fields of
    `_SAVED_BEFORE` it lacks set to their earlier behaviour."""
    filled = {
        section: dict(values) if isinstance(values, dict) else values for section, values in saved.items()
    }
    for old, new in _RENAMED.items():
        (section, old_name), (_, new_name) = old.split("."), new.split(".")
        values = filled.get(section)
        if isinstance(values, dict) and old_name in values:
            values.setdefault(new_name, values.pop(old_name))
    for key, value in _SAVED_BEFORE.items():
        section, name = key.split(".")
        if isinstance(filled.get(section, {}), dict) and name not in filled.get(section, {}):
            filled.setdefault(section, {})[name] = value(saved)
    return filled


def load_config_file(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Read a config written by `save_config` (for resuming or evaluating a run), then `overrides`.

    Keys missing from the file take the schema defaults, so a run saved before a field was added
    still loads, except the fields of `_SAVED_BEFORE`, which keep the model such a run trained;
    an unknown key is an error, as in a preset.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' not found")
    cfg: DictConfig = OmegaConf.structured(Config)
    saved = _fill_saved_before(_read_yaml(path, f"config file '{path}'"))
    cfg = _merge(cfg, saved, f"in config file '{path}'")
    return _finish(_apply_overrides(cfg, overrides))


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (every key, so the file alone reproduces the run)."""
    validate(cfg)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "# Resolved config of a run; read it back with configs.load_config_file.\n"
    path.write_text(header + OmegaConf.to_yaml(OmegaConf.structured(cfg)))


def config_to_dict(cfg: Config, flat: bool = False) -> dict[str, Any]:
    """The config as plain Python values for logging: nested dicts, or `{"agent.horizon": 15, ...}`."""
    nested = dataclasses.asdict(cfg)
    if not flat:
        return nested
    out: dict[str, Any] = {}

    def walk(tree: dict[str, Any], prefix: str) -> None:
        for name, value in tree.items():
            if isinstance(value, dict) and value:
                walk(value, f"{prefix}{name}.")
            else:
                out[prefix + name] = value

    walk(nested, "")
    return out
