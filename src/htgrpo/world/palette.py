"""The shapes world's vocabulary: shape classes with their pixel templates, and the colours.

Every object is drawn inside one 8x8 cell of the canvas (a 7x7 template plus a one-pixel gutter), so
objects in neighbouring cells never touch and one object is exactly one image token. Templates are
exact binary masks: the detector recognises them exactly, and anything else is not an object.
"""

from __future__ import annotations

import numpy as np

CELL_PX = 8
"""Side of one cell in pixels; one cell is one image token."""

SHAPE_PX = 7
"""Side of a shape's template; the remaining row and column of the cell are a gutter."""


def _template(fn) -> np.ndarray:
    ys, xs = np.mgrid[0:SHAPE_PX, 0:SHAPE_PX]
    return np.asarray(fn(ys, xs), dtype=bool)


_C = (SHAPE_PX - 1) / 2  # centre coordinate, 3.0

SHAPE_TEMPLATES: dict[str, np.ndarray] = {
    "square": _template(lambda y, x: np.ones_like(x, dtype=bool)),
    "circle": _template(lambda y, x: (y - _C) ** 2 + (x - _C) ** 2 <= 3.6**2 - 2.5),
    "triangle": _template(lambda y, x: np.abs(x - _C) <= y / 2),
    "diamond": _template(lambda y, x: np.abs(x - _C) + np.abs(y - _C) <= 3),
    "cross": _template(lambda y, x: (np.abs(x - _C) <= 1) | (np.abs(y - _C) <= 1)),
    "ring": _template(lambda y, x: np.maximum(np.abs(x - _C), np.abs(y - _C)) >= 2),
}
"""7x7 boolean masks, True where the shape's colour is painted."""

SHAPES: tuple[str, ...] = tuple(SHAPE_TEMPLATES)

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 25, 30),
    "orange": (245, 135, 0),
    "yellow": (235, 200, 0),
    "green": (25, 150, 45),
    "blue": (30, 70, 215),
    "purple": (125, 35, 165),
    "pink": (240, 95, 180),
    "brown": (115, 65, 20),
    "black": (20, 20, 20),
}
"""GenEval's colour names that render distinctly on a light background (white does not)."""

COLOR_NAMES: tuple[str, ...] = tuple(COLORS)

BACKGROUND_THEMES: tuple[tuple[tuple[int, int, int], tuple[int, int, int], str], ...] = (
    ((244, 214, 214), (214, 224, 246), "horizontal"),
    ((236, 240, 204), (206, 232, 228), "vertical"),
    ((228, 212, 240), (244, 232, 212), "diagonal"),
    ((210, 236, 214), (240, 240, 240), "antidiagonal"),
    ((246, 226, 206), (214, 214, 236), "vertical"),
    ((220, 220, 220), (246, 246, 232), "horizontal"),
)
"""Gradient themes (start colour, end colour, direction) of the default background. A scene draws one at random,
so the background is a global choice the sampler must make and then paint consistently across every
background token; with a handful of themes that choice is learnable in minutes, where gradients between
arbitrary random colours left a 2.9 M-parameter prototype backbone ignoring its prompt after 30 minutes
(their irreducible colour entropy swamped the object signal in the loss)."""

TILE_RGB = (238, 238, 238)
"""Every object is drawn on a light-grey tile filling its cell, so an object's patch (hence its image code) does
not depend on the background gradient around it: one code per shape and colour. With the gradient showing
through, k-means spent ~6 codes per object type on background variants, which split the "object here"
signal and left a 2.9 M-parameter prototype backbone predicting background everywhere after 30 minutes."""
COLOR_RGB = np.array([COLORS[c] for c in COLOR_NAMES], dtype=np.float32)

# A pixel is background when it is light and nearly grey; every object colour fails this test.
BACKGROUND_MIN_CHANNEL = 175
BACKGROUND_MAX_SPREAD = 55


def _check_templates() -> None:
    masks = list(SHAPE_TEMPLATES.values())
    for i, a in enumerate(masks):
        for b in masks[i + 1 :]:
            if np.array_equal(a, b):  # pragma: no cover - guards edits to the templates
                raise AssertionError("two shape templates are identical")


_check_templates()
