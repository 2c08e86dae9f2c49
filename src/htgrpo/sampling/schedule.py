"""Step schedules shared by the samplers: how many tokens stay masked, and how loud the remask noise is.

All schedules are plain Python lists computed once per call, so the per-step loop only indexes them.
"""

from __future__ import annotations

import math
from typing import Literal

import torch


def cosine_masked_counts(num_tokens: int, steps: int) -> list[int]:
    """Tokens still masked *after* each step s = 0..T-1 of a MaskGIT cosine schedule.

    floor(N * cos(pi/2 * (s+1)/T)), forced to 0 at the last step so the image is complete (MMaDA instead keeps
    one mask there and returns the last full sample; Lumina-DiMOO ends at 0 like this). Each step commits at least
    one token while any remain, so long schedules (T close to N) never stall on a flat stretch of the floor.

    The ratio is computed in float32 torch arithmetic, as both official samplers do (``torch.tensor(ratio)`` then
    ``torch.cos(t * pi * 0.5)``): in float64, cos(pi/3) * 1024 is just above 512, in float32 just below, so MMaDA
    at T = 15 keeps 511 tokens masked after step 10, not 512.
    """
    if num_tokens < 0 or steps <= 0:
        raise ValueError(f"need num_tokens >= 0 and steps > 0, got {num_tokens} and {steps}")
    counts: list[int] = []
    remaining = num_tokens
    for s in range(steps):
        ratio = torch.cos(torch.tensor((s + 1) / steps) * math.pi * 0.5)  # float32, as the official samplers
        target = 0 if s == steps - 1 else int(torch.floor(num_tokens * ratio))
        remaining = max(0, min(target, remaining - 1))
        counts.append(remaining)
    return counts


def remask_noise_scales(
    tau: float, steps: int, schedule: Literal["annealed", "constant"] = "annealed"
) -> list[float]:
    """Scale of the Gumbel noise added to confidences at each step.

    annealed: MMaDA reassigns tau <- tau * (1 - (s+1)/T) before using it at step s, so the factors compound
    (T=8, tau=1: 0.875, 0.656, 0.410, 0.205, 0.077, 0.019, 0.0024, 0). constant: Lumina-DiMOO's fixed tau.
    """
    if schedule == "constant":
        return [float(tau)] * steps
    if schedule != "annealed":
        raise ValueError(f"unknown noise schedule {schedule!r}; expected 'annealed' or 'constant'")
    scales, t = [], float(tau)
    for s in range(steps):
        t *= 1.0 - (s + 1) / steps
        scales.append(t)
    return scales


def emerge_stay_probs(steps: int) -> list[float]:
    """MaskGRPO's ancestral schedule: probability k((s+1)/T) / k(s/T) that a masked token stays masked at step s.

    k(t) = cos(pi t / 2). The last entry is exactly 0 (cos(pi/2) is 6e-17 in floating point), so every token is
    revealed by the end.
    """
    if steps <= 0:
        raise ValueError(f"steps must be > 0, got {steps}")
    probs = []
    for s in range(steps):
        k_t = math.cos(math.pi / 2 * s / steps)
        k_s = math.cos(math.pi / 2 * (s + 1) / steps)
        probs.append(0.0 if s == steps - 1 else k_s / k_t)
    return probs


def emerge_expected_reveal_fractions(steps: int) -> list[float]:
    """Expected share of all tokens revealed at step s under the emerge schedule: k(s/T) - k((s+1)/T)."""
    k = [math.cos(math.pi / 2 * s / steps) for s in range(steps)] + [0.0]
    return [k[s] - k[s + 1] for s in range(steps)]
