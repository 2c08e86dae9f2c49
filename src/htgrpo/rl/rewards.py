"""Reward functions for RL: a registry of named rewards and their weighted mix (algorithm.md §4.3, §2.5).

A reward function takes the decoded images (uint8 [B, H, W, 3]), the prompts and their GenEval metadata and
returns one float per image. ``mixed_reward({"geneval_partial": 1.0, ...})`` sums the weighted rewards, as
Flow-GRPO's ``multi_score`` does, and keeps each component for logging. Later rewards (image-quality models)
plug in with ``register_reward``.

Non-finite rewards are not this module's business to repair: the total is NaN or inf wherever a component is,
and the trainer drops those samples (``advantages.group_advantages``) with a warning and a count.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from htgrpo.errors import ConfigError
from htgrpo.world.detect import ShapeDetector, background_smoothness, score_images
from htgrpo.world.palette import CELL_PX

RewardFn = Callable[[np.ndarray, Sequence[str], Sequence[Mapping[str, Any]]], np.ndarray]
"""(images uint8 [B, H, W, 3], prompts, metadata) -> float rewards [B]."""

_REGISTRY: dict[str, RewardFn] = {}


def register_reward(
    name: str, fn: RewardFn | None = None, *, overwrite: bool = False
) -> RewardFn | Callable[[RewardFn], RewardFn]:
    """Register ``fn`` under ``name``; usable as ``register_reward("x", fn)`` or as a ``@register_reward("x")``."""

    def add(f: RewardFn) -> RewardFn:
        if not name or not isinstance(name, str):
            raise ValueError(f"a reward needs a non-empty name, got {name!r}")
        if name in _REGISTRY and not overwrite:
            raise ValueError(f"reward {name!r} is already registered (pass overwrite=True to replace it)")
        _REGISTRY[name] = f
        return f

    return add if fn is None else add(fn)


def available_rewards() -> list[str]:
    return sorted(_REGISTRY)


def get_reward(name: str) -> RewardFn:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown reward {name!r} in rl.rewards; registered rewards: {', '.join(available_rewards())}"
        ) from None


def _check(images: np.ndarray, prompts: Sequence[str], metadata: Sequence[Mapping[str, Any]]) -> None:
    if len(images) != len(prompts) or len(images) != len(metadata):
        raise ValueError(f"{len(images)} images, {len(prompts)} prompts and {len(metadata)} metadata rows")


_DETECTOR = ShapeDetector()


def _geneval_records(images, prompts, metadata) -> list[dict[str, Any]]:
    _check(images, prompts, metadata)
    if len(images) == 0:
        return []
    return score_images(list(metadata), np.asarray(images), _DETECTOR)


@register_reward("geneval_partial")
def geneval_partial(images, prompts, metadata) -> np.ndarray:
    """Flow-GRPO's partial-credit GenEval score (benchmarks.md §1.10) from the exact shapes detector."""
    return np.array([r["reward"] for r in _geneval_records(images, prompts, metadata)], dtype=np.float64)


@register_reward("geneval_strict")
def geneval_strict(images, prompts, metadata) -> np.ndarray:
    """1.0 when the image is correct by GenEval's official (binary) rule, else 0.0."""
    return np.array(
        [float(r["correct"]) for r in _geneval_records(images, prompts, metadata)], dtype=np.float64
    )


@register_reward("background_smoothness")
def background_smoothness_reward(images, prompts, metadata) -> np.ndarray:
    """Share of adjacent background-cell pairs continuing the rendered gradient (an image-quality signal)."""
    _check(images, prompts, metadata)
    out = np.empty(len(images), dtype=np.float64)
    for i, img in enumerate(np.asarray(images)):
        out[i] = background_smoothness(img, img.shape[0] // CELL_PX)
    return out


@dataclass
class RewardOutput:
    """The weighted total per image and each component's raw (unweighted) value, for logging."""

    total: np.ndarray
    components: dict[str, np.ndarray]


class MixedReward:
    """total = sum_k w_k * reward_k (rewards looked up in the registry when the mix is built)."""

    def __init__(self, weights: Mapping[str, float]) -> None:
        if not weights:
            raise ConfigError(
                "the reward mix is empty; name at least one reward, e.g. {geneval_partial: 1.0}"
            )
        self.weights = dict(weights)
        self.fns = {name: get_reward(name) for name in self.weights}

    def __call__(
        self, images: np.ndarray, prompts: Sequence[str], metadata: Sequence[Mapping[str, Any]]
    ) -> RewardOutput:
        _check(images, prompts, metadata)
        total = np.zeros(len(images), dtype=np.float64)
        components: dict[str, np.ndarray] = {}
        for name, fn in self.fns.items():
            value = np.asarray(fn(images, prompts, metadata), dtype=np.float64).reshape(-1)
            if value.shape != (len(images),):
                raise ValueError(f"reward {name!r} returned {value.shape[0]} values for {len(images)} images")
            components[name] = value
            # NaN stays NaN whatever the weight (0 * NaN), so a broken reward is never hidden by a zero weight
            with np.errstate(invalid="ignore"):
                total = total + self.weights[name] * value
        return RewardOutput(total, components)


def mixed_reward(weights: Mapping[str, float]) -> MixedReward:
    """The weighted sum of the named registry rewards; see :class:`MixedReward`."""
    return MixedReward(weights)


__all__ = [
    "MixedReward",
    "RewardFn",
    "RewardOutput",
    "available_rewards",
    "background_smoothness_reward",
    "geneval_partial",
    "geneval_strict",
    "get_reward",
    "mixed_reward",
    "register_reward",
]
