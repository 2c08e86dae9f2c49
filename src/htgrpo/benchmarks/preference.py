"""HPSv2.1 and ImageReward on transformers classes, loaded from their original checkpoints in a local directory.

Neither the ``hpsv2`` nor the ``image-reward`` package is used (``open_clip`` cannot be installed beside the pinned
torch, and ImageReward's BLIP code fetches ``bert-base-uncased`` from the hub); the architectures are rebuilt from
transformers classes and the original checkpoints are mapped onto them key by key (documented below), then loaded
strictly: a missing, unexpected or mis-shaped key is a :class:`~htgrpo.errors.WeightsError` naming it.

Pickled checkpoints (``*.pt``) are read only with ``torch.load(weights_only=True)``, which unpickles tensors and
plain containers and refuses any other object; a file it refuses is an error that says how to convert it to
safetensors on a trusted machine. A ``.safetensors`` file with the same keys is accepted instead.

HPSv2.1 (``xswu/HPSv2``, ``HPS_v2.1_compressed.pt``): an open_clip ViT-H-14 (laion2B init, fully fine-tuned),
rebuilt as ``CLIPModel`` from the ``config.json`` of ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` with exact GELU
(open_clip's ViT-H-14 uses ``nn.GELU``, not quick-GELU). Score = cos(image, text) of the L2-normalised projected
features, about 0.2-0.35 (benchmark tables print x100). open_clip -> transformers keys:

=================================================  =============================================================
``token_embedding.weight``                         ``text_model.embeddings.token_embedding.weight``
``positional_embedding``                           ``text_model.embeddings.position_embedding.weight``
``ln_final.*``                                     ``text_model.final_layer_norm.*``
``text_projection`` [width, dim]                   ``text_projection.weight`` (transposed)
``visual.conv1.weight``                            ``vision_model.embeddings.patch_embedding.weight``
``visual.class_embedding``                         ``vision_model.embeddings.class_embedding``
``visual.positional_embedding``                    ``vision_model.embeddings.position_embedding.weight``
``visual.ln_pre.*`` / ``visual.ln_post.*``         ``vision_model.pre_layrnorm.*`` / ``vision_model.post_layernorm.*``
``visual.proj`` [width, dim]                       ``visual_projection.weight`` (transposed)
``logit_scale``                                    ``logit_scale``
``[visual.]transformer.resblocks.N.ln_1/ln_2``     ``{text,vision}_model.encoder.layers.N.layer_norm1/layer_norm2``
``...resblocks.N.attn.in_proj_{weight,bias}``      split in three along dim 0: ``self_attn.{q,k,v}_proj.*``
``...resblocks.N.attn.out_proj.*``                 ``self_attn.out_proj.*``
``...resblocks.N.mlp.c_fc.*`` / ``mlp.c_proj.*``   ``mlp.fc1.*`` / ``mlp.fc2.*``
=================================================  =============================================================

``attn_mask`` buffers are dropped; ``state_dict``/``model`` wrappers and DDP ``module.`` prefixes are unwrapped.

ImageReward v1.0 (``THUDM/ImageReward``: ``ImageReward.pt`` + ``med_config.json``): BLIP's ViT-L/16 image encoder
(``BlipVisionModel``, LayerNorm eps 1e-6) and a BERT-base text encoder with cross-attention to the image tokens
(``BlipTextModel`` without pooler, run bidirectionally), the [CLS] feature through the MLP head 768 -> 1024 -> 128
-> 64 -> 16 -> 1, then ``(raw - 0.16717362830052426) / 1.0333394966054072`` (about N(0, 1) on its training set;
typically -2..2). Prompts are padded/truncated to 35 tokens; images resized (shorter side 224, bicubic),
centre-cropped to 224 and normalised with CLIP's mean/std. The tokenizer is ``bert-base-uncased`` with BLIP's two
added tokens ([DEC] as bos, [ENC] as an extra special token, ids 30522/30523). Checkpoint keys:

======================================================  ======================================================
``blip.visual_encoder.cls_token`` / ``pos_embed``       ``embeddings.class_embedding`` / ``position_embedding``
``blip.visual_encoder.patch_embed.proj.*``              ``embeddings.patch_embedding.*``
``blip.visual_encoder.blocks.N.norm1/norm2.*``          ``encoder.layers.N.layer_norm1/layer_norm2.*``
``blip.visual_encoder.blocks.N.attn.qkv/proj.*``        ``encoder.layers.N.self_attn.qkv/projection.*``
``blip.visual_encoder.blocks.N.mlp.fc1/fc2.*``          ``encoder.layers.N.mlp.fc1/fc2.*``
``blip.visual_encoder.norm.*``                          ``post_layernorm.*``
``blip.text_encoder.<name>``                            ``<name>`` of ``BlipTextModel`` (BLIP's med.py names)
``mlp.layers.{0,2,4,6,7}.*``                            the head's Linear layers
======================================================  ======================================================

``blip.vision_proj`` / ``blip.text_proj`` (unused by the score) and ``position_ids`` buffers are ignored. The
vision tower's size is read off the checkpoint (width, depth, patch, image size, MLP width); its head count is
``width // 64`` (16 for ViT-L) unless the directory holds a ``vision_config.json`` (``num_attention_heads``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from htgrpo.benchmarks.metrics import _check, _ClipBase, linear_mlp_head
from htgrpo.benchmarks.weights import TOKENIZER_FILES, WeightsSpec, require, torch_device
from htgrpo.errors import WeightsError

HPS_CHECKPOINTS = ("HPS_v2.1_compressed.pt", "HPS_v2.1.safetensors")
IMAGEREWARD_CHECKPOINTS = ("ImageReward.pt", "ImageReward.safetensors")
IMAGEREWARD_MEAN = 0.16717362830052426
IMAGEREWARD_STD = 1.0333394966054072
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# --- checkpoints -----------------------------------------------------------------------------------------------


def load_checkpoint_file(metric: str, path: str | Path) -> dict[str, Any]:
    """A state dict from ``.safetensors`` or a pickle read with ``weights_only=True``; wrappers unwrapped."""
    import pickle

    import torch

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: Any = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as exc:
            raise WeightsError(
                f"{metric}: {path} cannot be read with torch.load(weights_only=True) ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:200]}); it pickles objects other than tensors. Convert it to "
                f"{path.with_suffix('.safetensors').name} on a trusted machine (torch.load the file there, take "
                "its state dict and save it with safetensors.torch.save_file) and put that file in the directory"
            ) from None
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{metric}: {path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_strict(metric: str, module, state: Mapping[str, Any], source: str | Path) -> None:
    """``module.load_state_dict`` that names missing, unexpected or mis-shaped keys in one WeightsError."""
    own = module.state_dict()
    bad_shape = [
        f"{k} {list(v.shape)} (model {list(own[k].shape)})"
        for k, v in state.items()
        if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", bad_shape)):
        if keys:
            more = f" (+{len(keys) - 5} more)" if len(keys) > 5 else ""
            problems.append(f"{label}: {', '.join(keys[:5])}{more}")
    if problems:
        raise WeightsError(f"{metric}: {source} does not match the model: {'; '.join(problems)}")
    module.load_state_dict(state, strict=True)


def _find(metric: str, path: Path, names: tuple[str, ...], given: str | Path | None = None) -> Path:
    if given is not None:
        p = Path(given)
        if not p.is_file():
            raise WeightsError(f"{metric}: checkpoint {p} does not exist")
        return p
    for name in names:
        if (path / name).is_file():
            return path / name
    raise WeightsError(f"{metric}: {path} lacks {'/'.join(names)}")


def _empty(cls, *args, **kwargs):
    """A transformers module without running its weight initialisation (every weight is loaded afterwards)."""
    from transformers.initialization import no_init_weights

    with no_init_weights():
        return cls(*args, **kwargs)


# --- HPSv2.1 ---------------------------------------------------------------------------------------------------

_OPEN_CLIP_TOP = {
    "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    "positional_embedding": "text_model.embeddings.position_embedding.weight",
    "ln_final.weight": "text_model.final_layer_norm.weight",
    "ln_final.bias": "text_model.final_layer_norm.bias",
    "logit_scale": "logit_scale",
    "visual.class_embedding": "vision_model.embeddings.class_embedding",
    "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
    "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "visual.ln_post.weight": "vision_model.post_layernorm.weight",
    "visual.ln_post.bias": "vision_model.post_layernorm.bias",
    "text_projection.weight": "text_projection.weight",  # open_clip builds with a Linear projection
}
_OPEN_CLIP_TRANSPOSED = {
    "text_projection": "text_projection.weight",
    "visual.proj": "visual_projection.weight",
}
_OPEN_CLIP_BLOCK = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "attn.out_proj": "self_attn.out_proj",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}
_RESBLOCK = re.compile(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$")


def open_clip_to_transformers(state: Mapping[str, Any]) -> dict[str, Any]:
    """An open_clip CLIP (ViT, standard text tower) state dict in ``CLIPModel``'s layout (module docstring).
    A dict already in transformers' layout is returned as it is."""
    if any(k.startswith(("text_model.", "vision_model.")) for k in state):
        return dict(state)
    out: dict[str, Any] = {}
    unknown = []
    for key, t in state.items():
        if key.endswith("attn_mask"):
            continue
        m = _RESBLOCK.match(key)
        if m:
            prefix = f"{'vision_model' if m[1] else 'text_model'}.encoder.layers.{m[2]}."
            rest = m[3]
            if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
                kind = rest.rsplit("_", 1)[1]
                for name, part in zip(("q_proj", "k_proj", "v_proj"), t.chunk(3, dim=0), strict=True):
                    out[f"{prefix}self_attn.{name}.{kind}"] = part.contiguous()
                continue
            module, _, leaf = rest.rpartition(".")
            if module in _OPEN_CLIP_BLOCK:
                out[f"{prefix}{_OPEN_CLIP_BLOCK[module]}.{leaf}"] = t
                continue
        elif key in _OPEN_CLIP_TOP:
            out[_OPEN_CLIP_TOP[key]] = t
            continue
        elif key in _OPEN_CLIP_TRANSPOSED:
            out[_OPEN_CLIP_TRANSPOSED[key]] = t.t().contiguous()
            continue
        unknown.append(key)
    if unknown:
        raise WeightsError(
            f"open_clip checkpoint keys with no CLIPModel counterpart (layer scale, attention pooling and "
            f"custom text towers are not supported): {', '.join(unknown[:5])}"
        )
    return out


