"""Reward functions for RL: a registry of named rewards and their weighted mix (algorithm.md §4.3, §2.5).

A reward function takes the decoded images (uint8 [B, H, W, 3]), the prompts and their GenEval metadata and
returns one float per image. ``mixed_reward({"geneval_aligned": 1.0, ...})`` sums the weighted rewards, as
Flow-GRPO's ``multi_score`` does, and keeps each component for logging. Later rewards (image-quality models)
plug in with ``register_reward``.

The GenEval rewards of the shapes world (benchmarks.md §1):

- ``geneval_aligned``: partial credit in [0, 1] that reads every clause as GenEval's metric does ("at least
  count" unless an exclude makes the count exact) and is 1.0 exactly when GenEval counts the image correct
  (``htgrpo.eval.geneval.aligned_reward``).
- ``geneval_partial``: Flow-GRPO's partial credit, kept faithful for comparison. It demands exact counts, so an
  empty image outranks two copies of the requested object, and it goes negative with too many objects.
- ``geneval_strict``: GenEval's binary ``correct``.

They score each image against its prompt's GenEval metadata, so they are registered with
``needs_metadata=True``; :func:`check_reward_metadata` tells, before a run starts, whether the prompt pool
carries that metadata.

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
_NEEDS_METADATA: set[str] = set()
"""Names of the registered rewards that score images against GenEval metadata (``include`` and ``tag``)."""


def register_reward(
    name: str, fn: RewardFn | None = None, *, overwrite: bool = False, needs_metadata: bool = False
) -> RewardFn | Callable[[RewardFn], RewardFn]:
    """Register ``fn`` under ``name``; usable as ``register_reward("x", fn)`` or as a ``@register_reward("x")``.

    ``needs_metadata``: the reward reads each prompt's GenEval metadata (an ``include`` list and a ``tag``), so
    a prompt pool without it cannot feed it (see :func:`check_reward_metadata`).
    """

    def add(f: RewardFn) -> RewardFn:
        if not name or not isinstance(name, str):
            raise ValueError(f"a reward needs a non-empty name, got {name!r}")
        if name in _REGISTRY and not overwrite:
            raise ValueError(f"reward {name!r} is already registered (pass overwrite=True to replace it)")
        _REGISTRY[name] = f
        if needs_metadata:
            _NEEDS_METADATA.add(name)
        else:
            _NEEDS_METADATA.discard(name)
        return f

    return add if fn is None else add(fn)


def available_rewards() -> list[str]:
    return sorted(_REGISTRY)


def reward_needs_metadata(name: str) -> bool:
    """Whether the registered reward ``name`` scores images against GenEval metadata."""
    get_reward(name)
    return name in _NEEDS_METADATA


def has_geneval_metadata(row: Any) -> bool:
    """A prompt row carries GenEval metadata: a non-empty ``include`` list and a non-empty ``tag``."""
    return (
        isinstance(row, Mapping)
        and isinstance(row.get("include"), list)
        and len(row["include"]) > 0
        and isinstance(row.get("tag"), str)
        and bool(row["tag"])
    )


def check_reward_metadata(rewards: Mapping[str, float], rows: Sequence[Mapping[str, Any]]) -> None:
    """Raise :class:`ConfigError` if a reward of the mix needs GenEval metadata that the prompt pool lacks.

    ``rewards`` is the mix (``rl.rewards``: name -> weight; a weight of 0 still computes the reward), ``rows``
    the prompt pool. A row carries GenEval metadata when it has a non-empty ``include`` list and a ``tag``
    (:func:`has_geneval_metadata`). The error names the key ``rl.rewards.<name>`` of the first such reward in
    the mix (and the others), and says whether no row carries the metadata or how many lack it, with the
    first of them. Unknown reward names raise the registry's error.
    """
    needing = [name for name in rewards if reward_needs_metadata(name)]
    if not needing:
        return
    rows = list(rows)
    missing = [i for i, row in enumerate(rows) if not has_geneval_metadata(row)]
    if not missing:
        return
    key = f"rl.rewards.{needing[0]}"
    others = f" (so do {', '.join(f'rl.rewards.{n}' for n in needing[1:])})" if len(needing) > 1 else ""
    what = "scores each image against its prompt's GenEval metadata (an 'include' list and a 'tag')"
    if len(missing) == len(rows):
        raise ConfigError(
            f"{key}: this reward {what}{others}, but no row of the prompt pool ({len(rows)} rows) carries it; "
            "point rl.prompts at prompts with GenEval metadata (a shapes-world split such as train, or a "
            "GenEval-format source or file) or drop the reward"
        )
    first = rows[missing[0]]
    prompt = first.get("prompt") if isinstance(first, Mapping) else None
    shown = repr(prompt) if prompt is not None else f"{first!r:.120}"
    raise ConfigError(
        f"{key}: this reward {what}{others}, but {len(missing)} of the {len(rows)} rows of the prompt pool "
        f"lack it (the first is row {missing[0]}: {shown})"
    )


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


@register_reward("geneval_partial", needs_metadata=True)
def geneval_partial(images, prompts, metadata) -> np.ndarray:
    """Flow-GRPO's partial-credit GenEval score (benchmarks.md §1.10) from the exact shapes detector.

    Faithful to Flow-GRPO, quirks included: exact counts where GenEval asks for at least ``count`` (two copies
    of a single object score 0, three score -1, below an empty image), so its maximum is not GenEval's
    ``correct``. Kept for comparison; ``geneval_aligned`` is the one that agrees with the metric.
    """
    return np.array([r["reward"] for r in _geneval_records(images, prompts, metadata)], dtype=np.float64)


@register_reward("geneval_aligned", needs_metadata=True)
def geneval_aligned(images, prompts, metadata) -> np.ndarray:
    """GenEval partial credit aligned with the metric, from the exact shapes detector: in [0, 1], 0 for an
    empty or invalid image, 1.0 exactly when GenEval counts the image correct, and never lowered by a further
    correct object where GenEval asks for "at least" (``htgrpo.eval.geneval.aligned_reward``)."""
    return np.array(
        [r["reward_aligned"] for r in _geneval_records(images, prompts, metadata)], dtype=np.float64
    )


@register_reward("geneval_strict", needs_metadata=True)
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
                "the reward mix is empty; name at least one reward, e.g. {geneval_aligned: 1.0}"
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
            # NaN stays NaN whatever the weight (0 * NaN), so a broken reward is never hidden by a zero weight;
            # a product or sum that overflows is infinite, and counted with the non-finite rewards when scoring
            with np.errstate(invalid="ignore", over="ignore"):
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
    "check_reward_metadata",
    "geneval_aligned",
    "geneval_partial",
    "geneval_strict",
    "get_reward",
    "has_geneval_metadata",
    "mixed_reward",
    "register_reward",
    "reward_needs_metadata",
]
