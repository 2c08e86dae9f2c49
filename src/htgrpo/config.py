"""Run configuration: frozen pydantic models loaded from YAML, with `--set a.b=c` overrides.

Every field carries its documentation (``description``); unknown keys and bad values are rejected with the key
path and the file named, e.g. ``configs/tiny.yaml: sampler.steps: Input should be greater than 0 (got -3)``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from htgrpo.errors import ConfigError
from htgrpo.world.grammar import TASKS


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


LLADA_LORA_TARGETS: tuple[str, ...] = (
    "q_proj",
    "k_proj",
    "v_proj",
    "attn_out",
    "ff_proj",
    "up_proj",
    "ff_out",
)
"""LLaDA's own module names of every linear layer in a block (algorithm.md §4.9, §4.12)."""


class LoraConfig(_Frozen):
    """LoRA adapters (peft) on the LLaDA blocks of a real backbone; the RL reference is the adapter switched off."""

    enabled: bool = Field(
        False, description="Train LoRA adapters instead of every weight (the reference = adapters disabled)."
    )
    r: int = Field(128, gt=0, description="LoRA rank (MaskGRPO: 128).")
    alpha: float = Field(
        64.0, gt=0, description="LoRA alpha; the update is scaled by alpha / r (MaskGRPO: 64)."
    )
    dropout: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Dropout on the adapter input. MaskGRPO uses 0.05, but any dropout makes the first inner "
        "iteration's ratio differ from 1 (§4.12), so the default is 0.",
    )
    target_modules: tuple[str, ...] = Field(
        LLADA_LORA_TARGETS,
        description="Block modules that get adapters (LLaDA names). Only modules inside "
        "model.transformer.blocks.N are matched: the LM head, also called ff_out, never is.",
    )

    @model_validator(mode="after")
    def _known_targets(self) -> LoraConfig:
        if not self.target_modules:
            raise ValueError("target_modules: name at least one of " + ", ".join(LLADA_LORA_TARGETS))
        bad = [m for m in self.target_modules if m not in LLADA_LORA_TARGETS]
        if bad:
            raise ValueError(
                f"target_modules: {', '.join(map(repr, bad))} is not a LLaDA block module; "
                f"expected some of {', '.join(LLADA_LORA_TARGETS)}"
            )
        if len(set(self.target_modules)) != len(self.target_modules):
            raise ValueError(f"target_modules: duplicates in {list(self.target_modules)}")
        return self


class BackboneConfig(_Frozen):
    kind: Literal["tiny", "mmada", "dimoo"] = Field(
        "tiny",
        description="Which masked-diffusion backbone to build: tiny (CPU, shapes world), mmada (MMaDA-8B with "
        "MAGVIT-v2) or dimoo (Lumina-DiMOO with its VQ model).",
    )
    d_model: int = Field(
        192, gt=0, description="tiny: hidden width (mmada/dimoo read theirs from WEIGHTS/config.json)."
    )
    n_layers: int = Field(6, gt=0, description="tiny: number of transformer blocks.")
    n_heads: int = Field(6, gt=0, description="tiny: attention heads; d_model must be divisible by it.")
    mlp_hidden_size: int = Field(
        512, gt=0, description="tiny: SwiGLU hidden width (ff_proj / up_proj output)."
    )
    rope_theta: float = Field(10000.0, gt=0, description="tiny: RoPE base frequency.")
    rms_eps: float = Field(1e-5, gt=0, description="tiny: RMSNorm epsilon.")
    max_text_len: int = Field(
        16,
        gt=0,
        description="Text tokens a prompt may have (prompts are left-padded). tiny: longer prompts are an "
        "error; mmada/dimoo truncate them, as MMaDA's t2i template does (MaskGRPO: 256).",
    )
    image_pos_2d: bool = Field(
        True, description="Add learned row and column embeddings to image tokens (tiny backbone only)."
    )
    weights: str | None = Field(
        None,
        description="mmada/dimoo: the checkpoint directory (config.json, model.safetensors[.index.json], "
        "tokenizer) as a local path, file://DIR or s3://BUCKET/PREFIX; s3 is downloaded into storage.cache_dir.",
    )
    vq_weights: str | None = Field(
        None,
        description="The image tokenizer's directory (mmada: showlab/magvitv2; dimoo: a diffusers VQModel). "
        "null: WEIGHTS/magvitv2 (mmada) or WEIGHTS/vqvae (dimoo).",
    )
    image_size: tuple[int, int] = Field(
        (512, 512),
        description="mmada/dimoo: [height, width] of generated images in pixels; the token grid is "
        "(height/16) x (width/16), e.g. 512 -> 32 x 32 = 1024 tokens.",
    )
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32",
        description="mmada/dimoo: dtype of the network weights (bfloat16 for 8B on a GPU; LoRA adapters stay "
        "float32).",
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute each block's activations in the backward pass (saves memory)."
    )
    lora: LoraConfig = Field(
        default_factory=LoraConfig, description="LoRA adapters (mmada/dimoo); disabled: full fine-tuning."
    )

    @model_validator(mode="after")
    def _heads_divide(self) -> BackboneConfig:
        h, w = self.image_size
        if h <= 0 or w <= 0 or h % 16 or w % 16:
            raise ValueError(f"image_size must be positive multiples of 16 pixels (got [{h}, {w}])")
        if self.kind == "tiny" and self.lora.enabled:
            raise ValueError("lora.enabled: LoRA is for the real backbones (mmada, dimoo), not kind=tiny")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError("d_model / n_heads must be even for rotary embeddings")
        return self


