"""GenEval on real images: the official 553 prompts, its folder layout, Mask2Former and the CLIP colour classifier.

Specification: ``design/benchmarks.md`` section 1. The rules, post-processing, partial-credit rewards (Flow-GRPO's
and the one aligned with the metric) and summary are :mod:`htgrpo.eval.geneval`'s, shared with the shapes world; this module supplies the other detector.

Differences from the official evaluator, by necessity (no mmdetection 2.x / open_clip here):

- Detector: ``Mask2FormerForUniversalSegmentation`` (transformers) from a local directory, normally
  ``facebook/mask2former-swin-small-coco-instance`` (Swin-S, COCO instance, 80 classes). That checkpoint is the
  Mask2Former authors' (detectron2) conversion, not mmdetection's ``..._20220504_001756-743b7d99.pth``; the
  architecture and training data match but scores will not be bit-identical. Post-processing follows mmdetection
  2.x's ``Mask2Former`` instance head: softmax over the classes without "no object", the top ``max_per_image``
  (100) (query, class) pairs, masks upsampled to the padded input, cropped to the resized image and resized to
  the original size (bilinear), binary mask = logit > 0, score = class score x mean mask probability inside the
  mask, box = tight box of the mask (x2 = last column + 1).
- Colour classifier: transformers ``CLIPModel`` (``openai/clip-vit-large-patch14``) with its image processor
  (resize 224 bicubic, centre crop, CLIP normalisation), which is open_clip's ViT-L-14 "openai" eval transform.

Class index i of the detector is ``object_names.txt`` line i, as in GenEval.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from htgrpo.benchmarks.generation import ImageGenerator, check_images
from htgrpo.benchmarks.weights import TOKENIZER_FILES, hf_spec, require, torch_device
from htgrpo.errors import BenchmarkDataError
from htgrpo.eval.geneval import (
    TASKS,
    ColorClassifier,
    Detection,
    aligned_reward,
    evaluate_image,
    partial_reward,
    postprocess,
    summarize,
)
from htgrpo.prompts import GENEVAL_COLORS, GENEVAL_DIR, GENEVAL_OBJECTS, GENEVAL_TEST

PROJECT_ROOT = Path(__file__).resolve().parents[3]
# the packaged GenEval files and colour names, defined once in htgrpo.prompts
DATA_DIR = GENEVAL_DIR
DEFAULT_METADATA = GENEVAL_TEST
DEFAULT_OBJECT_NAMES = GENEVAL_OBJECTS
COLORS = GENEVAL_COLORS
COLOR_TEMPLATES: tuple[str, ...] = (
    "a photo of a {color} {classname}",
    "a photo of a {color}-colored {classname}",
    "a photo of a {color} object",
)
BACKGROUND_RGB = (153, 153, 153)
"""GenEval's ``#999`` background behind the object's mask."""
N_SAMPLES = 4
SAMPLE_RE = re.compile(r"^\d+\.png$")

DETECTOR_SPEC = hf_spec(
    "Mask2Former detector (Swin-S, COCO instance segmentation)",
    "facebook/mask2former-swin-small-coco-instance",
)
CLIP_COLOR_SPEC = hf_spec(
    "CLIP ViT-L/14 colour classifier",
    "openai/clip-vit-large-patch14",
    processor=("preprocessor_config.json", TOKENIZER_FILES),
)


# --- prompts ---------------------------------------------------------------------------------------------------


def load_prompts(path: str | Path | None = None) -> list[dict[str, Any]]:
    """GenEval metadata rows (default: the official 553, shipped in ``htgrpo/data/benchmarks/geneval``), validated."""
    p = Path(path) if path is not None else DEFAULT_METADATA
    if not p.is_file():
        raise BenchmarkDataError(
            f"GenEval prompt metadata {p} does not exist (the official file is prompts/evaluation_metadata.jsonl "
            "of github.com/djghosh13/geneval, shipped in htgrpo/data/benchmarks/geneval/)"
        )
    rows = []
    for n, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BenchmarkDataError(f"{p}:{n}: not JSON ({exc})") from None
        if not isinstance(row, dict) or not {"tag", "prompt", "include"} <= row.keys():
            raise BenchmarkDataError(f"{p}:{n}: a GenEval row needs tag, prompt and include")
        if row["tag"] not in TASKS:
            raise BenchmarkDataError(f"{p}:{n}: unknown tag {row['tag']!r}; expected one of {TASKS}")
        rows.append(row)
    if not rows:
        raise BenchmarkDataError(f"{p}: no prompts")
    return rows


def load_object_names(path: str | Path | None = None) -> list[str]:
    p = Path(path) if path is not None else DEFAULT_OBJECT_NAMES
    if not p.is_file():
        raise BenchmarkDataError(
            f"GenEval class names {p} do not exist (GenEval's object_names.txt, 80 lines)"
        )
    return [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]


# --- folder layout ---------------------------------------------------------------------------------------------


@dataclass
class PromptFolder:
    """One prompt's folder in GenEval's layout: ``<dir>/<index:05d>/{metadata.jsonl, samples/<k>.png}``."""

    index: int
    path: Path
    metadata: dict[str, Any]
    samples: list[Path]


def _complete(folder: Path, row: Mapping[str, Any], n_samples: int) -> bool:
    meta = folder / "metadata.jsonl"
    if not meta.is_file():
        return False
    try:
        if json.loads(meta.read_text()) != row:
            return False
    except json.JSONDecodeError:
        return False
    return all((folder / "samples" / f"{k:05d}.png").is_file() for k in range(n_samples))


def write_prompt_folder(out_dir: str | Path, index: int, row: Mapping[str, Any], images: np.ndarray) -> Path:
    """Write one prompt's metadata line and its images as ``samples/00000.png`` ... (the reference names)."""
    folder = Path(out_dir) / f"{index:05d}"
    (folder / "samples").mkdir(parents=True, exist_ok=True)
    for k, img in enumerate(images):
        Image.fromarray(np.asarray(img, np.uint8)).save(folder / "samples" / f"{k:05d}.png")
    # written last, so a folder with metadata is complete (resume relies on it)
    (folder / "metadata.jsonl").write_text(json.dumps(dict(row)) + "\n")
    return folder


