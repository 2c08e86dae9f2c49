"""Group-relative advantages (algorithm.md §4.3): A = (R - mean_group) / (std_group + 1e-5), per prompt group.

Rewards arrive as [P * G] in group order (prompt p's G samples are rows p*G .. p*G+G-1). The std is the unbiased
one (ddof = 1), as TRL's GRPOTrainer computes it for MaskGRPO. A group whose valid rewards are all equal gets
advantage exactly 0 (not (R - mean) / 1e-5 of a rounding error). Non-finite rewards are dropped: the sample gets
no advantage and leaves the update; a group left with fewer than 2 valid samples is skipped whole. Finite rewards
so large that the group's mean, std or z-scores overflow (1e308 and -1e308 in one group) count as non-finite too:
the whole group is skipped, and its samples are counted, rather than given NaN or silently zero advantages.

``PerPromptStatTracker`` is the optional Flow-GRPO variant: a prompt's rewards are normalised by the mean and std
of that prompt's recent rewards (a buffer that outlives the step), not only by the current group.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

STD_EPS = 1e-5


@dataclass
class Advantages:
    """Per-sample advantages and what was dropped.

    ``advantages`` [B] (0.0 where not kept), ``keep`` [B] bool: the samples that enter the update.
    """

    advantages: np.ndarray
    keep: np.ndarray
    nonfinite: int
    """Samples whose reward was NaN or infinite, or whose group statistics overflowed."""
    groups: int
    groups_skipped: int
    """Groups left with fewer than 2 valid samples (skipped whole)."""
    zero_variance_groups: int
    """Groups (among those not skipped) whose valid rewards are all equal: zero advantage, no policy gradient."""
    dropped: np.ndarray | None = None
    """[B] bool: the samples counted in ``nonfinite`` (their reward, or their group's statistics, not finite)."""

    @property
    def zero_variance_share(self) -> float:
        used = self.groups - self.groups_skipped
        return self.zero_variance_groups / used if used else 0.0


def group_advantages(
    rewards: np.ndarray,
    group_size: int,
    clip: float | None = None,
    *,
    tracker: PerPromptStatTracker | None = None,
    prompts: Sequence[str] | None = None,
    drop_zero_variance: bool = False,
) -> Advantages:
    """Group z-scores of ``rewards`` [P * G]; see the module docstring. ``clip`` bounds |A|."""
    rewards = np.asarray(rewards, dtype=np.float64).reshape(-1)
    if group_size < 2:
        raise ValueError(f"group_size must be at least 2, got {group_size}")
    if rewards.size % group_size:
        raise ValueError(f"{rewards.size} rewards do not split into groups of {group_size}")
    groups = rewards.reshape(-1, group_size)
    valid = np.isfinite(groups)
    adv = np.zeros_like(groups)
    keep = valid.copy()
    skipped = zero_var = 0
    for g in range(groups.shape[0]):
        r = groups[g, valid[g]]
        if r.size < 2:
            keep[g] = False
            skipped += 1
            continue
        if r.max() == r.min():
            zero_var += 1
            if drop_zero_variance:
                keep[g] = False
            continue
        z = _zscores(r, ddof=1)
        if z is None:  # the statistics overflowed: as unusable as a NaN reward
            valid[g] = keep[g] = False
            skipped += 1
            continue
        adv[g, valid[g]] = z
    adv = adv.reshape(-1)
    keep = keep.reshape(-1)
    dropped = ~valid.reshape(-1)
    if tracker is not None:
        if prompts is None or len(prompts) != rewards.size:
            raise ValueError("per-prompt stat tracking needs one prompt per reward")
        tracked = tracker.update([p for p, k in zip(prompts, keep, strict=True) if k], rewards[keep])
        adv = np.zeros_like(rewards)
        adv[keep] = tracked
        overflowed = keep & ~np.isfinite(adv)  # a prompt's pooled statistics overflowed
        if overflowed.any():
            hit = overflowed.reshape(-1, group_size).any(1)
            dropped |= overflowed
            keep &= ~overflowed
            short = hit & ((~dropped).reshape(-1, group_size).sum(1) < 2)  # left with < 2 valid samples
            keep.reshape(-1, group_size)[short] = False
            skipped += int(short.sum())
    if clip is not None:
        adv = np.clip(adv, -clip, clip)
    adv[~keep] = 0.0
    return Advantages(adv, keep, int(dropped.sum()), groups.shape[0], skipped, zero_var, dropped)


def _zscores(r: np.ndarray, ddof: int) -> np.ndarray | None:
    """(r - mean) / (std + eps), or None when the mean, the std or a z-score is not finite (an overflow)."""
    with np.errstate(over="ignore", invalid="ignore"):
        mean = r.mean()
        std = r.std(ddof=ddof)
        z = (r - mean) / (std + STD_EPS)
    if not (np.isfinite(mean) and np.isfinite(std) and np.isfinite(z).all()):
        return None
    return z


class PerPromptStatTracker:
    """Flow-GRPO-style per-prompt statistics: A = (R - mean_prompt) / (std_prompt + 1e-5).

    The statistics cover this call's rewards of the prompt plus up to ``buffer`` earlier ones (population std,
    as Flow-GRPO's ``np.std``). A prompt whose recorded rewards are all equal gets advantage 0; one whose statistics
    overflow gets NaN (``group_advantages`` then drops its samples as non-finite) and adds nothing to its history.
    """

    def __init__(self, buffer: int) -> None:
        if buffer < 1:
            raise ValueError(f"buffer must be >= 1, got {buffer}")
        self.buffer = buffer
        self.history: dict[str, deque[float]] = {}

    def update(self, prompts: Sequence[str], rewards: np.ndarray) -> np.ndarray:
        rewards = np.asarray(rewards, dtype=np.float64)
        out = np.zeros_like(rewards)
        by_prompt: dict[str, list[int]] = {}
        for i, p in enumerate(prompts):
            by_prompt.setdefault(p, []).append(i)
        for p, idx in by_prompt.items():
            now = rewards[idx]
            past = np.asarray(self.history.get(p, ()), dtype=np.float64)
            pool = np.concatenate([past, now])
            if pool.max() > pool.min():
                with np.errstate(over="ignore", invalid="ignore"):
                    mean, std = pool.mean(), pool.std()
                    z = (now - mean) / (std + STD_EPS)
                if not (np.isfinite(mean) and np.isfinite(std) and np.isfinite(z).all()):
                    out[idx] = np.nan  # overflowed: the caller drops these samples; the history keeps none
                    continue
                out[idx] = z
            hist = self.history.setdefault(p, deque(maxlen=self.buffer))
            hist.extend(now.tolist())
        return out

    def state_dict(self) -> dict:
        return {"buffer": self.buffer, "history": {p: list(h) for p, h in self.history.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.buffer = int(state["buffer"])
        self.history = {p: deque(h, maxlen=self.buffer) for p, h in state["history"].items()}


__all__ = ["Advantages", "PerPromptStatTracker", "STD_EPS", "group_advantages"]
