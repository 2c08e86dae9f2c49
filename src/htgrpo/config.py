"""Run configuration: frozen pydantic models loaded from YAML, with `--set a.b=c` overrides.

Every field carries its documentation (``description``); unknown keys and bad values are rejected with the key
path and the file named, e.g. ``configs/tiny.yaml: sampler.steps: Input should be greater than 0 (got -3)``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from htgrpo.errors import ConfigError
from htgrpo.world.grammar import TASKS


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class BackboneConfig(_Frozen):
    kind: Literal["tiny", "mmada", "dimoo"] = Field(
        "tiny", description="Which masked-diffusion backbone to build."
    )
    d_model: int = Field(192, gt=0, description="Hidden width of the transformer.")
    n_layers: int = Field(6, gt=0, description="Number of transformer blocks.")
    n_heads: int = Field(6, gt=0, description="Attention heads; d_model must be divisible by it.")
    mlp_hidden_size: int = Field(512, gt=0, description="SwiGLU hidden width (ff_proj / up_proj output).")
    rope_theta: float = Field(10000.0, gt=0, description="RoPE base frequency.")
    rms_eps: float = Field(1e-5, gt=0, description="RMSNorm epsilon.")
    max_text_len: int = Field(
        16, gt=0, description="Text tokens a prompt may have (prompts are left-padded)."
    )
    image_pos_2d: bool = Field(
        True, description="Add learned row and column embeddings to image tokens (tiny backbone only)."
    )
    weights: str | None = Field(None, description="Directory or URI of pretrained weights (real backbones).")

    @model_validator(mode="after")
    def _heads_divide(self) -> BackboneConfig:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError("d_model / n_heads must be even for rotary embeddings")
        return self


class TokenizerConfig(_Frozen):
    kind: Literal["kmeans"] = Field(
        "kmeans", description="Image tokenizer: a k-means codebook of 8x8 patches."
    )
    codebook_size: int = Field(512, ge=16, le=65536, description="Number of codes in the codebook.")
    train_images: int = Field(6000, gt=0, description="Rendered training images the codebook is fitted on.")
    iterations: int = Field(25, gt=0, description="k-means (Lloyd) iterations.")
    seed: int = Field(0, description="Seed for the codebook's initialisation and training images.")


class WorldConfig(_Frozen):
    grid: int = Field(6, ge=3, le=16, description="Cells per side; one cell (8x8 pixels) is one image token.")
    seed: int = Field(0, description="Seed of the prompt splits and the unseen colour-shape pairs.")
    unseen_pairs: int = Field(
        6, ge=0, description="Colour-shape pairs held out of training (the unseen split)."
    )
    unseen_color_attr: int = Field(40, ge=0, description="color_attr prompts drawn into the unseen split.")
    test_per_task: dict[str, int] = Field(
        default_factory=lambda: {
            "single_object": 6,
            "two_object": 10,
            "counting": 18,
            "colors": 16,
            "position": 32,
            "color_attr": 40,
        },
        description="Test prompts per task (single_object and counting use their whole, tiny prompt space).",
    )
    val_per_task: dict[str, int] = Field(
        default_factory=lambda: {
            "single_object": 6,
            "two_object": 4,
            "counting": 18,
            "colors": 6,
            "position": 12,
            "color_attr": 16,
        },
        description="Validation prompts per task.",
    )
    task_weights: dict[str, float] = Field(
        default_factory=lambda: dict.fromkeys(TASKS, 1.0),
        description="Relative frequency of each task when training prompts are drawn.",
    )
    dataset_size: int = Field(200_000, gt=0, description="Pre-rendered training scenes (cached on disk).")
    cache_dir: str = Field(".cache/htgrpo", description="Where pre-rendered datasets are cached.")

    @model_validator(mode="after")
    def _known_tasks(self) -> WorldConfig:
        for name in ("test_per_task", "val_per_task", "task_weights"):
            for key, value in getattr(self, name).items():
                if key not in TASKS:
                    raise ValueError(f"{name}: unknown task {key!r}; expected one of {', '.join(TASKS)}")
                if value < 0:
                    raise ValueError(f"{name}.{key}: must be >= 0 (got {value})")
        if sum(self.task_weights.values()) <= 0:
            raise ValueError("task_weights: at least one task needs a positive weight")
        return self


class SamplerConfig(_Frozen):
    kind: Literal["maskgit", "emerge"] = Field(
        "maskgit",
        description="maskgit: confidence-ordered (MMaDA/DiMOO); emerge: MaskGRPO's ancestral sampler.",
    )
    steps: int = Field(12, gt=0, description="Denoising steps T.")
    cfg_scale: float = Field(2.0, ge=0, description="Classifier-free guidance g: (1+g)*cond - g*uncond.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the code distribution.")
    remask_noise: float = Field(1.0, ge=0, description="Scale tau of the Gumbel noise added to confidences.")
    noise_schedule: Literal["annealed", "constant"] = Field(
        "annealed",
        description="annealed: tau <- tau*(1-(s+1)/T) each step (MMaDA); constant: tau every step (Lumina-DiMOO).",
    )
    batch_size: int = Field(64, gt=0, description="Images sampled per forward batch.")


class PretrainConfig(_Frozen):
    steps: int = Field(3000, gt=0, description="Optimizer steps of masked-diffusion pretraining.")
    batch_size: int = Field(128, gt=0, description="Scenes per step.")
    lr: float = Field(2e-3, gt=0, description="Peak AdamW learning rate.")
    warmup_steps: int = Field(100, ge=0, description="Linear warm-up steps, then cosine decay to 10%.")
    weight_decay: float = Field(0.05, ge=0, description="AdamW weight decay.")
    grad_clip: float = Field(1.0, gt=0, description="Gradient-norm clipping.")
    cond_dropout: float = Field(
        0.1, ge=0, le=1, description="Share of prompts replaced by the unconditional one."
    )
    min_mask_ratio: float = Field(0.0, ge=0, lt=1, description="Lower bound of the sampled mask ratio t.")
    ema_decay: float = Field(0.999, ge=0, lt=1, description="EMA of the weights that is saved (0 disables).")
    time_budget_min: float | None = Field(None, gt=0, description="Stop after this many minutes if set.")
    snapshot_every_min: float | None = Field(
        None, gt=0, description="Also save numbered snapshots this often (for the score-versus-time curve)."
    )
    log_every: int = Field(25, gt=0, description="Steps between progress-bar metric updates.")
    seed: int = Field(0, description="Seed of initialisation, data order and masks.")


class EvalConfig(_Frozen):
    split: Literal["train", "val", "test", "unseen"] = Field("test", description="Prompt split to evaluate.")
    images_per_prompt: int = Field(4, gt=0, description="Images generated per prompt (GenEval uses 4).")
    seed: int = Field(1234, description="Sampling seed of the evaluation.")


class StorageConfig(_Frozen):
    uri: str = Field(
        "file://checkpoints", description="Where checkpoints are written: file://DIR (or s3:// later)."
    )


class TrackingConfig(_Frozen):
    enabled: bool = Field(False, description="Log to MLflow.")
    tracking_uri: str = Field(
        "sqlite:///mlflow.db", description="MLflow tracking URI (sqlite file by default)."
    )
    experiment: str = Field("htgrpo", description="MLflow experiment name.")


class Config(_Frozen):
    """The whole run configuration."""

    backbone: BackboneConfig = Field(default_factory=BackboneConfig, description="The diffusion backbone.")
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig, description="The image tokenizer.")
    world: WorldConfig = Field(default_factory=WorldConfig, description="The synthetic shapes world.")
    sampler: SamplerConfig = Field(default_factory=SamplerConfig, description="Image sampling.")
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig, description="Base-model pretraining.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Benchmark evaluation.")
    storage: StorageConfig = Field(default_factory=StorageConfig, description="Checkpoint storage.")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="Experiment tracking.")


def format_errors(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        got = "" if err["type"] == "extra_forbidden" else f" (got {err.get('input')!r})"
        lines.append(f"{source}: {key}: {msg}{got}")
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=c` -> (['a', 'b'], yaml-typed c)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. sampler.steps=16")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from None
    return path, value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
            node = child
        node[path[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Load a YAML config (or the defaults when `path` is None) and apply `--set` overrides."""
    source = str(path) if path is not None else "defaults"
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{p}: not valid YAML ({exc})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(
                f"{p}: the top level must be a mapping of sections, got {type(loaded).__name__}"
            )
        data = loaded or {}
    overrides = list(overrides)
    apply_overrides(data, overrides)
    if overrides:
        source += f" (with --set {' '.join(overrides)})"
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, source)) from None


def config_to_dict(cfg: Config) -> dict[str, Any]:
    return cfg.model_dump(mode="json")
