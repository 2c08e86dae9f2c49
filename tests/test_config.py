"""Run configuration: configs/tiny.yaml, documentation of every field, validation messages, --set overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from htgrpo.config import Config, load_config, parse_override
from htgrpo.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"


def write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load_error(path: Path | None, overrides: tuple[str, ...] = ()) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return str(info.value)


# --- the shipped config and the field documentation ---------------------------------------------------


def test_tiny_yaml_loads():
    cfg = load_config(TINY)
    assert isinstance(cfg, Config)
    assert (cfg.backbone.kind, cfg.backbone.d_model, cfg.backbone.n_layers, cfg.backbone.n_heads) == (
        "tiny",
        192,
        6,
        6,
    )
    assert cfg.tokenizer.codebook_size == 512
    assert cfg.world.grid == 5 and cfg.world.seed == 0 and cfg.world.background == "themes"
    assert cfg.sampler.kind == "maskgit" and cfg.sampler.steps == 12
    assert cfg.pretrain.lr == pytest.approx(0.0015)
    assert cfg.storage.uri == "file://checkpoints"


def _walk(model: type[BaseModel], prefix: str = ""):
    for name, field in model.model_fields.items():
        yield f"{prefix}{name}", field
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _walk(ann, f"{prefix}{name}.")


def test_every_field_is_documented():
    fields = list(_walk(Config))
    # the walk reaches into every section, not just the top level
    sections = {name for name, _ in fields if "." not in name}
    assert {
        "backbone",
        "tokenizer",
        "world",
        "sampler",
        "pretrain",
        "eval",
        "storage",
        "tracking",
    } <= sections
    assert len(fields) > 40
    undocumented = [name for name, field in fields if not (field.description or "").strip()]
    assert undocumented == []


# --- unknown keys ---------------------------------------------------------------------------------------


def test_unknown_top_level_key_names_file_and_key(tmp_path):
    path = write(tmp_path, "sampler:\n  steps: 4\nsamplr:\n  steps: 4\n")
    msg = load_error(path)
    assert str(path) in msg
    assert "samplr" in msg
    assert "unknown key" in msg


def test_unknown_nested_key_names_file_and_key_path(tmp_path):
    path = write(tmp_path, "sampler:\n  stepz: 3\n")
    msg = load_error(path)
    assert str(path) in msg
    assert "sampler.stepz" in msg
    assert "unknown key" in msg


# --- bad values -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("yaml_text", "key", "value"),
    [
        ("sampler:\n  steps: -3\n", "sampler.steps", "-3"),
        ("pretrain:\n  batch_size: lots\n", "pretrain.batch_size", "'lots'"),
        ("sampler:\n  kind: greedy\n", "sampler.kind", "'greedy'"),
        ("tokenizer:\n  codebook_size: 4\n", "tokenizer.codebook_size", "4"),
        ("pretrain:\n  cond_dropout: 1.5\n", "pretrain.cond_dropout", "1.5"),
    ],
)
def test_bad_value_names_key_and_value(tmp_path, yaml_text, key, value):
    path = write(tmp_path, yaml_text)
    msg = load_error(path)
    assert str(path) in msg
    assert f"{key}:" in msg
    assert f"(got {value})" in msg


def test_unknown_task_in_task_weights(tmp_path):
    path = write(tmp_path, "world:\n  task_weights:\n    juggling: 1.0\n")
    msg = load_error(path)
    assert str(path) in msg
    assert "task_weights" in msg
    assert "'juggling'" in msg


@pytest.mark.parametrize(
    "yaml_text, cause",
    [
        ("pretrain:\n  task_weights:\n    juggling: 1.0\n", "'juggling'"),
        ("pretrain:\n  task_weights:\n    counting: -1\n", "task_weights.counting: must be >= 0"),
        ("pretrain:\n  task_weights:\n    counting: 0\n", "at least one task needs a positive weight"),
    ],
)
def test_bad_pretrain_task_weights_are_named(tmp_path, yaml_text, cause):
    path = write(tmp_path, yaml_text)
    msg = load_error(path)
    assert str(path) in msg
    assert "pretrain.task_weights" in msg
    assert cause in msg


def test_d_model_not_divisible_by_heads(tmp_path):
    path = write(tmp_path, "backbone:\n  d_model: 100\n  n_heads: 6\n")
    msg = load_error(path)
    assert str(path) in msg
    assert "backbone" in msg
    assert "d_model=100" in msg and "n_heads=6" in msg


def test_valid_values_are_accepted(tmp_path):
    path = write(
        tmp_path, "backbone:\n  d_model: 96\n  n_heads: 4\nworld:\n  task_weights:\n    counting: 2\n"
    )
    cfg = load_config(path)
    assert cfg.backbone.d_model == 96 and cfg.backbone.n_heads == 4
    assert cfg.world.task_weights == {"counting": 2.0}


# --- --set overrides ----------------------------------------------------------------------------------------


def test_overrides_are_yaml_typed_and_nested():
    cfg = load_config(
        TINY,
        [
            "sampler.steps=3",
            "sampler.cfg_scale=0.5",
            "sampler.kind=emerge",
            "tracking.enabled=true",
            "pretrain.time_budget_min=null",
            "world.task_weights.counting=2",
        ],
    )
    assert cfg.sampler.steps == 3 and isinstance(cfg.sampler.steps, int)
    assert cfg.sampler.cfg_scale == 0.5
    assert cfg.sampler.kind == "emerge"
    assert cfg.tracking.enabled is True
    assert cfg.pretrain.time_budget_min is None
    assert cfg.world.task_weights["counting"] == 2.0
    # untouched values keep the file's settings
    assert cfg.sampler.batch_size == 128 and cfg.backbone.d_model == 192


def test_overrides_apply_to_defaults_and_create_sections():
    cfg = load_config(None, ["eval.split=val", "eval.images_per_prompt=2"])
    assert cfg.eval.split == "val" and cfg.eval.images_per_prompt == 2
    assert cfg.backbone == Config().backbone


def test_override_later_wins():
    assert load_config(TINY, ["sampler.steps=3", "sampler.steps=5"]).sampler.steps == 5


def test_parse_override():
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    assert parse_override("x.y=a=b") == (["x", "y"], "a=b")
    assert parse_override("x.y=") == (["x", "y"], "")


def test_override_without_equals_is_an_error():
    msg = load_error(TINY, ("sampler.steps",))
    assert "sampler.steps" in msg
    assert "KEY=VALUE" in msg


def test_override_with_empty_key_is_an_error():
    assert "empty key" in load_error(TINY, ("=3",))


def test_override_into_a_value_is_an_error():
    msg = load_error(TINY, ("sampler.steps.x=1",))
    assert "steps is not a section" in msg


def test_bad_override_names_key_value_and_override():
    msg = load_error(TINY, ("sampler.steps=abc",))
    assert str(TINY) in msg
    assert "sampler.steps" in msg
    assert "'abc'" in msg
    assert "--set sampler.steps=abc" in msg
    msg = load_error(TINY, ("sampler.stepz=3",))
    assert "sampler.stepz: unknown key" in msg


# --- immutability and file errors ---------------------------------------------------------------------------


def test_config_is_frozen():
    cfg = load_config(TINY)
    with pytest.raises(ValidationError):
        cfg.sampler.steps = 5  # type: ignore[misc]
    with pytest.raises(ValidationError):
        cfg.sampler = cfg.sampler  # type: ignore[misc]
    assert cfg.sampler.steps == 12
    # derived configs come from model_copy, leaving the original unchanged
    other = cfg.model_copy(update={"sampler": cfg.sampler.model_copy(update={"steps": 4})})
    assert other.sampler.steps == 4 and cfg.sampler.steps == 12


def test_missing_file_names_it(tmp_path):
    path = tmp_path / "nope.yaml"
    msg = load_error(path)
    assert str(path) in msg
    assert "does not exist" in msg


@pytest.mark.parametrize("text", ["- sampler\n- steps\n", "just a string\n", "42\n"])
def test_non_mapping_yaml_names_file(tmp_path, text):
    path = write(tmp_path, text)
    msg = load_error(path)
    assert str(path) in msg
    assert "mapping" in msg


def test_invalid_yaml_names_file(tmp_path):
    path = write(tmp_path, "sampler: [steps: 3\n")
    msg = load_error(path)
    assert str(path) in msg
    assert "not valid YAML" in msg


def test_empty_file_gives_defaults(tmp_path):
    assert load_config(write(tmp_path, "")) == Config()


def test_config_error_is_a_value_error():
    # callers that only know ValueError still catch it
    with pytest.raises(ValueError):
        load_config(None, ["sampler.steps=0"])
