"""HT-GRPO's token hierarchy: the structure/refinement partition (§4.4) and Hierarchical Credit Assignment (§4.5).

Partition. Each image's N tokens are ranked, and the first |S| = ceil(rho * N) form the structure set S:

* ``commit``: by commit step ascending, ties by the entropy the token was sampled from, ascending (under
  MaskGIT decoding the earliest commits are the most confident tokens);
* ``entropy0``: by the entropy at the fully masked first forward, ascending (needed for emerge rollouts, whose
  reveal order is random);
* ``entropy0_high``: the same entropy descending (an ablation: "uncertain fork" tokens first);
* ``oracle``: the object cells of the decoded image (shapes world only; the upper bound of the idea). S is exactly
  those cells, so rho does not apply;
* ``prompt_pmi``: by how much the prompt raises the token's log-prob at the fully masked state,
  l(x_i | c) - l(x_i | no prompt), descending. What the prompt asks for is the layout; the background does not
  depend on it. Works on any backbone with an unconditional prompt (CFG), two forwards per sample;
* ``group_disagreement``: by the share of the prompt's other G - 1 samples whose code differs at the position,
  descending (positions where the group varies are where its samples place objects differently).

The last three rank by a per-token score the trainer computes (``htgrpo.rl.structure_scores``), ties broken by
the commit order. Remaining ties keep raster order (stable sorts), so the partition is a deterministic function of
the records.

Measured on the shipped shapes base (benchmarks/results/partition_rules.md): the share of object cells in S per
rule, against the base rate of object cells.

HCA. u = 1 + alpha on S and 1 elsewhere (``binary``), or u = 1 + alpha * (1 - rank / N) with rank 0 first
(``rank``); w = u * N / sum(u), so every image's weights average exactly 1 and the advantage scale is unchanged.
The per-token advantage is A_hat = A * w.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

PARTITION_RULES = ("commit", "entropy0", "entropy0_high", "oracle", "prompt_pmi", "group_disagreement")
SCORED_RULES = ("oracle", "prompt_pmi", "group_disagreement")
"""Rules that rank by a per-token score computed outside the rollout record (``structure_scores``)."""
EXACT_RULES = ("oracle",)
"""Rules whose S is the set of tokens with a positive score, whatever rho."""
HCA_MODES = ("binary", "rank")


def structure_count(num_tokens: int, rho: float) -> int:
    """|S| = ceil(rho * N); rounded first so that 0.1 * 30 = 3.0000000000000004 gives 3, not 4."""
    if not 0 < rho <= 1:
        raise ValueError(f"rho must be in (0, 1], got {rho}")
    return min(num_tokens, math.ceil(round(rho * num_tokens, 9)))


def partition_order(
    rule: str,
    *,
    commit_step: torch.Tensor | None = None,
    entropy_commit: torch.Tensor | None = None,
    entropy0: torch.Tensor | None = None,
    structure_score: torch.Tensor | None = None,
) -> torch.Tensor:
    """[B, N] token indices, structure-first order of ``rule`` (see the module docstring)."""
    if rule == "commit" or rule in SCORED_RULES:
        if commit_step is None or entropy_commit is None:
            raise ValueError(f"partition={rule} needs the rollout's commit_step and entropy_commit")
        # lexicographic (step, entropy): sort by the secondary key, then stably by the primary one
        by_entropy = torch.sort(entropy_commit.float(), dim=1, stable=True).indices
        steps = commit_step.gather(1, by_entropy)
        order = by_entropy.gather(1, torch.sort(steps, dim=1, stable=True).indices)
        if rule == "commit":
            return order
        if structure_score is None:
            raise ValueError(
                f"partition={rule} needs a structure score per token (htgrpo.rl.structure_scores)"
            )
        score = structure_score.float().gather(1, order)
        return order.gather(1, torch.sort(score, dim=1, stable=True, descending=True).indices)
    if rule in ("entropy0", "entropy0_high"):
        if entropy0 is None:
            raise ValueError(f"partition={rule} needs the rollout's entropy0")
        return torch.sort(entropy0.float(), dim=1, stable=True, descending=rule == "entropy0_high").indices
    raise ValueError(f"unknown partition rule {rule!r}; expected one of {', '.join(PARTITION_RULES)}")


@dataclass
class Partition:
    """``structure`` [B, N] bool (S); ``rank`` [B, N] long: each token's 0-based position in the order."""

    structure: torch.Tensor
    rank: torch.Tensor

    @property
    def refinement(self) -> torch.Tensor:
        return ~self.structure


def partition_tokens(order: torch.Tensor, rho: float, exact: torch.Tensor | None = None) -> Partition:
    """Structure set = the first ceil(rho * N) tokens of ``order`` [B, N], or ``exact`` ([B, N] bool) when given
    (an exact rule: the ranks still follow ``order``)."""
    b, n = order.shape
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(n, device=order.device).expand(b, n))
    structure = exact.bool() if exact is not None else rank < structure_count(n, rho)
    return Partition(structure, rank)


def hca_weights(partition: Partition, alpha: float, mode: str = "binary") -> torch.Tensor:
    """[B, N] float32 weights w, mean exactly 1 per image up to rounding (see the module docstring)."""
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    n = partition.rank.shape[1]
    if mode == "binary":
        u = 1.0 + alpha * partition.structure.double()
    elif mode == "rank":
        u = 1.0 + alpha * (1.0 - partition.rank.double() / n)
    else:
        raise ValueError(f"unknown HCA mode {mode!r}; expected one of {', '.join(HCA_MODES)}")
    return (u * n / u.sum(1, keepdim=True)).float()


__all__ = [
    "EXACT_RULES",
    "HCA_MODES",
    "PARTITION_RULES",
    "SCORED_RULES",
    "Partition",
    "hca_weights",
    "partition_order",
    "partition_tokens",
    "structure_count",
]
