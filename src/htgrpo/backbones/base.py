"""The backbone interface: a masked-diffusion multimodal LM used for text-to-image.

Everything above this layer (samplers, RL estimators, evaluation) works in *code space*: an image state is an
int64 tensor [B, N] of image codes in raster order, with ``MASK_CODE`` (-1) at masked positions. A backbone maps
that to its own token sequence (template, vocabulary offset, mask id, per-row newline tokens, ...), runs its network
and returns logits over the codebook only. Positions that are never masked or scored (Lumina-DiMOO's newline after
every row, BOI/EOI/BOA/EOA) therefore never appear in code space: ``ImageTokenLayout`` says where the codes sit in
the image part of the sequence (``code_offsets``) and where the fixed tokens do (``fixed_offsets``), and every
sampler and RL estimator works on the N codes alone.

Training-related hooks every backbone answers: ``has_adapter`` / ``adapter_disabled()`` (LoRA: the RL reference
is the adapter switched off), ``checkpoint_tensors()`` / ``load_checkpoint_tensors()`` (what a checkpoint stores:
every weight, or only the adapter) and ``describe()`` (the checkpoint's record of the backbone).
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from htgrpo.tokenizers.base import ImageTokenizer

MASK_CODE = -1
"""Code-space marker of a masked image position."""


@dataclass(frozen=True)
class ImageTokenLayout:
    """Where image codes live in a backbone's vocabulary and sequence."""

    codebook_size: int
    grid_h: int
    grid_w: int
    image_offset: int
    """Vocabulary id of code 0 (MMaDA 126349, Lumina-DiMOO 126356)."""
    mask_id: int
    """Vocabulary id of the mask token (126336 for both 8B backbones)."""
    newline_id: int | None = None
    """Token closing every row of the image grid (Lumina-DiMOO); never masked, never scored."""

    @property
    def num_tokens(self) -> int:
        return self.grid_h * self.grid_w

    def code_slice(self) -> tuple[int, int]:
        return self.image_offset, self.image_offset + self.codebook_size

    @property
    def row_stride(self) -> int:
        """Sequence tokens per grid row: the row's codes plus its newline, if the backbone has one."""
        return self.grid_w + (self.newline_id is not None)

    @property
    def grid_span(self) -> int:
        """Sequence tokens the code grid occupies (codes and newlines)."""
        return self.grid_h * self.row_stride

    def code_offsets(self, device: torch.device | str | None = None) -> torch.Tensor:
        """[N] offset of each code (raster order) from the start of the grid in the sequence."""
        cells = torch.arange(self.num_tokens, device=device)
        return cells // self.grid_w * self.row_stride + cells % self.grid_w

    def fixed_offsets(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Offsets of the grid's never-masked, never-scored tokens (one newline closing each row; may be empty)."""
        if self.newline_id is None:
            return torch.zeros(0, dtype=torch.long, device=device)
        return torch.arange(self.grid_h, device=device) * self.row_stride + self.grid_w

    def grid_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Vocabulary ids [B, N] in raster order -> the grid as it sits in the sequence [B, grid_span]."""
        if self.newline_id is None:
            return ids
        rows = ids.view(ids.shape[0], self.grid_h, self.grid_w)
        nl = torch.full((ids.shape[0], self.grid_h, 1), self.newline_id, dtype=ids.dtype, device=ids.device)
        return torch.cat([rows, nl], dim=2).flatten(1)


@dataclass
class PromptBatch:
    """Tokenised prompt part of the sequence, left-padded: ids [B, L] and attention mask [B, L] (1 = real).

    ``word_mask`` [B, L] (optional): the prompt's own text tokens, for backbones whose template holds other text
    (Lumina-DiMOO's system string); ``Backbone.prompt_word_mask`` returns it when set.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    word_mask: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def repeat_interleave(self, n: int) -> PromptBatch:
        words = None if self.word_mask is None else self.word_mask.repeat_interleave(n, 0)
        return PromptBatch(
            self.input_ids.repeat_interleave(n, 0), self.attention_mask.repeat_interleave(n, 0), words
        )

    def index(self, idx: torch.Tensor | slice) -> PromptBatch:
        words = None if self.word_mask is None else self.word_mask[idx]
        return PromptBatch(self.input_ids[idx], self.attention_mask[idx], words)

    def to(self, device: torch.device | str) -> PromptBatch:
        words = None if self.word_mask is None else self.word_mask.to(device)
        return PromptBatch(self.input_ids.to(device), self.attention_mask.to(device), words)

    @staticmethod
    def cat(batches: Sequence[PromptBatch], pad_id: int) -> PromptBatch:
        """Concatenate batches of different lengths, left-padding the shorter ones."""
        width = max(b.input_ids.shape[1] for b in batches)
        ids, att, words = [], [], []
        for b in batches:
            pad = width - b.input_ids.shape[1]
            ids.append(nn.functional.pad(b.input_ids, (pad, 0), value=pad_id))
            att.append(nn.functional.pad(b.attention_mask, (pad, 0), value=0))
            w = b.word_mask if b.word_mask is not None else torch.zeros_like(b.input_ids, dtype=torch.bool)
            words.append(nn.functional.pad(w, (pad, 0), value=False))
        has_words = any(b.word_mask is not None for b in batches)
        return PromptBatch(torch.cat(ids), torch.cat(att), torch.cat(words) if has_words else None)

    @staticmethod
    def pack(
        rows: Sequence[Sequence[int]], pad_id: int, words: Sequence[Sequence[bool]] | None = None
    ) -> PromptBatch:
        """Left-pad token id lists (and their word flags) to a common length."""
        width = max((len(r) for r in rows), default=0)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        att = torch.zeros((len(rows), width), dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.bool) if words is not None else None
        for i, r in enumerate(rows):
            if r:
                ids[i, width - len(r) :] = torch.tensor(list(r), dtype=torch.long)
                att[i, width - len(r) :] = 1
                if mask is not None:
                    mask[i, width - len(r) :] = torch.tensor(list(words[i]), dtype=torch.bool)
        return PromptBatch(ids, att, mask)


class Backbone(nn.Module, ABC):
    """A masked-diffusion T2I backbone: template, vocabulary layout, network and image tokenizer."""

    layout: ImageTokenLayout
    image_tokenizer: ImageTokenizer
    pad_id: int

    @abstractmethod
    def encode_prompts(self, prompts: Sequence[str]) -> PromptBatch:
        """Conditional template around each prompt, left-padded to a common length."""

    @abstractmethod
    def encode_uncond(self, n: int) -> PromptBatch:
        """The unconditional (CFG) template, n times."""

    def prompt_word_mask(self, prompt: PromptBatch) -> torch.Tensor:
        """[B, L] bool: the prompt's own text tokens, the only ones a prompt-masking estimator (d1) may mask.

        Template specials (task token, BOS/EOS, system strings) and padding are False.
        """
        if prompt.word_mask is not None:
            return prompt.word_mask & prompt.attention_mask.bool()
        raise NotImplementedError(f"{type(self).__name__} does not say which prompt tokens are words")

    @abstractmethod
    def build_sequence(
        self, prompt: PromptBatch, image_state: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Full token ids [B, L], attention mask [B, L] and the sequence index [N] of each image code."""

    @abstractmethod
    def network_logits(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, image_positions: torch.Tensor
    ) -> torch.Tensor:
        """Run the network; logits [B, N, codebook] at the image positions over the code slice of the vocab."""

    def logits(self, prompt: PromptBatch, image_state: torch.Tensor) -> torch.Tensor:
        """Logits [B, N, codebook_size] for every image position given the prompt and the partly masked image."""
        if image_state.ndim != 2 or image_state.shape[1] != self.layout.num_tokens:
            raise ValueError(
                f"image state must be [B, {self.layout.num_tokens}] codes, got {list(image_state.shape)}"
            )
        if len(prompt) != image_state.shape[0]:
            raise ValueError(f"{len(prompt)} prompts for {image_state.shape[0]} image states")
        ids, att, pos = self.build_sequence(prompt, image_state)
        return self.network_logits(ids, att, pos)

    def codes_to_ids(self, image_state: torch.Tensor) -> torch.Tensor:
        """Code space -> vocabulary ids (masked positions become the mask id)."""
        ids = image_state + self.layout.image_offset
        return torch.where(image_state == MASK_CODE, torch.full_like(ids, self.layout.mask_id), ids)

    def fully_masked(self, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
        return torch.full((batch, self.layout.num_tokens), MASK_CODE, dtype=torch.long, device=device)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # --- training hooks -------------------------------------------------------------------------------------
    @property
    def has_adapter(self) -> bool:
        """True when only adapter weights (LoRA) train; the frozen base is then the RL reference."""
        return False

    @contextlib.contextmanager
    def adapter_disabled(self) -> Iterator[None]:
        """Run the base model without its adapter (the reference policy of a LoRA run)."""
        raise RuntimeError(f"{type(self).__name__} has no adapter to disable")
        yield  # pragma: no cover

    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors a checkpoint of this backbone stores (default: the whole state dict)."""
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}

    def load_checkpoint_tensors(self, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
        """Load what ``checkpoint_tensors`` returned (strict keys and shapes, errors naming them)."""
        own = self.state_dict()
        bad = [
            f"{k}: checkpoint {list(v.shape)} vs model {list(own[k].shape)}"
            for k, v in state.items()
            if k in own and own[k].shape != v.shape
        ]
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if bad or missing or unexpected:
            from htgrpo.errors import CheckpointError

            raise CheckpointError(
                f"{source}: weights do not fit the backbone (vocabulary or codebook size mismatch?): "
                + "; ".join(
                    bad[:5]
                    + [f"missing {m}" for m in missing[:5]]
                    + [f"unexpected {u}" for u in unexpected[:5]]
                )
            )
        self.load_state_dict(state, strict=True)

    def describe(self) -> dict[str, Any]:
        """What a checkpoint records about the backbone (config.json's ``backbone`` section)."""
        layout = self.layout
        return {
            "codebook_size": layout.codebook_size,
            "grid": layout.grid_h,
            "grid_hw": [layout.grid_h, layout.grid_w],
            "image_offset": layout.image_offset,
            "mask_id": layout.mask_id,
            "parameters": self.num_parameters(),
        }
