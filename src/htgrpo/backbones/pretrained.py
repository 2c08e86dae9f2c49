"""What MMaDA and Lumina-DiMOO share: a LLaDA network loaded from a checkpoint directory, a Hugging Face text
tokenizer, an image tokenizer, LoRA through peft, bf16 and gradient checkpointing.

``load_pretrained(cfg.backbone, storage)`` reads ``WEIGHTS/config.json`` (LLaDA's fields), builds the network on
the meta device in ``backbone.dtype``, materialises it on the target device and copies the (sharded) safetensors in
with the checkpoint's own key names (``model.transformer.blocks.0.q_proj.weight``, ...), strictly. The text
tokenizer is the fast tokenizer of ``WEIGHTS/tokenizer.json``; the image tokenizer comes from
``backbone.vq_weights`` (default ``WEIGHTS/magvitv2`` for MMaDA, ``WEIGHTS/vqvae`` for Lumina-DiMOO).

LoRA (``backbone.lora.enabled``) wraps the network in a peft model with adapters on the named modules of the
LLaDA blocks only (the LM head shares the name ``ff_out`` and is never adapted); only the adapters train, a
checkpoint stores only them, and the RL reference is the same network with the adapters disabled.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from htgrpo.backbones.base import Backbone, ImageTokenLayout, PromptBatch
from htgrpo.backbones.llada import LLaDAConfig, LLaDAModelLM
from htgrpo.backbones.weights_io import load_safetensors, resolve_weights_dir
from htgrpo.config import BackboneConfig, LoraConfig, StorageConfig
from htgrpo.errors import CheckpointError, WeightsError
from htgrpo.tokenizers.base import ImageTokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def lora_pattern(targets: Sequence[str]) -> str:
    """peft target regex: the named linear layers inside ``model.transformer.blocks.N`` (never the LM head)."""
    return r".*\.transformer\.blocks\.\d+\.(" + "|".join(re.escape(t) for t in targets) + r")"


def load_text_tokenizer(directory: Path):
    """The fast tokenizer of a checkpoint directory (``tokenizer.json``), without remote code."""
    from transformers import PreTrainedTokenizerFast

    if not (directory / "tokenizer.json").is_file():
        raise WeightsError(
            f"text tokenizer: {directory} has no tokenizer.json (the checkpoint's fast tokenizer is needed)"
        )
    try:
        return PreTrainedTokenizerFast.from_pretrained(str(directory), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise WeightsError(f"text tokenizer: cannot load {directory / 'tokenizer.json'}: {exc}") from None


class PretrainedLLaDABackbone(Backbone):
    """A real backbone: LLaDA network + text tokenizer + image tokenizer; subclasses define the template."""

    kind: ClassVar[str]
    vq_subdir: ClassVar[str]

    def __init__(
        self, cfg: BackboneConfig, net: LLaDAModelLM, text_tokenizer: Any, image_tokenizer: ImageTokenizer
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.net = net
        self.llada_config: LLaDAConfig = net.cfg
        self.text = text_tokenizer
        self.image_tokenizer = image_tokenizer
        self._lora = False
        h, w = cfg.image_size
        ds = image_tokenizer.downsample
        if h % ds or w % ds:
            raise WeightsError(
                f"backbone.image_size [{h}, {w}] is not a multiple of the image tokenizer's {ds}x downsampling"
            )
        self.grid_hw = (h // ds, w // ds)
        net.gradient_checkpointing = cfg.gradient_checkpointing

    def __deepcopy__(self, memo: dict) -> PretrainedLLaDABackbone:
        """Copies the network; the (frozen, read-only) text and image tokenizers are shared, not copied."""
        memo[id(self.text)] = self.text
        memo[id(self.image_tokenizer)] = self.image_tokenizer
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        for key, value in self.__dict__.items():
            new.__dict__[key] = copy.deepcopy(value, memo)
        return new

    @staticmethod
    def load_image_tokenizer(directory: Path, device: torch.device | str) -> ImageTokenizer:
        """The backbone's image tokenizer from its weights directory (MAGVIT-v2, or DiMOO's VQ model)."""
        raise NotImplementedError

    # --- network ----------------------------------------------------------------------------------------
    @property
    def llada(self) -> LLaDAModelLM:
        """The LLaDA module itself (under the peft wrapper when LoRA is on)."""
        return self.net.get_base_model() if self._lora else self.net

    def _check_layout(self, layout: ImageTokenLayout, specials: dict[str, int]) -> None:
        vocab = self.llada_config.vocab_size
        start, stop = layout.code_slice()
        if stop > vocab:
            raise WeightsError(
                f"{self.kind}: image codes [{start}, {stop}) do not fit the network's vocabulary of {vocab} "
                f"(codebook {layout.codebook_size} at offset {start}): is backbone.weights the right checkpoint?"
            )
        for name, value in specials.items():
            if value is None or not 0 <= value < vocab:
                raise WeightsError(
                    f"{self.kind}: special token {name} = {value} is outside the vocabulary ({vocab})"
                )

    def network_logits(self, input_ids, attention_mask, image_positions):
        hidden = self.net.hidden_states(input_ids, attention_mask)
        start, stop = self.layout.code_slice()
        return self.net.slice_logits(hidden[:, image_positions], start, stop)

    def _sequence(
        self, prompt: PromptBatch, image_state: torch.Tensor, before: Sequence[int], after: Sequence[int]
    ):
        """prompt ids, ``before``, the code grid (newlines included), ``after``; and the codes' positions."""
        b, dev = image_state.shape[0], image_state.device
        lead = torch.tensor(list(before), dtype=torch.long, device=dev).expand(b, -1)
        tail = torch.tensor(list(after), dtype=torch.long, device=dev).expand(b, -1)
        grid = self.layout.grid_ids(self.codes_to_ids(image_state))
        ids = torch.cat([prompt.input_ids.to(dev), lead, grid, tail], dim=1)
        ones = torch.ones((b, ids.shape[1] - prompt.input_ids.shape[1]), dtype=torch.long, device=dev)
        att = torch.cat([prompt.attention_mask.to(dev), ones], dim=1)
        start = prompt.input_ids.shape[1] + len(before)
        return ids, att, start + self.layout.code_offsets(dev)

    # --- text -------------------------------------------------------------------------------------------
    def _tokens(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        enc = self.text(text, return_offsets_mapping=True)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]

    # --- LoRA -------------------------------------------------------------------------------------------
    def add_lora(self, lora: LoraConfig) -> None:
        """Wrap the network in peft LoRA adapters on ``lora.target_modules`` of every block; freeze the rest."""
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model

        if self._lora:
            raise RuntimeError("LoRA is already on")
        peft_cfg = PeftLoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora_pattern(lora.target_modules),
            bias="none",
        )
        self.net = get_peft_model(self.net, peft_cfg)
        self._lora = True

    @property
    def has_adapter(self) -> bool:
        return self._lora

    @contextlib.contextmanager
    def adapter_disabled(self) -> Iterator[None]:
        if not self._lora:
            raise RuntimeError(f"{self.kind} backbone has no LoRA adapter to disable")
        with self.net.disable_adapter():
            yield

    def lora_modules(self) -> list[str]:
        """Names (in the LLaDA module's own naming) of the modules that carry an adapter."""
        from peft.tuners.lora import LoraLayer

        return sorted(n for n, m in self.llada.named_modules() if isinstance(m, LoraLayer))

    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        """LoRA: the adapter weights (peft's names); full fine-tuning: the network in the checkpoint's names."""
        if self._lora:
            from peft import get_peft_model_state_dict

            state = get_peft_model_state_dict(self.net)
        else:
            state = self.net.state_dict()
        return {k: v.detach().cpu().contiguous() for k, v in state.items()}

    def load_checkpoint_tensors(self, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
        expected = self.checkpoint_tensors() if self._lora else self.net.state_dict()
        bad = [
            f"{k}: checkpoint {list(v.shape)} vs model {list(expected[k].shape)}"
            for k, v in state.items()
            if k in expected and tuple(expected[k].shape) != tuple(v.shape)
        ]
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if bad or missing or unexpected:
            what = "LoRA adapter" if self._lora else "network"
            raise CheckpointError(
                f"{source}: the {what} weights do not fit backbone.{self.kind} (lora.enabled, r or "
                "target_modules changed?): "
                + "; ".join(
                    bad[:5]
                    + [f"missing {m}" for m in missing[:5]]
                    + [f"unexpected {u}" for u in unexpected[:5]]
                )
            )
        if self._lora:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(self.net, state)
        else:
            self.net.load_state_dict(state, strict=True)

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update(
            kind=self.kind,
            weights=self.cfg.weights,
            network=self.llada_config.to_dict(),
            text_vocab_size=len(self.text),
            lora=self.cfg.lora.model_dump(mode="json") if self._lora else None,
            trainable_parameters=sum(p.numel() for p in self.parameters() if p.requires_grad),
        )
        return out

    # --- construction -----------------------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        cfg: BackboneConfig,
        net: LLaDAModelLM,
        text_tokenizer: Any,
        image_tokenizer: ImageTokenizer,
    ) -> PretrainedLLaDABackbone:
        backbone = cls(cfg, net, text_tokenizer, image_tokenizer)
        if cfg.lora.enabled:
            backbone.add_lora(cfg.lora)
        return backbone


