"""VLM-based image scores: HPSv3 (reward head on Qwen2-VL), UnifiedReward (Qwen2.5-VL judge) and DeQA-Score's rule.

All three run transformers' Qwen2-VL / Qwen2.5-VL classes from a local directory. Inputs are built without
transformers' ``Qwen2VLProcessor`` (it needs torchvision for its video processor, which cannot be installed beside
the pinned torch): the directory's chat template renders one image placeholder, which is expanded to the image's
``grid_t * grid_h * grid_w / merge_size**2`` ``<|image_pad|>`` tokens exactly as the processor does, the image
processor (``preprocessor_config.json``) gives ``pixel_values`` and ``image_grid_thw``, and ``mm_token_type_ids``
marks the image tokens for M-RoPE. The chat template comes from ``chat_template.jinja``, ``chat_template.json``
or the tokenizer config, in that order.

HPSv3 (``MizzenAI/HPSv3``, ``HPSv3.safetensors``): ``Qwen2VLForConditionalGeneration`` (Qwen2-VL-7B-Instruct
architecture, every weight from the HPSv3 file, so the base model's weights are not needed) plus the reward head
``rm_head`` = Linear(hidden, 1024), ReLU, Dropout(0.05), Linear(1024, 16), ReLU, Linear(16, 2) in float32. The
tokenizer gets the extra special token ``<|Reward|>`` and the embeddings are resized to the tokenizer's length, as
in HPSv3's training code; the user turn is the image followed by an instruction naming the prompt and ending with
the reward token; images are resized to exactly 256*28*28 = 200,704 pixels. The head's output at the reward token
is (mu, sigma); **mu is the score** (unbounded real, compare relatively; sigma is kept in ``last_sigma``). The
checkpoint's keys may be in either Qwen2-VL layout (``visual.*`` / ``model.layers.*`` before transformers 4.52,
``model.visual.*`` / ``model.language_model.*`` after); ``rm_head.*`` goes to the head.

UnifiedReward (``CodeGoat24/UnifiedReward-qwen-7b`` and its 2.0 / 3b / 32b / 72b siblings):
``Qwen2_5_VLForConditionalGeneration`` prompted with the image and the prompt, greedy decoding, the score parsed
from the last ``Final Score: x`` of the answer (x in 1..5; Flow-GRPO divides by 5). An answer with no score gets
``unparsable`` (default 0.0, Flow-GRPO's choice; NaN makes the RL trainer drop the sample instead); the raw answers
of the last call are kept in ``last_texts``. Images are resized to 512x512 first, as Flow-GRPO does.

DeQA-Score (``zhiyuanyou/DeQA-Score-Mix3``) is mPLUG-Owl2, which transformers does not implement. What is
implemented is its scoring rule on a transformers VLM (Qwen2-VL / Qwen2.5-VL, via ``AutoModelForImageTextToText``):
the image padded to a square with the image processor's mean colour, the question "How would you rate the quality
of this image?", the answer begun with "The quality of the image is", then the softmax over the next-token logits
of the five level words excellent, good, fair, poor, bad (first token of each with a leading space) weighted
5, 4, 3, 2, 1: a score in [1, 5] (Flow-GRPO divides by 5). **Deviation:** with a Qwen model this is a DeQA-style
zero-shot quality score, not DeQA-Score's numbers; those need the mPLUG-Owl2 checkpoint and its remote code.

Prompt wording. HPSv3's and UnifiedReward's instruction texts are not reproduced here. The defaults below are this
project's own wording; a model scores best with the text it was trained on, so put that text in the weights
directory as ``prompt_template.txt`` (or pass ``template=``): a string with ``{prompt}`` where the text prompt goes
(HPSv3's must also contain ``<|Reward|>``). Scores with the default wording are not comparable with published ones.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from htgrpo.benchmarks.metrics import _check
from htgrpo.benchmarks.preference import _prefixed, load_checkpoint_file, load_strict
from htgrpo.benchmarks.weights import HF_WEIGHTS, TOKENIZER_FILES, WeightsSpec, hf_spec, require, torch_device
from htgrpo.errors import WeightsError

IMAGE_PAD = "<|image_pad|>"
REWARD_TOKEN = "<|Reward|>"
HPSV3_PIXELS = 256 * 28 * 28
HPSV3_CHECKPOINT = "HPSv3.safetensors"
TEMPLATE_FILE = "prompt_template.txt"
QWEN_VL_TYPES = ("qwen2_vl", "qwen2_5_vl")

HPSV3_TEMPLATE = (
    "Rate this generated image for human preference, judging both its visual quality and how well it matches "
    "the text prompt below.\nText prompt: {prompt}\n" + REWARD_TOKEN
)
UNIFIEDREWARD_TEMPLATE = (
    "This image was generated from the text prompt below. Judge how faithfully it depicts the prompt and how "
    "good it looks (clarity, coherence, aesthetics). Explain briefly, then finish with a line of the form "
    "'Final Score: X', where X is a number from 1 (poor) to 5 (excellent).\nText prompt: {prompt}"
)
DEQA_QUESTION = "How would you rate the quality of this image?"
DEQA_ANSWER_PREFIX = "The quality of the image is"
DEQA_LEVELS = ("excellent", "good", "fair", "poor", "bad")
DEQA_WEIGHTS = (5.0, 4.0, 3.0, 2.0, 1.0)
FINAL_SCORE = re.compile(r"final\s*score\s*[:：]?\s*\**\s*([-+]?\d+(?:\.\d+)?)", re.IGNORECASE)

QWEN_PROCESSOR = ("preprocessor_config.json", TOKENIZER_FILES)


def parse_final_score(text: str) -> float | None:
    """The number after the last "Final Score:" of a judge's answer, or None."""
    found = FINAL_SCORE.findall(text)
    return float(found[-1]) if found else None


