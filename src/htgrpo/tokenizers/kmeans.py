"""A k-means codebook over 8x8 RGB patches: the shapes world's VQ tokenizer, trained by the project.

One patch is one cell of the world, so an object is one code and the background gradient is painted by the
others. When the images hold no more distinct patches than ``codebook_size``, each distinct patch becomes a code
(lossless); otherwise the codebook is fitted by k-means. The codebook is fitted with k-means++ seeding (far-apart patches first, so that every rare object type gets
a code of its own instead of being averaged into a neighbour) and Lloyd iterations, and stored as safetensors.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from htgrpo.errors import CheckpointError
from htgrpo.tokenizers.base import ImageTokenizer

PATCH = 8


def images_to_patches(images: np.ndarray, patch: int = PATCH) -> torch.Tensor:
    """[B, H, W, 3] uint8 -> [B, (H/p)*(W/p), p*p*3] float32 in [0, 1], raster order."""
    b, h, w, c = images.shape
    if h % patch or w % patch:
        raise ValueError(f"image size {h}x{w} is not a multiple of the {patch}-pixel patch")
    x = torch.from_numpy(np.ascontiguousarray(images)).view(b, h // patch, patch, w // patch, patch, c)
    return (
        x.permute(0, 1, 3, 2, 4, 5).reshape(b, (h // patch) * (w // patch), patch * patch * c).float() / 255.0
    )


def patches_to_images(patches: torch.Tensor, grid: tuple[int, int], patch: int = PATCH) -> np.ndarray:
    b = patches.shape[0]
    gh, gw = grid
    x = (
        patches.reshape(b, gh, gw, patch, patch, 3)
        .permute(0, 1, 3, 2, 4, 5)
        .reshape(b, gh * patch, gw * patch, 3)
    )
    return (x.clamp(0, 1) * 255.0).round().to(torch.uint8).numpy()


def _nearest(
    x: torch.Tensor, centroids: torch.Tensor, chunk: int = 65536
) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of and squared distance to the nearest centroid for each row of x."""
    c_sq = (centroids * centroids).sum(1)
    idx, dist = [], []
    for start in range(0, x.shape[0], chunk):
        xs = x[start : start + chunk]
        d = (xs * xs).sum(1, keepdim=True) - 2 * xs @ centroids.t() + c_sq
        m = d.min(1)
        idx.append(m.indices)
        dist.append(m.values.clamp_min(0))
    return torch.cat(idx), torch.cat(dist)


class PatchKMeansTokenizer(ImageTokenizer):
    downsample = PATCH

    def __init__(self, codebook: torch.Tensor) -> None:
        if codebook.ndim != 2 or codebook.shape[1] != PATCH * PATCH * 3:
            raise ValueError(f"codebook must be [K, {PATCH * PATCH * 3}], got {list(codebook.shape)}")
        self.codebook = codebook.float().contiguous()
        self.codebook_size = codebook.shape[0]

    @classmethod
    def fit(
        cls,
        images: np.ndarray,
        codebook_size: int,
        iterations: int = 25,
        seed: int = 0,
        progress: bool = True,
    ) -> PatchKMeansTokenizer:
        x = images_to_patches(images).reshape(-1, PATCH * PATCH * 3)
        # Duplicates carry weight in Lloyd's updates, but k-means++ seeding runs on unique patches so that a rare
        # object type is as likely to be seeded as a common background colour.
        uniq, counts = torch.unique((x * 255).round().to(torch.uint8), dim=0, return_counts=True)
        uniq = uniq.float() / 255.0
        if uniq.shape[0] <= codebook_size:
            # Fewer distinct patches than codes: every patch gets a code of its own and the tokenizer is lossless
            # on this world; the codebook is that small (codebook_size is an upper bound).
            return cls(uniq)
        g = torch.Generator().manual_seed(seed)
        centroids = torch.empty(codebook_size, x.shape[1])
        centroids[0] = uniq[torch.randint(uniq.shape[0], (1,), generator=g)]
        best = ((uniq - centroids[0]) ** 2).sum(1)
        for k in tqdm(range(1, codebook_size), desc="k-means++ seeding", disable=not progress, leave=False):
            pick = torch.multinomial(best + 1e-12, 1, generator=g)
            centroids[k] = uniq[pick]
            best = torch.minimum(best, ((uniq - centroids[k]) ** 2).sum(1))
        w = counts.float()
        for _ in tqdm(range(iterations), desc="k-means", disable=not progress, leave=False):
            assign, dist = _nearest(uniq, centroids)
            sums = torch.zeros_like(centroids).index_add_(0, assign, uniq * w[:, None])
            mass = torch.zeros(codebook_size).index_add_(0, assign, w)
            empty = mass == 0
            centroids = torch.where(empty[:, None], centroids, sums / mass.clamp_min(1e-9)[:, None])
            if empty.any():  # re-seed empty codes at the worst-represented patches
                far = torch.topk(dist * w, int(empty.sum())).indices
                centroids[empty] = uniq[far]
        return cls(centroids)

    def encode(self, images: np.ndarray) -> torch.Tensor:
        patches = images_to_patches(images)
        b, n, d = patches.shape
        idx, _ = _nearest(patches.reshape(-1, d), self.codebook)
        return idx.view(b, n)

    def decode(self, codes: torch.Tensor, grid: tuple[int, int]) -> np.ndarray:
        codes = torch.as_tensor(codes)
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(f"codes outside [0, {self.codebook_size}) cannot be decoded")
        if codes.shape[-1] != grid[0] * grid[1]:
            raise ValueError(f"{codes.shape[-1]} codes do not fill a {grid[0]}x{grid[1]} grid")
        return patches_to_images(self.codebook[codes.long()], grid)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"codebook": self.codebook}

    def save(self, path: str | Path) -> None:
        save_file(self.state_dict(), str(path), metadata={"format": f"htgrpo-kmeans-patch{PATCH}"})

    @classmethod
    def load(cls, path: str | Path) -> PatchKMeansTokenizer:
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"image tokenizer file {path} does not exist")
        try:
            tensors = load_file(str(path))
        except Exception as exc:  # safetensors raises several types for a damaged file
            raise CheckpointError(f"image tokenizer file {path} is corrupt: {exc}") from None
        if "codebook" not in tensors:
            raise CheckpointError(f"image tokenizer file {path} has no 'codebook' tensor")
        return cls(tensors["codebook"])
