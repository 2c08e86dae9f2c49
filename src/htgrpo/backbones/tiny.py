"""The CPU-sized backbone: a small LLaDA transformer with MMaDA's vocabulary idea and T2I template.

Vocabulary: special tokens, then the world's words, then the image codes at ``image_offset`` (like MMaDA, whose
image ids are code + len(text tokenizer)). Sequence, as MMaDA's ``t2i_gen_prompt``:
``[pad ...] <|t2i|> <bos> words <eos> <|soi|> code x N <|eoi|>``; the unconditional branch has no words.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from htgrpo.backbones.base import Backbone, ImageTokenLayout, PromptBatch
from htgrpo.backbones.llada import LLaDAConfig, LLaDAModelLM
from htgrpo.config import BackboneConfig
from htgrpo.errors import PromptError
from htgrpo.tokenizers.base import ImageTokenizer
from htgrpo.world.grammar import NUMBERS, plural
from htgrpo.world.palette import COLOR_NAMES, SHAPES

SPECIAL_TOKENS = ("<pad>", "<|t2i|>", "<bos>", "<eos>", "<|soi|>", "<|eoi|>", "<|mask|>")


def world_words() -> list[str]:
    """Every word of the shapes world's grammar, in a fixed order (the text vocabulary)."""
    words = ["a", "an", "photo", "of", "and", "left", "right", "above", "below"]
    words += list(NUMBERS.values()) + list(COLOR_NAMES) + list(SHAPES) + [plural(s) for s in SHAPES]
    return words


class WordTokenizer:
    """Whitespace word tokenizer over a fixed vocabulary; unknown words are an error that names them."""

    def __init__(self, words: Sequence[str]) -> None:
        self.tokens = list(SPECIAL_TOKENS) + list(words)
        self.ids = {t: i for i, t in enumerate(self.tokens)}

    def __len__(self) -> int:
        return len(self.tokens)

    def special(self, name: str) -> int:
        return self.ids[name]

    def encode(self, text: str) -> list[int]:
        words = text.lower().replace(",", " ").split()
        unknown = [w for w in words if w not in self.ids or w in SPECIAL_TOKENS]
        if unknown:
            raise PromptError(
                f"prompt {text!r} uses words outside the backbone's vocabulary: {', '.join(sorted(set(unknown)))}"
            )
        return [self.ids[w] for w in words]


class TinyBackbone(Backbone):
    def __init__(self, cfg: BackboneConfig, image_tokenizer: ImageTokenizer, grid: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.text = WordTokenizer(world_words())
        self.image_tokenizer = image_tokenizer
        self.pad_id = self.text.special("<pad>")
        self.layout = ImageTokenLayout(
            codebook_size=image_tokenizer.codebook_size,
            grid_h=grid,
            grid_w=grid,
            image_offset=len(self.text),
            mask_id=self.text.special("<|mask|>"),
        )
        self.llada_config = LLaDAConfig(
            vocab_size=len(self.text) + image_tokenizer.codebook_size,
            d_model=cfg.d_model,
            n_layers=cfg.n_layers,
            n_heads=cfg.n_heads,
            mlp_hidden_size=cfg.mlp_hidden_size,
            rope_theta=cfg.rope_theta,
            rms_eps=cfg.rms_eps,
        )
        self.net = LLaDAModelLM(self.llada_config)
        if cfg.image_pos_2d:
            # Raster RoPE alone makes vertical neighbours distant; row/column embeddings give the 2-D layout.
            self.row_emb = nn.Embedding(grid, cfg.d_model)
            self.col_emb = nn.Embedding(grid, cfg.d_model)
            nn.init.normal_(self.row_emb.weight, std=0.02)
            nn.init.normal_(self.col_emb.weight, std=0.02)

    # --- templates -------------------------------------------------------------------------------------
    def _pack(self, rows: list[list[int]]) -> PromptBatch:
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        att = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r) :] = torch.tensor(r)
            att[i, width - len(r) :] = 1
        return PromptBatch(ids, att)

    def _template(self, words: list[int]) -> list[int]:
        t = self.text
        return [t.special("<|t2i|>"), t.special("<bos>"), *words, t.special("<eos>")]

    def encode_prompts(self, prompts: Sequence[str]) -> PromptBatch:
        rows = []
        for p in prompts:
            words = self.text.encode(p)
            if len(words) > self.cfg.max_text_len:
                raise PromptError(
                    f"prompt {p!r} has {len(words)} words; backbone.max_text_len is {self.cfg.max_text_len}"
                )
            rows.append(self._template(words))
        return self._pack(rows)

    def encode_uncond(self, n: int) -> PromptBatch:
        return self._pack([self._template([])] * n)

    def prompt_word_mask(self, prompt: PromptBatch) -> torch.Tensor:
        ids = prompt.input_ids
        # word ids follow the special tokens and precede the image codes (see WordTokenizer)
        words = (ids >= len(SPECIAL_TOKENS)) & (ids < self.layout.image_offset)
        return words & prompt.attention_mask.bool()

    # --- network ---------------------------------------------------------------------------------------
    def build_sequence(self, prompt: PromptBatch, image_state: torch.Tensor):
        b, dev = image_state.shape[0], image_state.device
        soi = torch.full((b, 1), self.text.special("<|soi|>"), dtype=torch.long, device=dev)
        eoi = torch.full((b, 1), self.text.special("<|eoi|>"), dtype=torch.long, device=dev)
        ids = torch.cat([prompt.input_ids.to(dev), soi, self.codes_to_ids(image_state), eoi], dim=1)
        ones = torch.ones((b, self.layout.num_tokens + 2), dtype=torch.long, device=dev)
        att = torch.cat([prompt.attention_mask.to(dev), ones], 1)
        start = prompt.input_ids.shape[1] + 1
        return ids, att, torch.arange(start, start + self.layout.num_tokens, device=dev)

    def network_logits(self, input_ids, attention_mask, image_positions):
        extra = None
        if self.cfg.image_pos_2d:
            g = self.layout.grid_w
            cells = torch.arange(self.layout.num_tokens, device=input_ids.device)
            pos = self.row_emb(cells // g) + self.col_emb(cells % g)
            # added to the image positions only; the prompt part gets zeros
            lead = torch.zeros(int(image_positions[0]), self.cfg.d_model, dtype=pos.dtype, device=pos.device)
            tail = torch.zeros(
                input_ids.shape[1] - int(image_positions[-1]) - 1,
                self.cfg.d_model,
                dtype=pos.dtype,
                device=pos.device,
            )
            extra = torch.cat([lead, pos, tail])[None]
        hidden = self.net.hidden_states(input_ids, attention_mask, extra)
        start, stop = self.layout.code_slice()
        return self.net.slice_logits(hidden[:, image_positions], start, stop)
