"""MAGVIT-v2 (showlab/magvitv2), MMaDA's image tokenizer: a VQGAN-style encoder, a lookup-free quantiser and a
decoder, with the checkpoint's own module names.

Architecture (algorithm.md §2.6): encoder ``ch`` 128, ``ch_mult`` [1, 2, 2, 4, 4], residual blocks
[4, 3, 4, 3, 4]; decoder ``ch_mult`` [1, 1, 2, 2, 4], blocks [4, 4, 3, 4, 3]; a middle block with one
self-attention in both; GroupNorm(32, eps 1e-6) and swish throughout; 13 latent channels quantised to their sign,
so a code is a 13-bit pattern (most significant bit first) and the codebook has 2^13 = 8192 entries; four 2x
down/upsamplings (16x). Pixels are in [-1, 1]. Key layout: ``encoder.conv_in``,
``encoder.down.{i}.block.{j}.{norm1,conv1,norm2,conv2,nin_shortcut}``, ``encoder.down.{i}.downsample.conv``,
``encoder.mid.{block_1,attn_1,block_2}``, ``encoder.{norm_out,conv_out,quant_conv}``,
``quantize.{embedding,power_vals}``, ``decoder.post_quant_conv``, ``decoder.up.{i}.upsample.conv``, ...

``Magvit2Config`` defaults to the published architecture; a directory's ``config.json`` may override any of its
fields (the tests save small random ones), other keys there are ignored.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from htgrpo.errors import WeightsError
from htgrpo.tokenizers.base import ImageTokenizer

WEIGHT_NAMES = ("model.safetensors", "diffusion_pytorch_model.safetensors")


@dataclass(frozen=True)
class Magvit2Config:
    ch: int = 128
    encoder_ch_mult: tuple[int, ...] = (1, 2, 2, 4, 4)
    encoder_res_blocks: tuple[int, ...] = (4, 3, 4, 3, 4)
    decoder_ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    decoder_res_blocks: tuple[int, ...] = (4, 4, 3, 4, 3)
    z_channels: int = 13
    num_groups: int = 32

    def __post_init__(self) -> None:
        if len(self.encoder_ch_mult) != len(self.encoder_res_blocks):
            raise ValueError("encoder_ch_mult and encoder_res_blocks need one entry per level")
        if len(self.decoder_ch_mult) != len(self.decoder_res_blocks):
            raise ValueError("decoder_ch_mult and decoder_res_blocks need one entry per level")
        if len(self.encoder_ch_mult) != len(self.decoder_ch_mult):
            raise ValueError("the encoder and the decoder need the same number of levels")

    @property
    def codebook_size(self) -> int:
        return 2**self.z_channels

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.encoder_ch_mult) - 1)

    @classmethod
    def from_dict(cls, data: dict, source: str = "config.json") -> Magvit2Config:
        known = {f.name for f in fields(cls)}
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known}
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise WeightsError(f"{source}: not a MAGVIT-v2 config: {exc}") from None

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int) -> None:
        super().__init__()
        self.norm1 = _norm(cin, groups)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = _norm(cout, groups)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the spatial positions (1x1 convolutions for q, k, v and the output)."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = _norm(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = self.norm(x)
        q, k, v = (m(n).flatten(2).transpose(1, 2) for m in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        return x + self.proj_out(out.transpose(1, 2).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric padding, as the original VQGAN


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution: residual blocks, an (empty, key-compatible) attention list and the resampler."""

    def __init__(self, blocks: list[ResnetBlock], resample: nn.Module | None, name: str) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList()
        if resample is not None:
            self.add_module(name, resample)


