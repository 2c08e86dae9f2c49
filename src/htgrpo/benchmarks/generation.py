"""Turning a checkpoint's backbone into an image generator for the real-image benchmarks.

A generator is any ``(prompts, seed) -> uint8 [B, H, W, 3]`` callable, so the benchmarks can be driven by a
backbone, a diffusers pipeline or a test fake alike. The folder writers re-seed per prompt (GenEval's reference
generator re-seeds every prompt with the same seed), which makes a prompt's images independent of which other
prompts are generated and lets an interrupted run resume.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

ImageGenerator = Callable[[Sequence[str], int], np.ndarray]
"""(prompts, seed) -> RGB images uint8 [len(prompts), H, W, 3]."""


def check_images(images: np.ndarray, n: int, who: str = "generator") -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or images.shape[0] != n:
        raise ValueError(
            f"{who} must return uint8 images [{n}, H, W, 3], got {images.dtype} {list(images.shape)}"
        )
    return images


def backbone_generator(backbone, sampler_cfg, progress: bool = False) -> ImageGenerator:
    """An :data:`ImageGenerator` sampling ``backbone`` with ``sampler_cfg`` (a SamplerConfig)."""
    import torch

    from htgrpo.sampling import sample

    def generate(prompts: Sequence[str], seed: int) -> np.ndarray:
        gen = torch.Generator().manual_seed(int(seed))
        out: list[np.ndarray] = []
        step = max(1, sampler_cfg.batch_size)
        for start in range(0, len(prompts), step):
            result = sample(
                backbone, list(prompts[start : start + step]), sampler_cfg, gen, progress=progress
            )
            out.append(result.decode(backbone))
        return np.concatenate(out)

    return generate