class TokenizerConfig(_Frozen):
    kind: Literal["kmeans"] = Field(
        "kmeans", description="Image tokenizer: a k-means codebook of 8x8 patches."
    )
    codebook_size: int = Field(
        512,
        ge=16,
        le=65536,
        description="Most codes in the codebook (fewer when the images have fewer distinct patches).",
    )
    train_images: int = Field(6000, gt=0, description="Rendered training images the codebook is fitted on.")
    iterations: int = Field(25, gt=0, description="k-means (Lloyd) iterations.")
    seed: int = Field(0, description="Seed for the codebook's initialisation and training images.")


def check_task_mapping(name: str, mapping: dict[str, float], weights: bool = False) -> None:
    """Task-keyed settings: known task names, no negative value, and (weights) at least one positive."""
    for key, value in mapping.items():
        if key not in TASKS:
            raise ValueError(f"{name}: unknown task {key!r}; expected one of {', '.join(TASKS)}")
        if value < 0:
            raise ValueError(f"{name}.{key}: must be >= 0 (got {value})")
    if weights and sum(mapping.values()) <= 0:
        raise ValueError(f"{name}: at least one task needs a positive weight")


class WorldConfig(_Frozen):
    grid: int = Field(6, ge=3, le=16, description="Cells per side; one cell (8x8 pixels) is one image token.")
    background: Literal["themes", "random"] = Field(
        "themes",
        description="themes: a gradient drawn from a few fixed themes; random: between two random light colours.",
    )
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
        description="Relative frequency of each task when training prompts are drawn (RL prompts, and the "
        "pretraining scenes unless pretrain.task_weights is set); a task left out is never drawn.",
    )
    dataset_size: int = Field(200_000, gt=0, description="Pre-rendered training scenes (cached on disk).")
    cache_dir: str = Field(".cache/htgrpo", description="Where pre-rendered datasets are cached.")

    @model_validator(mode="after")
    def _known_tasks(self) -> WorldConfig:
        for name in ("test_per_task", "val_per_task"):
            check_task_mapping(name, getattr(self, name))
        check_task_mapping("task_weights", self.task_weights, weights=True)
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
    fill_steps: int = Field(
        0,
        ge=0,
        description="First steps in which every scene is trained in fill mode (object cells masked, background "
        "visible, loss on objects): binds colour words, which the plain objective leaves at chance.",
    )
    fill_decay_steps: int = Field(
        0,
        ge=0,
        description="Steps after fill_steps over which the fill-mode share falls linearly to fill_final_share.",
    )
    fill_final_share: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of scenes kept in fill mode after the hand-over, so that colour binding does not fade.",
    )
    fill_final_tasks: tuple[str, ...] = Field(
        (),
        description="Tasks whose scenes may be in fill mode after the hand-over (empty: all tasks). The colour "
        "tasks (colors, color_attr) are the ones whose prompts the fill objective teaches beyond the plain one.",
    )

    @field_validator("fill_final_tasks")
    @classmethod
    def _known_tasks(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [t for t in v if t not in TASKS]
        if bad:
            raise ValueError(f"unknown task(s) {bad}; tasks are {', '.join(TASKS)}")
        return v

    task_weights: dict[str, float] | None = Field(
        None,
        description="Relative frequency of each task among the pretraining scenes and the tokenizer's fitting "
        "images (a task left out is never drawn); null: world.task_weights. Kept apart from world.task_weights "
        "so that a pretraining mix does not change the RL prompt mix.",
    )

    @field_validator("task_weights")
    @classmethod
    def _known_weights(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is not None:
            check_task_mapping("task_weights", v, weights=True)
        return v

    ema_decay: float = Field(0.995, ge=0, lt=1, description="EMA of the weights that is saved (0 disables).")
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


RL_METHODS: tuple[str, ...] = ("ht-grpo", "maskgrpo", "unigrpo", "d1", "tracegrpo", "coupled")
"""Every ``rl.method``: HT-GRPO and the baselines of algorithm.md §5, all in one trainer."""

RL_HARNESS_DEFAULTS: dict[str, Any] = {
    "clip_eps": 0.2,
    "kl_beta": 0.01,
    "inner_iterations": 6,
    "min_mask_ratio": 0.7,
    "normalisation": "token",
}
"""§5: a method that publishes no value of its own gets the shared harness value (§4.9)."""

RL_METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "ht-grpo": {},  # K = n_global + n_struct + n_refine, filled in by the validator
    "maskgrpo": {"min_mask_ratio": 0.6},
    "unigrpo": {"normalisation": "sample"},
    "d1": {"clip_eps": 0.5, "kl_beta": 0.04, "inner_iterations": 12},
    "tracegrpo": {"normalisation": "sample", "inner_iterations": None},  # K = ceil(T / trace_shrink)
    "coupled": {},  # K = 6: three (mask, complement) pairs
}
"""§5.6: each method's own settings, applied to the ``rl`` keys a run leaves out (or sets to null)."""

_METHOD_DEPENDENT = tuple(RL_HARNESS_DEFAULTS)


class RLConfig(_Frozen):
    """Online GRPO fine-tuning: HT-GRPO (algorithm.md §4) and the baselines of §5 in one trainer.

    Method-dependent keys (``clip_eps``, ``kl_beta``, ``inner_iterations``, ``min_mask_ratio``,
    ``normalisation``): when a run leaves one out, or sets it to null, it takes the method's own value from
    ``RL_METHOD_DEFAULTS`` (else the shared harness value ``RL_HARNESS_DEFAULTS``), so ``--method d1`` gets
    d1's eps 0.5 / beta 0.04 / K 12. A value written in the YAML or given with ``--set`` applies whatever the
    method. The resolved values are what ``htgrpo config`` prints and what checkpoints record.
    """

    method: Literal["ht-grpo", "maskgrpo", "unigrpo", "d1", "tracegrpo", "coupled"] = Field(
        "ht-grpo",
        description="RL method: ht-grpo, or a baseline (maskgrpo, unigrpo, d1, tracegrpo, coupled).",
    )
    steps: int = Field(100, gt=0, description="RL steps; each is one rollout batch followed by K updates.")
    prompts_per_step: int = Field(8, gt=0, description="Prompts drawn per RL step (weighted by task).")
    group_size: int = Field(
        8, description="G: images sampled per prompt; advantages are z-scores within the group (>= 2)."
    )
    prompts: str = Field(
        "train",
        description="Prompt pool: a split of the shapes world (train, val, test, unseen), a named prompt source "
        "(htgrpo.prompts, e.g. geneval-train?n=5000&seed=1) or a GenEval JSONL path.",
    )
    inner_iterations: int | None = Field(
        None,
        gt=0,
        description="K optimizer steps per rollout batch (method default; ht-grpo: n_global+n_struct+n_refine; "
        "tracegrpo: always ceil(T / trace_shrink)).",
    )
    n_global: int = Field(2, ge=0, description="ht-grpo: global-stage inner iterations (first).")
    n_struct: int = Field(2, ge=0, description="ht-grpo: structure-stage inner iterations (second).")
    n_refine: int = Field(2, ge=0, description="ht-grpo: refinement-stage inner iterations (last).")
    min_mask_ratio: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="m: lowest re-mask ratio (method default: ht-grpo 0.7, stages go 1 -> m; maskgrpo 0.6, "
        "rising m -> 0.999).",
    )
    rho: float = Field(0.25, gt=0, le=1, description="ht-grpo: structure fraction; |S| = ceil(rho * N).")
    alpha: float = Field(1.0, ge=0, description="ht-grpo: HCA strength (0 disables the credit assignment).")
    hca: Literal["binary", "rank"] = Field(
        "binary",
        description="ht-grpo HCA weights: binary u = 1+alpha on structure tokens; rank u = 1+alpha*(1-rank/N).",
    )
    partition: Literal[
        "commit", "entropy0", "entropy0_high", "oracle", "prompt_pmi", "group_disagreement"
    ] = Field(
        "commit",
        description="ht-grpo token partition (htgrpo.rl.hierarchy): commit (step, then entropy, ascending), "
        "entropy0 (ascending), entropy0_high (descending, ablation), oracle (the decoded object cells; shapes "
        "world only, the upper bound), prompt_pmi (tokens whose log-prob the prompt raises most, at the fully "
        "masked state), group_disagreement (positions where a prompt's G samples differ most).",
    )
    estimator: Literal["staged", "fully_masked", "trajectory"] = Field(
        "staged",
        description="ht-grpo visibility: staged (§4.6 table, re-masking the final image), fully_masked (V = 0 "
        "in every stage) or trajectory (structure and refinement replay the rollout's own early and late steps "
        "from the fully masked state; the global stage as in staged).",
    )
    optimizer_steps: int | None = Field(
        None,
        gt=0,
        description="Optimizer steps per rollout batch. The inner iterations are split into this many "
        "consecutive groups whose gradients are accumulated into one step (a coupled pair, TraceGRPO's "
        "replayed windows), so that methods can be compared at equal steps. null: one step per inner "
        "iteration; ht-grpo with estimator=trajectory always takes n_global + n_struct + n_refine.",
    )
    score_cfg: bool = Field(
        False,
        description="Score the guided policy the rollout sampled from: log-probs of softmax((1+g) cond - g uncond) "
        "at the rollout's CFG scale g, both branches in each scored forward (twice the cost), for theta, "
        "theta_old and theta_ref alike. false: the unguided conditional log-probs (MaskGRPO, §4.12).",
    )
    task_weights: dict[str, float] | None = Field(
        None,
        description="Task mix of the RL prompt draws (task -> weight; a task left out is never drawn). null: "
        "every task of the prompt pool equally, whatever mix the base was pretrained on.",
    )
    clip_eps: float | None = Field(
        None, gt=0, description="PPO clip range eps (method default: 0.2; d1 0.5)."
    )
    kl_beta: float | None = Field(
        None, ge=0, description="Weight of the k3 KL to the frozen reference (method default: 0.01; d1 0.04)."
    )
    normalisation: Literal["token", "sample"] | None = Field(
        None,
        description="Loss normalisation: token (sum / sum|U|) or sample (per-sample mean, then mean); "
        "method default: token; unigrpo and tracegrpo sample.",
    )
    lr: float = Field(3e-6, gt=0, description="AdamW learning rate (constant).")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay (not on norms and 1-D weights).")
    betas: tuple[float, float] = Field((0.9, 0.99), description="AdamW betas.")
    grad_clip: float = Field(0.2, gt=0, description="Gradient-norm clipping per optimizer step.")
    d1_prompt_mask_prob: float = Field(
        0.15, ge=0, lt=1, description="d1: probability of masking each prompt word (template tokens never)."
    )
    trace_shrink: int = Field(
        1, ge=1, description="tracegrpo: neighbouring sampler steps merged into one replayed step."
    )
    coupled_t_range: tuple[float, float] = Field(
        (0.1, 0.9), description="coupled: range [lo, hi] of the per-sample mask ratio t ~ U[lo, hi]."
    )
    rewards: dict[str, float] = Field(
        default_factory=lambda: {"geneval_aligned": 1.0},
        description="Reward functions (names from the reward registry) and their weights; total = sum w*r. "
        "geneval_aligned agrees with GenEval's metric; geneval_partial is Flow-GRPO's rule (exact counts).",
    )
    advantage_clip: float | None = Field(
        None, gt=0, description="Clip advantages to [-c, c] (Flow-GRPO uses 5); null disables."
    )
    stat_tracking_buffer: int = Field(
        0,
        ge=0,
        description="Flow-GRPO per-prompt statistics: normalise by the last this-many rewards of the same "
        "prompt (0: plain group z-score).",
    )
    drop_zero_variance_groups: bool = Field(
        False,
        description="Leave groups whose rewards are all equal out of the update (they carry no signal).",
    )
    max_skipped_steps: int = Field(
        3,
        ge=0,
        description="Stop the run with an error naming the reward components after this many consecutive RL "
        "steps skipped because every reward was non-finite (NaN, infinite, or so large that it overflows); "
        "0: never stop.",
    )
    rollout_sampler: Literal["maskgit", "emerge"] = Field(
        "maskgit", description="Rollout sampler; partition=commit needs maskgit (confidence order)."
    )
    rollout_steps: int | None = Field(
        None, gt=0, description="Rollout denoising steps T (null: sampler.steps)."
    )
    rollout_cfg_scale: float | None = Field(
        None, ge=0, description="Rollout CFG scale (null: sampler.cfg_scale)."
    )
    micro_batch: int | None = Field(
        None, gt=0, description="Samples per log-prob forward (null: the whole rollout batch at once)."
    )
    checkpoint_every: int = Field(
        0, ge=0, description="Save a checkpoint every this many RL steps (0: only at the end)."
    )
    keep_checkpoints: int = Field(2, ge=1, description="Most recent checkpoints kept in the run directory.")
    eval_every: int = Field(0, ge=0, description="Evaluate every this many RL steps (0: never).")
    eval_split: Literal["train", "val", "test", "unseen"] = Field(
        "val", description="Prompt split of the periodic evaluation."
    )
    eval_images_per_prompt: int = Field(1, gt=0, description="Images per prompt of the periodic evaluation.")
    seed: int = Field(
        0, description="Seed of prompt draws, rollouts and masks (each derived from seed and step)."
    )

    @model_validator(mode="before")
    @classmethod
    def _method_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        method = data.get("method", "ht-grpo")
        if method not in RL_METHOD_DEFAULTS:
            return data  # the Literal check names the valid methods
        out = dict(data)
        own = {**RL_HARNESS_DEFAULTS, **RL_METHOD_DEFAULTS[method]}
        for key in _METHOD_DEPENDENT:
            if out.get(key) is None:
                out[key] = own[key]
        if method == "ht-grpo" and data.get("inner_iterations") is None:
            out["inner_iterations"] = sum(
                int(out.get(k, cls.model_fields[k].default)) for k in ("n_global", "n_struct", "n_refine")
            )
        return out

    @model_validator(mode="after")
    def _consistent(self) -> RLConfig:
        if self.group_size < 2:
            raise ValueError(
                f"group_size must be at least 2 (got {self.group_size}): advantages are z-scores within a group"
            )
        if self.method == "ht-grpo":
            split = self.n_global + self.n_struct + self.n_refine
            if split != self.inner_iterations:
                raise ValueError(
                    f"the ht-grpo K split does not add up: n_global {self.n_global} + n_struct {self.n_struct} "
                    f"+ n_refine {self.n_refine} = {split}, but inner_iterations is {self.inner_iterations}"
                )
            if split == 0:
                raise ValueError(
                    "ht-grpo needs at least one inner iteration (n_global + n_struct + n_refine)"
                )
            if self.partition == "commit" and self.rollout_sampler == "emerge":
                raise ValueError(
                    "partition=commit ranks by commit step, which the emerge sampler draws at random; "
                    "use partition=entropy0 with rollout_sampler=emerge (§4.4)"
                )
        if self.task_weights is not None:
            check_task_mapping("task_weights", self.task_weights, weights=True)
        if self.method == "tracegrpo" and self.inner_iterations is not None:
            raise ValueError(
                "tracegrpo replays the rollout: K is ceil(T / trace_shrink); set trace_shrink, not inner_iterations"
            )
        if self.method == "coupled" and self.inner_iterations is not None and self.inner_iterations % 2:
            raise ValueError(
                f"coupled uses (mask, complement) pairs: inner_iterations must be even (got {self.inner_iterations})"
            )
        lo, hi = self.coupled_t_range
        if not 0 < lo <= hi < 1:
            raise ValueError(f"coupled_t_range must satisfy 0 < lo <= hi < 1 (got [{lo}, {hi}])")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must lie in [0, 1) (got {list(self.betas)})")
        if not self.rewards:
            raise ValueError("rewards: name at least one reward function, e.g. {geneval_partial: 1.0}")
        for name, w in self.rewards.items():
            if not math.isfinite(w):
                raise ValueError(f"rewards.{name}: the weight must be finite (got {w})")
        if all(w == 0 for w in self.rewards.values()):
            raise ValueError("rewards: every weight is 0, so every advantage would be 0")
        if not self.prompts.strip():
            raise ValueError("prompts: empty; give a split name (train) or a GenEval JSONL path")
        return self

    def rollout_sampler_config(self, sampler: SamplerConfig) -> SamplerConfig:
        """The ``sampler`` section with this section's rollout overrides applied."""
        update: dict[str, Any] = {"kind": self.rollout_sampler}
        if self.rollout_steps is not None:
            update["steps"] = self.rollout_steps
        if self.rollout_cfg_scale is not None:
            update["cfg_scale"] = self.rollout_cfg_scale
        return sampler.model_copy(update=update)


