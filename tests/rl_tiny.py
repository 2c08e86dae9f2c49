"""Tiny models and configs for the RL tests: d_model 32, 2 layers, a 4x4 grid, 16 codes, 4 sampler steps."""

from __future__ import annotations

from typing import Any

import torch

from htgrpo.backbones.tiny import TinyBackbone
from htgrpo.config import BackboneConfig, Config, RLConfig, SamplerConfig, WorldConfig
from htgrpo.rl.estimators import RolloutRecord
from htgrpo.tokenizers.kmeans import PatchKMeansTokenizer

GRID, CODES = 4, 16
N = GRID * GRID
BACKBONE = BackboneConfig(d_model=32, n_layers=2, n_heads=2, mlp_hidden_size=64)


def tiny_backbone(seed: int = 0) -> TinyBackbone:
    torch.manual_seed(seed)
    codebook = torch.rand(CODES, 192, generator=torch.Generator().manual_seed(seed))
    bb = TinyBackbone(BACKBONE, PatchKMeansTokenizer(codebook), grid=GRID)
    # a sharper head than random init, so samples, entropies and ratios actually vary
    with torch.no_grad():
        bb.net.model.transformer["ff_out"].weight.mul_(20.0)
    return bb.eval()


def tiny_config(**rl: Any) -> Config:
    rl = {"steps": 2, "prompts_per_step": 2, "group_size": 3, "lr": 1e-3, **rl}
    return Config(
        backbone=BACKBONE,
        world=WorldConfig(grid=GRID),
        sampler=SamplerConfig(steps=4, cfg_scale=1.0, batch_size=64),
        rl=RLConfig(**rl),
    )


def fake_record(
    batch: int = 4, steps: int = 4, seed: int = 0, backbone: TinyBackbone | None = None
) -> RolloutRecord:
    """A rollout record with made-up codes, commit steps (each step commits N/steps tokens) and entropies."""
    g = torch.Generator().manual_seed(seed)
    per = N // steps
    commit = torch.stack([torch.randperm(N, generator=g) // per + 1 for _ in range(batch)])
    bb = backbone or tiny_backbone()
    prompts = [
        "a photo of a red circle",
        "a photo of two squares and a ring",
        "a photo of a cross",
        "a photo of a blue ring",
    ]
    prompt = bb.encode_prompts([prompts[i % len(prompts)] for i in range(batch)])
    return RolloutRecord(
        codes=torch.randint(CODES, (batch, N), generator=g),
        commit_step=commit,
        entropy_commit=torch.rand(batch, N, generator=g),
        entropy0=torch.rand(batch, N, generator=g),
        prompt=prompt,
        prompt_words=bb.prompt_word_mask(prompt),
        mask_id=bb.layout.mask_id,
        rollout_steps=steps,
    )
