"""The backbone interface: a masked-diffusion multimodal LM used for text-to-image.

Everything above this layer (samplers, RL estimators, evaluation) works in *code space*: an image state is an
int64 tensor [B, N] of image codes in raster order, with ``MASK_CODE`` (-1) at masked positions. A backbone maps
that to its own token sequence (template, vocabulary offset, mask id, per-row newline tokens, ...), runs its network
and returns logits over the codebook only. Positions that are never masked or scored (Lumina-DiMOO's newlines,
BOI/EOI) therefore never appear in code space.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

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


@dataclass
class PromptBatch:
    """Tokenised prompt part of the sequence, left-padded: ids [B, L] and attention mask [B, L] (1 = real)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def repeat_interleave(self, n: int) -> PromptBatch:
        return PromptBatch(
            self.input_ids.repeat_interleave(n, 0), self.attention_mask.repeat_interleave(n, 0)
        )

    def index(self, idx: torch.Tensor | slice) -> PromptBatch:
        return PromptBatch(self.input_ids[idx], self.attention_mask[idx])

    @staticmethod
    def cat(batches: Sequence[PromptBatch], pad_id: int) -> PromptBatch:
        """Concatenate batches of different lengths, left-padding the shorter ones."""
        width = max(b.input_ids.shape[1] for b in batches)
        ids, att = [], []
        for b in batches:
            pad = width - b.input_ids.shape[1]
            ids.append(nn.functional.pad(b.input_ids, (pad, 0), value=pad_id))
            att.append(nn.functional.pad(b.attention_mask, (pad, 0), value=0))
        return PromptBatch(torch.cat(ids), torch.cat(att))


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
