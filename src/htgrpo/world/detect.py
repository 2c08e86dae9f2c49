"""An exact, strict detector for the shapes world, and GenEval scoring of rendered or generated images.

Every pixel is background (light and nearly grey), a palette colour (nearest within a tolerance) or stray.
Each 4-connected component of one colour is an object only if it fills exactly a SHAPE_PX x SHAPE_PX box and
matches one shape template. Anything else makes the whole image invalid, with no detections: a detector that
picked the recognisable objects out of a messy image would let noise or random-token images collect reward,
so strictness here closes a reward-hacking hole.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from htgrpo.eval.geneval import Detection, aligned_reward, evaluate_image, partial_reward, postprocess
from htgrpo.world.palette import (
    BACKGROUND_MAX_SPREAD,
    BACKGROUND_MIN_CHANNEL,
    CELL_PX,
    COLOR_NAMES,
    COLOR_RGB,
    SHAPE_PX,
    SHAPE_TEMPLATES,
    SHAPES,
)

BACKGROUND = -1
STRAY = -2

_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)
_TEMPLATES = np.stack([SHAPE_TEMPLATES[s] for s in SHAPES])  # [S, 7, 7]
_TEMPLATE_SIZES = _TEMPLATES.reshape(len(SHAPES), -1).sum(1)
_RGB = COLOR_RGB.astype(np.int32)  # [C, 3]


@dataclass
class DetectionResult:
    """Detections of one image; ``valid`` False (with ``reason``) means the image holds no objects at all."""

    valid: bool
    reason: str = ""
    detections: list[Detection] = field(default_factory=list)


def _check_images(images: np.ndarray) -> np.ndarray:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 images of shape [N, H, W, 3], got {images.dtype} {images.shape}")
    return images


def classify_pixels(images: np.ndarray, color_tolerance: float = 60.0) -> np.ndarray:
    """int8 [N, H, W] class per pixel: a COLOR_NAMES index, BACKGROUND or STRAY."""
    images = _check_images(np.asarray(images))
    px = images.astype(np.int32)
    lo, hi = px.min(-1), px.max(-1)
    background = (lo >= BACKGROUND_MIN_CHANNEL) & (hi - lo <= BACKGROUND_MAX_SPREAD)
    # squared distance to each palette colour, accumulated per channel to keep the temporaries small
    dist = np.zeros(images.shape[:3] + (len(_RGB),), np.int32)
    for ch in range(3):
        dist += (px[..., ch, None] - _RGB[:, ch]) ** 2
    nearest = dist.argmin(-1)
    near_enough = np.take_along_axis(dist, nearest[..., None], -1)[..., 0] <= color_tolerance**2
    out = np.where(near_enough, nearest, STRAY).astype(np.int8)
    out[background] = BACKGROUND
    return out


class ShapeDetector:
    """Finds the shapes world's objects exactly; see the module docstring for what makes an image invalid.

    color_tolerance: RGB Euclidean distance within which a pixel takes its nearest palette colour (the closest
        two palette colours, orange and yellow, are 66 apart; the nearest one wins).
    template_iou: a component's 7x7 mask must reach this IoU with one template, strictly more than with any
        other. The default 0.95 is above the 0.946 needed for two templates never to both qualify (circle and
        cross differ by only 4 pixels, IoU 0.892), so a reconstruction may be off by a pixel or two, no more.
    stray_tolerance: how many stray pixels an image may have and still be valid.
    max_objects: more objects than this make the image invalid (the world renders at most 4).
    min_background_coherence: the background must continue one linear gradient for at least this share of
        adjacent background-cell pairs (``background_smoothness``). Objects sit on tiles and one object is one
        code, so an image decoded from random codes holds a handful of perfect shapes (about 10 % of the codes
        are objects); what gives it away is its patchwork background. Without this gate such images scored on
        single_object and colors. A generated image needs a coherent background, not a perfect one.
    """

    def __init__(
        self,
        color_tolerance: float = 60.0,
        template_iou: float = 0.95,
        stray_tolerance: int = 0,
        max_objects: int = 8,
        min_background_coherence: float = 0.5,
        batch_size: int = 256,
    ) -> None:
        self.color_tolerance = color_tolerance
        self.template_iou = template_iou
        self.stray_tolerance = stray_tolerance
        self.max_objects = max_objects
        self.min_background_coherence = min_background_coherence
        self.batch_size = batch_size

    def detect(self, image: np.ndarray) -> DetectionResult:
        image = np.asarray(image)
        if image.ndim != 3:
            raise ValueError(f"expected one uint8 image of shape [H, W, 3], got shape {image.shape}")
        return self.detect_many(image[None])[0]

    def detect_many(self, images: np.ndarray | Sequence[np.ndarray]) -> list[DetectionResult]:
        """Detect in a batch; pixel classification runs vectorised over `batch_size` images at once."""
        if not isinstance(images, np.ndarray):
            images = (
                np.stack([np.asarray(im) for im in images])
                if len(images)
                else np.zeros((0, 1, 1, 3), np.uint8)
            )
        _check_images(images)
        results: list[DetectionResult] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            classes = classify_pixels(chunk, self.color_tolerance)
            for image, cls in zip(chunk, classes, strict=True):
                result = self._components(cls)
                if result.valid and self.min_background_coherence > 0:
                    result = self._check_background(image, result)
                results.append(result)
        return results

    def _check_background(self, image: np.ndarray, result: DetectionResult) -> DetectionResult:
        h, w = image.shape[:2]
        if h != w or h % CELL_PX:
            return result  # not a grid image of this world: nothing to compare the background with
        coherence = background_smoothness(image, h // CELL_PX)
        if coherence < self.min_background_coherence:
            return DetectionResult(
                False,
                f"background is no coherent gradient (coherence {coherence:.2f} < {self.min_background_coherence})",
            )
        return result

    def _components(self, classes: np.ndarray) -> DetectionResult:
        n_stray = int((classes == STRAY).sum())
        if n_stray > self.stray_tolerance:
            return DetectionResult(False, f"{n_stray} stray pixels (neither background nor a palette colour)")
        detections: list[Detection] = []
        present = np.unique(classes[classes >= 0])
        for colour_idx in present:
            colour = COLOR_NAMES[colour_idx]
            labels, _ = ndimage.label(classes == colour_idx, structure=_FOUR_CONNECTED)
            for k, sl in enumerate(ndimage.find_objects(labels), start=1):
                y, x = sl[0].start, sl[1].start
                h, w = sl[0].stop - y, sl[1].stop - x
                if (h, w) != (SHAPE_PX, SHAPE_PX):
                    return DetectionResult(
                        False, f"{colour} component at ({x},{y}) of size {w}x{h} is no shape"
                    )
                comp = labels[sl] == k
                inter = (_TEMPLATES & comp).reshape(len(SHAPES), -1).sum(1)
                iou = inter / (_TEMPLATE_SIZES + comp.sum() - inter)
                best = int(iou.argmax())
                runner_up = np.partition(iou, -2)[-2]
                if iou[best] < self.template_iou or iou[best] <= runner_up:
                    return DetectionResult(
                        False,
                        f"{colour} component at ({x},{y}) matches no shape (best {SHAPES[best]}, IoU {iou[best]:.2f})",
                    )
                mask = np.zeros(classes.shape, bool)
                mask[sl] = comp
                detections.append(
                    Detection(SHAPES[best], (x, y, x + SHAPE_PX, y + SHAPE_PX), 1.0, colour, mask)
                )
            if len(detections) > self.max_objects:
                return DetectionResult(False, f"more than {self.max_objects} objects")
        # a deterministic order (reading order) independent of the colour loop
        detections.sort(key=lambda d: (d.box[1], d.box[0]))
        return DetectionResult(True, "", detections)


def score_images(
    metas: Sequence[dict[str, Any]],
    images: np.ndarray | Sequence[np.ndarray],
    detector: ShapeDetector | None = None,
    results: Sequence[DetectionResult] | None = None,
) -> list[dict[str, Any]]:
    """Score image i against metadata i: GenEval's ``correct``, Flow-GRPO's ``reward`` and ``strict_correct``,
    and ``reward_aligned``, the partial credit whose maximum is GenEval's ``correct`` (``aligned_reward``).

    Detections go through GenEval's post-processing for the prompt's tag first (a no-op for this detector's
    score-1.0 objects, kept so the path matches a real detector's). Invalid images (see :class:`ShapeDetector`)
    get correct False, reward 0.0, reward_aligned 0.0 and strict_correct False, whatever recognisable shapes
    they also contain.
    Pass `results` (from ``detector.detect_many(images)``) to reuse detections already computed.
    """
    if len(metas) != len(images):
        raise ValueError(f"{len(metas)} metadata rows but {len(images)} images")
    if results is None:
        results = (detector or ShapeDetector()).detect_many(images)
    elif len(results) != len(images):
        raise ValueError(f"{len(results)} detection results but {len(images)} images")
    records = []
    for meta, result in zip(metas, results, strict=True):
        rec: dict[str, Any] = {"tag": meta["tag"], "prompt": meta["prompt"], "valid": result.valid}
        if result.valid:
            dets = postprocess(result.detections, meta["tag"])
            correct, reason = evaluate_image(meta, dets)
            reward, strict = partial_reward(meta, dets)
            rec.update(
                correct=correct,
                reward=reward,
                reward_aligned=aligned_reward(meta, dets),
                strict_correct=strict,
                reason=reason,
            )
        else:
            rec.update(
                correct=False,
                reward=0.0,
                reward_aligned=0.0,
                strict_correct=False,
                reason=f"invalid image: {result.reason}",
            )
        records.append(rec)
    return records


def background_smoothness(image: np.ndarray, grid: int, tolerance: float = 6.0) -> float:
    """Share in [0, 1] of adjacent background-cell pairs that continue a linear gradient; an image-quality signal.

    The renderer paints the background as a linear gradient, constant within each CELL_PX cell, so the colour
    step between horizontally (or vertically) adjacent cells is the same everywhere. A cell is a background
    cell when all its pixels pass the palette's background test (cells with an object, or with junk, are
    left out). The expected step per axis and channel is the median step over that axis's background pairs
    (robust to a few bad cells). A pair passes when both cells are uniform (per-channel spread <= tolerance)
    and its step is within `tolerance` of the expected one on every channel; rounding makes a rendered
    image's steps differ by at most 1. Comparing with the gradient's step rather than with 0 keeps steep
    gradients (up to 62 levels over a few cells) at 1.0. Returns 0.0 when there are no background pairs, so
    an image cannot score by having no background.
    """
    image = np.asarray(image)
    side = grid * CELL_PX
    if image.shape != (side, side, 3):
        raise ValueError(f"expected a [{side}, {side}, 3] image for grid {grid}, got {image.shape}")
    px = image.astype(np.float32)
    lo, hi = px.min(-1), px.max(-1)
    bg_px = (lo >= BACKGROUND_MIN_CHANNEL) & (hi - lo <= BACKGROUND_MAX_SPREAD)
    cells = px.reshape(grid, CELL_PX, grid, CELL_PX, 3)
    is_bg = bg_px.reshape(grid, CELL_PX, grid, CELL_PX).all(axis=(1, 3))
    mean = cells.mean(axis=(1, 3))  # [g, g, 3]
    spread = (cells.max(axis=(1, 3)) - cells.min(axis=(1, 3))).max(-1)
    uniform = spread <= tolerance
    passed, total = 0, 0
    for axis in (0, 1):
        a = [slice(None), slice(None)]
        b = [slice(None), slice(None)]
        a[axis], b[axis] = slice(None, -1), slice(1, None)
        a, b = tuple(a), tuple(b)
        both = is_bg[a] & is_bg[b]
        if not both.any():
            continue
        step = (mean[b] - mean[a])[both]  # [P, 3]
        expected = np.median(step, axis=0)
        ok = (np.abs(step - expected).max(-1) <= tolerance) & uniform[a][both] & uniform[b][both]
        passed += int(ok.sum())
        total += int(both.sum())
    return passed / total if total else 0.0
