"""Lumina-DiMOO's image tokenizer: a diffusers ``VQModel`` (aMUSEd layout) from the checkpoint's ``vqvae``
subfolder, behind the ``ImageTokenizer`` interface.

As Lumina-DiMOO's ``encode_img_with_breaks`` / ``decode_vq_to_image``: pixels are in [0, 1] (diffusers'
``VaeImageProcessor(do_normalize=False)``), codes are ``quantize(encode(x).latents)`` indices in raster order, and
decoding looks the codes up in the codebook (``decode(codes, force_not_quantize=True, shape=...)``) and clips the
output to [0, 1]. The downsampling factor is 2^(len(block_out_channels) - 1) (16 for the released model).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from htgrpo.errors import WeightsError
from htgrpo.tokenizers.base import ImageTokenizer


class DiffusersVQTokenizer(ImageTokenizer):
    """A diffusers ``VQModel`` as an image tokenizer (held, not registered: a backbone never trains it)."""

    def __init__(self, model, batch_size: int = 8) -> None:
        self.model = model.eval().requires_grad_(False)
        cfg = model.config
        self.codebook_size = int(cfg.num_vq_embeddings)
        self.downsample = 2 ** (len(cfg.block_out_channels) - 1)
        self.latent_channels = int(cfg.vq_embed_dim or cfg.latent_channels)
        self.batch_size = batch_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> DiffusersVQTokenizer:
        self.model.to(device)
        return self

    @classmethod
    def from_dir(cls, directory: str | Path, device: torch.device | str = "cpu") -> DiffusersVQTokenizer:
        """Load ``directory`` (a VQModel ``save_pretrained`` folder: config.json + safetensors weights)."""
        from diffusers import VQModel

        directory = Path(directory)
        if not (directory / "config.json").is_file():
            raise WeightsError(
                f"Lumina-DiMOO VQ model: {directory} has no config.json (expected WEIGHTS/vqvae)"
            )
        if not any(directory.glob("*.safetensors")):
            raise WeightsError(
                f"Lumina-DiMOO VQ model: {directory} has no .safetensors weights (htgrpo loads safetensors only)"
            )
        try:
            model = VQModel.from_pretrained(str(directory), use_safetensors=True, local_files_only=True)
        except (OSError, ValueError, RuntimeError) as exc:
            raise WeightsError(f"Lumina-DiMOO VQ model: cannot load {directory}: {exc}") from None
        return cls(model.to(device))

    @torch.no_grad()
    def encode(self, images: np.ndarray) -> torch.Tensor:
        x = (
            torch.as_tensor(np.ascontiguousarray(images), device=self.device).permute(0, 3, 1, 2).float()
            / 255.0
        )
        out = []
        for i in range(0, len(x), self.batch_size):
            latents = self.model.encode(x[i : i + self.batch_size]).latents
            indices = self.model.quantize(latents)[2][2]
            out.append(indices.reshape(latents.shape[0], -1))
        return torch.cat(out).cpu().long()

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, grid: tuple[int, int]) -> np.ndarray:
        codes = codes.to(self.device).long()
        h, w = grid
        out = []
        for i in range(0, len(codes), self.batch_size):
            part = codes[i : i + self.batch_size]
            shape = (part.shape[0], h, w, self.latent_channels)
            if self.model.config.lookup_from_codebook:
                x = self.model.decode(part.view(-1, h, w), force_not_quantize=True, shape=shape).sample
            else:
                quant = self.model.quantize.get_codebook_entry(part.reshape(-1), shape)
                x = self.model.decode(quant, force_not_quantize=True).sample
            x = (x.float().clamp(0, 1) * 255).round().to(torch.uint8)
            out.append(x.permute(0, 2, 3, 1).cpu().numpy())
        if not out:
            return np.zeros((0, h * self.downsample, w * self.downsample, 3), np.uint8)
        return np.concatenate(out)


__all__ = ["DiffusersVQTokenizer"]
