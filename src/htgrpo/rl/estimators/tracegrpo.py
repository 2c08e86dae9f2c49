"""TraceRL / TraceGRPO: replay of the recorded unmasking trajectory (algorithm.md §2.4, §5.4).

With shrink s, replayed step j = 0..K-1 (K = ceil(T / s)) covers sampler steps j*s+1 .. (j+1)*s. Its forward
sees exactly the tokens committed before that window (V = commit_step <= j*s) and scores the tokens committed
inside it (U), so the K sets U partition every sample's tokens. No randomness; per-sequence mean loss (the
method default normalisation). A window in which no sample committed anything is an empty plan; the trainer
skips it.
"""

from __future__ import annotations

import math

import torch

from htgrpo.rl.estimators.base import Estimator, IterationPlan, RolloutRecord


class TraceGRPOEstimator(Estimator):
    name = "tracegrpo"
    stages = ("tracegrpo",)

    def num_iterations(self, rollout_steps: int) -> int:
        return math.ceil(rollout_steps / self.rl.trace_shrink)

    def build_plans(self, record: RolloutRecord, generator: torch.Generator) -> list[IterationPlan]:
        s = self.rl.trace_shrink
        plans = []
        for j in range(self.num_iterations(record.rollout_steps)):
            lo, hi = j * s + 1, (j + 1) * s
            visible = record.commit_step < lo
            update = (record.commit_step >= lo) & (record.commit_step <= hi)
            plans.append(
                self._plan("tracegrpo", record, visible, update, info={"first_step": lo, "last_step": hi})
            )
        return plans
