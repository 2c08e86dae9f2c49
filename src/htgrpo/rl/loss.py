"""THE HT-GRPO LOSS (algorithm.md §4.8): the clipped surrogate with per-token advantages and a k3 KL, on U only.

For inner iteration k over a batch B, with per-token log-probs l = log softmax(f(c, x~(V_k)))[x] of the current
policy, l_old of the rollout policy and l_ref of the frozen reference, all three at the same visibility V_k:

    rho_i   = exp(l_i - l_old_i)
    A_hat_i = A_g * w_i                                     (w: HCA weights, §4.5; w = 1 for the baselines)
    KL_i    = exp(l_ref_i - l_i) - (l_ref_i - l_i) - 1      (k3 estimator)
    L_k     = (1 / sum_g |U_g|) * sum_g sum_{i in U_g} [ -min(rho_i A_hat_i, clip(rho_i, 1-eps, 1+eps) A_hat_i)
                                                         + beta KL_i ]

``normalisation="sample"`` (the stage-balance option; the UniGRPO / TraceRL per-sequence mean) instead averages
each sample's tokens first, then averages over the samples whose U is not empty. Tokens outside U contribute
nothing and receive no gradient. Every baseline of §5 uses this same loss with its own V, U and w.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from htgrpo.backbones.base import MASK_CODE, Backbone, PromptBatch


def token_log_probs(logits: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """l [B, N] = log_softmax(logits [B, N, K])[codes]: the backbone's logits are already the code slice."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, codes.unsqueeze(-1)).squeeze(-1)


def policy_log_probs(
    model: Backbone, prompt: PromptBatch, codes: torch.Tensor, visible: torch.Tensor
) -> torch.Tensor:
    """Per-token log-probs of ``codes`` [B, N] when the model sees only the ``visible`` ones (no CFG, §4.12)."""
    state = torch.where(visible, codes, torch.full_like(codes, MASK_CODE))
    return token_log_probs(model.logits(prompt, state), codes)


def guided_log_probs(
    model: Backbone,
    prompt: PromptBatch,
    uncond: PromptBatch,
    codes: torch.Tensor,
    visible: torch.Tensor,
    cfg_scale: float,
) -> torch.Tensor:
    """Per-token log-probs under the classifier-free-guided distribution the rollout sampled from:
    log softmax((1 + g) f(c, x~) - g f(no prompt, x~))[x], both branches in one forward (``rl.score_cfg``)."""
    b = codes.shape[0]
    state = torch.where(visible, codes, torch.full_like(codes, MASK_CODE))
    batch = PromptBatch.cat([prompt, uncond], model.pad_id)
    logits = model.logits(batch, torch.cat([state, state])).float()
    cond, unc = logits[:b], logits[b:]
    return token_log_probs(cond + cfg_scale * (cond - unc), codes)


@dataclass
class LossOutput:
    """The loss and its statistics over the scored tokens U of the batch given.

    Sums rather than means where a trainer splitting a batch into micro-batches needs to add them up:
    ``tokens`` = sum |U|, ``clipped`` = tokens whose clipped term was active (their gradient is cut),
    ``ratio_sum`` / ``ratio_max`` / ``ratio_min``, ``kl_sum`` (k3) and ``samples`` (with a non-empty U).
    """

    loss: torch.Tensor
    tokens: int
    samples: int
    clipped: int
    ratio_sum: float
    ratio_max: float
    kl_sum: float
    ratio_min: float = 1.0

    @property
    def clip_frac(self) -> float:
        return self.clipped / self.tokens if self.tokens else 0.0

    @property
    def ratio_mean(self) -> float:
        return self.ratio_sum / self.tokens if self.tokens else 1.0

    @property
    def kl_mean(self) -> float:
        return self.kl_sum / self.tokens if self.tokens else 0.0


def grpo_loss(
    logp: torch.Tensor,
    logp_old: torch.Tensor,
    logp_ref: torch.Tensor | None,
    advantages: torch.Tensor,
    update: torch.Tensor,
    *,
    weights: torch.Tensor | None = None,
    clip_eps: float = 0.2,
    kl_beta: float = 0.01,
    normalisation: str = "token",
    denominator: float | None = None,
) -> LossOutput:
    """The HT-GRPO loss of §4.8 (module docstring) for one iteration.

    logp, logp_old, logp_ref: [B, N] (logp_ref may be None when kl_beta is 0). advantages: [B] group advantages
    A_g. update: [B, N] bool, U. weights: [B, N] HCA weights w (None: all 1). ``denominator`` overrides the
    normaliser (sum |U| for "token", the number of samples with non-empty U for "sample") so that micro-batches
    of one batch add up to the whole batch's loss.
    """
    if normalisation not in ("token", "sample"):
        raise ValueError(f"unknown normalisation {normalisation!r}; expected 'token' or 'sample'")
    if kl_beta > 0 and logp_ref is None:
        raise ValueError("kl_beta > 0 needs the reference log-probs")
    update = update.bool()
    adv = advantages.to(logp.dtype).reshape(-1, 1).expand_as(logp)
    if weights is not None:
        adv = adv * weights.to(logp.dtype)
    # masked before exp: tokens outside U can never produce inf/NaN or carry gradient
    log_ratio = torch.where(update, logp - logp_old, torch.zeros_like(logp))
    ratio = torch.exp(log_ratio)
    clipped_ratio = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    surrogate = -torch.minimum(ratio * adv, clipped_ratio * adv)
    per_token = surrogate
    kl = torch.zeros_like(logp)
    if logp_ref is not None:
        d = torch.where(update, logp_ref - logp, torch.zeros_like(logp))
        kl = torch.exp(d) - d - 1.0
        if kl_beta > 0:
            per_token = per_token + kl_beta * kl
    per_token = torch.where(update, per_token, torch.zeros_like(per_token))
    counts = update.sum(1)
    tokens = int(counts.sum())
    samples = int((counts > 0).sum())
    if normalisation == "token":
        denom = float(tokens) if denominator is None else float(denominator)
        loss = per_token.sum() / max(denom, 1.0)
    else:
        per_sample = per_token.sum(1) / counts.clamp_min(1).to(per_token.dtype)
        denom = float(samples) if denominator is None else float(denominator)
        loss = per_sample.sum() / max(denom, 1.0)
    with torch.no_grad():
        active = ((ratio < 1.0 - clip_eps) & (adv < 0)) | ((ratio > 1.0 + clip_eps) & (adv > 0))
        r_u = ratio[update]
        return LossOutput(
            loss=loss,
            tokens=tokens,
            samples=samples,
            clipped=int((active & update).sum()),
            ratio_sum=float(r_u.sum()) if tokens else 0.0,
            ratio_max=float(r_u.max()) if tokens else 1.0,
            ratio_min=float(r_u.min()) if tokens else 1.0,
            kl_sum=float(kl[update].sum()) if tokens else 0.0,
        )


__all__ = ["LossOutput", "grpo_loss", "guided_log_probs", "policy_log_probs", "token_log_probs"]