class HPSv21(_ClipBase):
    """HPSv2.1: cos(image, text) of the fine-tuned open_clip ViT-H-14, rebuilt as ``CLIPModel`` (module docstring).

    ``weights``: a directory with ``HPS_v2.1_compressed.pt`` (or ``HPS_v2.1.safetensors``) and the
    ``config.json``, ``preprocessor_config.json`` and tokenizer files of laion/CLIP-ViT-H-14-laion2B-s32B-b79K (its
    ``model.safetensors`` is not needed: every weight comes from the HPS checkpoint). ``checkpoint`` points at
    another file (e.g. HPSv2.0's ``HPS_v2_compressed.pt``; v2.0 and v2.1 scores are not comparable).
    ``scale``: 1 (default, the package's cosine) or 100 (as benchmark tables print it).
    """

    name = "hpsv2.1"
    spec = WeightsSpec(
        "HPSv2.1 checkpoint with the CLIP ViT-H/14 config, processor and tokenizer",
        (("config.json",), ("preprocessor_config.json",), TOKENIZER_FILES, HPS_CHECKPOINTS),
        "HPS_v2.1_compressed.pt of xswu/HPSv2, plus config.json, preprocessor_config.json and the tokenizer "
        "files of laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
    )

    def __init__(
        self,
        weights,
        device=None,
        batch_size: int = 32,
        checkpoint: str | Path | None = None,
        scale: float = 1.0,
    ):
        if checkpoint is not None:
            self.spec = WeightsSpec(self.spec.what, self.spec.files[:3], self.spec.source)
        self._checkpoint = checkpoint
        self.scale = float(scale)
        super().__init__(weights, device, batch_size)

    def _load_model(self, path: Path):
        from transformers import CLIPConfig, CLIPModel

        ckpt = _find(self.name, path, HPS_CHECKPOINTS, self._checkpoint)
        config = CLIPConfig.from_pretrained(path)
        config.text_config.hidden_act = "gelu"
        config.vision_config.hidden_act = "gelu"
        model = _empty(CLIPModel, config)
        try:
            state = open_clip_to_transformers(load_checkpoint_file(self.name, ckpt))
        except WeightsError as exc:
            raise WeightsError(f"{self.name}: {ckpt}: {exc}") from None
        load_strict(self.name, model, state, ckpt)
        return model

    def __call__(self, images, prompts, metadata=None) -> np.ndarray:
        images = _check(images, prompts, metadata)
        return self.scale * self.cosine(images, prompts)


