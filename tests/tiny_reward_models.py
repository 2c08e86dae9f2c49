"""Tiny random-initialised reward models saved the way their real weights are laid out, for the metric tests and
``benchmarks/metric_throughput.py``.

- HPSv2.1: a ``CLIPModel`` (exact GELU) whose state dict is written in open_clip's layout as ``{"state_dict": ...}``
  in ``HPS_v2.1_compressed.pt``, beside the CLIP config, processor and tokenizer.
- ImageReward: ``BlipVisionModel`` + ``BlipTextModel`` + the MLP head written as ImageReward's ``ImageReward.pt``
  (``blip.visual_encoder.*`` in BLIP's timm names, ``blip.text_encoder.*``, ``mlp.layers.*``) with a
  ``med_config.json``.
- Qwen2-VL / Qwen2.5-VL: a word-level tokenizer with Qwen's special tokens and a chat template, a Qwen2-VL image
  processor with a tiny pixel budget, and the model (``save_pretrained``); for HPSv3 the weights go into
  ``HPSv3.safetensors`` in the pre-4.52 key layout with ``rm_head.*``, and no model shards are written.

The inverse key maps here (transformers -> original layouts) exist only to build these fixtures; the code under
test maps the other way.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from transformers import (  # noqa: F401  (imported at collection so no test pays the import)
    BlipTextConfig,
    BlipTextModel,
    BlipVisionConfig,
    BlipVisionModel,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from tiny_models import save_tokenizer

# --- HPSv2.1 ---------------------------------------------------------------------------------------------------


def transformers_to_open_clip(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    top = {
        "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
        "text_model.embeddings.position_embedding.weight": "positional_embedding",
        "text_model.final_layer_norm.weight": "ln_final.weight",
        "text_model.final_layer_norm.bias": "ln_final.bias",
        "logit_scale": "logit_scale",
        "vision_model.embeddings.class_embedding": "visual.class_embedding",
        "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
        "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
        "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",
        "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
        "vision_model.post_layernorm.weight": "visual.ln_post.weight",
        "vision_model.post_layernorm.bias": "visual.ln_post.bias",
    }
    block = {
        "layer_norm1": "ln_1",
        "layer_norm2": "ln_2",
        "self_attn.out_proj": "attn.out_proj",
        "mlp.fc1": "mlp.c_fc",
        "mlp.fc2": "mlp.c_proj",
    }
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in sd.items():
        if k in top:
            out[top[k]] = v
        elif k == "text_projection.weight":
            out["text_projection"] = v.t().contiguous()
        elif k == "visual_projection.weight":
            out["visual.proj"] = v.t().contiguous()
        else:
            m = re.match(r"^(text|vision)_model\.encoder\.layers\.(\d+)\.(.+)\.(weight|bias)$", k)
            assert m, k
            prefix = ("visual." if m[1] == "vision" else "") + f"transformer.resblocks.{m[2]}."
            if m[3] in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                qkv.setdefault(f"{prefix}attn.in_proj_{m[4]}", {})[m[3][-6]] = v
            else:
                out[f"{prefix}{block[m[3]]}.{m[4]}"] = v
    for k, parts in qkv.items():
        out[k] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def hps_dir(path: Path, image_size: int = 32, seed: int = 0) -> tuple[Path, CLIPModel]:
    """A tiny HPSv2.1 directory; returns it and the CLIPModel its checkpoint was made from."""
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
            hidden_act="gelu",
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
            hidden_act="gelu",
        ),
        projection_dim=16,
    )
    torch.manual_seed(seed)
    model = CLIPModel(cfg).eval()
    cfg.save_pretrained(path)
    CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    ).save_pretrained(path)
    state = {f"module.{k}": v for k, v in transformers_to_open_clip(model.state_dict()).items()}
    torch.save({"epoch": 1, "state_dict": state}, path / "HPS_v2.1_compressed.pt")
    return path, model


# --- ImageReward -----------------------------------------------------------------------------------------------


def blip_vit_to_original(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    rules = [
        (r"^embeddings\.class_embedding$", "cls_token"),
        (r"^embeddings\.position_embedding$", "pos_embed"),
        (r"^embeddings\.patch_embedding\.(weight|bias)$", r"patch_embed.proj.\1"),
        (r"^encoder\.layers\.(\d+)\.layer_norm([12])\.(weight|bias)$", r"blocks.\1.norm\2.\3"),
        (r"^encoder\.layers\.(\d+)\.self_attn\.qkv\.(weight|bias)$", r"blocks.\1.attn.qkv.\2"),
        (r"^encoder\.layers\.(\d+)\.self_attn\.projection\.(weight|bias)$", r"blocks.\1.attn.proj.\2"),
        (r"^encoder\.layers\.(\d+)\.mlp\.(fc[12])\.(weight|bias)$", r"blocks.\1.mlp.\2.\3"),
        (r"^post_layernorm\.(weight|bias)$", r"norm.\1"),
    ]
    out = {}
    for k, v in sd.items():
        for pat, repl in rules:
            if re.match(pat, k):
                out[re.sub(pat, repl, k)] = v
                break
        else:
            raise AssertionError(k)
    return out


def imagereward_dir(path: Path, image_size: int = 32, seed: int = 0):
    """A tiny ImageReward directory; returns (dir, vision, text, head) of the modules its checkpoint holds."""
    from htgrpo.benchmarks.metrics import linear_mlp_head

    path.mkdir(parents=True, exist_ok=True)
    ids = save_tokenizer(path)
    vocab = ids["vocab_size"] + 2  # BLIP adds [DEC] and [ENC]
    med = {
        "architectures": ["BertModel"],
        "hidden_act": "gelu",
        "hidden_size": 32,
        "intermediate_size": 64,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": 64,
        "model_type": "bert",
        "num_attention_heads": 2,
        "num_hidden_layers": 2,
        "pad_token_id": ids["pad"],
        "vocab_size": vocab,
        "encoder_width": 24,
        "add_cross_attention": True,
    }
    (path / "med_config.json").write_text(json.dumps(med))
    (path / "vision_config.json").write_text(json.dumps({"num_attention_heads": 2}))
    torch.manual_seed(seed)
    vision = BlipVisionModel(
        BlipVisionConfig(
            hidden_size=24,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=8,
            layer_norm_eps=1e-6,
        )
    ).eval()
    text = BlipTextModel(
        BlipTextConfig(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=64,
            encoder_hidden_size=24,
            pad_token_id=ids["pad"],
            is_decoder=True,
        ),
        add_pooling_layer=False,
    ).eval()
    head = linear_mlp_head(32).eval()
    state = {f"blip.visual_encoder.{k}": v for k, v in blip_vit_to_original(vision.state_dict()).items()}
    state |= {f"blip.text_encoder.{k}": v for k, v in text.state_dict().items()}
    state |= {f"mlp.layers.{k}": v for k, v in head.state_dict().items()}
    state["blip.vision_proj.weight"] = torch.zeros(4, 24)  # present in the real file, unused by the score
    torch.save(state, path / "ImageReward.pt")
    return path, vision, text, head


# --- Qwen2-VL / Qwen2.5-VL -------------------------------------------------------------------------------------

QWEN_SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
QWEN_WORDS = [
    "user",
    "assistant",
    "system",
    "a",
    "photo",
    "of",
    "red",
    "green",
    "blue",
    "cat",
    "dog",
    "the",
    "quality",
    "image",
    "is",
    "this",
    "how",
    "would",
    "you",
    "rate",
    "excellent",
    "good",
    "fair",
    "poor",
    "bad",
    "final",
    "score",
    ":",
    "1",
    "2",
    "3",
    "4",
    "5",
    ".",
    "?",
    "text",
    "prompt",
    "rate",
    "generated",
]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
PIXELS = 56 * 56


def save_qwen_tokenizer(path: Path) -> dict[str, int]:
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel

    vocab = {w: i for i, w in enumerate(dict.fromkeys([*QWEN_SPECIAL, "[UNK]", *QWEN_WORDS]))}
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<|endoftext|>",
        eos_token="<|im_end|>",
        unk_token="[UNK]",
        additional_special_tokens=QWEN_SPECIAL,
        chat_template=CHAT_TEMPLATE,
    )
    fast.save_pretrained(path)
    Qwen2VLImageProcessorPil(min_pixels=PIXELS, max_pixels=PIXELS).save_pretrained(path)
    return vocab


def qwen_config(kind: str, vocab: dict[str, int], vocab_size: int | None = None):
    text = dict(
        vocab_size=vocab_size or len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
        bos_token_id=vocab["<|endoftext|>"],
        eos_token_id=vocab["<|im_end|>"],
        pad_token_id=vocab["<|endoftext|>"],
        tie_word_embeddings=False,
    )
    tokens = dict(
        image_token_id=vocab["<|image_pad|>"],
        video_token_id=vocab["<|video_pad|>"],
        vision_start_token_id=vocab["<|vision_start|>"],
        vision_end_token_id=vocab["<|vision_end|>"],
    )
    common = dict(patch_size=14, spatial_merge_size=2, temporal_patch_size=2, num_heads=2, depth=1)
    if kind == "qwen2_vl":
        vision = dict(embed_dim=32, hidden_size=32, mlp_ratio=2, **common)
        return Qwen2VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **tokens)
    vision = dict(
        hidden_size=32,
        out_hidden_size=32,
        intermediate_size=64,
        fullatt_block_indexes=[0],
        window_size=56,
        **common,
    )
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, **tokens)


def qwen_vl_dir(path: Path, kind: str = "qwen2_5_vl", seed: int = 0) -> Path:
    """A tiny Qwen2-VL / Qwen2.5-VL directory (model, tokenizer with chat template, image processor)."""
    path.mkdir(parents=True, exist_ok=True)
    vocab = save_qwen_tokenizer(path)
    cls = Qwen2VLForConditionalGeneration if kind == "qwen2_vl" else Qwen2_5_VLForConditionalGeneration
    torch.manual_seed(seed)
    cls(qwen_config(kind, vocab)).eval().save_pretrained(path)
    return path


def hpsv3_dir(path: Path, seed: int = 0) -> tuple[Path, Qwen2VLForConditionalGeneration, torch.nn.Module]:
    """A tiny HPSv3 directory: config, tokenizer, processor and HPSv3.safetensors (pre-4.52 keys + rm_head)."""
    from safetensors.torch import save_file

    from htgrpo.benchmarks.vlm_judges import hpsv3_head

    path.mkdir(parents=True, exist_ok=True)
    vocab = save_qwen_tokenizer(path)
    cfg = qwen_config("qwen2_vl", vocab)
    cfg.save_pretrained(path)
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(cfg).eval()
    model.resize_token_embeddings(len(vocab) + 1)  # + <|Reward|>
    head = hpsv3_head(32).eval()
    state = {}
    for k, v in model.state_dict().items():
        k = k.replace("model.visual.", "visual.").replace("model.language_model.", "model.")
        state[k] = v.contiguous()
    state |= {f"rm_head.{k}": v for k, v in head.state_dict().items()}
    save_file(state, str(path / "HPSv3.safetensors"))
    return path, model, head
