"""MaskGRPO's "emerge" sampler: ancestral MDLM-style sampling with the cosine schedule k(t) = cos(pi t / 2) (§2.1).

At step s each still-masked token independently stays masked with probability k((s+1)/T) / k(s/T), otherwise it
takes a code drawn from the guided p_theta; the last step reveals everything. The reveal order is random, not
confidence-ranked, so HT-GRPO must partition emerge rollouts by ``entropy0`` rather than by commit step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from htgrpo.backbones.base import Backbone
from htgrpo.config import SamplerConfig
from htgrpo.sampling.core import Draw, run_sampler, uniform
from htgrpo.sampling.result import SampleResult
from htgrpo.sampling.schedule import emerge_stay_probs


def emerge_sample(
    backbone: Backbone,
    prompts: Sequence[str],
    cfg: SamplerConfig,
    generator: torch.Generator,
    *,
    progress: bool = False,
) -> SampleResult:
    """Sample one image per prompt with the emerge sampler; ``cfg.remask_noise``/``noise_schedule`` are unused."""
    stay = emerge_stay_probs(cfg.steps)

    def rule(s: int, draw: Draw, masked: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if stay[s] == 0.0:
            return masked
        return masked & (uniform(masked.shape, generator, masked.device) >= stay[s])

    return run_sampler(backbone, prompts, cfg, generator, rule, progress=progress, desc="emerge")
