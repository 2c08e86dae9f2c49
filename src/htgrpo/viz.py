"""PNG grids of generated images with their prompts as captions."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def image_grid(
    images: np.ndarray | Sequence[np.ndarray],
    caption: str | None = None,
    cols: int | None = None,
    scale: int = 4,
    labels: Sequence[str] | None = None,
    pad: int = 4,
) -> Image.Image:
    """Tile uint8 [H, W, 3] images (nearest-neighbour upscaled) with an optional caption and per-image labels."""
    images = [np.asarray(im, dtype=np.uint8) for im in images]
    if not images:
        raise ValueError("no images to put in a grid")
    n = len(images)
    cols = cols or min(n, 8)
    rows = math.ceil(n / cols)
    h, w = images[0].shape[0] * scale, images[0].shape[1] * scale
    font = ImageFont.load_default()
    label_h = 12 if labels else 0
    wrap = max(20, (cols * (w + pad)) // 7)
    cap_lines = textwrap.wrap(caption, wrap) if caption else []
    cap_h = 14 * len(cap_lines) + (6 if cap_lines else 0)
    canvas = Image.new("RGB", (cols * (w + pad) + pad, cap_h + rows * (h + pad + label_h) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(cap_lines):
        draw.text((pad, 3 + 14 * i), line, fill="black", font=font)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        x = pad + c * (w + pad)
        y = cap_h + pad + r * (h + pad + label_h)
        canvas.paste(Image.fromarray(im).resize((w, h), Image.NEAREST), (x, y))
        if labels:
            draw.text((x, y + h + 1), labels[i][: w // 6], fill="black", font=font)
    return canvas


def save_grid(path: str | Path, images, caption: str | None = None, **kwargs) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images, caption, **kwargs).save(path, format="PNG")
    return path
