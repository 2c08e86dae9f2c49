"""HT-GRPO's prompt-conditioned, staged estimator (algorithm.md §4.4-4.7).

The rollout's tokens are split into structure S and refinement R (``hierarchy.partition_tokens``) and weighted by
HCA (``hierarchy.hca_weights``). The inner loop runs n_global, then n_struct, then n_refine optimizer steps.

``estimator=staged`` (the spec's table, §4.6): the states are drawn by re-masking the final image.

| stage      | V (seen)                                              | U (scored)                  |
|------------|-------------------------------------------------------|-----------------------------|
| global     | every token visible w.p. 1 - r                        | all tokens with V = 0       |
| structure  | R all masked; each S token visible w.p. 1 - r         | masked structure tokens     |
| refinement | S all visible; each R token visible w.p. 1 - r        | masked refinement tokens    |

Within a stage of n iterations, r_j = 1 - (1 - m)(j - 1) / max(n - 1, 1): every stage starts from the fully
masked state (r = 1) and ends at m. ``estimator=fully_masked``: V = 0 in every stage, only U changes (S, R or
all). The prompt is never masked.

``estimator=trajectory``: the other reading of "an estimator that starts from a fully masked state". The global
stage is as in ``staged``. The structure stage replays the rollout's first sampler steps, from the fully masked
state, on the states the sampler actually visited: replayed step s sees the tokens committed before s and scores
the tokens committed at s (TraceRL's replay). The refinement stage replays the remaining steps. The split is the
last step by which, on average over the batch, at most ceil(rho * N) tokens were committed (so "structure" is the
early sketch the sampler drew), at least one step each. The replayed steps of a stage are split into n_struct
(n_refine) consecutive groups, each accumulated into one optimizer step, so the method takes n_global + n_struct +
n_refine optimizer steps per rollout like ``staged``, at T + n_global forwards per sample.

HCA in every stage. In ``staged`` the scored set of a structure (refinement) iteration lies wholly inside S (R),
so w is one constant over it; so is it, nearly, for a replayed early (late) step. A constant factor on a loss does
not change the update: the gradient-norm clip divides it out when it is active, and AdamW divides it out in any
case (m / sqrt(v) is scale-free). The stage's credit therefore enters as a step size. The trainer computes, per
optimizer step, the mean HCA weight over the tokens it scores, w_bar = sum_U w / |U|; it divides the loss's
weights by w_bar (so only the relative credit *within* the step shapes the gradient direction) and multiplies the
step's learning rate by w_bar. A structure step thus moves the policy (1 + alpha) N / sum(u) times as far as an
unweighted one and a refinement step N / sum(u) times; a global step, whose U is a random mix, about 1x. With
alpha = 0, w = 1 everywhere and nothing changes. ``GRPOTrainer.update`` implements this for every method (the
baselines' w = 1 gives w_bar = 1).
"""

from __future__ import annotations

import numpy as np
import torch

from htgrpo.rl.estimators.base import Estimator, IterationPlan, RolloutRecord, random_masked
from htgrpo.rl.hierarchy import (
    EXACT_RULES,
    hca_weights,
    partition_order,
    partition_tokens,
    structure_count,
)


def stage_ratios(n_stage: int, min_ratio: float) -> list[float]:
    """r_j for j = 1..n_stage: from 1 down to ``min_ratio`` (a single iteration stays at 1)."""
    return [1.0 - (1.0 - min_ratio) * j / max(n_stage - 1, 1) for j in range(n_stage)]


def structure_steps(commit_step: torch.Tensor, rollout_steps: int, rho: float) -> int:
    """The last sampler step of the trajectory's structure part: the largest s in [1, T - 1] by which at most
    ceil(rho * N) tokens were committed on average over the batch (1 if none is)."""
    if rollout_steps < 2:
        raise ValueError(
            "estimator=trajectory needs at least 2 rollout steps (a structure and a refinement part)"
        )
    limit = structure_count(commit_step.shape[1], rho)
    best = 1
    for s in range(1, rollout_steps):
        if float((commit_step <= s).sum(1).float().mean()) <= limit:
            best = s
    return best