class _Mid(nn.Module):
    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, groups)
        self.attn_1 = AttnBlock(channels, groups)
        self.block_2 = ResnetBlock(channels, channels, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    def __init__(self, cfg: Magvit2Config) -> None:
        super().__init__()
        ch, g = cfg.ch, cfg.num_groups
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        self.down = nn.ModuleList()
        cin = ch
        last = len(cfg.encoder_ch_mult) - 1
        for i, (mult, n) in enumerate(zip(cfg.encoder_ch_mult, cfg.encoder_res_blocks, strict=True)):
            blocks = []
            for _ in range(n):
                blocks.append(ResnetBlock(cin, ch * mult, g))
                cin = ch * mult
            self.down.append(_Level(blocks, Downsample(cin) if i != last else None, "downsample"))
        self.mid = _Mid(cin, g)
        self.norm_out = _norm(cin, g)
        self.conv_out = nn.Conv2d(cin, cfg.z_channels, 3, padding=1)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            for block in level.block:
                h = block(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.conv_out(F.silu(self.norm_out(self.mid(h))))
        return self.quant_conv(h)


class Decoder(nn.Module):
    def __init__(self, cfg: Magvit2Config) -> None:
        super().__init__()
        ch, g = cfg.ch, cfg.num_groups
        cin = ch * cfg.decoder_ch_mult[-1]
        self.post_quant_conv = nn.Conv2d(cfg.z_channels, cfg.z_channels, 1)
        self.conv_in = nn.Conv2d(cfg.z_channels, cin, 3, padding=1)
        self.mid = _Mid(cin, g)
        levels: list[_Level] = []
        for i in reversed(range(len(cfg.decoder_ch_mult))):
            blocks = []
            for _ in range(cfg.decoder_res_blocks[i]):
                blocks.append(ResnetBlock(cin, ch * cfg.decoder_ch_mult[i], g))
                cin = ch * cfg.decoder_ch_mult[i]
            levels.insert(0, _Level(blocks, Upsample(cin) if i != 0 else None, "upsample"))
        self.up = nn.ModuleList(levels)
        self.norm_out = _norm(cin, g)
        self.conv_out = nn.Conv2d(cin, 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(self.post_quant_conv(z)))
        for level in reversed(self.up):
            for block in level.block:
                h = block(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class LookupFreeQuantizer(nn.Module):
    """Sign quantisation: code = sum_b 2^(C-1-b) [z_b > 0]; ``embedding[code]`` is its +-1 vector."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        powers = 2 ** torch.arange(dim - 1, -1, -1)
        bits = (torch.arange(2**dim)[:, None] // powers) % 2
        self.register_buffer("embedding", bits.float() * 2 - 1)
        self.register_buffer("power_vals", powers)

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """[B, C, h, w] latents -> [B, h*w] codes."""
        bits = (z > 0).long()
        return (bits * self.power_vals.view(1, -1, 1, 1)).sum(1).flatten(1)

    def lookup(self, codes: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """[B, h*w] codes -> [B, C, h, w] quantised latents."""
        b = codes.shape[0]
        return self.embedding[codes].view(b, grid[0], grid[1], -1).permute(0, 3, 1, 2).contiguous()


class MAGVITv2(nn.Module):
    def __init__(self, cfg: Magvit2Config | None = None) -> None:
        super().__init__()
        self.cfg = cfg or Magvit2Config()
        self.encoder = Encoder(self.cfg)
        self.decoder = Decoder(self.cfg)
        self.quantize = LookupFreeQuantizer(self.cfg.z_channels)

    def encode_codes(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels [B, 3, H, W] in [-1, 1] -> codes [B, (H/16)*(W/16)]."""
        return self.quantize.codes(self.encoder(pixels))

    def decode_codes(self, codes: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Codes [B, h*w] -> pixels [B, 3, 16h, 16w] in about [-1, 1]."""
        return self.decoder(self.quantize.lookup(codes, grid))


def magvit2_parameters(cfg: Magvit2Config | None = None) -> int:
    """Parameter count of a MAGVIT-v2 config, built on the meta device (nothing allocated)."""
    with torch.device("meta"):
        model = MAGVITv2(cfg)
    return sum(p.numel() for p in model.parameters())


class Magvit2Tokenizer(ImageTokenizer):
    """The ``ImageTokenizer`` face of a MAGVIT-v2 model (not an ``nn.Module``, so a backbone holding it does not
    count, save or train its weights). ``batch_size`` images are decoded at a time."""

    def __init__(self, model: MAGVITv2, batch_size: int = 8) -> None:
        self.model = model.eval().requires_grad_(False)
        self.codebook_size = model.cfg.codebook_size
        self.downsample = model.cfg.downsample
        self.batch_size = batch_size

    @property
    def device(self) -> torch.device:
        return self.model.quantize.embedding.device

    def to(self, device: torch.device | str) -> Magvit2Tokenizer:
        self.model.to(device)
        return self

    @classmethod
    def from_dir(cls, directory: str | Path, device: torch.device | str = "cpu") -> Magvit2Tokenizer:
        from htgrpo.backbones.weights_io import load_safetensors

        directory = Path(directory)
        if not directory.is_dir():
            raise WeightsError(f"MAGVIT-v2 weights: directory {directory} does not exist")
        cfg_path = directory / "config.json"
        data = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
        cfg = Magvit2Config.from_dict(data, str(cfg_path))
        with torch.device("meta"):
            model = MAGVITv2(cfg)
        model.to_empty(device=device)
        load_safetensors(model, directory, names=WEIGHT_NAMES, what="MAGVIT-v2 weights")
        return cls(model)

    @torch.no_grad()
    def encode(self, images: np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(np.ascontiguousarray(images), device=self.device).permute(0, 3, 1, 2)
        x = x.float() / 127.5 - 1.0
        return torch.cat(
            [self.model.encode_codes(x[i : i + self.batch_size]) for i in range(0, len(x), self.batch_size)]
        ).cpu()

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, grid: tuple[int, int]) -> np.ndarray:
        codes = codes.to(self.device).long()
        out = []
        for i in range(0, len(codes), self.batch_size):
            x = self.model.decode_codes(codes[i : i + self.batch_size], grid)
            # MMaDA's inference: clamp((x + 1) / 2, 0, 1) * 255, then astype(uint8), which truncates (no rounding)
            x = (((x.float() + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0).to(torch.uint8)
            out.append(x.permute(0, 2, 3, 1).cpu().numpy())
        if not out:
            return np.zeros((0, grid[0] * self.downsample, grid[1] * self.downsample, 3), np.uint8)
        return np.concatenate(out)


__all__ = ["MAGVITv2", "Magvit2Config", "Magvit2Tokenizer", "magvit2_parameters"]
