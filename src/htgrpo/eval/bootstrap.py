"""95 % intervals of benchmark scores from a bootstrap over prompts (numpy only).

A score is computed from per-prompt rows (``per_prompt``): GenEval's overall is the unweighted mean of the task
means, so prompts are resampled *within* each task (a stratified bootstrap) and every resample keeps each task's
prompt count. Rewards are means over prompts. Two models evaluated on the same prompts are compared with a paired
bootstrap: the same resampled prompts for both, so the interval is that of the difference, which is much tighter
than the two intervals side by side.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

BOOTSTRAP_SAMPLES = 2000


def per_prompt(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (tag, prompt), in first-seen order: the share of its images judged correct and the mean of each
    reward present in the records (``reward``, ``reward_aligned``)."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for rec in records:
        key = (rec["tag"], rec["prompt"])
        row = rows.setdefault(key, {"tag": rec["tag"], "prompt": rec["prompt"], "_n": 0, "correct": 0.0})
        row["_n"] += 1
        row["correct"] += float(rec["correct"])
        for k in ("reward", "reward_aligned"):
            if k in rec:
                row[k] = row.get(k, 0.0) + float(rec[k])
    out = []
    for row in rows.values():
        n = row.pop("_n")
        out.append({k: (v / n if isinstance(v, float) else v) for k, v in row.items()})
    return out


def mean_rows(runs: Sequence[Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Rows averaged over runs (seeds) that evaluated the same prompts in the same order."""
    if not runs:
        raise ValueError("mean_rows needs at least one run")
    _same_prompts(runs)
    out = []
    for rows in zip(*runs, strict=True):
        merged = {"tag": rows[0]["tag"], "prompt": rows[0]["prompt"]}
        for k in rows[0]:
            if k not in ("tag", "prompt") and all(k in r for r in rows):
                merged[k] = float(np.mean([r[k] for r in rows]))
        out.append(merged)
    return out


def _same_prompts(runs: Sequence[Sequence[Mapping[str, Any]]]) -> None:
    keys = [[(r["tag"], r["prompt"]) for r in rows] for rows in runs]
    if any(k != keys[0] for k in keys[1:]):
        raise ValueError("the runs did not evaluate the same prompts in the same order")


def _groups(tags: np.ndarray, key: str) -> list[np.ndarray]:
    """The prompt indices the score averages over first: per task for GenEval's overall (mean of task means),
    one group of every prompt for a reward."""
    if key == "correct":
        return [np.flatnonzero(tags == t) for t in dict.fromkeys(tags.tolist())]
    return [np.arange(len(tags))]


def _resampled(values: np.ndarray, groups: list[np.ndarray], rng: np.random.Generator, n: int) -> np.ndarray:
    """[n] bootstrap replicates of the mean of group means, prompts drawn with replacement within each group."""
    means = np.zeros(n)
    for idx in groups:
        draw = idx[rng.integers(len(idx), size=(n, len(idx)))]
        means += values[draw].mean(1)
    return means / len(groups)


def _point(values: np.ndarray, groups: list[np.ndarray]) -> float:
    return float(np.mean([values[idx].mean() for idx in groups]))


def interval(
    rows: Sequence[Mapping[str, Any]],
    key: str = "correct",
    *,
    level: float = 0.95,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
) -> dict[str, float]:
    """The score of ``key`` (``correct``: GenEval's overall; a reward: the mean over prompts) with its bootstrap
    interval: {value, lo, hi, half_width}."""
    if not rows:
        raise ValueError("no rows to bootstrap")
    values = np.array([r[key] for r in rows], dtype=np.float64)
    return _bootstrap(values, [r["tag"] for r in rows], key, level, samples, seed)


def paired_difference(
    a: Sequence[Mapping[str, Any]],
    b: Sequence[Mapping[str, Any]],
    key: str = "correct",
    *,
    level: float = 0.95,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
) -> dict[str, float]:
    """Score(a) - score(b) over the same prompts, with the interval of a paired bootstrap (the same resampled
    prompts for both): {value, lo, hi, half_width}. ``a`` beats ``b`` beyond the interval when lo > 0."""
    _same_prompts([a, b])
    diff = np.array([ra[key] - rb[key] for ra, rb in zip(a, b, strict=True)], dtype=np.float64)
    return _bootstrap(diff, [r["tag"] for r in a], key, level, samples, seed)


def _bootstrap(
    values: np.ndarray, tags: Sequence[str], key: str, level: float, samples: int, seed: int
) -> dict[str, float]:
    """The point value of per-prompt ``values`` and the quantiles of its bootstrap replicates."""
    groups = _groups(np.array(tags), key)
    reps = _resampled(values, groups, np.random.default_rng(seed), samples)
    lo, hi = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    return _summary(_point(values, groups), float(lo), float(hi))


def _summary(value: float, lo: float, hi: float) -> dict[str, float]:
    return {
        "value": round(value, 4),
        "lo": round(lo, 4),
        "hi": round(hi, 4),
        "half_width": round((hi - lo) / 2, 4),
    }


def verdict(diff: Mapping[str, float]) -> str:
    """'better', 'worse' or 'tied' from a paired difference's interval."""
    if diff["lo"] > 0:
        return "better"
    if diff["hi"] < 0:
        return "worse"
    return "tied"


__all__ = ["BOOTSTRAP_SAMPLES", "interval", "mean_rows", "paired_difference", "per_prompt", "verdict"]