class StorageConfig(_Frozen):
    """Where checkpoints, rollout batches and pipeline runs are kept: a local directory or any S3 endpoint.

    S3 credentials never appear here: boto3 reads them from the environment (``AWS_ACCESS_KEY_ID`` /
    ``AWS_SECRET_ACCESS_KEY``, a Kubernetes secret in the pipeline) or from the pod's IAM role.
    """

    uri: str = Field(
        "file://checkpoints",
        description="Root of all stored objects: file://DIR (relative or file:///absolute) or s3://BUCKET/PREFIX.",
    )
    endpoint_url: str | None = Field(
        None,
        description="S3 endpoint of an S3-compatible server (SeaweedFS, MinIO, Ceph); null: AWS, or the "
        "AWS_ENDPOINT_URL environment variable when set.",
    )
    region: str = Field("us-east-1", description="S3 region name (most S3-compatible servers ignore it).")
    addressing_style: Literal["path", "virtual", "auto"] = Field(
        "path", description="S3 addressing style; path suits S3-compatible servers, virtual suits AWS."
    )
    retries: int = Field(
        4,
        ge=0,
        description="Retries of a failed S3 request (connection lost, 5xx, throttling) before giving up.",
    )
    backoff_s: float = Field(
        0.5, ge=0, description="Wait before the first retry; doubled each retry (with jitter), capped below."
    )
    max_backoff_s: float = Field(8.0, ge=0, description="Longest wait between two retries.")
    connect_timeout_s: float = Field(5.0, gt=0, description="S3 connection timeout per request.")
    read_timeout_s: float = Field(60.0, gt=0, description="S3 read timeout per request.")
    multipart_threshold_mb: int = Field(
        8, ge=5, description="Files at least this large are uploaded in parts (S3's minimum part is 5 MB)."
    )
    multipart_chunk_mb: int = Field(8, ge=5, description="Part size of multipart uploads and downloads.")
    max_concurrency: int = Field(4, gt=0, description="Parallel part transfers per file.")
    cache_dir: str = Field(
        ".cache/htgrpo/store",
        description="Local directory where checkpoints read from S3 are downloaded (verified) before loading.",
    )

    @model_validator(mode="after")
    def _known_scheme(self) -> StorageConfig:
        uri = self.uri.strip()
        if uri.startswith("s3://"):
            bucket = uri[len("s3://") :].split("/", 1)[0]
            if not 3 <= len(bucket) <= 63:
                raise ValueError(f"uri: the S3 bucket name {bucket!r} must have 3 to 63 characters")
            if ".." in uri[len("s3://") :].split("/"):
                raise ValueError(
                    f"uri: {uri!r}: an S3 key must not contain a '..' segment (it would leave its prefix)"
                )
        elif "://" in uri and not uri.startswith("file://"):
            raise ValueError(
                f"uri: {uri!r} has an unsupported scheme {uri.split('://', 1)[0]}://; use a plain path, file://DIR "
                "or s3://BUCKET/PREFIX"
            )
        elif not uri or uri in ("file://", "s3://"):
            raise ValueError("uri: empty; use a plain path, file://DIR or s3://BUCKET/PREFIX")
        return self


