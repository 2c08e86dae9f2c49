"""A LLaDA-architecture bidirectional transformer (the network inside MMaDA and Lumina-DiMOO).

Module names and the state-dict layout follow LLaDA's ``LLaDAModelLM`` (``model.transformer.wte``,
``model.transformer.blocks.{i}.{attn_norm,ff_norm,q_proj,k_proj,v_proj,attn_out,ff_proj,up_proj,ff_out}``,
``model.transformer.ln_f``, untied ``model.transformer.ff_out``), so that the same class serves the CPU-sized tiny
backbone and the 8B checkpoints, and LoRA can target the LLaDA module names. No causal mask: every token sees every
non-padding token.

The real checkpoints' ``config.json`` (LLaDA's ``ModelConfig`` fields, which MMaDA's ``MMadaConfig`` and
Lumina-DiMOO's ``LLaDAConfig`` both carry) is read by ``LLaDAConfig.from_checkpoint_config``; a setting this
implementation does not have (tied weights, biases, a non-llama block, ...) is an error naming the key and the file.
The 8B networks are built on the ``meta`` device (``LLaDAModelLM(cfg, device="meta")``) and materialised only when
their weights are loaded, so nothing is allocated or initialised twice.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from htgrpo.errors import ConfigError

_LLADA_ARCHITECTURE: dict[str, tuple[Any, ...]] = {
    "weight_tying": (False,),
    "include_bias": (False,),
    "include_qkv_bias": (False,),
    "rope": (True,),
    "alibi": (False,),
    "block_type": ("llama",),
    "activation_type": ("silu",),
    "layer_norm_type": ("rms",),
    "attention_layer_norm": (False,),
    "input_emb_norm": (False,),
    "scale_logits": (False,),
    "block_group_size": (1,),
    "multi_query_attention": (False,),
}
"""config.json settings of LLaDA's ModelConfig this implementation has, with the values it supports."""


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

    @classmethod
    def from_checkpoint_config(cls, data: dict[str, Any], source: str = "config.json") -> LLaDAConfig:
        """The network of a LLaDA-family ``config.json`` (LLaDA, MMaDA, Lumina-DiMOO).

        The vocabulary is ``embedding_size`` when set (LLaDA pads the embedding beyond ``vocab_size``), else
        ``vocab_size``. Settings that describe another architecture than this one are rejected, naming the key.
        """
        missing = [k for k in ("d_model", "n_layers", "n_heads") if data.get(k) is None]
        if data.get("embedding_size") is None and data.get("vocab_size") is None:
            missing.append("vocab_size")
        if missing:
            raise ConfigError(f"{source}: not a LLaDA config: it lacks {', '.join(missing)}")
        for key, expected in _LLADA_ARCHITECTURE.items():
            if key in data and data[key] is not None and data[key] not in expected:
                raise ConfigError(
                    f"{source}: {key} is {data[key]!r}; this LLaDA implementation supports only "
                    f"{' or '.join(repr(e) for e in expected)}"
                )
        d_model = int(data["d_model"])
        hidden = data.get("mlp_hidden_size")
        if hidden is None:
            hidden = int(data.get("mlp_ratio", 4)) * d_model
        return cls(
            vocab_size=int(data.get("embedding_size") or data["vocab_size"]),
            d_model=d_model,
            n_layers=int(data["n_layers"]),
            n_heads=int(data["n_heads"]),
            mlp_hidden_size=int(hidden),
            rope_theta=float(data.get("rope_theta", 10000.0)),
            rms_eps=float(data.get("rms_norm_eps", 1e-5)),
            n_kv_heads=_kv_heads(data),
        )

    def to_checkpoint_config(self) -> dict[str, Any]:
        """The ``config.json`` fields of this network, in LLaDA's names (what ``from_checkpoint_config`` reads)."""
        return {
            "d_model": self.d_model,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "n_kv_heads": self.kv_heads,
            "mlp_hidden_size": self.mlp_hidden_size,
            "rope_theta": self.rope_theta,
            "rms_norm_eps": self.rms_eps,
            "vocab_size": self.vocab_size,
            "embedding_size": self.vocab_size,
            "weight_tying": False,
            "include_bias": False,
            "rope": True,
            "block_type": "llama",
            "activation_type": "silu",
            "layer_norm_type": "rms",
        }

    def num_parameters(self) -> int:
        """Parameter count computed from the config, without allocating anything."""
        d, h = self.d_model, self.mlp_hidden_size
        kv = self.kv_heads * self.head_dim
        block = 2 * d + d * d + 2 * d * kv + d * d + 2 * d * h + h * d
        return 2 * self.vocab_size * d + self.n_layers * block + d


def _kv_heads(data: dict[str, Any]) -> int | None:
    """``n_kv_heads`` when it differs from ``n_heads`` (grouped-query attention), else None (plain attention)."""
    kv = data.get("n_kv_heads")
    return None if not kv or int(kv) == int(data["n_heads"]) else int(kv)


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


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    if x.dtype == torch.float32:
        return x * cos + _rotate_half(x) * sin
    xf = x.float()
    return (xf * cos + _rotate_half(xf) * sin).to(x.dtype)


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
        # RoPE in float32 whatever the weights' dtype (LLaDA's rope_full_precision)
        q = _rope(q, cos, sin)
        k = _rope(k, cos, sin)
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
                # _weight skips nn.Embedding's own init (LLaDAModelLM initialises everything; a meta build of
                # an 8B network would otherwise spend seconds in the meta normal_)
                "wte": nn.Embedding(
                    cfg.vocab_size, cfg.d_model, _weight=torch.empty(cfg.vocab_size, cfg.d_model)
                ),
                "blocks": nn.ModuleList(LLaDABlock(cfg) for _ in range(cfg.n_layers)),
                "ln_f": RMSNorm(cfg.d_model, cfg.rms_eps),
                "ff_out": nn.Linear(cfg.d_model, cfg.vocab_size, bias=False),
            }
        )


class LLaDAModelLM(nn.Module):
    """``model.transformer.*`` layout of LLaDA checkpoints; returns hidden states or logits over a vocab slice."""

    def __init__(
        self, cfg: LLaDAConfig, *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> None:
        """``device="meta"`` builds the module without memory or initialisation (weights are loaded later)."""
        super().__init__()
        self.cfg = cfg
        with torch.device(device or "cpu"):
            self.model = LLaDATransformer(cfg)
        self.gradient_checkpointing = False
        if str(device) != "meta":
            self.reset_parameters()
        if dtype is not None:
            self.to(dtype)

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


MMADA_8B = LLaDAConfig(
    vocab_size=134656, d_model=4096, n_layers=32, n_heads=32, mlp_hidden_size=12288, rope_theta=500000.0
)
"""MMaDA-8B (Base / MixCoT): LLaDA-8B resized to 126464 text + 8192 image rows (``new_vocab_size``)."""

DIMOO_8B = LLaDAConfig(
    vocab_size=134548, d_model=4096, n_layers=32, n_heads=32, mlp_hidden_size=12288, rope_theta=500000.0
)
"""Lumina-DiMOO: the same LLaDA-8B blocks; 126356 text rows + 8192 image codes (algorithm.md §2.6)."""