# --- ImageReward -----------------------------------------------------------------------------------------------

_BLIP_VIT = [
    (re.compile(r"^cls_token$"), "embeddings.class_embedding"),
    (re.compile(r"^pos_embed$"), "embeddings.position_embedding"),
    (re.compile(r"^patch_embed\.proj\.(weight|bias)$"), r"embeddings.patch_embedding.\1"),
    (re.compile(r"^blocks\.(\d+)\.norm([12])\.(weight|bias)$"), r"encoder.layers.\1.layer_norm\2.\3"),
    (re.compile(r"^blocks\.(\d+)\.attn\.qkv\.(weight|bias)$"), r"encoder.layers.\1.self_attn.qkv.\2"),
    (re.compile(r"^blocks\.(\d+)\.attn\.proj\.(weight|bias)$"), r"encoder.layers.\1.self_attn.projection.\2"),
    (re.compile(r"^blocks\.(\d+)\.mlp\.(fc[12])\.(weight|bias)$"), r"encoder.layers.\1.mlp.\2.\3"),
    (re.compile(r"^norm\.(weight|bias)$"), r"post_layernorm.\1"),
]


def blip_vit_to_transformers(state: Mapping[str, Any]) -> dict[str, Any]:
    """BLIP's timm-style ViT (``visual_encoder``) state dict in ``BlipVisionModel``'s layout."""
    out, unknown = {}, []
    for key, t in state.items():
        for pattern, repl in _BLIP_VIT:
            if pattern.match(key):
                out[pattern.sub(repl, key)] = t
                break
        else:
            unknown.append(key)
    if unknown:
        raise WeightsError(f"BLIP vision keys with no BlipVisionModel counterpart: {', '.join(unknown[:5])}")
    return out


