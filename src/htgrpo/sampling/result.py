"""What a sampler call returns: the codes plus the per-token records the HT-GRPO partition needs (§4.2)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from htgrpo.backbones.base import Backbone


@dataclass
class SampleResult:
    """Sampled images in code space and per-token records, all on the CPU, rows in prompt order.

    ``commit_step``: the step 1..T after which the token stays unmasked. ``entropy_commit``: entropy (nats) of
    the guided, temperature-scaled distribution the token was drawn from at that step. ``entropy0``: the same
    entropy at step 0, the fully masked forward. ``forward_passes`` counts network forwards per image, CFG's
    two branches as two. ``model_seconds`` is time inside ``backbone.logits``; ``total_seconds`` the whole call.
    """

    codes: torch.Tensor
    commit_step: torch.Tensor
    entropy_commit: torch.Tensor
    entropy0: torch.Tensor
    forward_passes: int
    model_seconds: float
    total_seconds: float

    def __len__(self) -> int:
        return self.codes.shape[0]

    @property
    def outside_model_share(self) -> float:
        """Share of the call spent outside the network forward (sampler overhead, prompt encoding)."""
        if self.total_seconds <= 0:
            return 0.0
        return max(0.0, 1.0 - self.model_seconds / self.total_seconds)

    def decode(self, backbone: Backbone) -> np.ndarray:
        """RGB images [B, H, W, 3] uint8 through the backbone's image tokenizer."""
        layout = backbone.layout
        return backbone.image_tokenizer.decode(self.codes.cpu(), (layout.grid_h, layout.grid_w))
