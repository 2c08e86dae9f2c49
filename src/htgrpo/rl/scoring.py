"""Rewards and group advantages of one RL step's rollout, without the policy (numpy only, no torch).

``score_rollout`` is what ``GRPOTrainer.score`` runs; the pipeline's reward step calls it directly, with only the
reward functions, the step's rollout (``RolloutBatch``, numpy trajectories) and the per-prompt statistics of the
run's trainer state, so scoring needs neither the backbone nor the trainer.
"""

from __future__ import annotations

import math
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from htgrpo.config import RLConfig
from htgrpo.rl.advantages import PerPromptStatTracker, group_advantages
from htgrpo.rl.phases import RolloutBatch, ScoredBatch
from htgrpo.rl.rewards import MixedReward
from htgrpo.world.grammar import TASKS, Metadata

Gather = Callable[[tuple], list[tuple]]
"""Every rank's (total, components, texts, metas), in rank order (a distributed run's all-gather)."""


def _round(x: float | None, nd: int = 6) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), nd)


NONFINITE_SKIP = "every group was skipped (non-finite rewards)"
"""The ``skipped`` reason of a step whose every reward was non-finite (or overflowed); ``rl.max_skipped_steps``
such steps in a row stop the run."""


def nonfinite_components(
    weights: Mapping[str, float], components: Mapping[str, np.ndarray], total: np.ndarray, dropped: np.ndarray
) -> dict[str, int]:
    """What made the ``dropped`` samples non-finite, as a count of samples per cause: a reward component's name
    (its value NaN or infinite, or its weighted value overflowing), ``weighted_sum`` (every weighted component
    finite, their sum not) or ``group_statistics`` (a finite total whose group's mean, std or z-score overflowed)."""
    out: dict[str, int] = {}
    explained = np.zeros(dropped.shape, dtype=bool)
    for name, value in components.items():
        with np.errstate(over="ignore", invalid="ignore"):
            bad = ~np.isfinite(weights.get(name, 1.0) * np.asarray(value, dtype=np.float64))
        if n := int((bad & dropped).sum()):
            out[name] = n
        explained |= bad
    rest = dropped & ~explained
    if n := int((rest & ~np.isfinite(total)).sum()):
        out["weighted_sum"] = n
    if n := int((rest & np.isfinite(total)).sum()):
        out["group_statistics"] = n
    return out


def per_task(total: np.ndarray, metas: list[Metadata]) -> dict[str, float | None]:
    """Mean finite reward per GenEval task."""
    by: dict[str, list[float]] = defaultdict(list)
    for r, m in zip(total, metas, strict=True):
        if math.isfinite(r):
            by[m["tag"]].append(float(r))
    return {t: _round(float(np.mean(by[t])), 4) for t in TASKS if t in by}


def score_rollout(
    rl: RLConfig,
    reward: MixedReward,
    batch: RolloutBatch,
    tracker: PerPromptStatTracker | None = None,
    *,
    rank: int = 0,
    gather: Gather | None = None,
) -> ScoredBatch:
    """Rewards and group advantages of a step's rollout (updates ``tracker``, the per-prompt statistics).

    With ``gather`` (a distributed run), every rank scores the whole step, so advantages, statistics and the
    record are global; the returned advantages and ``keep`` are this rank's rows.
    """
    t0 = time.perf_counter()
    rewards = reward(batch.images, batch.texts, batch.metas)
    total, components, texts, metas, lo = (
        rewards.total,
        dict(rewards.components),
        batch.texts,
        batch.metas,
        0,
    )
    if gather is not None:
        parts = gather((total, components, texts, metas))
        lo = sum(len(part[0]) for part in parts[:rank])
        total = np.concatenate([part[0] for part in parts])
        components = {k: np.concatenate([part[1][k] for part in parts]) for k in components}
        texts = [t for part in parts for t in part[2]]
        metas = [m for part in parts for m in part[3]]
    mine = slice(lo, lo + len(batch.texts))
    adv = group_advantages(
        total,
        rl.group_size,
        rl.advantage_clip,
        tracker=tracker,
        prompts=texts,
        drop_zero_variance=rl.drop_zero_variance_groups,
    )
    seconds = time.perf_counter() - t0
    finite = np.isfinite(total)
    with np.errstate(over="ignore", invalid="ignore"):  # huge finite rewards: the mean and std may overflow
        mean = float(total[finite].mean()) if finite.any() else None
        std = float(total[finite].std()) if finite.any() else None
        means = {k: float(np.nanmean(v)) if np.isfinite(v).any() else None for k, v in components.items()}
    record: dict[str, Any] = {
        "step": batch.step,
        "images_sampled": batch.step * len(texts),
        "reward_mean": _round(mean),
        "reward_std": _round(std),
        "reward_per_task": per_task(total, metas),
        "reward_components": {k: _round(v) for k, v in means.items()},
        "nonfinite_rewards": adv.nonfinite,
        **(
            {
                "nonfinite_components": nonfinite_components(
                    getattr(reward, "weights", {}), components, total, adv.dropped
                )
            }
            if adv.nonfinite and adv.dropped is not None
            else {}
        ),
        "groups_skipped": adv.groups_skipped,
        "zero_variance_share": _round(adv.zero_variance_share, 4),
        "samples_kept": int(adv.keep.sum()),
        "forward_passes_per_sample": {"rollout": batch.sample.forward_passes},
    }
    if adv.nonfinite:
        warnings.warn(
            f"RL step {batch.step}: dropped {adv.nonfinite} non-finite reward(s); "
            f"{adv.groups_skipped} group(s) left with < 2 valid samples were skipped",
            RuntimeWarning,
            stacklevel=4,
        )
    skip = None
    if not adv.keep.any():
        skip = (
            NONFINITE_SKIP
            if adv.groups_skipped == adv.groups
            else "no sample left to update (zero-variance groups dropped)"
        )
    return ScoredBatch(
        batch,
        rewards.total,
        dict(rewards.components),
        adv.advantages[mine],
        adv.keep[mine],
        record,
        tracker.state_dict() if tracker else None,
        {"reward": seconds},
        skip,
    )


__all__ = ["NONFINITE_SKIP", "nonfinite_components", "per_task", "score_rollout"]
