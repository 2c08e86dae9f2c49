"""Tiny random-initialised models of the real transformers classes, saved as local weights directories.

No weights exist on these machines, so the benchmark and metric tests build models of the same classes
(Mask2Former, CLIP, BLIP VQA) with a few layers and tiny widths, plus a word-level tokenizer, and save them with
``save_pretrained`` so the code under test loads them exactly as it would load the real directories.
"""

from __future__ import annotations

from pathlib import Path

import torch

# imported here, at test collection, so that no single test pays the seconds transformers takes to import
from transformers import (  # noqa: F401
    BlipConfig,
    BlipForQuestionAnswering,
    BlipImageProcessor,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    Mask2FormerConfig,
    Mask2FormerForUniversalSegmentation,
    Mask2FormerImageProcessor,
    PreTrainedTokenizerFast,
    SwinConfig,
)

from htgrpo.benchmarks.geneval import COLOR_TEMPLATES, COLORS, load_object_names

SPECIALS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]", "[SEP]", "[MASK]"]


def _words() -> list[str]:
    words = set(COLORS) | {"a", "an", "photo", "of", "object", "-", "colored", "yes", "no", "is", "there"}
    for t in COLOR_TEMPLATES:
        words |= set(t.replace("-", " - ").split())
    for name in load_object_names():
        words |= set(name.split())
    words |= {"the", "and", "red", "cat", "dog", "?", "left", "right", "above", "below", "two", "three"}
    return SPECIALS + sorted(w for w in words if "{" not in w)


def save_tokenizer(path: Path, bos: bool = True, eos: bool = True) -> dict[str, int]:
    """A word-level fast tokenizer (lower-cased, punctuation split) saved as tokenizer.json; returns special ids."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel

    vocab = {w: i for i, w in enumerate(_words())}
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    single = " ".join((["[BOS]"] if bos else []) + ["$A"] + (["[EOS]"] if eos else []))
    tok.post_processor = processors.TemplateProcessing(
        single=single, special_tokens=[("[BOS]", vocab["[BOS]"]), ("[EOS]", vocab["[EOS]"])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        bos_token="[BOS]",
        eos_token="[EOS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    fast.save_pretrained(path)
    return {
        "vocab_size": len(vocab),
        "pad": 0,
        "bos": vocab["[BOS]"],
        "eos": vocab["[EOS]"],
        "sep": vocab["[SEP]"],
    }


def clip_dir(path: Path, image_size: int = 32, projection_dim: int = 16, seed: int = 0) -> Path:

    path.mkdir(parents=True, exist_ok=True)
    ids = save_tokenizer(path)
    cfg = CLIPConfig(
        text_config=dict(
            vocab_size=ids["vocab_size"],
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=32,
            pad_token_id=ids["pad"],
            bos_token_id=ids["bos"],
            eos_token_id=ids["eos"],
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=8,
        ),
        projection_dim=projection_dim,
    )
    torch.manual_seed(seed)
    CLIPModel(cfg).eval().save_pretrained(path)
    CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    ).save_pretrained(path)
    return path


def mask2former_dir(path: Path, seed: int = 0) -> Path:

    names = load_object_names()
    swin = SwinConfig(
        image_size=64,
        embed_dim=16,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 1, 1],
        window_size=4,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    cfg = Mask2FormerConfig(
        backbone_config=swin,
        hidden_dim=32,
        num_queries=8,
        encoder_layers=1,
        decoder_layers=2,
        mask_feature_size=32,
        feature_size=32,
        encoder_feedforward_dim=64,
        dim_feedforward=64,
        num_attention_heads=2,
        num_labels=80,
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
    )
    torch.manual_seed(seed)
    model = Mask2FormerForUniversalSegmentation(cfg).eval()
    # every query confidently "person" (class 0), so detections survive GenEval's thresholds in a random model
    with torch.no_grad():
        model.class_predictor.bias.zero_()
        model.class_predictor.bias[0] = 20.0
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    Mask2FormerImageProcessor(
        size={"shortest_edge": 64, "longest_edge": 96}, size_divisor=32, do_reduce_labels=False
    ).save_pretrained(path)
    return path


def blip_vqa_dir(path: Path, image_size: int = 32, seed: int = 0) -> Path:

    path.mkdir(parents=True, exist_ok=True)
    ids = save_tokenizer(path)
    cfg = BlipConfig(
        text_config=dict(
            vocab_size=ids["vocab_size"],
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            encoder_hidden_size=32,
            max_position_embeddings=64,
            pad_token_id=ids["pad"],
            bos_token_id=ids["bos"],
            eos_token_id=ids["eos"],
            sep_token_id=ids["eos"],
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=8,
        ),
        projection_dim=16,
        image_text_hidden_size=32,
    )
    torch.manual_seed(seed)
    BlipForQuestionAnswering(cfg).eval().save_pretrained(path)
    BlipImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(path)
    return path
