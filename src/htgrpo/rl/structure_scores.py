"""Per-token structure scores for the partition rules that need more than the rollout record (``hierarchy``).

* ``oracle``: 1 on the cells of the decoded image that hold object pixels, 0 on background (shapes world only);
* ``prompt_pmi``: l(x_i | c, all masked) - l(x_i | no prompt, all masked), the pointwise mutual information between
  the prompt and the sampled code at the fully masked state (two no-grad forwards per sample);
* ``group_disagreement``: the share of the other samples of the same prompt whose code differs at that position.

Each returns a [B, N] float tensor, higher meaning "structure first".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from htgrpo.backbones.base import Backbone, PromptBatch
from htgrpo.rl.loss import token_log_probs


def oracle_object_cells(images: np.ndarray, grid_h: int, grid_w: int) -> torch.Tensor:
    """[B, N] float: 1 where the image's cell holds any object pixel (a palette colour), 0 on background.

    Stray pixels (neither background nor a palette colour) do not count as objects, so a broken cell is not
    mistaken for layout.
    """
    from htgrpo.world.detect import BACKGROUND, STRAY, classify_pixels

    images = np.asarray(images)
    b, h, w = images.shape[:3]
    if h % grid_h or w % grid_w:
        raise ValueError(f"images of {h}x{w} pixels do not split into a {grid_h}x{grid_w} grid of cells")
    classes = classify_pixels(images)
    objects = (classes != BACKGROUND) & (classes != STRAY)
    cells = objects.reshape(b, grid_h, h // grid_h, grid_w, w // grid_w).any(axis=(2, 4))
    return torch.from_numpy(cells.reshape(b, grid_h * grid_w).astype(np.float32))


def prompt_pmi(
    model: Backbone, texts: Sequence[str], codes: torch.Tensor, chunk: int | None = None
) -> torch.Tensor:
    """[B, N] float: l(x_i | prompt) - l(x_i | unconditional prompt), both with every image token masked."""
    device = next(model.parameters()).device
    n = codes.shape[0]
    chunk = chunk or n
    out = []
    with torch.no_grad():
        for lo in range(0, n, chunk):
            part = codes[lo : lo + chunk].to(device)
            b = part.shape[0]
            cond = model.encode_prompts(list(texts[lo : lo + chunk]))
            batch = PromptBatch.cat([cond, model.encode_uncond(b)], model.pad_id)
            batch = PromptBatch(batch.input_ids.to(device), batch.attention_mask.to(device))
            logits = model.logits(batch, model.fully_masked(2 * b, device))
            logp = token_log_probs(logits, torch.cat([part, part]))
            out.append((logp[:b] - logp[b:]).float().cpu())
    return torch.cat(out) if out else torch.zeros(codes.shape, dtype=torch.float32)


def group_disagreement(codes: torch.Tensor, groups: Sequence[int]) -> torch.Tensor:
    """[B, N] float: for each sample, the share of the other samples of its group (``groups[i]``, any hashable id
    per row) with a different code at the position; 0 for a sample alone in its group."""
    codes = codes.cpu()
    out = torch.zeros(codes.shape, dtype=torch.float32)
    ids = np.asarray(groups)
    for g in dict.fromkeys(ids.tolist()):
        rows = torch.as_tensor(np.flatnonzero(ids == g))
        c = codes[rows]  # [G, N]
        if len(rows) < 2:
            continue
        same = (c[:, None, :] == c[None, :, :]).sum(1).float() - 1.0  # others with the same code
        out[rows] = 1.0 - same / (len(rows) - 1)
    return out


__all__ = ["group_disagreement", "oracle_object_cells", "prompt_pmi"]