def _backbone_class(kind: str) -> type[PretrainedLLaDABackbone]:
    if kind == "mmada":
        from htgrpo.backbones.mmada import MMaDABackbone

        return MMaDABackbone
    if kind == "dimoo":
        from htgrpo.backbones.dimoo import DiMOOBackbone

        return DiMOOBackbone
    raise ValueError(f"backbone.kind {kind!r} is not a pretrained backbone (mmada, dimoo)")


def load_pretrained(
    cfg: BackboneConfig, storage: StorageConfig | None = None, device: torch.device | str | None = None
) -> PretrainedLLaDABackbone:
    """Build a real backbone from ``cfg.weights`` (and ``cfg.vq_weights``); see the module docstring.

    ``device`` defaults to this process's GPU (``cuda:LOCAL_RANK`` under torchrun) or the CPU.
    """
    if device is None:
        from htgrpo.distributed import default_device

        device = default_device(int(os.environ.get("LOCAL_RANK", "0") or 0))
    cls = _backbone_class(cfg.kind)
    if not cfg.weights:
        raise WeightsError(
            f"backbone.weights is not set for backbone.kind={cfg.kind}: point it at the checkpoint directory "
            f"(fetch it with: htgrpo weights download --model {cfg.kind} --to DIR)"
        )
    what = f"backbone.weights ({cfg.kind})"
    weights = resolve_weights_dir(cfg.weights, storage, what)
    config_path = weights / "config.json"
    if not config_path.is_file():
        raise WeightsError(f"{what}: {weights} has no config.json")
    try:
        data = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise WeightsError(f"{what}: {config_path} is not valid JSON ({exc})") from None
    llada_cfg = LLaDAConfig.from_checkpoint_config(data, str(config_path))
    text = load_text_tokenizer(weights)
    vq_uri = cfg.vq_weights or str(weights / cls.vq_subdir)
    vq_dir = resolve_weights_dir(vq_uri, storage, f"backbone.vq_weights ({cfg.kind} image tokenizer)")
    image_tokenizer = cls.load_image_tokenizer(vq_dir, device)
    net = LLaDAModelLM(llada_cfg, device="meta", dtype=DTYPES[cfg.dtype])
    net.to_empty(device=device)
    load_safetensors(net, weights, what=what)
    return cls.build(cfg, net, text, image_tokenizer)


__all__ = ["PretrainedLLaDABackbone", "load_pretrained", "load_text_tokenizer", "lora_pattern"]
