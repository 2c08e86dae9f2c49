"""MaskGIT confidence-ordered sampling, the native sampler of MMaDA and Lumina-DiMOO (algorithm.md §2.2, §2.3, §2.6).

Every step proposes a code at each masked position; the most confident proposals are committed and the rest stay
masked, following a cosine schedule. Committed tokens are never re-masked, so the commit step orders tokens from
confident (structure) to uncertain (refinement), which is what HT-GRPO's ``partition=commit`` ranks by.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from htgrpo.backbones.base import Backbone
from htgrpo.config import SamplerConfig
from htgrpo.sampling.core import Draw, gumbel, run_sampler
from htgrpo.sampling.result import SampleResult
from htgrpo.sampling.schedule import cosine_masked_counts, remask_noise_scales


def maskgit_sample(
    backbone: Backbone,
    prompts: Sequence[str],
    cfg: SamplerConfig,
    generator: torch.Generator,
    *,
    progress: bool = False,
) -> SampleResult:
    """Sample one image per prompt with MaskGIT; see ``SampleResult`` for the per-token records.

    Confidence = log p(sampled) + tau_s * Gumbel (tau_s from ``cfg.noise_schedule``); at step s the
    ``cosine_masked_counts`` lowest-confidence masked positions stay masked and the others commit. Every image
    of a chunk has the same number of masked tokens at every step, so one top-k over the batch does it.
    """
    counts = cosine_masked_counts(backbone.layout.num_tokens, cfg.steps)
    taus = remask_noise_scales(cfg.remask_noise, cfg.steps, cfg.noise_schedule)
    # With T > N the schedule runs out of tokens before the last step; later forwards would change nothing.
    steps_to_run = next((s + 1 for s, c in enumerate(counts) if c == 0), cfg.steps)

    def rule(s: int, draw: Draw, masked: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        keep = counts[s]
        if keep == 0:
            return masked
        conf = draw.logp
        if taus[s] > 0:
            conf = conf + taus[s] * gumbel(conf.shape, generator, conf.device)
        # Committed positions rank above every masked one, so the `keep` lowest are all still masked.
        conf = conf.masked_fill(~masked, float("inf"))
        stay = torch.zeros_like(masked).scatter_(1, conf.topk(keep, dim=1, largest=False).indices, True)
        return masked & ~stay

    return run_sampler(
        backbone, prompts, cfg, generator, rule, steps_to_run=steps_to_run, progress=progress, desc="maskgit"
    )
