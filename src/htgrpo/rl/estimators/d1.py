"""d1 / diffu-GRPO's one-step estimator (algorithm.md §2.4, §5.3).

Every image token is masked (V = 0) and scored (U = all): log pi(x | c) ~ sum_i log p(x_i | c~, all masked).
The prompt's *words* are masked independently w.p. ``d1_prompt_mask_prob`` with a fresh mask per inner iteration
(a regulariser); template specials (<|t2i|>, <bos>, <eos>) and padding never are. The prompt mask is part of
the plan, so theta_old, theta_ref and theta see the same masked prompt.
"""

from __future__ import annotations

import torch

from htgrpo.backbones.base import PromptBatch
from htgrpo.rl.estimators.base import Estimator, IterationPlan, RolloutRecord, random_masked


def mask_prompt_words(
    record: RolloutRecord, prob: float, generator: torch.Generator
) -> tuple[PromptBatch, torch.Tensor]:
    """The prompt batch with some words replaced by the mask id, and the [B, L] bool mask applied."""
    hit = random_masked(record.prompt.input_ids.shape, prob, generator) & record.prompt_words
    ids = record.prompt.input_ids.masked_fill(hit, record.mask_id)
    return PromptBatch(ids, record.prompt.attention_mask), hit


class D1Estimator(Estimator):
    name = "d1"
    stages = ("d1",)

    def num_iterations(self, rollout_steps: int) -> int:
        return int(self.rl.inner_iterations)

    def build_plans(self, record: RolloutRecord, generator: torch.Generator) -> list[IterationPlan]:
        plans = []
        hidden = torch.zeros(record.codes.shape, dtype=torch.bool)
        words = max(int(record.prompt_words.sum()), 1)
        for _ in range(self.num_iterations(record.rollout_steps)):
            prompt, hit = mask_prompt_words(record, self.rl.d1_prompt_mask_prob, generator)
            plans.append(
                self._plan(
                    "d1",
                    record,
                    hidden,
                    ~hidden,
                    prompt=prompt,
                    mask_ratio=1.0,
                    info={"prompt_mask_frac": float(hit.sum()) / words},
                )
            )
        return plans
