"""Coupled masking (Coupled-GRPO / DiffuCoder; algorithm.md §5.5): a mask and its complement.

Pair j draws one ratio t ~ U[lo, hi] per sample and a mask M at that ratio; iteration 2j sees the complement of
M and scores M, iteration 2j+1 sees M and scores its complement, so every token is scored exactly once per pair.
K (even) = 2 x pairs; token-mean loss; the prompt is never masked.
"""

from __future__ import annotations

import torch

from htgrpo.rl.estimators.base import Estimator, IterationPlan, RolloutRecord, random_masked


class CoupledEstimator(Estimator):
    name = "coupled"
    stages = ("coupled",)

    def num_iterations(self, rollout_steps: int) -> int:
        return int(self.rl.inner_iterations)

    def build_plans(self, record: RolloutRecord, generator: torch.Generator) -> list[IterationPlan]:
        lo, hi = self.rl.coupled_t_range
        plans = []
        for _ in range(self.num_iterations(record.rollout_steps) // 2):
            t = lo + (hi - lo) * torch.rand(record.batch, 1, generator=generator)
            m = random_masked(record.codes.shape, t, generator)
            ratio = float(t.mean())
            plans.append(self._plan("coupled", record, ~m, m, mask_ratio=ratio))
            plans.append(self._plan("coupled", record, m, ~m, mask_ratio=1.0 - ratio))
        return plans