def generate_folder(
    out_dir: str | Path,
    rows: Sequence[Mapping[str, Any]],
    generate: ImageGenerator,
    n_samples: int = N_SAMPLES,
    seed: int = 42,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Generate ``n_samples`` images per prompt into GenEval's layout; prompts already complete are skipped.

    Every prompt is generated with the same ``seed`` (the reference generator re-seeds per prompt).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for i, row in enumerate(rows):
        folder = out / f"{i:05d}"
        if not _complete(folder, row, n_samples):
            images = check_images(generate([row["prompt"]] * n_samples, seed), n_samples)
            write_prompt_folder(out, i, row, images)
        if progress is not None:
            progress(i + 1, len(rows))
    return out


def read_folder(image_dir: str | Path) -> list[PromptFolder]:
    """The official evaluator's scan: all-digit sub-folders, ``metadata.jsonl`` read as one JSON object,
    ``samples/*.png`` whose names are digits (sorted by number)."""
    root = Path(image_dir)
    if not root.is_dir():
        raise BenchmarkDataError(f"GenEval image folder {root} does not exist")
    out = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and p.name.isdigit()):
        meta_path = sub / "metadata.jsonl"
        if not meta_path.is_file():
            raise BenchmarkDataError(f"{sub} has no metadata.jsonl")
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise BenchmarkDataError(f"{meta_path}: not one JSON object ({exc})") from None
        samples = sorted(
            (p for p in (sub / "samples").glob("*.png") if SAMPLE_RE.match(p.name)), key=lambda p: int(p.stem)
        )
        out.append(PromptFolder(int(sub.name), sub, meta, samples))
    if not out:
        raise BenchmarkDataError(f"{root} holds no GenEval prompt folders (<index:05d>/metadata.jsonl)")
    return out


def load_image(path: str | Path) -> np.ndarray:
    """RGB uint8, EXIF orientation applied (as the official evaluator does)."""
    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


# --- Mask2Former -----------------------------------------------------------------------------------------------


def mask_to_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """mmdetection's ``mask2bbox``: tight box, x2/y2 one past the last set column/row; zeros for an empty mask."""
    cols = np.flatnonzero(mask.any(0))
    rows = np.flatnonzero(mask.any(1))
    if len(cols) == 0 or len(rows) == 0:
        return (0.0, 0.0, 0.0, 0.0)
    return (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))


