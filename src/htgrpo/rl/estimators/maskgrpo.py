"""MaskGRPO's estimator (algorithm.md §2.1, §5.1): random re-masking at a rising ratio.

r_k = min(m + (1 - m)(k + 1) / K, 0.999) for k = 0..K-1: each image token is masked independently w.p. r_k (the
last iteration is essentially fully masked, the reverse of HT-GRPO's stages), U_k = the masked tokens, the prompt
is never masked, token-mean loss, no partition and no HCA.
"""

from __future__ import annotations

import torch

from htgrpo.rl.estimators.base import Estimator, IterationPlan, RolloutRecord, random_masked


def maskgrpo_ratios(k_total: int, min_ratio: float) -> list[float]:
    return [min(min_ratio + (1.0 - min_ratio) * (k + 1) / k_total, 0.999) for k in range(k_total)]


class MaskGRPOEstimator(Estimator):
    name = "maskgrpo"
    stages = ("maskgrpo",)

    def num_iterations(self, rollout_steps: int) -> int:
        return int(self.rl.inner_iterations)

    def build_plans(self, record: RolloutRecord, generator: torch.Generator) -> list[IterationPlan]:
        plans = []
        for r in maskgrpo_ratios(self.num_iterations(record.rollout_steps), float(self.rl.min_mask_ratio)):
            masked = random_masked(record.codes.shape, r, generator)
            plans.append(self._plan("maskgrpo", record, ~masked, masked, mask_ratio=r))
        return plans