class TrackingConfig(_Frozen):
    """MLflow lineage. When the tracking server cannot be reached, training goes on and metrics are written to
    ``fallback_dir`` with a warning."""

    enabled: bool = Field(False, description="Log to MLflow.")
    tracking_uri: str = Field(
        "sqlite:///mlflow.db",
        description="MLflow tracking URI: sqlite:///FILE (embedded, no server; artifacts in artifact_root) or "
        "http(s)://HOST:PORT of a tracking server.",
    )
    experiment: str = Field("htgrpo", description="MLflow experiment name.")
    artifact_root: str | None = Field(
        None,
        description="Artifact location of a newly created experiment with a sqlite store (null: mlruns/ beside "
        "the database); "
        "ignored for servers, which store artifacts themselves.",
    )
    registered_model: str = Field(
        "htgrpo-tiny", description="Registered model name of the trained checkpoints."
    )
    champion_metric: str = Field(
        "overall",
        description="Evaluation metric that decides promotion from alias candidate to champion (higher is better).",
    )
    http_retries: int = Field(
        2, ge=0, description="MLflow client retries per request before the tracker keeps calls locally."
    )
    http_timeout_s: float = Field(10.0, gt=0, description="MLflow client timeout per request.")
    retry_backoff_s: float = Field(
        15.0,
        gt=0,
        description="After MLflow failed, how long the tracker keeps calls locally before it tries MLflow again "
        "(doubled after each failed try); when MLflow answers, the kept calls are replayed.",
    )
    retry_backoff_max_s: float = Field(300.0, gt=0, description="Longest wait between two tries of MLflow.")
    fallback_dir: str = Field(
        "mlflow-offline",
        description="Where metrics go (JSONL) when MLflow is unreachable; relative to the run's output directory.",
    )
    log_images: bool = Field(True, description="Log sample image grids each round.")