class Mask2FormerDetector:
    """COCO instance detections (boxes, masks, scores) from a transformers Mask2Former in a local directory.

    ``score_floor``: candidates whose class probability is at most this are dropped before their masks are
    upsampled. The final score is class probability x mean mask probability (<= 1), so with the floor at
    GenEval's lowest threshold (0.3) nothing GenEval keeps is lost; set 0 for the unfiltered output.
    """

    metric = "geneval"

    def __init__(
        self,
        weights: str | Path | None,
        class_names: Sequence[str] | None = None,
        device: str | None = None,
        batch_size: int = 4,
        max_per_image: int = 100,
        score_floor: float = 0.3,
    ):
        from transformers import AutoImageProcessor, Mask2FormerForUniversalSegmentation

        path = require(self.metric, weights, DETECTOR_SPEC)
        self.device = torch_device(device)
        self.processor = AutoImageProcessor.from_pretrained(path)
        self.model = Mask2FormerForUniversalSegmentation.from_pretrained(path).to(self.device).eval()
        n = self.model.config.num_labels
        if class_names is None:
            class_names = (
                load_object_names() if n == 80 else [self.model.config.id2label[i] for i in range(n)]
            )
        if len(class_names) != n:
            raise ValueError(f"{len(class_names)} class names for a detector with {n} classes")
        self.class_names = list(class_names)
        self.batch_size = batch_size
        self.max_per_image = max_per_image
        self.score_floor = score_floor

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        """Per image, every detection (any class), each with its box, score and bool mask at image size.

        Only images of one size share a batch: padding a smaller image to a batch-mate's size changes the
        model's output, and GenEval detects one image at a time, so batches stay padding-free.
        """
        out: list[list[Detection] | None] = [None] * len(images)
        by_size: dict[tuple[int, ...], list[int]] = {}
        for i, im in enumerate(images):
            by_size.setdefault(np.shape(im), []).append(i)
        for idx in by_size.values():
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start : start + self.batch_size]
                for i, dets in zip(chunk, self._detect_batch([images[i] for i in chunk]), strict=True):
                    out[i] = dets
        return out  # type: ignore[return-value]

    def _detect_batch(self, images: Sequence[np.ndarray]) -> list[list[Detection]]:
        import torch
        import torch.nn.functional as F

        pil = [Image.fromarray(np.asarray(im, np.uint8)) for im in images]
        inputs = self.processor(images=pil, return_tensors="pt")
        pixel_values = inputs["pixel_values"].to(self.device)
        pixel_mask = inputs.get("pixel_mask")
        with torch.no_grad():
            outputs = self.model(pixel_values=pixel_values)
        padded = pixel_values.shape[-2:]
        results = []
        for b, im in enumerate(pil):
            cls_logits = outputs.class_queries_logits[b].float()  # [Q, C+1]
            mask_logits = outputs.masks_queries_logits[b].float()  # [Q, h, w]
            scores = cls_logits.softmax(-1)[:, :-1]
            n_cls = scores.shape[1]
            k = min(self.max_per_image, scores.numel())
            top_scores, top_idx = scores.flatten().topk(k)
            keep = top_scores > self.score_floor
            top_scores, top_idx = top_scores[keep], top_idx[keep]
            if len(top_idx) == 0:
                results.append([])
                continue
            queries, labels = top_idx // n_cls, top_idx % n_cls
            uniq, inverse = queries.unique(return_inverse=True)
            if pixel_mask is not None:
                valid = pixel_mask[b].bool()
                rh, rw = int(valid.any(1).sum()), int(valid.any(0).sum())
            else:
                rh, rw = padded
            m = F.interpolate(mask_logits[uniq][None], size=padded, mode="bilinear", align_corners=False)[0]
            m = m[:, :rh, :rw]
            m = F.interpolate(m[None], size=(im.height, im.width), mode="bilinear", align_corners=False)[0]
            binary = m > 0
            mask_score = (m.sigmoid() * binary).flatten(1).sum(1) / (binary.flatten(1).sum(1) + 1e-6)
            dets = []
            binary_np = binary.cpu().numpy()
            for j in range(len(top_idx)):
                u = int(inverse[j])
                mask = binary_np[u]
                dets.append(
                    Detection(
                        cls=self.class_names[int(labels[j])],
                        box=mask_to_box(mask),
                        score=float(top_scores[j] * mask_score[u]),
                        mask=mask,
                    )
                )
            results.append(dets)
        return results


# --- colour classifier -----------------------------------------------------------------------------------------