class HTGRPOEstimator(Estimator):
    name = "ht-grpo"
    stages = ("global", "structure", "refinement")

    def num_iterations(self, rollout_steps: int) -> int:
        if self.rl.estimator == "trajectory":
            return self.rl.n_global + rollout_steps * int(self.rl.n_struct + self.rl.n_refine > 0)
        return self.rl.n_global + self.rl.n_struct + self.rl.n_refine

    def schedule(self) -> list[tuple[str, float]]:
        """(stage, r) per inner iteration, in order (staged and fully_masked)."""
        m = float(self.rl.min_mask_ratio)
        counts = (self.rl.n_global, self.rl.n_struct, self.rl.n_refine)
        return [(stage, r) for stage, n in zip(self.stages, counts, strict=True) for r in stage_ratios(n, m)]

    def partition(self, record: RolloutRecord):
        rl = self.rl
        order = partition_order(
            rl.partition,
            commit_step=record.commit_step,
            entropy_commit=record.entropy_commit,
            entropy0=record.entropy0,
            structure_score=record.structure_score,
        )
        exact = record.structure_score > 0 if rl.partition in EXACT_RULES else None
        return partition_tokens(order, rl.rho, exact)

    def build_plans(self, record: RolloutRecord, generator: torch.Generator) -> list[IterationPlan]:
        rl = self.rl
        part = self.partition(record)
        weights = hca_weights(part, rl.alpha, rl.hca)
        s = part.structure
        if rl.estimator == "trajectory":
            return self._trajectory_plans(record, generator, s, weights)
        plans = []
        for stage, r in self.schedule():
            if rl.estimator == "fully_masked":
                visible = torch.zeros_like(s)
            else:
                visible = self._remasked(stage, s, r, generator)
            scope = {"global": torch.ones_like(s), "structure": s, "refinement": ~s}[stage]
            plans.append(
                self._plan(
                    stage, record, visible, scope & ~visible, weights=weights, mask_ratio=r, structure=s
                )
            )
        return plans

    @staticmethod
    def _remasked(stage: str, s: torch.Tensor, r: float, generator: torch.Generator) -> torch.Tensor:
        masked = random_masked(s.shape, r, generator)
        if stage == "global":
            return ~masked
        if stage == "structure":
            return s & ~masked
        return s | ~masked

    def _trajectory_plans(
        self, record: RolloutRecord, generator: torch.Generator, s: torch.Tensor, weights: torch.Tensor
    ) -> list[IterationPlan]:
        rl = self.rl
        plans = []
        for j, r in enumerate(stage_ratios(rl.n_global, float(rl.min_mask_ratio)) if rl.n_global else []):
            visible = self._remasked("global", s, r, generator)
            plans.append(
                self._plan(
                    "global",
                    record,
                    visible,
                    ~visible,
                    weights=weights,
                    mask_ratio=r,
                    structure=s,
                    step_group=j,
                )
            )
        t = record.rollout_steps
        split = structure_steps(record.commit_step, t, rl.rho)
        parts = (
            ("structure", range(1, split + 1), rl.n_struct),
            ("refinement", range(split + 1, t + 1), rl.n_refine),
        )
        group = rl.n_global
        for stage, steps, n_groups in parts:
            if n_groups == 0:
                continue
            for chunk in np.array_split(np.asarray(steps), min(n_groups, len(steps))):
                for step in chunk.tolist():
                    visible = record.commit_step < step
                    update = record.commit_step == step
                    plans.append(
                        self._plan(
                            stage,
                            record,
                            visible,
                            update,
                            weights=weights,
                            structure=s,
                            step_group=group,
                            info={"replayed_step": step},
                        )
                    )
                group += 1
        return plans
