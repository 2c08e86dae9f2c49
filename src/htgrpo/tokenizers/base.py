"""The image-tokenizer interface every backbone's VQ model implements."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch


class ImageTokenizer(ABC):
    """Encodes RGB images to a grid of codes and decodes codes back to images.

    Images are uint8 arrays [B, H, W, 3]; codes are int64 tensors [B, h*w] in raster order, values in
    [0, codebook_size).
    """

    codebook_size: int
    downsample: int

    def grid_for(self, height: int, width: int) -> tuple[int, int]:
        return height // self.downsample, width // self.downsample

    @abstractmethod
    def encode(self, images: np.ndarray) -> torch.Tensor: ...

    @abstractmethod
    def decode(self, codes: torch.Tensor, grid: tuple[int, int]) -> np.ndarray: ...
