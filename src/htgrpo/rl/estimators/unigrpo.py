"""UniGRPO-style random-ratio masking (MMaDA; algorithm.md §5.2).

Each sample draws one u ~ U[0, 1); iteration k = 0..K-1 masks every image token w.p. p_k = (k + u) / K, so across
the K inner updates a sample's ratios are uniformly spaced over [0, 1) rather than independent. U_k = the masked
tokens; the prompt is never masked; the loss is a per-sample mean (the method default normalisation).
"""

from __future__ import annotations

import torch

from htgrpo.rl.estimators.base import Estimator, IterationPlan, RolloutRecord, random_masked


class UniGRPOEstimator(Estimator):
    name = "unigrpo"
    stages = ("unigrpo",)

    def num_iterations(self, rollout_steps: int) -> int:
        return int(self.rl.inner_iterations)

    def sample_ratios(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        """[K, B] ratios p_k = (k + u_b) / K."""
        k_total = self.num_iterations(0)
        u = torch.rand(batch, generator=generator)
        return (torch.arange(k_total, dtype=torch.float32)[:, None] + u[None]) / k_total

    def build_plans(self, record: RolloutRecord, generator: torch.Generator) -> list[IterationPlan]:
        ratios = self.sample_ratios(record.batch, generator)
        plans = []
        for p in ratios:
            masked = random_masked(record.codes.shape, p[:, None], generator)
            plans.append(self._plan("unigrpo", record, ~masked, masked, mask_ratio=float(p.mean())))
        return plans
