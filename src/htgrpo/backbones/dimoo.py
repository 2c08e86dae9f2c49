"""Lumina-DiMOO (Alpha-VLLM/Lumina-DiMOO): the LLaDA-8B network, the aMUSEd-style VQ model, DiMOO's T2I template.

Sequence (``inference/inference_t2i.py`` and ``utils/prompt_utils.py``; algorithm.md §2.3)::

    tokenizer("<system>Generate an image according to the text prompt.</system><user>{prompt}</user>")
    <BOA 126354> <BOI 126349>  (code x W, <newline 126084>) x H  <EOI 126350> <EOA 126355>

* the CFG branch is the same with ``<user><uncondition></user>`` (the tokenizer's token 126351) and the same image
  part;
* the newline closing every grid row and BOA/BOI/EOI/EOA are never masked and never scored: they exist only in
  the sequence (``ImageTokenLayout.newline_id``, ``fixed_offsets``), never in code space, so no sampler or RL
  estimator sees them;
* the grid follows ``backbone.image_size``: (height/16) x (width/16) codes, e.g. 32 x 32 + 32 newlines at 512²;
* image id = code + 126356 (DiMOO's constant; its sampler derives it as the logits width - 8192, which agrees only
  for the 134548-row vocabulary), mask id 126336;
* DiMOO's own forward right-pads and never masks padding (batch size 1 only); here prompts are left-padded and the
  pads are masked out of attention, which leaves every real token's logits as in an unpadded forward (RoPE is
  relative).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import torch

from htgrpo.backbones.base import ImageTokenLayout, PromptBatch
from htgrpo.backbones.pretrained import PretrainedLLaDABackbone
from htgrpo.errors import WeightsError
from htgrpo.tokenizers.vqmodel import DiffusersVQTokenizer

MASK = 126336
NEWLINE = 126084
IMAGE_OFFSET = 126356
BOA, EOA = 126354, 126355
BOI, EOI = 126349, 126350
UNCONDITION = 126351
SYSTEM_PROMPT = "Generate an image according to the text prompt."
PREFIX = f"<system>{SYSTEM_PROMPT}</system><user>"
SUFFIX = "</user>"
UNCOND_TEXT = "<uncondition>"


class DiMOOBackbone(PretrainedLLaDABackbone):
    kind: ClassVar[str] = "dimoo"
    vq_subdir: ClassVar[str] = "vqvae"

    def __init__(self, cfg, net, text_tokenizer, image_tokenizer) -> None:
        super().__init__(cfg, net, text_tokenizer, image_tokenizer)
        pad = text_tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else 0  # DiMOO pads with 0; padding is masked anyway
        self.layout = ImageTokenLayout(
            codebook_size=image_tokenizer.codebook_size,
            grid_h=self.grid_hw[0],
            grid_w=self.grid_hw[1],
            image_offset=IMAGE_OFFSET,
            mask_id=MASK,
            newline_id=NEWLINE,
        )
        self._check_layout(
            self.layout,
            {
                "BOA": BOA,
                "EOA": EOA,
                "BOI": BOI,
                "EOI": EOI,
                "newline": NEWLINE,
                "<uncondition>": UNCONDITION,
            },
        )
        derived = self.llada_config.vocab_size - image_tokenizer.codebook_size
        if derived != IMAGE_OFFSET:
            warnings.warn(
                f"dimoo: vocabulary {self.llada_config.vocab_size} - codebook {image_tokenizer.codebook_size} = "
                f"{derived}, but DiMOO decodes codes at offset {IMAGE_OFFSET}; using {IMAGE_OFFSET}",
                RuntimeWarning,
                stacklevel=2,
            )
        ids, _ = self._tokens(PREFIX + UNCOND_TEXT + SUFFIX)
        if UNCONDITION not in ids:
            raise WeightsError(
                f"dimoo: the text tokenizer does not turn {UNCOND_TEXT} into token {UNCONDITION} "
                "(is tokenizer.json Lumina-DiMOO's?)"
            )

    @staticmethod
    def load_image_tokenizer(directory: Path, device) -> DiffusersVQTokenizer:
        return DiffusersVQTokenizer.from_dir(directory, device)

    # --- templates -------------------------------------------------------------------------------------
    def _row(self, prompt: str) -> tuple[list[int], list[bool]]:
        if prompt:  # keep at most max_text_len of the prompt's own tokens
            spans = [s for s in self._tokens(prompt)[1] if s[1] > s[0]]
            if len(spans) > self.cfg.max_text_len:
                prompt = prompt[: spans[self.cfg.max_text_len - 1][1]]
        text = PREFIX + prompt + SUFFIX
        ids, spans = self._tokens(text)
        lo, hi = len(PREFIX), len(PREFIX) + len(prompt)
        words = [end > start and start < hi and end > lo for start, end in spans]
        return ids, words

    def encode_prompts(self, prompts: Sequence[str]) -> PromptBatch:
        rows = [self._row(p) for p in prompts]
        return PromptBatch.pack([r for r, _ in rows], self.pad_id, [w for _, w in rows])

    def encode_uncond(self, n: int) -> PromptBatch:
        ids, _ = self._tokens(PREFIX + UNCOND_TEXT + SUFFIX)
        return PromptBatch.pack([ids] * n, self.pad_id, [[False] * len(ids)] * n)

    def build_sequence(self, prompt: PromptBatch, image_state: torch.Tensor):
        return self._sequence(prompt, image_state, [BOA, BOI], [EOI, EOA])


__all__ = ["BOA", "BOI", "EOA", "EOI", "IMAGE_OFFSET", "MASK", "NEWLINE", "UNCONDITION", "DiMOOBackbone"]