class StepResources(_Frozen):
    """Kubernetes scheduling of one kind of pipeline step (applied with kfp-kubernetes at compile time)."""

    accelerator_type: str | None = Field(
        None, description="Extended resource name of the accelerator, e.g. nvidia.com/gpu (null: no GPU)."
    )
    accelerator_limit: int = Field(
        1, ge=1, description="Accelerators per pod (when accelerator_type is set)."
    )
    cpu_limit: str | None = Field(None, description="CPU limit, e.g. '8' (null: none).")
    memory_limit: str | None = Field(None, description="Memory limit, e.g. 64G (null: none).")
    node_selector: dict[str, str] = Field(
        default_factory=dict,
        description="Node labels the pod must match, e.g. {nvidia.com/gpu.product: H100}.",
    )
    tolerations: list[dict[str, str]] = Field(
        default_factory=list,
        description="Tolerations, each {key, operator (Equal|Exists), value, effect (NoSchedule|NoExecute|...)}.",
    )

    @model_validator(mode="after")
    def _tolerations(self) -> StepResources:
        allowed = {"key", "operator", "value", "effect"}
        for i, t in enumerate(self.tolerations):
            bad = set(t) - allowed
            if bad:
                raise ValueError(f"tolerations[{i}]: unknown keys {sorted(bad)}; allowed {sorted(allowed)}")
            if t.get("operator", "Equal") not in ("Equal", "Exists"):
                raise ValueError(f"tolerations[{i}].operator must be Equal or Exists (got {t['operator']!r})")
        return self


