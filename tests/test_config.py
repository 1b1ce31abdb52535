"""Config loading: schema defaults, presets, overrides, errors and the saved-config round trip."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from configs import (
    CHOICES,
    Config,
    ConfigError,
    config_to_dict,
    list_presets,
    load_config,
    load_config_file,
    save_config,
    validate,
)
from configs.loader import PRESET_DIR

# Size presets set widths only; `debug` and `cpu` are a size (tiny's, for cpu) with a run's scale.
SIZES = ["tiny", "small", "medium", "large"]
SCALES = ["debug", "cpu"]
DOMAINS = [
    *("popgym", "bsuite", "memory_maze", "atari", "atari100k"),
    *("dmc_proprio", "dmc_vision", "minigrid", "gym"),
]
# Recipes: presets built on others with `extends`, holding the CPU settings of docs/results.md.
RECIPES = {
    "memory_cpu": None,
    "bsuite_cpu": "bsuite",
    "popgym_cpu": "popgym",
    "bsuite_check_cpu": "bsuite",
    "gym_cpu": "gym",
    "dmc_cpu": "dmc_proprio",
    "pixels_cpu": None,
    "dmc_vision_cpu": "dmc_vision",
    "atari_cpu": "atari100k",
    "memory_maze_cpu": "memory_maze",
}


def _error(presets: list[str] | str = (), overrides: list[str] = ()) -> str:
    """The message of the ConfigError that loading raises; it must be a single line."""
    with pytest.raises(ConfigError) as info:
        load_config(presets, overrides)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def _flat_keys(tree: dict, prefix: str = "") -> set[str]:
    keys = set()
    for name, value in tree.items():
        if isinstance(value, dict) and name != "options":
            keys |= _flat_keys(value, f"{prefix}{name}.")
        else:
            keys.add(prefix + name)
    return keys


def _preset_yaml(name: str) -> dict:
    return yaml.safe_load((PRESET_DIR / f"{name}.yaml").read_text()) or {}


# ---------------------------------------------------------------------------------------------
# Defaults and presets


def test_defaults_are_the_schema_defaults():
    assert load_config() == Config()
    assert load_config(["defaults"]) == Config()


def test_list_presets_names_every_file():
    assert set(list_presets()) == {"defaults", *DOMAINS, *SIZES, *SCALES, *RECIPES}


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipes_keep_their_domain_and_the_cpu_size(recipe):
    """A recipe changes the `cpu` size and its domain's task only where its own YAML says so."""
    domain = RECIPES[recipe]
    cfg = load_config([recipe])
    base = load_config([*([domain] if domain else []), "cpu"])
    assert cfg.env.name == base.env.name and cfg.agent.policy_input == base.agent.policy_input
    assert cfg.model.hidden == base.model.hidden and cfg.s3m == base.s3m
    # Every setting that differs from domain + cpu is one the recipe or a preset it extends writes.
    written: set[str] = set()
    stack = [recipe]
    while stack:
        tree = _preset_yaml(stack.pop())
        bases = tree.pop("extends", [])
        stack += [b for b in ([bases] if isinstance(bases, str) else bases) if b not in (domain, "cpu")]
        written |= _flat_keys(tree)
    changed = {
        f"{section}.{key}"
        for section, values in config_to_dict(cfg).items()
        if isinstance(values, dict)
        for key, value in values.items()
        if config_to_dict(base)[section][key] != value
    }
    assert changed and changed <= written, (recipe, changed - written)


def test_memory_recipes_share_memory_cpu():
    memory = load_config(["memory_cpu"])
    for recipe in ("bsuite_cpu", "popgym_cpu"):
        cfg = load_config([recipe])
        assert (cfg.model.stoch_groups, cfg.model.reward_head, cfg.model.rep_scale) == (4, "symlog_mse", 0.0)
        assert cfg.agent.imag_starts == memory.agent.imag_starts


@pytest.mark.parametrize("name", sorted(set(list_presets()) - {"defaults"}))
def test_preset_files_start_with_a_comment(name):
    assert (PRESET_DIR / f"{name}.yaml").read_text().startswith("#"), f"{name}.yaml: say what it is for"


