"""MMaDA-8B (Gen-Verse/MMaDA-8B-Base, -MixCoT): the LLaDA-8B network, MAGVIT-v2 codes, and MMaDA's T2I template.

Sequence (MMaDA's ``t2i_gen_prompt`` with ``use_reserved_token=True``; algorithm.md §2.2)::

    [iPAD 126093 ...] <|t2i|> 126088  <bos> text <eos>  <|soi|> 126084  code x N  <|eoi|> 126085

* the special ids are MMaDA's reserved-token mapping (the tokenizer knows them only as reserved tokens); BOS and
  EOS are the tokenizer's own (126080 / 126081 for LLaDA's);
* text is what the tokenizer returns (LLaDA's adds BOS; a missing BOS is prepended, as MMaDA does); a prompt
  longer than ``max_text_len`` is cut, keeping the EOS (MMaDA's truncation);
* the unconditional (CFG) branch is the same template with empty text: ``<|t2i|> <bos> <eos>``;
* prompts are left-padded with [iPAD] and the attention mask hides the pads. MMaDA pads every prompt to
  ``max_text_len + 1``; here a batch is padded to its longest prompt, which gives the same logits: RoPE depends only
  on relative positions and padding is never attended;
* image id = code + ``len(text tokenizer)`` (126349), mask id 126336; the network's vocabulary (134656) must hold
  the 8192 codes above the offset.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import torch

from htgrpo.backbones.base import ImageTokenLayout, PromptBatch
from htgrpo.backbones.pretrained import PretrainedLLaDABackbone
from htgrpo.errors import WeightsError
from htgrpo.tokenizers.magvit2 import Magvit2Tokenizer

T2I, SOI, EOI, IPAD = 126088, 126084, 126085, 126093
MASK = 126336
IMAGE_OFFSET = 126349
"""len(LLaDA's text tokenizer): MMaDA's image-code offset (MaskGRPO slices the logits at 126349:134541)."""


class MMaDABackbone(PretrainedLLaDABackbone):
    kind: ClassVar[str] = "mmada"
    vq_subdir: ClassVar[str] = "magvitv2"

    def __init__(self, cfg, net, text_tokenizer, image_tokenizer) -> None:
        super().__init__(cfg, net, text_tokenizer, image_tokenizer)
        self.bos = text_tokenizer.bos_token_id
        self.eos = text_tokenizer.eos_token_id
        if self.bos is None or self.eos is None:
            raise WeightsError(
                "mmada: the text tokenizer defines no BOS/EOS token (MMaDA's template needs both)"
            )
        self.pad_id = IPAD
        self.layout = ImageTokenLayout(
            codebook_size=image_tokenizer.codebook_size,
            grid_h=self.grid_hw[0],
            grid_w=self.grid_hw[1],
            image_offset=len(text_tokenizer),
            mask_id=MASK,
        )
        self._check_layout(
            self.layout,
            {
                "<|t2i|>": T2I,
                "<|soi|>": SOI,
                "<|eoi|>": EOI,
                "[iPAD]": IPAD,
                "bos": self.bos,
                "eos": self.eos,
            },
        )

    @staticmethod
    def load_image_tokenizer(directory: Path, device) -> Magvit2Tokenizer:
        return Magvit2Tokenizer.from_dir(directory, device)

    # --- templates -------------------------------------------------------------------------------------
    def _row(self, text: str) -> tuple[list[int], list[bool]]:
        ids, spans = self._tokens(text) if text else ([], [])
        words = [end > start for start, end in spans]
        if not ids or ids[0] != self.bos:
            ids, words = [self.bos, *ids], [False, *words]
        row, flags = [T2I, *ids, self.eos], [False, *words, False]
        limit = self.cfg.max_text_len + 1  # MMaDA: max_text_len + 1 for the task token
        if len(row) > limit:
            row, flags = row[: limit - 1] + [self.eos], flags[: limit - 1] + [False]
        return row, flags

    def encode_prompts(self, prompts: Sequence[str]) -> PromptBatch:
        rows = [self._row(p) for p in prompts]
        return PromptBatch.pack([r for r, _ in rows], self.pad_id, [w for _, w in rows])

    def encode_uncond(self, n: int) -> PromptBatch:
        row, words = self._row("")
        return PromptBatch.pack([row] * n, self.pad_id, [words] * n)

    def build_sequence(self, prompt: PromptBatch, image_state: torch.Tensor):
        return self._sequence(prompt, image_state, [SOI], [EOI])


__all__ = ["EOI", "IMAGE_OFFSET", "IPAD", "MASK", "SOI", "T2I", "MMaDABackbone"]