def _prefixed(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


class ImageReward:
    """ImageReward v1.0 on ``BlipVisionModel`` + ``BlipTextModel`` + the MLP head (module docstring).

    ``weights``: a directory with ``ImageReward.pt`` (or ``ImageReward.safetensors``), ``med_config.json`` and the
    ``bert-base-uncased`` tokenizer files (``vocab.txt``, ``tokenizer_config.json``). Scores are ImageReward's
    normalised rewards (about N(0, 1), higher is better).
    """

    name = "imagereward"
    spec = WeightsSpec(
        "ImageReward v1.0 checkpoint, its med_config.json and the bert-base-uncased tokenizer",
        (IMAGEREWARD_CHECKPOINTS, ("med_config.json",), ("vocab.txt", "tokenizer.json")),
        "ImageReward.pt and med_config.json of THUDM/ImageReward, plus vocab.txt and tokenizer_config.json of "
        "bert-base-uncased",
    )

    def __init__(self, weights, device=None, batch_size: int = 16, max_length: int = 35):
        import torch
        from transformers import (
            AutoTokenizer,
            BlipTextConfig,
            BlipTextModel,
            BlipVisionModel,
            CLIPImageProcessor,
        )

        path = require(self.name, weights, self.spec)
        self.device = torch_device(device)
        self.batch_size = batch_size
        self.max_length = max_length
        ckpt = _find(self.name, path, IMAGEREWARD_CHECKPOINTS)
        state = load_checkpoint_file(self.name, ckpt)
        vision_sd = _prefixed(state, "blip.visual_encoder.")
        text_sd = {
            k: v for k, v in _prefixed(state, "blip.text_encoder.").items() if not k.endswith("position_ids")
        }
        head_sd = _prefixed(state, "mlp.layers.")
        for label, part in (
            ("blip.visual_encoder.*", vision_sd),
            ("blip.text_encoder.*", text_sd),
            ("mlp.*", head_sd),
        ):
            if not part:
                raise WeightsError(f"{self.name}: {ckpt} has no {label} keys (is it ImageReward.pt?)")
        try:
            vision_sd = blip_vit_to_transformers(vision_sd)
        except WeightsError as exc:
            raise WeightsError(f"{self.name}: {ckpt}: {exc}") from None
        vision_cfg = self._vision_config(path, vision_sd)
        try:
            med = json.loads((path / "med_config.json").read_text())
            text_cfg = BlipTextConfig(
                vocab_size=med["vocab_size"],
                hidden_size=med["hidden_size"],
                intermediate_size=med["intermediate_size"],
                num_hidden_layers=med["num_hidden_layers"],
                num_attention_heads=med["num_attention_heads"],
                max_position_embeddings=med["max_position_embeddings"],
                hidden_act=med.get("hidden_act", "gelu"),
                layer_norm_eps=med.get("layer_norm_eps", 1e-12),
                pad_token_id=med.get("pad_token_id", 0),
                encoder_hidden_size=vision_cfg.hidden_size,  # BLIP sets encoder_width to the ViT's width
                hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0,
                is_decoder=True,  # builds the cross-attention layers; the forward runs bidirectionally
            )
        except (KeyError, json.JSONDecodeError) as exc:
            raise WeightsError(
                f"{self.name}: {path / 'med_config.json'} is not a BERT config ({exc})"
            ) from None
        self.vision = _empty(BlipVisionModel, vision_cfg)
        self.text = _empty(BlipTextModel, text_cfg, add_pooling_layer=False)
        self.head = linear_mlp_head(text_cfg.hidden_size)
        load_strict(self.name, self.vision, vision_sd, ckpt)
        load_strict(self.name, self.text, text_sd, ckpt)
        load_strict(self.name, self.head, head_sd, ckpt)
        for m in (self.vision, self.text, self.head):
            m.to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        # BLIP's init_tokenizer: [DEC] becomes the bos token, [ENC] an extra special token
        self.tokenizer.add_special_tokens({"bos_token": "[DEC]"})
        self.tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
        if len(self.tokenizer) != text_cfg.vocab_size:
            raise WeightsError(
                f"{self.name}: the tokenizer in {path} has {len(self.tokenizer)} tokens with [DEC] and [ENC] added, "
                f"the text encoder {text_cfg.vocab_size} (med_config.json vocab_size); use bert-base-uncased's"
            )
        size = vision_cfg.image_size
        self.image_processor = CLIPImageProcessor(
            size={"shortest_edge": size},
            crop_size={"height": size, "width": size},
            resample=Image.Resampling.BICUBIC,
            image_mean=list(CLIP_MEAN),
            image_std=list(CLIP_STD),
        )
        self._torch = torch

    def _vision_config(self, path: Path, vision_sd: Mapping[str, Any]):
        from transformers import BlipVisionConfig

        try:
            width = int(vision_sd["embeddings.class_embedding"].shape[-1])
            patch = int(vision_sd["embeddings.patch_embedding.weight"].shape[-1])
            n_pos = int(vision_sd["embeddings.position_embedding"].shape[1])
            mlp = int(vision_sd["encoder.layers.0.mlp.fc1.weight"].shape[0])
        except KeyError as exc:
            raise WeightsError(f"{self.name}: the checkpoint's vision encoder lacks {exc}") from None
        depth = len({k.split(".")[2] for k in vision_sd if k.startswith("encoder.layers.")})
        grid = round((n_pos - 1) ** 0.5)
        extra: dict[str, Any] = {}
        if (path / "vision_config.json").is_file():
            extra = json.loads((path / "vision_config.json").read_text())
        return BlipVisionConfig(
            hidden_size=width,
            intermediate_size=mlp,
            num_hidden_layers=depth,
            num_attention_heads=int(extra.get("num_attention_heads", max(width // 64, 1))),
            image_size=grid * patch,
            patch_size=patch,
            hidden_act="gelu",
            layer_norm_eps=1e-6,
            attention_dropout=0.0,
        )

    def raw_scores(self, images: np.ndarray, prompts) -> np.ndarray:
        """The MLP head's output before normalisation."""
        torch = self._torch
        out = []
        for s in range(0, len(images), self.batch_size):
            pil = [Image.fromarray(im) for im in images[s : s + self.batch_size]]
            pix = self.image_processor(images=pil, return_tensors="pt")["pixel_values"].to(self.device)
            tok = self.tokenizer(
                list(prompts[s : s + self.batch_size]),
                padding="max_length",
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            with torch.no_grad():
                img = self.vision(pixel_values=pix).last_hidden_state
                txt = self.text(
                    input_ids=tok["input_ids"],
                    attention_mask=tok["attention_mask"],
                    encoder_hidden_states=img,
                    encoder_attention_mask=torch.ones(img.shape[:-1], dtype=torch.long, device=self.device),
                    is_decoder=False,
                ).last_hidden_state[:, 0]
                out.append(self.head(txt.float()).squeeze(-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def __call__(self, images, prompts, metadata=None) -> np.ndarray:
        images = _check(images, prompts, metadata)
        return (self.raw_scores(images, prompts) - IMAGEREWARD_MEAN) / IMAGEREWARD_STD
