"""Image metrics usable both as evaluation metrics and as RL rewards, behind one registry.

Every metric is a callable ``(images: uint8 [B, H, W, 3], prompts: list[str], metadata: list[dict]) -> float [B]``
(metadata may be ignored), loads from a local directory (no hub access; a missing directory is one
:class:`~htgrpo.errors.WeightsError` naming the metric and the files), and runs batched. Scales
(``design/benchmarks.md`` section 4):

==============  ============================================================================================
clipscore       torchmetrics' scale: ``max(100 * cos(image, text), 0)`` in [0, 100], typically 20-35 with
                ViT-L/14 (``scale="paper"`` gives Hessel et al.'s ``2.5 * max(cos, 0)`` in [0, 2.5])
pickscore       ``logit_scale.exp() * cos`` (logit_scale ~ 100), typically 18-24; Flow-GRPO divides by 26
aesthetic       LAION aesthetic predictor v2: MLP on the L2-normalised CLIP ViT-L/14 image embedding, about
                1-10 (AVA-style mean rating), SD-class images ~5-6.5; prompt-independent
hpsv2.1         cos(image, text) of HPSv2.1's fine-tuned ViT-H-14, about 0.2-0.35 (tables print x100);
                :mod:`htgrpo.benchmarks.preference`
imagereward     ImageReward v1.0, ``(raw - 0.16717) / 1.03334``, about N(0, 1), typically -2..2;
                :mod:`htgrpo.benchmarks.preference`
hpsv3           mu of HPSv3's (mu, sigma) head on Qwen2-VL, unbounded (compare relatively);
                :mod:`htgrpo.benchmarks.vlm_judges`
unifiedreward   a Qwen2.5-VL judge's "Final Score" in [1, 5] (0 when unparsable, as in Flow-GRPO, which
                divides by 5); :mod:`htgrpo.benchmarks.vlm_judges`
deqa            DeQA-Score's rule (expected level excellent..bad = 5..1) in [1, 5] on a transformers Qwen-VL
                (mPLUG-Owl2 is not in transformers; see :mod:`htgrpo.benchmarks.vlm_judges`); prompt-independent
geneval         Flow-GRPO's partial-credit GenEval reward (needs GenEval metadata per image), <= 1 and
                negative with far too many detections; images optionally round-tripped through JPEG as the
                reward server receives them
==============  ============================================================================================
"""

from __future__ import annotations

import importlib
import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from htgrpo.benchmarks.weights import TOKENIZER_FILES, WeightsSpec, hf_spec, require, torch_device
from htgrpo.errors import HtgrpoError, WeightsError

Metric = Callable[[np.ndarray, Sequence[str], Sequence[Mapping[str, Any]]], np.ndarray]

CLIP_PROCESSOR = ("preprocessor_config.json", TOKENIZER_FILES)
AESTHETIC_HEAD = "sac+logos+ava1-l14-linearMSE.pth"


def _check(
    images: np.ndarray, prompts: Sequence[str], metadata: Sequence[Mapping[str, Any]] | None
) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"metrics take uint8 images [B, H, W, 3], got {images.dtype} {list(images.shape)}")
    if len(prompts) != len(images) or (metadata is not None and len(metadata) != len(images)):
        raise ValueError(
            f"{len(images)} images, {len(prompts)} prompts, {len(metadata or [])} metadata rows: need one each"
        )
    return images


def _features(out):
    """transformers 5 may return a model output instead of a tensor from get_*_features."""
    if hasattr(out, "pooler_output") and not hasattr(out, "shape"):
        return out.pooler_output
    return out


def linear_mlp_head(dim: int):
    """768 -> 1024 -> 128 -> 64 -> 16 -> 1 with dropouts between and no activations (the LAION aesthetic
    predictor's and ImageReward's head; Linear layers at Sequential indices 0, 2, 4, 6, 7)."""
    from torch import nn

    return nn.Sequential(
        nn.Linear(dim, 1024),
        nn.Dropout(0.2),
        nn.Linear(1024, 128),
        nn.Dropout(0.2),
        nn.Linear(128, 64),
        nn.Dropout(0.1),
        nn.Linear(64, 16),
        nn.Linear(16, 1),
    )