def color_crop(image: np.ndarray, det: Detection, background=BACKGROUND_RGB, crop: bool = True) -> np.ndarray:
    """GenEval's classifier input: the object's mask composited over ``#999``, cropped to its box.

    The box is rounded to whole pixels as PIL's ``crop`` does. Without a mask the whole box content is kept.
    """
    img = np.asarray(image, np.uint8)
    if det.mask is not None:
        bg = np.empty_like(img)
        bg[...] = np.asarray(background, np.uint8)
        img = np.where(np.asarray(det.mask, bool)[..., None], img, bg)
    if crop:
        x1, y1, x2, y2 = (int(round(v)) for v in det.box)
        img = img[max(y1, 0) : max(y2, 0), max(x1, 0) : max(x2, 0)]
    if img.size == 0:  # a degenerate box: PIL would give an empty image too; keep one background pixel
        img = np.full((1, 1, 3), background, np.uint8)
    return img


class ClipColorClassifier:
    """Zero-shot colour of detected objects with CLIP (section 1.6): 10 colours x 3 templates per class name.

    Text weights: each template's embedding L2-normalised, averaged over the templates, re-normalised, cached per
    class name. Logits = 100 x normalised image embedding . weights; the prediction is the argmax.
    """

    metric = "geneval"

    def __init__(
        self,
        weights: str | Path | None,
        device: str | None = None,
        colors: Sequence[str] = COLORS,
        templates: Sequence[str] = COLOR_TEMPLATES,
        batch_size: int = 32,
    ):
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        path = require(self.metric, weights, CLIP_COLOR_SPEC)
        self.device = torch_device(device)
        self.model = CLIPModel.from_pretrained(path).to(self.device).eval()
        self.image_processor = AutoImageProcessor.from_pretrained(path)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.colors = tuple(colors)
        self.templates = tuple(templates)
        self.batch_size = batch_size
        self._weights: dict[str, Any] = {}

    def text_weights(self, classname: str):
        """[D, n_colors] zero-shot weights for one object class."""
        import torch

        if classname not in self._weights:
            cols = []
            for color in self.colors:
                texts = [t.format(color=color, classname=classname) for t in self.templates]
                tok = self.tokenizer(texts, padding=True, return_tensors="pt").to(self.device)
                with torch.no_grad():
                    emb = _features(self.model.get_text_features(**tok)).float()
                emb = emb / emb.norm(dim=-1, keepdim=True)
                mean = emb.mean(0)
                cols.append(mean / mean.norm())
            self._weights[classname] = torch.stack(cols, 1)
        return self._weights[classname]

    def classify_crops(self, crops: Sequence[np.ndarray], classname: str) -> list[str]:
        import torch

        if not crops:
            return []
        weights = self.text_weights(classname)
        preds: list[str] = []
        for start in range(0, len(crops), self.batch_size):
            batch = [Image.fromarray(c) for c in crops[start : start + self.batch_size]]
            pix = self.image_processor(images=batch, return_tensors="pt")["pixel_values"].to(self.device)
            with torch.no_grad():
                feat = _features(self.model.get_image_features(pixel_values=pix)).float()
            feat = feat / feat.norm(dim=-1, keepdim=True)
            logits = 100.0 * feat @ weights
            preds.extend(self.colors[i] for i in logits.argmax(-1).tolist())
        return preds

    def for_image(self, image: np.ndarray) -> ColorClassifier:
        """The ``classify_colors`` hook of :func:`evaluate_image`, :func:`partial_reward` and
        :func:`aligned_reward` for one image. It remembers each object's colour (per object and class name),
        so the three rules asking about the same detections run CLIP on each crop once."""
        seen: dict[tuple[int, str], tuple[Detection, str]] = {}

        def classify(found: Sequence[Detection], classname: str) -> list[str]:
            new = [d for d in found if (id(d), classname) not in seen]
            for d, colour in zip(
                new, self.classify_crops([color_crop(image, d) for d in new], classname), strict=True
            ):
                seen[id(d), classname] = (d, colour)  # keeps d alive, so its id is not reused
            return [seen[id(d), classname][1] for d in found]

        return classify


def _features(out):
    """transformers 5 may return a model output instead of a tensor from get_*_features."""
    if hasattr(out, "pooler_output") and not hasattr(out, "shape"):
        return out.pooler_output
    return out


# --- scoring ---------------------------------------------------------------------------------------------------