@pytest.mark.parametrize("domain", DOMAINS)
def test_each_domain_loads_alone_and_with_each_size(domain):
    alone = load_config([domain])
    assert alone != Config()
    for size in SIZES + SCALES:
        cfg = load_config([domain, size])
        # Domain keys survive a size preset; size keys come from the size preset.
        assert cfg.env.name == alone.env.name
        assert cfg.agent.policy_input == alone.agent.policy_input
        assert cfg.model.hidden == load_config([size]).model.hidden


@pytest.mark.parametrize("size", SIZES + SCALES)
def test_each_size_loads_alone(size):
    cfg = load_config([size])
    assert cfg.env.name == Config().env.name  # a size preset leaves the task alone


def test_size_presets_set_the_same_size_keys():
    """So the last size preset given decides every size, whatever came before."""
    gpu_keys = _flat_keys(_preset_yaml("small"))
    for size in SIZES:  # those keys and nothing else
        assert _flat_keys(_preset_yaml(size)) == gpu_keys, size
    assert gpu_keys <= _flat_keys(_preset_yaml("debug"))
    cpu = config_to_dict(load_config(["cpu"]), flat=True)
    tiny = config_to_dict(load_config(["tiny"]), flat=True)
    assert all(cpu[key] == tiny[key] for key in gpu_keys)
    # Size presets must not set what a domain is about.
    for size in SIZES + SCALES:
        assert not {"env.name", "agent.policy_input"} & _flat_keys(_preset_yaml(size)), size


# Reference settings per domain (docs/design.md §7): K, P, H (the SSM width), train ratio, B, T, policy input.
REFERENCE = {
    "memory_maze": (5, 512, 1024, 64, 4, 1024, "full"),
    "popgym": (5, 512, 1024, 64, 4, 1024, "hidden"),
    "bsuite": (3, 128, 512, 1024, 16, 256, "hidden"),
    "atari": (4, 128, 512, 1024, 4, 1024, "output"),
    "atari100k": (4, 128, 512, 1024, 4, 1024, "output"),
    "dmc_proprio": (4, 128, 512, 512, 4, 1024, "output"),
    "dmc_vision": (4, 128, 512, 512, 4, 1024, "output"),
}


@pytest.mark.parametrize("domain", sorted(REFERENCE))
def test_domain_presets_hold_the_reference_settings(domain):
    cfg = load_config([domain])
    got = (
        cfg.s3m.layers,
        cfg.s3m.state_size,
        cfg.s3m.width,
        cfg.train.train_ratio,
        cfg.train.batch_size,
        cfg.train.seq_len,
        cfg.agent.policy_input,
    )
    assert got == REFERENCE[domain]


def test_domain_specifics():
    maze = load_config(["memory_maze"])
    assert (maze.env.num_envs, maze.model.dyn_scale, maze.model.rep_scale) == (40, 0.8, 0.2)
    assert (maze.model.lr, maze.model.weight_decay, maze.model.grad_clip) == (3e-4, 1e-2, 200.0)
    assert maze.agent.entropy == 1e-3 and maze.train.steps == 400_000_000
    assert load_config(["bsuite"]).s3m.discretization == "zoh"
    assert load_config(["popgym"]).env.num_envs == 8
    assert load_config(["dmc_proprio"]).train.steps == 500_000
    assert load_config(["dmc_vision"]).train.steps == 1_000_000


def test_extends_loads_the_base_first():
    atari, a100k = load_config(["atari"]), load_config(["atari100k"])
    assert a100k.train.steps == 100_000 and a100k.env.num_envs == 1
    assert a100k.model == atari.model and a100k.s3m == atari.s3m and a100k.env.name == atari.env.name