class _ClipBase:
    """A transformers CLIPModel with its image processor and tokenizer, from one local directory."""

    name = "clip"
    spec: WeightsSpec

    def __init__(self, weights: str | Path | None, device: str | None = None, batch_size: int = 32):
        from transformers import AutoImageProcessor, AutoTokenizer

        path = require(self.name, weights, self.spec)
        self.device = torch_device(device)
        self.model = self._load_model(path).to(self.device).eval()
        self.image_processor = AutoImageProcessor.from_pretrained(path)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.max_len = self.model.config.text_config.max_position_embeddings
        self.batch_size = batch_size

    def _load_model(self, path: Path):
        """The CLIPModel (subclasses with another checkpoint layout override this)."""
        from transformers import CLIPModel

        return CLIPModel.from_pretrained(path)

    def image_embeds(self, images: np.ndarray):
        import torch

        pil = [Image.fromarray(im) for im in images]
        pix = self.image_processor(images=pil, return_tensors="pt")["pixel_values"].to(self.device)
        with torch.no_grad():
            f = _features(self.model.get_image_features(pixel_values=pix)).float()
        return f / f.norm(dim=-1, keepdim=True)

    def text_embeds(self, prompts: Sequence[str]):
        import torch

        tok = self.tokenizer(
            list(prompts), padding=True, truncation=True, max_length=self.max_len, return_tensors="pt"
        ).to(self.device)
        with torch.no_grad():
            f = _features(self.model.get_text_features(**tok)).float()
        return f / f.norm(dim=-1, keepdim=True)

    def cosine(self, images: np.ndarray, prompts: Sequence[str]) -> np.ndarray:
        out = []
        for s in range(0, len(images), self.batch_size):
            img = self.image_embeds(images[s : s + self.batch_size])
            txt = self.text_embeds(prompts[s : s + self.batch_size])
            out.append((img * txt).sum(-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0, np.float32)


class ClipScore(_ClipBase):
    """CLIPScore. ``scale``: "torchmetrics" (default, ``max(100 cos, 0)``) or "paper" (``2.5 max(cos, 0)``)."""

    name = "clipscore"
    spec = hf_spec("CLIP model", "openai/clip-vit-large-patch14", CLIP_PROCESSOR)

    def __init__(self, weights, device=None, batch_size: int = 32, scale: str = "torchmetrics"):
        if scale not in ("torchmetrics", "paper"):
            raise ValueError(f"clipscore scale must be 'torchmetrics' or 'paper', got {scale!r}")
        super().__init__(weights, device, batch_size)
        self.factor = 100.0 if scale == "torchmetrics" else 2.5

    def __call__(self, images, prompts, metadata=None) -> np.ndarray:
        images = _check(images, prompts, metadata)
        return self.factor * np.maximum(self.cosine(images, prompts), 0.0)


class PickScore(_ClipBase):
    """PickScore v1: ``logit_scale.exp() * cos`` with the fine-tuned CLIP-H. The directory must hold the model
    (yuvalkirstain/PickScore_v1) *and* the processor/tokenizer files of laion/CLIP-ViT-H-14-laion2B-s32B-b79K."""

    name = "pickscore"
    spec = hf_spec(
        "PickScore CLIP-H model with the laion CLIP-H processor",
        "yuvalkirstain/PickScore_v1 (+ processor files of laion/CLIP-ViT-H-14-laion2B-s32B-b79K)",
        CLIP_PROCESSOR,
    )

    def __call__(self, images, prompts, metadata=None) -> np.ndarray:
        images = _check(images, prompts, metadata)
        return float(self.model.logit_scale.detach().exp()) * self.cosine(images, prompts)


class Aesthetic(_ClipBase):
    """LAION aesthetic predictor v2 on CLIP ViT-L/14 image embeddings (L2-normalised), prompt-independent.

    The MLP head (768 -> 1024 -> 128 -> 64 -> 16 -> 1, dropouts between, no activations) is read from
    ``head`` (default ``<weights>/sac+logos+ava1-l14-linearMSE.pth``), a state dict with keys
    ``layers.{0,2,4,6,7}.{weight,bias}``.
    """

    name = "aesthetic"
    spec = WeightsSpec(
        "CLIP ViT-L/14 model plus the aesthetic MLP head",
        (
            ("config.json",),
            ("model.safetensors", "pytorch_model.bin"),
            ("preprocessor_config.json",),
            (AESTHETIC_HEAD,),
        ),
        "openai/clip-vit-large-patch14, plus sac+logos+ava1-l14-linearMSE.pth from "
        "github.com/christophschuhmann/improved-aesthetic-predictor",
    )

    def __init__(self, weights, device=None, batch_size: int = 32, head: str | Path | None = None):
        import torch

        if head is not None:  # an explicit head path: the directory only needs the CLIP files
            self.spec = WeightsSpec(self.spec.what, self.spec.files[:3], self.spec.source)
            if not Path(head).is_file():
                raise WeightsError(f"aesthetic: MLP head {head} does not exist ({AESTHETIC_HEAD})")
        super().__init__(weights, device, batch_size)
        path = Path(head) if head is not None else Path(weights) / AESTHETIC_HEAD
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.head = linear_mlp_head(state["layers.0.weight"].shape[1])
        self.head.load_state_dict({k.removeprefix("layers."): v for k, v in state.items()})
        self.head.to(self.device).eval()

    def __call__(self, images, prompts=None, metadata=None) -> np.ndarray:
        import torch

        images = _check(images, prompts if prompts is not None else [""] * len(images), metadata)
        out = []
        for s in range(0, len(images), self.batch_size):
            emb = self.image_embeds(images[s : s + self.batch_size])
            with torch.no_grad():
                out.append(self.head(emb).squeeze(-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0, np.float32)


def jpeg_round_trip(image: np.ndarray, quality: int | None = None) -> np.ndarray:
    """Encode as JPEG (PIL's default quality unless given) and decode, as Flow-GRPO's reward server receives."""
    buf = io.BytesIO()
    kwargs = {} if quality is None else {"quality": quality}
    Image.fromarray(image).save(buf, format="JPEG", **kwargs)
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"))


class GenEvalReward:
    """A partial-credit GenEval reward over Mask2Former + CLIP colours (design section 1.10).

    ``aligned`` False (metric ``geneval``): Flow-GRPO's partial credit, faithful, quirks included (exact counts,
    can go negative, its maximum is not GenEval's ``correct``). ``aligned`` True (metric ``geneval_aligned``):
    the partial credit that agrees with GenEval's metric (``htgrpo.eval.geneval.aligned_reward``: in [0, 1],
    1.0 exactly when the image is correct). ``weights`` is a directory holding ``mask2former/`` and ``clip/``
    sub-directories (or pass ``detector`` and ``clip`` paths). Each image needs its GenEval metadata row.
    ``last_records`` keeps the per-image records of the last call (both rewards, ``strict_correct`` and the
    official ``correct``) for logging.
    """

    name = "geneval"

    def __init__(
        self,
        weights=None,
        device=None,
        batch_size: int = 8,
        detector: str | Path | None = None,
        clip: str | Path | None = None,
        jpeg: bool = True,
        scorer=None,
        aligned: bool = False,
    ):
        from htgrpo.benchmarks.geneval import load_scorer

        if scorer is None:
            root = Path(weights) if weights is not None else None
            scorer = load_scorer(
                detector or (root / "mask2former" if root else None),
                clip or (root / "clip" if root else None),
                device=device,
            )
        self.scorer = scorer
        self.batch_size = batch_size
        self.jpeg = jpeg
        self.aligned = aligned
        self.name = "geneval_aligned" if aligned else "geneval"
        self.last_records: list[dict[str, Any]] = []

    def __call__(self, images, prompts, metadata=None) -> np.ndarray:
        images = _check(images, prompts, metadata)
        if metadata is None or any("include" not in m for m in metadata):
            raise ValueError(
                f"the {self.name} reward needs GenEval metadata (tag, include, ...) for every image"
            )
        imgs = [jpeg_round_trip(im) if self.jpeg else im for im in images]
        self.last_records = []
        for s in range(0, len(imgs), self.batch_size):
            self.last_records.extend(
                self.scorer.score(imgs[s : s + self.batch_size], metadata[s : s + self.batch_size])
            )
        key = "reward_aligned" if self.aligned else "reward"
        return np.array([r[key] for r in self.last_records], np.float64)


def geneval_aligned_reward(weights=None, device=None, **kwargs) -> GenEvalReward:
    """The ``geneval_aligned`` metric: :class:`GenEvalReward` with ``aligned=True``."""
    return GenEvalReward(weights, device=device, aligned=True, **kwargs)


@dataclass(frozen=True)
class MetricInfo:
    """A registered metric. ``factory`` is the class (or ``"module:Class"``, imported on first use)."""

    name: str
    factory: Callable[..., Metric] | str
    scale: str
    uses_prompt: bool = True
    needs_metadata: bool = False

    def resolve(self) -> Callable[..., Metric]:
        if isinstance(self.factory, str):
            module, _, attr = self.factory.partition(":")
            return getattr(importlib.import_module(module), attr)
        return self.factory


METRICS: dict[str, MetricInfo] = {
    "clipscore": MetricInfo("clipscore", ClipScore, "max(100 cos, 0) in [0, 100]; typically 20-35"),
    "pickscore": MetricInfo("pickscore", PickScore, "logit_scale.exp() * cos, typically 18-24"),
    "aesthetic": MetricInfo("aesthetic", Aesthetic, "about 1-10 (AVA rating)", uses_prompt=False),
    "hpsv2.1": MetricInfo(
        "hpsv2.1", "htgrpo.benchmarks.preference:HPSv21", "cos in [-1, 1], typically 0.2-0.35 (tables x100)"
    ),
    "imagereward": MetricInfo(
        "imagereward", "htgrpo.benchmarks.preference:ImageReward", "about N(0, 1), typically -2..2"
    ),
    "hpsv3": MetricInfo("hpsv3", "htgrpo.benchmarks.vlm_judges:HPSv3", "mu of (mu, sigma), unbounded"),
    "unifiedreward": MetricInfo(
        "unifiedreward",
        "htgrpo.benchmarks.vlm_judges:UnifiedReward",
        "Final Score in [1, 5]; 0 if unparsable",
    ),
    "deqa": MetricInfo(
        "deqa", "htgrpo.benchmarks.vlm_judges:DeQA", "expected quality level in [1, 5]", uses_prompt=False
    ),
    "geneval": MetricInfo(
        "geneval", GenEvalReward, "Flow-GRPO's partial credit <= 1 (can be negative)", needs_metadata=True
    ),
    "geneval_aligned": MetricInfo(
        "geneval_aligned",
        geneval_aligned_reward,
        "partial credit in [0, 1]; 1.0 exactly when GenEval counts the image correct",
        needs_metadata=True,
    ),
}


def load_metric(name: str, weights: str | Path | None, device: str | None = None, **kwargs) -> Metric:
    """Build a registered metric from its local weights directory."""
    try:
        info = METRICS[name]
    except KeyError:
        raise HtgrpoError(f"unknown metric {name!r}; available: {', '.join(METRICS)}") from None
    return info.resolve()(weights, device=device, **kwargs)


def evaluate_metrics(
    metrics: Mapping[str, Metric],
    images: np.ndarray,
    prompts: Sequence[str],
    metadata: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Mean, std, min and max of each metric over a set of images, plus the per-image scores."""
    meta = list(metadata) if metadata is not None else [{} for _ in prompts]
    out: dict[str, Any] = {}
    for name, fn in metrics.items():
        scores = np.asarray(fn(images, list(prompts), meta), np.float64)
        out[name] = {
            "mean": float(scores.mean()),
            "std": float(scores.std()),
            "min": float(scores.min()),
            "max": float(scores.max()),
            "scores": [float(x) for x in scores],
        }
    return out


def register_as_reward(
    name: str, weights: str | Path | None, reward_name: str | None = None, device: str | None = None, **kwargs
) -> Metric:
    """Load metric ``name`` and register it in the RL reward registry (``htgrpo.rl.rewards``) under
    ``reward_name`` (default ``name``), so ``rl.rewards`` can weight it. Returns the loaded metric."""
    from htgrpo.rl.rewards import register_reward

    metric = load_metric(name, weights, device=device, **kwargs)
    register_reward(reward_name or name, metric, overwrite=True, needs_metadata=METRICS[name].needs_metadata)
    return metric
