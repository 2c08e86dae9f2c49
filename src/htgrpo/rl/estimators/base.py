"""What every RL estimator shares: the rollout record it reads, the per-iteration plan it writes, mask draws.

An estimator turns one rollout batch into K *iteration plans*. Plan k says, per sample, which image tokens the
scored forward sees (visibility V_k; the rest are the mask token), which tokens are scored and updated (U_k), the
prompt batch to condition on (d1 masks prompt words; everyone else passes the prompt through) and the per-token
advantage weights (HT-GRPO's HCA; 1 elsewhere). Plans are drawn once, right after the rollout, from one seeded
generator, and the trainer reuses each plan for theta_old, theta_ref and theta: the three log-probs of an
iteration always see the same masks (§4.6, §4.12).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from htgrpo.backbones.base import PromptBatch
from htgrpo.config import RLConfig


@dataclass
class RolloutRecord:
    """The kept samples of one rollout batch, everything on the CPU, rows in group order.

    ``codes`` [B, N] sampled image codes; ``commit_step`` [B, N] step 1..T after which each token stayed;
    ``entropy_commit`` / ``entropy0`` [B, N] entropies at the commit step / the fully masked first step;
    ``prompt`` the conditional prompt batch [B, L]; ``prompt_words`` [B, L] bool, the prompt tokens that are
    words (maskable by d1); ``mask_id`` the backbone's mask token id; ``rollout_steps`` T; ``structure_score``
    [B, N] the per-token score of a scored partition rule (``htgrpo.rl.structure_scores``), else None.
    """

    codes: torch.Tensor
    commit_step: torch.Tensor
    entropy_commit: torch.Tensor
    entropy0: torch.Tensor
    prompt: PromptBatch
    prompt_words: torch.Tensor
    mask_id: int
    rollout_steps: int
    structure_score: torch.Tensor | None = None

    @property
    def batch(self) -> int:
        return self.codes.shape[0]

    @property
    def num_tokens(self) -> int:
        return self.codes.shape[1]


@dataclass
class IterationPlan:
    """One inner iteration: V_k, U_k, the prompt and the token weights (see the module docstring)."""

    stage: str
    visible: torch.Tensor
    """[B, N] bool: True where the scored forward sees the sampled code."""
    update: torch.Tensor
    """[B, N] bool: the tokens whose log-probs enter the loss (the only ones that get gradient)."""
    prompt: PromptBatch
    weights: torch.Tensor
    """[B, N] float: per-token advantage weights w (A_hat = A * w)."""
    mask_ratio: float | None = None
    """The nominal re-mask ratio of the iteration, where the method has one (logged)."""
    structure: torch.Tensor | None = None
    """[B, N] bool: HT-GRPO's structure set S (logged: structure fraction, share of U in S)."""
    info: dict[str, float] = field(default_factory=dict)
    step_group: int | None = None
    """The optimizer step this plan's gradient goes into, when the estimator accumulates several plans into one
    step (ht-grpo's replayed windows); None: the trainer decides (``rl.optimizer_steps``)."""


def random_masked(
    shape: Sequence[int], ratio: float | torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """[B, N] bool, True w.p. ``ratio`` independently per position (a float, or a [B, 1] tensor per sample).

    ratio 1 gives all True and ratio 0 all False exactly (uniforms lie in [0, 1)).
    """
    return torch.rand(tuple(shape), generator=generator) < ratio


def ones_weights(record: RolloutRecord) -> torch.Tensor:
    return torch.ones(record.codes.shape, dtype=torch.float32)


class Estimator(ABC):
    """A method family's way of building V_k / U_k / prompt / weights for the K inner iterations."""

    name: ClassVar[str]
    stages: ClassVar[tuple[str, ...]]
    """Stage names in iteration order of appearance (for per-stage logging)."""

    def __init__(self, rl: RLConfig) -> None:
        self.rl = rl

    @abstractmethod
    def num_iterations(self, rollout_steps: int) -> int:
        """K for a rollout of ``rollout_steps`` sampler steps."""

    @abstractmethod
    def build_plans(self, record: RolloutRecord, generator: torch.Generator) -> list[IterationPlan]:
        """All K plans of one rollout batch, drawn from ``generator``."""

    def _plan(self, stage: str, record: RolloutRecord, visible: torch.Tensor, update: torch.Tensor, **kw):
        weights = kw.pop("weights", None)
        return IterationPlan(
            stage=stage,
            visible=visible,
            update=update,
            prompt=kw.pop("prompt", record.prompt),
            weights=ones_weights(record) if weights is None else weights,
            **kw,
        )


__all__ = ["Estimator", "IterationPlan", "RolloutRecord", "ones_weights", "random_masked"]