def chat_template(path: Path, tokenizer) -> str:
    """The directory's chat template (``chat_template.jinja``, ``chat_template.json``, else the tokenizer's)."""
    jinja = path / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    js = path / "chat_template.json"
    if js.is_file():
        return json.loads(js.read_text())["chat_template"]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.chat_template
    raise WeightsError(
        f"{path} has no chat template (chat_template.jinja, chat_template.json or chat_template in "
        "tokenizer_config.json)"
    )


def pad_to_square(image: Image.Image, colour: tuple[int, int, int]) -> Image.Image:
    """The image centred on a square canvas of ``colour`` (Q-Align / DeQA's preprocessing)."""
    w, h = image.size
    if w == h:
        return image
    side = max(w, h)
    canvas = Image.new("RGB", (side, side), colour)
    canvas.paste(image, ((side - w) // 2, (side - h) // 2))
    return canvas


def _dtype(dtype, device: str):
    import torch

    if dtype is None:
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, dtype) if isinstance(dtype, str) else dtype


class _QwenVLJudge:
    """A Qwen2-VL / Qwen2.5-VL model with its tokenizer, image processor and chat template from one directory."""

    name = "qwen-vl"
    spec: WeightsSpec
    padding_side = "left"
    default_template = "{prompt}"
    takes_prompt = True

    def __init__(
        self,
        weights,
        device: str | None = None,
        batch_size: int = 4,
        dtype=None,
        template: str | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
    ):
        from transformers import AutoImageProcessor, AutoTokenizer

        self.path = require(self.name, weights, self.spec)
        self.device = torch_device(device)
        self.dtype = _dtype(dtype, self.device)
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.image_processor = AutoImageProcessor.from_pretrained(self.path)
        try:
            self.template_text = chat_template(self.path, self.tokenizer)
        except WeightsError as exc:
            raise WeightsError(f"{self.name}: {exc}") from None
        self.pixels: dict[str, Any] = {}
        if min_pixels is not None or max_pixels is not None:
            size = dict(getattr(self.image_processor, "size", None) or {})
            if min_pixels is not None:
                size["shortest_edge"] = int(min_pixels)
            if max_pixels is not None:
                size["longest_edge"] = int(max_pixels)
            self.pixels["size"] = size  # Qwen2-VL's image processor: pixel bounds as shortest/longest_edge
        if template is None and (self.path / TEMPLATE_FILE).is_file():
            template = (self.path / TEMPLATE_FILE).read_text()
        self.template = template if template is not None else self.default_template
        if self.takes_prompt and "{prompt}" not in self.template:
            raise WeightsError(
                f"{self.name}: the prompt template has no {{prompt}} placeholder: {self.template!r}"
            )
        self.model = self._load_model().to(self.device).eval()
        cfg = self.model.config
        if getattr(cfg, "model_type", None) not in QWEN_VL_TYPES:
            raise WeightsError(
                f"{self.name}: {self.path} holds a {cfg.model_type!r} model; supported: {', '.join(QWEN_VL_TYPES)}"
            )
        self.image_token_id = cfg.image_token_id
        self._mm_types = "mm_token_type_ids" in inspect.signature(self.model.forward).parameters

    def _load_model(self):
        raise NotImplementedError

    def user_text(self, prompt: str) -> str:
        return self.template.replace("{prompt}", prompt)

    def prepare_image(self, image: np.ndarray) -> Image.Image:
        return Image.fromarray(image)

    def inputs(self, images: np.ndarray, texts: Sequence[str], answer_prefix: str = "") -> dict[str, Any]:
        """Model inputs for one image and one user text per row (the answer optionally begun)."""
        import torch

        pil = [self.prepare_image(im) for im in images]
        pix = self.image_processor(images=pil, return_tensors="pt", **self.pixels)
        merge = int(getattr(self.image_processor, "merge_size", 2))
        rendered = []
        for text, thw in zip(texts, pix["image_grid_thw"], strict=True):
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
            s = self.tokenizer.apply_chat_template(
                messages, chat_template=self.template_text, tokenize=False, add_generation_prompt=True
            )
            if s.count(IMAGE_PAD) != 1:
                raise WeightsError(
                    f"{self.name}: the chat template of {self.path} rendered {s.count(IMAGE_PAD)} {IMAGE_PAD} "
                    "placeholders for one image; expected 1"
                )
            rendered.append(s.replace(IMAGE_PAD, IMAGE_PAD * (int(thw.prod()) // merge**2)) + answer_prefix)
        self.tokenizer.padding_side = self.padding_side
        tok = self.tokenizer(rendered, padding=True, return_tensors="pt", add_special_tokens=False)
        batch = {
            "input_ids": tok["input_ids"],
            "attention_mask": tok["attention_mask"],
            "pixel_values": pix["pixel_values"].to(self.dtype),
            "image_grid_thw": pix["image_grid_thw"],
        }
        if self._mm_types:
            batch["mm_token_type_ids"] = (tok["input_ids"] == self.image_token_id).to(torch.int32)
        return {k: v.to(self.device) for k, v in batch.items()}

    def _batches(self, images: np.ndarray):
        for s in range(0, len(images), self.batch_size):
            yield slice(s, s + self.batch_size)


# --- HPSv3 -----------------------------------------------------------------------------------------------------


def qwen_vl_checkpoint_keys(state: dict[str, Any]) -> dict[str, Any]:
    """Qwen2-VL keys of either transformers layout in the current one (``model.visual.*``,
    ``model.language_model.*``, ``lm_head.*``)."""
    out = {}
    for k, v in state.items():
        if k.startswith("visual."):
            k = "model." + k
        elif k.startswith("model.") and not k.startswith(("model.visual.", "model.language_model.")):
            k = "model.language_model." + k[len("model.") :]
        out[k] = v
    return out


def hpsv3_head(hidden: int, output_dim: int = 2):
    from torch import nn

    return nn.Sequential(
        nn.Linear(hidden, 1024),
        nn.ReLU(),
        nn.Dropout(0.05),
        nn.Linear(1024, 16),
        nn.ReLU(),
        nn.Linear(16, output_dim),
    )


class HPSv3(_QwenVLJudge):
    """HPSv3: mu of the (mu, sigma) reward head at the ``<|Reward|>`` token (module docstring).

    ``weights``: a directory with ``HPSv3.safetensors`` and Qwen2-VL-7B-Instruct's ``config.json``,
    ``preprocessor_config.json``, tokenizer files and chat template (its weight shards are not needed).
    """

    name = "hpsv3"
    spec = WeightsSpec(
        "HPSv3 checkpoint with the Qwen2-VL-7B-Instruct config, tokenizer, image processor and chat template",
        (("config.json",), ("preprocessor_config.json",), TOKENIZER_FILES, (HPSV3_CHECKPOINT,)),
        "HPSv3.safetensors of MizzenAI/HPSv3, plus the config, tokenizer and processor files of "
        "Qwen/Qwen2-VL-7B-Instruct",
    )
    padding_side = "right"
    default_template = HPSV3_TEMPLATE

    def __init__(
        self, weights, device=None, batch_size: int = 4, dtype=None, template: str | None = None, **kw
    ):
        kw.setdefault("min_pixels", HPSV3_PIXELS)
        kw.setdefault("max_pixels", HPSV3_PIXELS)
        self.last_sigma = np.zeros(0)
        super().__init__(weights, device, batch_size, dtype, template, **kw)
        if REWARD_TOKEN not in self.template:
            raise WeightsError(f"hpsv3: the prompt template lacks the reward token {REWARD_TOKEN}")

    def _load_model(self):
        import torch
        from transformers import AutoConfig, Qwen2VLForConditionalGeneration
        from transformers.initialization import no_init_weights

        self.tokenizer.add_special_tokens({"additional_special_tokens": [REWARD_TOKEN]})
        self.reward_token_id = self.tokenizer.convert_tokens_to_ids(REWARD_TOKEN)
        config = AutoConfig.from_pretrained(self.path)
        if config.model_type != "qwen2_vl":
            raise WeightsError(
                f"hpsv3: {self.path} holds a {config.model_type!r} config; HPSv3 is a Qwen2-VL"
            )
        ckpt = self.path / HPSV3_CHECKPOINT
        state = load_checkpoint_file(self.name, ckpt)
        head_sd = _prefixed(state, "rm_head.")
        if not head_sd:
            raise WeightsError(f"hpsv3: {ckpt} has no rm_head.* keys (is it HPSv3's checkpoint?)")
        vlm_sd = qwen_vl_checkpoint_keys({k: v for k, v in state.items() if not k.startswith("rm_head.")})
        with no_init_weights(), torch.device(self.device):
            model = Qwen2VLForConditionalGeneration._from_config(config, dtype=self.dtype)
        model.resize_token_embeddings(len(self.tokenizer))
        load_strict(self.name, model, vlm_sd, ckpt)
        hidden = config.get_text_config().hidden_size
        out_dim = head_sd[max(k for k in head_sd if k.endswith("weight"))].shape[0]
        self.head = hpsv3_head(hidden, out_dim)
        load_strict(self.name, self.head, head_sd, ckpt)
        self.head.to(self.device).float().eval()
        return model

    def __call__(self, images, prompts, metadata=None) -> np.ndarray:
        import torch

        images = _check(images, prompts, metadata)
        mu, sigma = [], []
        for sl in self._batches(images):
            batch = self.inputs(images[sl], [self.user_text(p) for p in prompts[sl]])
            with torch.no_grad():
                hidden = self.model.model(**batch).last_hidden_state
                mask = batch["input_ids"] == self.reward_token_id
                if not bool((mask.sum(1) == 1).all()):
                    raise WeightsError(f"hpsv3: each input needs exactly one {REWARD_TOKEN} token")
                out = self.head(hidden[mask].float())
            mu.append(out[:, 0].cpu().numpy())
            sigma.append(out[:, 1].cpu().numpy() if out.shape[1] > 1 else np.zeros(len(out)))
        self.last_sigma = np.concatenate(sigma) if sigma else np.zeros(0)
        return np.concatenate(mu) if mu else np.zeros(0, np.float32)


# --- UnifiedReward ---------------------------------------------------------------------------------------------


class UnifiedReward(_QwenVLJudge):
    """UnifiedReward: a Qwen2.5-VL judge's "Final Score: x" (1-5) parsed from its answer (module docstring)."""

    name = "unifiedreward"
    spec = hf_spec(
        "UnifiedReward Qwen2.5-VL judge",
        "CodeGoat24/UnifiedReward-qwen-7b (or UnifiedReward-2.0-qwen-3b/7b/32b/72b)",
        QWEN_PROCESSOR,
    )
    default_template = UNIFIEDREWARD_TEMPLATE

    def __init__(
        self,
        weights,
        device=None,
        batch_size: int = 4,
        dtype=None,
        template: str | None = None,
        max_new_tokens: int = 512,
        resize: int | None = 512,
        unparsable: float = 0.0,
        **kw,
    ):
        self.max_new_tokens = max_new_tokens
        self.resize = resize
        self.unparsable = unparsable
        self.last_texts: list[str] = []
        super().__init__(weights, device, batch_size, dtype, template, **kw)

    def _load_model(self):
        from transformers import Qwen2_5_VLForConditionalGeneration

        return Qwen2_5_VLForConditionalGeneration.from_pretrained(self.path, dtype=self.dtype)

    def prepare_image(self, image: np.ndarray) -> Image.Image:
        im = Image.fromarray(image)
        return im.resize((self.resize, self.resize), Image.Resampling.BICUBIC) if self.resize else im

    def __call__(self, images, prompts, metadata=None) -> np.ndarray:
        import torch

        images = _check(images, prompts, metadata)
        texts: list[str] = []
        for sl in self._batches(images):
            batch = self.inputs(images[sl], [self.user_text(p) for p in prompts[sl]])
            with torch.no_grad():
                out = self.model.generate(
                    **batch,
                    max_new_tokens=self.max_new_tokens,
                    do_sample=False,
                    pad_token_id=self.tokenizer.pad_token_id,
                )
            texts.extend(
                self.tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
            )
        self.last_texts = texts
        scores = [parse_final_score(t) for t in texts]
        return np.array([self.unparsable if s is None else s for s in scores], np.float64)


# --- DeQA-Score's rule -----------------------------------------------------------------------------------------


class DeQA(_QwenVLJudge):
    """DeQA-Score's scoring rule (expected level over excellent..bad, in [1, 5]) on a Qwen-VL (module docstring)."""

    name = "deqa"
    spec = WeightsSpec(
        "transformers Qwen2-VL / Qwen2.5-VL model for DeQA-Score's rule",
        (("config.json",), HF_WEIGHTS, ("preprocessor_config.json",), TOKENIZER_FILES),
        "a Qwen2-VL / Qwen2.5-VL image-quality model in transformers format; DeQA-Score's own checkpoint "
        "zhiyuanyou/DeQA-Score-Mix3 is mPLUG-Owl2, which transformers does not implement",
    )
    default_template = DEQA_QUESTION
    takes_prompt = False

    def __init__(
        self, weights, device=None, batch_size: int = 8, dtype=None, template: str | None = None, **kw
    ):
        kw.setdefault("min_pixels", 448 * 448)
        kw.setdefault("max_pixels", 448 * 448)
        super().__init__(weights, device, batch_size, dtype, template, **kw)
        ids = []
        for word in DEQA_LEVELS:
            toks = self.tokenizer.encode(" " + word, add_special_tokens=False)
            if not toks or toks[0] == self.tokenizer.unk_token_id:
                raise WeightsError(
                    f"deqa: the tokenizer of {self.path} has no token for the level word {word!r}"
                )
            ids.append(toks[0])
        if len(set(ids)) != len(ids):
            raise WeightsError(
                f"deqa: the level words {DEQA_LEVELS} share first tokens {ids} in this tokenizer"
            )
        self.level_ids = ids
        mean = getattr(self.image_processor, "image_mean", None) or (0.5, 0.5, 0.5)
        self.background = tuple(int(round(255 * float(x))) for x in mean)

    def _load_model(self):
        from transformers import AutoModelForImageTextToText

        return AutoModelForImageTextToText.from_pretrained(self.path, dtype=self.dtype)

    def prepare_image(self, image: np.ndarray) -> Image.Image:
        return pad_to_square(Image.fromarray(image), self.background)

    def level_probs(self, images: np.ndarray) -> np.ndarray:
        """[B, 5] probabilities of excellent, good, fair, poor, bad."""
        import torch

        out = []
        for sl in self._batches(images):
            batch = self.inputs(images[sl], [self.template] * len(images[sl]), DEQA_ANSWER_PREFIX)
            with torch.no_grad():
                logits = self.model(**batch).logits[:, -1, :].float()
            out.append(torch.softmax(logits[:, self.level_ids], dim=-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(DEQA_LEVELS)))

    def __call__(self, images, prompts=None, metadata=None) -> np.ndarray:
        images = _check(images, prompts if prompts is not None else [""] * len(images), metadata)
        return self.level_probs(images) @ np.asarray(DEQA_WEIGHTS)