def test_extends_cycle_is_an_error(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    assert "extends itself" in _error([str(tmp_path / "a.yaml")])


def test_presets_apply_in_order_and_comma_lists_split():
    assert load_config(["popgym", "cpu"]) == load_config("popgym,cpu") == load_config(["popgym,cpu"])
    assert load_config(["cpu", "small"]).model.hidden == 512
    assert load_config(["small", "cpu"]).model.hidden == 128


def test_preset_given_as_a_path(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("agent:\n  horizon: 7\ntrain:\n  steps: 2e4  # an integral float is an int\n")
    cfg = load_config(["popgym", str(path)])
    assert cfg.agent.horizon == 7 and cfg.train.steps == 20_000 and cfg.env.num_envs == 8


def test_empty_preset_file_changes_nothing(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing yet\n")
    assert load_config([str(path)]) == Config()


# ---------------------------------------------------------------------------------------------
# Overrides


def test_overrides_convert_types_and_win_over_presets():
    cfg = load_config(
        ["popgym"],
        [
            "agent.horizon=10",
            "train.train_ratio=32",
            "train.steps=1e6",
            "model.lr=3e-4",
            "replay.store_state=true",
            "env.name=bsuite:memory_len/0",
            "env.num_envs=2",
            "env.options={size: 32}",
            "logdir=",
        ],
    )
    assert cfg.agent.horizon == 10 and isinstance(cfg.agent.horizon, int)
    assert cfg.train.train_ratio == 32.0 and isinstance(cfg.train.train_ratio, float)
    assert cfg.train.steps == 1_000_000 and isinstance(cfg.train.steps, int)
    assert cfg.model.lr == 3e-4
    assert cfg.replay.store_state is True
    assert cfg.env.name == "bsuite:memory_len/0" and cfg.env.num_envs == 2
    assert cfg.env.options == {"size": 32}
    assert cfg.logdir == ""


def test_later_override_wins():
    assert load_config(overrides=["seed=1", "seed=2"]).seed == 2


# ---------------------------------------------------------------------------------------------
# Errors: one line, naming the culprit


def test_unknown_key_in_override_suggests_the_right_one():
    message = _error(overrides=["agent.horizn=3"])
    assert "unknown config key 'agent.horizn'" in message and "'agent.horizon'" in message
    assert "'agent.horizon'" in _error(overrides=["horizon=3"])  # right name, wrong section


def test_unknown_key_in_preset_names_key_and_preset(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("model:\n  hiden: 64\n")
    message = _error([str(path)])
    assert "'model.hiden'" in message and "typo.yaml" in message and "'model.hidden'" in message


@pytest.mark.parametrize(
    "override, key, expected",
    [
        ("train.steps=abc", "train.steps", "int"),
        ("train.steps=1.5", "train.steps", "int"),
        ("model.unimix=abc", "model.unimix", "float"),
        ("replay.store_state=maybe", "replay.store_state", "bool"),
        ("seed=null", "seed", "int"),
        ("agent.horizon.x=1", "agent.horizon", "int"),
        ("env.options=3", "env.options", "a mapping"),
    ],
)
def test_bad_type_names_key_and_type(override, key, expected):
    message = _error(overrides=[override])
    assert f"config key '{key}' expects {expected}" in message


def test_section_given_a_value():
    assert "config key 'agent' is a section" in _error(overrides=["agent=3"])


@pytest.mark.parametrize("key", sorted(CHOICES))
def test_value_outside_choices(key):
    message = _error(overrides=[f"{key}=nonsense"])
    assert f"config key '{key}' must be one of" in message and "'nonsense'" in message


def test_choice_typo_is_suggested():
    assert "did you mean 'chunked'" in _error(overrides=["s3m.scan=chunkd"])


def test_unknown_preset_lists_the_available_ones():
    message = _error(["popgm"])
    assert "unknown preset 'popgm'" in message and "did you mean 'popgym'" in message
    assert all(name in message for name in list_presets())
    assert "not found" in _error(["no/such/file.yaml"])


@pytest.mark.parametrize("override", ["agent.horizon", "=3", ""])
def test_malformed_override(override):
    message = _error(overrides=[override])
    assert message.startswith(f"malformed override '{override}'")


def test_overrides_as_a_bare_string_is_an_error():
    assert "list of key=value" in _error(overrides="seed=1")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.unimix=1.0", "model.unimix"),
        ("agent.discount=0", "agent.discount"),
        ("agent.discount=1.5", "agent.discount"),
        ("train.batch_size=0", "train.batch_size"),
        ("model.hidden=-4", "model.hidden"),
        ("agent.entropy=-1e-3", "agent.entropy"),
        ("agent.imag_starts=-1", "agent.imag_starts"),
        ("s3m.dt_min=0.5", "s3m.dt_min"),
        ("s3m.blocks=3", "s3m.state_size"),
        ("agent.return_norm_low=99", "agent.return_norm_low"),
        ("replay.capacity=10", "replay.capacity"),
    ],
)
def test_out_of_range_names_key(override, key):
    message = _error(overrides=[override])
    assert message.startswith(f"config key '{key}'") and " must " in message


def test_validate_checks_a_config_built_in_python():
    cfg = Config()
    cfg.agent.policy_input = "everything"
    with pytest.raises(ConfigError, match="agent.policy_input"):
        validate(cfg)
    cfg = Config()
    cfg.train.steps = "many"  # type: ignore[assignment]
    with pytest.raises(ConfigError, match="train.steps"):
        validate(cfg)


def test_bad_yaml_is_one_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("agent: [1,\n")
    assert "not valid YAML" in _error([str(path)])
    path.write_text("- a\n- b\n")
    assert "must be a mapping" in _error([str(path)])


# ---------------------------------------------------------------------------------------------
# Saving, reading back, logging


@pytest.mark.parametrize("presets", [[], ["memory_maze", "debug"], ["dmc_vision", "cpu"]])
def test_save_and_load_round_trip(tmp_path, presets):
    cfg = load_config(presets, ["env.options={size: 64, camera: 2}", "model.lr=3e-5", "logdir=runs/x"])
    path = tmp_path / "run" / "config.yaml"
    save_config(cfg, path)
    assert load_config_file(path) == cfg
    assert load_config_file(path, ["seed=3"]).seed == 3


def test_run_saved_before_the_r2i_fields_keeps_its_model(tmp_path):
    """A config saved before `s3m.width`, `model.mlp_units`, `model.latent_layers` and
    `s3m.bc_init` existed resumes the model it trained, not one built from the new defaults."""
    cfg = load_config(["popgym_cpu"])
    path = tmp_path / "config.yaml"
    save_config(cfg, path)
    saved = yaml.safe_load(path.read_text())
    for section, name in (
        ("s3m", "width"),
        ("model", "mlp_units"),
        ("model", "latent_layers"),
        ("s3m", "bc_init"),
    ):
        del saved[section][name]
    path.write_text(yaml.safe_dump(saved))
    old = load_config_file(path)
    assert old.s3m.width == cfg.model.hidden and old.model.mlp_units == cfg.model.units
    assert old.model.latent_layers == cfg.model.mlp_layers == 2 and old.s3m.bc_init == "unit"
    # Overrides still win, and a current config keeps what it says.
    assert load_config_file(path, ["s3m.bc_init=r2i"]).s3m.bc_init == "r2i"
    save_config(cfg, path)
    assert load_config_file(path) == cfg


def test_run_saved_under_a_field_s_old_name_loads_under_the_new_one(tmp_path):
    cfg = load_config([], ["agent.return_norm_floor=2.5"])
    path = tmp_path / "config.yaml"
    save_config(cfg, path)
    saved = yaml.safe_load(path.read_text())
    saved["agent"]["return_norm_max"] = saved["agent"].pop("return_norm_floor")
    path.write_text(yaml.safe_dump(saved))
    assert load_config_file(path) == cfg


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config_file(tmp_path / "missing.yaml")
    path = tmp_path / "config.yaml"
    path.write_text("train:\n  stepz: 3\n")
    with pytest.raises(ConfigError, match=r"'train\.stepz'.*'train\.steps'"):
        load_config_file(path)


def test_config_to_dict():
    cfg = load_config(["popgym"], ["env.options={size: 8}"])
    nested = config_to_dict(cfg)
    assert nested == dataclasses.asdict(cfg) and nested["agent"]["policy_input"] == "hidden"
    flat = config_to_dict(cfg, flat=True)
    assert flat["agent.horizon"] == 15 and flat["env.options.size"] == 8 and flat["seed"] == 0
    assert all(not isinstance(v, dict) or not v for v in flat.values())


def test_package_exports():
    import configs

    assert callable(configs.load_config) and issubclass(configs.ConfigError, ValueError)
    assert Path(configs.loader.__file__).parent / "presets" == PRESET_DIR