class GenEvalScorer:
    """Detector + colour classifier + GenEval's rules: official ``correct``, Flow-GRPO's partial reward and the
    partial credit aligned with the metric."""

    def __init__(self, detector, classifier: ClipColorClassifier | None):
        self.detector = detector
        self.classifier = classifier

    def score(self, images: Sequence[np.ndarray], metas: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """One record per image: tag, prompt, correct, reason, reward (Flow-GRPO's partial credit),
        reward_aligned (:func:`aligned_reward`, in [0, 1], 1.0 exactly when correct), strict_correct."""
        if len(images) != len(metas):
            raise ValueError(f"{len(images)} images but {len(metas)} metadata rows")
        all_dets = self.detector.detect(list(images))
        records = []
        for img, meta, dets in zip(images, metas, all_dets, strict=True):
            hook = self.classifier.for_image(img) if self.classifier is not None else None
            kept = postprocess(dets, meta["tag"])
            correct, reason = evaluate_image(meta, kept, classify_colors=hook)
            reward, strict = partial_reward(meta, kept, classify_colors=hook)
            aligned = aligned_reward(meta, kept, classify_colors=hook)
            records.append(
                {
                    "tag": meta["tag"],
                    "prompt": meta["prompt"],
                    "correct": bool(correct),
                    "reason": reason,
                    "reward": float(reward),
                    "reward_aligned": float(aligned),
                    "strict_correct": bool(strict),
                    "detections": {c: len(v) for c, v in kept.items()},
                }
            )
        return records

    def score_folder(self, image_dir: str | Path, batch_size: int = 16) -> list[dict[str, Any]]:
        """Score every sample of a GenEval-layout folder; records also carry ``filename`` and ``index``."""
        records: list[dict[str, Any]] = []
        items = [(f, s) for f in read_folder(image_dir) for s in f.samples]
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            recs = self.score([load_image(s) for _, s in chunk], [f.metadata for f, _ in chunk])
            for (f, s), r in zip(chunk, recs, strict=True):
                r.update(filename=str(s), index=f.index)
            records.extend(recs)
        return records


def write_results(records: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """Per-image results as JSON lines (the official evaluator's results.jsonl, plus the reward fields)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("".join(json.dumps(dict(r)) + "\n" for r in records))
    return p


def summary_from_results(path: str | Path) -> dict[str, Any]:
    """The official summary (task means, overall = mean of tasks, % correct images / prompts) of a results file."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return summarize(rows)


def reward_summary(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Flow-GRPO's view: mean partial reward and strict accuracy, overall and per task; plus the mean aligned
    reward (``reward_aligned``, ``reward_aligned_<task>``) where the records carry it."""
    aligned = all("reward_aligned" in r for r in records)
    out: dict[str, Any] = {"reward": float(np.mean([r["reward"] for r in records]))}
    if aligned:
        out["reward_aligned"] = float(np.mean([r["reward_aligned"] for r in records]))
    out["strict_accuracy"] = float(np.mean([r["strict_correct"] for r in records]))
    for t in TASKS:
        sel = [r for r in records if r["tag"] == t]
        if sel:
            out[f"reward_{t}"] = float(np.mean([r["reward"] for r in sel]))
            if aligned:
                out[f"reward_aligned_{t}"] = float(np.mean([r["reward_aligned"] for r in sel]))
            out[f"strict_accuracy_{t}"] = float(np.mean([r["strict_correct"] for r in sel]))
    return out


def load_scorer(
    detector_weights: str | Path | None,
    clip_weights: str | Path | None,
    device: str | None = None,
    object_names: str | Path | None = None,
) -> GenEvalScorer:
    """Both models, each directory checked before either is loaded (one error names what is missing)."""
    require("geneval", detector_weights, DETECTOR_SPEC)
    require("geneval", clip_weights, CLIP_COLOR_SPEC)
    names = load_object_names(object_names) if object_names is not None else None
    return GenEvalScorer(
        Mask2FormerDetector(detector_weights, class_names=names, device=device),
        ClipColorClassifier(clip_weights, device=device),
    )


def evaluate_geneval(
    scorer: GenEvalScorer,
    out_dir: str | Path,
    rows: Sequence[Mapping[str, Any]] | None = None,
    generate: ImageGenerator | None = None,
    n_samples: int = N_SAMPLES,
    seed: int = 42,
) -> dict[str, Any]:
    """Generate (if ``generate`` is given) into ``out_dir/images``, score, write ``results.jsonl``; the report."""
    out = Path(out_dir)
    image_dir = out / "images"
    if generate is not None:
        generate_folder(image_dir, rows if rows is not None else load_prompts(), generate, n_samples, seed)
    records = scorer.score_folder(image_dir)
    write_results(records, out / "results.jsonl")
    return {
        "benchmark": "geneval",
        "images": len(records),
        "prompts": len({r["index"] for r in records}),
        "summary": summarize(records),
        "reward": reward_summary(records),
    }
