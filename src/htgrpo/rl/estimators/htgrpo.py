"""HT-GRPO's prompt-conditioned, staged estimator (algorithm.md §4.4-4.7).

The rollout's tokens are split into structure S and refinement R (``hierarchy.partition_tokens``) and weighted by
HCA (``hierarchy.hca_weights``). The K = n_global + n_struct + n_refine inner iterations run in that order:

| stage      | V (seen)                                              | U (scored)                  |
|------------|-------------------------------------------------------|-----------------------------|
| global     | every token visible w.p. 1 - r                        | all tokens with V = 0       |
| structure  | R all masked; each S token visible w.p. 1 - r         | masked structure tokens     |
| refinement | S all visible; each R token visible w.p. 1 - r        | masked refinement tokens    |

Within a stage of n iterations, r_j = 1 - (1 - m)(j - 1) / max(n - 1, 1): every stage starts from the fully
masked state (r = 1) and ends at m. ``estimator=fully_masked``: V = 0 in every stage, only U changes (S, R or
all). The prompt is never masked.
"""

from __future__ import annotations

import torch

from htgrpo.rl.estimators.base import Estimator, IterationPlan, RolloutRecord, random_masked
from htgrpo.rl.hierarchy import hca_weights, partition_order, partition_tokens


def stage_ratios(n_stage: int, min_ratio: float) -> list[float]:
    """r_j for j = 1..n_stage: from 1 down to ``min_ratio`` (a single iteration stays at 1)."""
    return [1.0 - (1.0 - min_ratio) * j / max(n_stage - 1, 1) for j in range(n_stage)]


class HTGRPOEstimator(Estimator):
    name = "ht-grpo"
    stages = ("global", "structure", "refinement")

    def num_iterations(self, rollout_steps: int) -> int:
        return self.rl.n_global + self.rl.n_struct + self.rl.n_refine

    def schedule(self) -> list[tuple[str, float]]:
        """(stage, r) per inner iteration, in order."""
        m = float(self.rl.min_mask_ratio)
        counts = (self.rl.n_global, self.rl.n_struct, self.rl.n_refine)
        return [(stage, r) for stage, n in zip(self.stages, counts, strict=True) for r in stage_ratios(n, m)]

    def build_plans(self, record: RolloutRecord, generator: torch.Generator) -> list[IterationPlan]:
        rl = self.rl
        order = partition_order(
            rl.partition,
            commit_step=record.commit_step,
            entropy_commit=record.entropy_commit,
            entropy0=record.entropy0,
        )
        part = partition_tokens(order, rl.rho)
        weights = hca_weights(part, rl.alpha, rl.hca)
        s = part.structure
        plans = []
        for stage, r in self.schedule():
            if rl.estimator == "fully_masked":
                visible = torch.zeros_like(s)
            else:
                masked = random_masked(s.shape, r, generator)
                if stage == "global":
                    visible = ~masked
                elif stage == "structure":
                    visible = s & ~masked
                else:
                    visible = s | ~masked
            scope = {"global": torch.ones_like(s), "structure": s, "refinement": ~s}[stage]
            plans.append(
                self._plan(
                    stage, record, visible, scope & ~visible, weights=weights, mask_ratio=r, structure=s
                )
            )
        return plans