def _gpu_step() -> StepResources:
    return StepResources(
        accelerator_type="nvidia.com/gpu",
        accelerator_limit=1,
        node_selector={"nvidia.com/gpu.present": "true"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    )


class PipelineConfig(_Frozen):
    """The Kubeflow pipeline: images, node pools per kind of step and the Kubernetes secrets it reads."""

    image: str = Field(
        "ghcr.io/htgrpo/htgrpo:0.1.0",
        description="CPU image (images/cpu.Dockerfile) of the light steps: prepare_data, plan_shards, register; "
        "also the image of the Helm chart's submitter.",
    )
    gpu_image: str = Field(
        "ghcr.io/htgrpo/htgrpo-cuda:0.1.0",
        description="CUDA image (images/cuda.Dockerfile) of the steps placed by rollout, reward, train and eval "
        "(rollout, score_rewards, the three stages, evaluate).",
    )
    shards: int = Field(2, ge=1, description="Default rollout fan-out: prompt shards rolled out in parallel.")
    rollout: StepResources = Field(default_factory=_gpu_step, description="Rollout pods.")
    reward: StepResources = Field(
        default_factory=_gpu_step, description="Reward-scoring pods (reward models get GPUs of their own)."
    )
    train: StepResources = Field(default_factory=_gpu_step, description="Training-stage pods.")
    eval: StepResources = Field(default_factory=_gpu_step, description="Evaluation pods.")
    promote_margin: float | None = Field(
        None,
        ge=0,
        description="How much the trained model must beat its base and the current champion by (in "
        "tracking.champion_metric) for register to move the champion alias. null: the half-width of the 95 % "
        "interval of the paired base-vs-trained change (0 when the evaluation gives none).",
    )
    s3_secret: str = Field(
        "htgrpo-s3",
        description="Kubernetes secret with keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (set as env).",
    )
    mlflow_secret: str = Field(
        "htgrpo-mlflow",
        description="Kubernetes secret with MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (optional).",
    )


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
    pipeline: PipelineConfig = Field(
        default_factory=PipelineConfig, description="The Kubeflow pipeline (images, node pools, secrets)."
    )
    rl: RLConfig = Field(default_factory=RLConfig, description="Online RL fine-tuning (htgrpo train).")

    @model_validator(mode="after")
    def _oracle_needs_the_shapes_world(self) -> Config:
        if self.rl.method == "ht-grpo" and self.rl.partition == "oracle" and self.backbone.kind != "tiny":
            raise ValueError(
                f"rl.partition: 'oracle' reads the object cells of the shapes world's decoded images, and "
                f"backbone.kind is {self.backbone.kind!r}; use prompt_pmi or group_disagreement on real images"
            )
        return self


RUN_NAME_PATTERN = r"[a-z0-9][a-z0-9._-]{0,62}"
"""A pipeline run's name: it names the run's directory in the store (``storage.uri``/runs/NAME) and its MLflow
run, so it is one lowercase path segment of at most 63 characters, and never ``..``."""


def check_run_name(name: Any, what: str = "run_name") -> str:
    """``name`` when it is a valid run name (``RUN_NAME_PATTERN``, no ``..``), else a ``ConfigError`` naming
    ``what``, the value and the rule. The submitter and the pipeline's prepare_data step both call it."""
    if not isinstance(name, str) or not re.fullmatch(RUN_NAME_PATTERN, name) or ".." in name:
        raise ConfigError(
            f"{what}: {name!r} is not a valid run name: it must match {RUN_NAME_PATTERN} (lowercase letters, "
            "digits, '.', '_' and '-', starting with a letter or digit, at most 63 characters) and contain "
            "no '..' or '/'"
        )
    return name


def format_errors(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        got = "" if err["type"] == "extra_forbidden" else f" (got {err.get('input')!r})"
        if err["type"] == "value_error" and isinstance(err.get("input"), dict):
            # a whole-section check: its message names the keys and values; echoing the section adds noise
            msg, got = msg.removeprefix("Value error, "), ""
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
