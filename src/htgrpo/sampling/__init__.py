"""Text-to-image samplers over a ``Backbone``: MaskGIT (confidence-ordered) and MaskGRPO's emerge sampler."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from htgrpo.backbones.base import Backbone
from htgrpo.config import SamplerConfig
from htgrpo.sampling.emerge import emerge_sample
from htgrpo.sampling.maskgit import maskgit_sample
from htgrpo.sampling.result import SampleResult

__all__ = ["SampleResult", "emerge_sample", "maskgit_sample", "sample"]

_SAMPLERS = {"maskgit": maskgit_sample, "emerge": emerge_sample}


def sample(
    backbone: Backbone,
    prompts: Sequence[str],
    cfg: SamplerConfig,
    generator: torch.Generator,
    progress: bool = False,
) -> SampleResult:
    """One image per prompt with the sampler ``cfg.kind`` names."""
    try:
        fn = _SAMPLERS[cfg.kind]
    except KeyError:
        raise ValueError(
            f"unknown sampler kind {cfg.kind!r}; expected one of {', '.join(_SAMPLERS)}"
        ) from None
    return fn(backbone, prompts, cfg, generator, progress=progress)
