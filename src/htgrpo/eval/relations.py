"""GenEval's relative-position arithmetic (POSITION_THRESHOLD = 0.1), shared by the renderer and the rules."""

from __future__ import annotations

import math
from collections.abc import Sequence

POSITION_THRESHOLD = 0.1
RELATIONS = ("left of", "right of", "above", "below")


def relations(
    box_a: Sequence[float], box_b: Sequence[float], threshold: float = POSITION_THRESHOLD
) -> set[str]:
    """Relations in which object A stands to object B. Boxes are [x1, y1, x2, y2]; image y points down.

    offset = centre_A - centre_B; each axis is shrunk by threshold * (size_A + size_B) towards 0; if both shrunk
    components are below 1e-3 there is no relation; otherwise the shrunk offset is divided by the norm of the
    *unshrunk* offset and compared with +-0.5 per axis (several relations can hold at once).
    """
    ax1, ay1, ax2, ay2 = box_a
    bx1, by1, bx2, by2 = box_b
    off = ((ax1 + ax2) / 2 - (bx1 + bx2) / 2, (ay1 + ay2) / 2 - (by1 + by2) / 2)
    size_sum = ((ax2 - ax1) + (bx2 - bx1), (ay2 - ay1) + (by2 - by1))
    revised = [
        max(abs(o) - threshold * s, 0.0) * math.copysign(1.0, o) for o, s in zip(off, size_sum, strict=True)
    ]
    if abs(revised[0]) < 1e-3 and abs(revised[1]) < 1e-3:
        return set()
    norm = math.hypot(*off)
    dx, dy = revised[0] / norm, revised[1] / norm
    found: set[str] = set()
    if dx < -0.5:
        found.add("left of")
    if dx > 0.5:
        found.add("right of")
    if dy < -0.5:
        found.add("above")
    if dy > 0.5:
        found.add("below")
    return found
