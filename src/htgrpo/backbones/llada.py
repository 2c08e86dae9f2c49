"""A LLaDA-architecture bidirectional transformer (the network inside MMaDA and Lumina-DiMOO).

Module names and the state-dict layout follow LLaDA's ``LLaDAModelLM`` (``model.transformer.wte``,
``model.transformer.blocks.{i}.{attn_norm,ff_norm,q_proj,k_proj,v_proj,attn_out,ff_proj,up_proj,ff_out}``,
``model.transformer.ln_f``, untied ``model.transformer.ff_out``), so that the same class serves the CPU-sized tiny
backbone and the 8B checkpoints, and LoRA can target the LLaDA module names. No causal mask: every token sees every
non-padding token.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class LLaDAConfig:
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    mlp_hidden_size: int
    rope_theta: float = 10000.0
    rms_eps: float = 1e-5
    n_kv_heads: int | None = None

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    def to_dict(self) -> dict:
        return asdict(self)

    def num_parameters(self) -> int:
        """Parameter count computed from the config, without allocating anything."""
        d, h = self.d_model, self.mlp_hidden_size
        kv = self.kv_heads * self.head_dim
        block = 2 * d + d * d + 2 * d * kv + d * d + 2 * d * h + h * d
        return 2 * self.vocab_size * d + self.n_layers * block + d


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x * self.weight.float()).to(dtype)


@functools.lru_cache(maxsize=32)
def rotary_tables(
    seq_len: int, head_dim: int, theta: float, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables [seq_len, head_dim]; cached because every forward of a given length needs the same ones."""
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim))
    t = torch.arange(seq_len, device=device, dtype=torch.float32)
    freqs = torch.outer(t, inv)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


class LLaDABlock(nn.Module):
    def __init__(self, cfg: LLaDAConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, kv = cfg.d_model, cfg.kv_heads * cfg.head_dim
        self.attn_norm = RMSNorm(d, cfg.rms_eps)
        self.ff_norm = RMSNorm(d, cfg.rms_eps)
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, kv, bias=False)
        self.v_proj = nn.Linear(d, kv, bias=False)
        self.attn_out = nn.Linear(d, d, bias=False)
        self.ff_proj = nn.Linear(d, cfg.mlp_hidden_size, bias=False)
        self.up_proj = nn.Linear(d, cfg.mlp_hidden_size, bias=False)
        self.ff_out = nn.Linear(cfg.mlp_hidden_size, d, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, bias: torch.Tensor | None):
        b, n, _ = x.shape
        cfg = self.cfg
        h = self.attn_norm(x)
        q = self.q_proj(h).view(b, n, cfg.n_heads, cfg.head_dim).transpose(1, 2)
        k = self.k_proj(h).view(b, n, cfg.kv_heads, cfg.head_dim).transpose(1, 2)
        v = self.v_proj(h).view(b, n, cfg.kv_heads, cfg.head_dim).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        if cfg.kv_heads != cfg.n_heads:
            rep = cfg.n_heads // cfg.kv_heads
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, is_causal=False)
        x = x + self.attn_out(att.transpose(1, 2).reshape(b, n, cfg.d_model))
        h = self.ff_norm(x)
        return x + self.ff_out(F.silu(self.ff_proj(h)) * self.up_proj(h))


class LLaDATransformer(nn.Module):
    def __init__(self, cfg: LLaDAConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(cfg.vocab_size, cfg.d_model),
                "blocks": nn.ModuleList(LLaDABlock(cfg) for _ in range(cfg.n_layers)),
                "ln_f": RMSNorm(cfg.d_model, cfg.rms_eps),
                "ff_out": nn.Linear(cfg.d_model, cfg.vocab_size, bias=False),
            }
        )


class LLaDAModelLM(nn.Module):
    """``model.transformer.*`` layout of LLaDA checkpoints; returns hidden states or logits over a vocab slice."""

    def __init__(self, cfg: LLaDAConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = LLaDATransformer(cfg)
        self.gradient_checkpointing = False
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = 0.02
        for name, p in self.named_parameters():
            if name.endswith("norm.weight") or name.endswith("ln_f.weight"):
                nn.init.ones_(p)
            else:
                nn.init.normal_(p, std=std)
        # Scale residual output projections by depth (GPT-2 style) so deep stacks start stable.
        for block in self.model.transformer["blocks"]:
            nn.init.normal_(block.attn_out.weight, std=std / (2 * self.cfg.n_layers) ** 0.5)
            nn.init.normal_(block.ff_out.weight, std=std / (2 * self.cfg.n_layers) ** 0.5)

    @property
    def wte(self) -> nn.Embedding:
        return self.model.transformer["wte"]

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        extra_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final-norm hidden states [B, L, d]. `attention_mask` is 1 for real tokens, 0 for padding."""
        t = self.model.transformer
        x = t["wte"](input_ids)
        if extra_embeds is not None:
            x = x + extra_embeds
        n = input_ids.shape[1]
        cos, sin = rotary_tables(n, self.cfg.head_dim, self.cfg.rope_theta, x.device)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        bias = None
        if attention_mask is not None and not bool(attention_mask.all()):
            # Keys that are padding are never attended; a padding query still attends to real keys.
            bias = attention_mask.bool()[:, None, None, :]
        for block in t["blocks"]:
            if self.gradient_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, cos, sin, bias, use_reentrant=False)
            else:
                x = block(x, cos, sin, bias)
        return t["ln_f"](x)

    def slice_logits(self, hidden: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Logits over vocabulary ids [start, stop) only (the image-code slice): cheaper than the full head."""
        weight = self.model.transformer["ff_out"].weight[start:stop]
        return hidden @ weight.t()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.transformer["ff_out"](self.hidden_states(input_ids, attention_mask))
