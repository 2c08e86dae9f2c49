"""Scenes of the shapes world: sampled from GenEval metadata, rendered to RGB images.

The canvas is a grid of cells, one object per cell at most. The background is a linear gradient, constant
within a cell, drawn from a few themes (or, optionally, between two random light colours in one of four
directions), so that it is the "detail"
that later tokens must paint consistently while objects (one token each, on a light-grey tile) are the layout.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cache

import numpy as np

from htgrpo.errors import PromptError
from htgrpo.eval.relations import relations
from htgrpo.world.grammar import TASKS, Metadata, prompt_space
from htgrpo.world.palette import (
    BACKGROUND_THEMES,
    CELL_PX,
    COLOR_NAMES,
    COLORS,
    SHAPE_PX,
    SHAPE_TEMPLATES,
    SHAPES,
    TILE_RGB,
)

DIRECTIONS = ("horizontal", "vertical", "diagonal", "antidiagonal")


@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    row: int
    col: int

    def box(self) -> tuple[int, int, int, int]:
        """[x1, y1, x2, y2) of the painted template in pixels."""
        x1, y1 = self.col * CELL_PX, self.row * CELL_PX
        return (x1, y1, x1 + SHAPE_PX, y1 + SHAPE_PX)


@dataclass(frozen=True)
class Background:
    start: tuple[int, int, int]
    end: tuple[int, int, int]
    direction: str

    def cell_colours(self, grid: int) -> np.ndarray:
        """[grid, grid, 3] uint8 colour of every cell."""
        r, c = np.mgrid[0:grid, 0:grid].astype(np.float32)
        span = max(grid - 1, 1)
        t = {
            "horizontal": c / span,
            "vertical": r / span,
            "diagonal": (r + c) / (2 * span),
            "antidiagonal": (r + (span - c)) / (2 * span),
        }[self.direction]
        start = np.asarray(self.start, np.float32)
        end = np.asarray(self.end, np.float32)
        return np.rint(start + (end - start) * t[..., None]).astype(np.uint8)


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]
    background: Background
    grid: int
    meta: Metadata = field(compare=False, hash=False, default_factory=dict)


def random_background(rng: np.random.Generator, kind: str = "themes") -> Background:
    """A background: one of BACKGROUND_THEMES ("themes"), or a gradient between two random light colours."""
    if kind == "themes":
        start, end, direction = BACKGROUND_THEMES[int(rng.integers(len(BACKGROUND_THEMES)))]
        return Background(start, end, direction)
    if kind != "random":
        raise ValueError(f"unknown background kind {kind!r}; expected 'themes' or 'random'")

    def colour() -> tuple[int, int, int]:
        base = rng.integers(200, 246)
        jitter = rng.integers(-12, 13, size=3)
        return tuple(int(v) for v in np.clip(base + jitter, 188, 250))

    return Background(colour(), colour(), DIRECTIONS[int(rng.integers(len(DIRECTIONS)))])


def render(scene: Scene) -> np.ndarray:
    """[H, W, 3] uint8 image of a scene (H = W = grid * CELL_PX)."""
    g = scene.grid
    cells = scene.background.cell_colours(g)
    image = np.repeat(np.repeat(cells, CELL_PX, axis=0), CELL_PX, axis=1)
    for obj in scene.objects:
        x1, y1, x2, y2 = obj.box()
        image[y1 : y1 + CELL_PX, x1 : x1 + CELL_PX] = TILE_RGB
        patch = image[y1:y2, x1:x2]
        patch[SHAPE_TEMPLATES[obj.shape]] = COLORS[obj.color]
    return image


def render_many(scenes: Iterable[Scene]) -> np.ndarray:
    return np.stack([render(s) for s in scenes])


@cache
def _prompt_index() -> dict[str, Metadata]:
    return {m["prompt"]: m for task in TASKS for m in prompt_space(task)}


def metadata_for_prompt(prompt: str) -> Metadata:
    """GenEval metadata of a prompt in the world's grammar; PromptError if the world cannot render it."""
    key = " ".join(prompt.lower().split())
    meta = copy.deepcopy(_prompt_index().get(key))
    if meta is None:
        raise PromptError(
            f"the shapes world cannot render {prompt!r}: it is not a GenEval-grammar prompt over the shapes "
            f"{', '.join(SHAPES)} and colours {', '.join(COLOR_NAMES)} (e.g. 'a photo of a red circle')"
        )
    return meta


def _check_renderable(meta: Metadata, grid: int) -> None:
    total = 0
    for clause in meta.get("include", []):
        if clause.get("class") not in SHAPE_TEMPLATES:
            raise PromptError(f"prompt {meta.get('prompt')!r}: unknown shape {clause.get('class')!r}")
        if "color" in clause and clause["color"] not in COLORS:
            raise PromptError(f"prompt {meta.get('prompt')!r}: unknown colour {clause['color']!r}")
        count = clause.get("count", 1)
        if not isinstance(count, int) or count < 1:
            raise PromptError(f"prompt {meta.get('prompt')!r}: bad count {count!r}")
        total += count
    if total == 0 or total > grid * grid:
        raise PromptError(f"prompt {meta.get('prompt')!r}: {total} objects do not fit a {grid}x{grid} grid")


def sample_scene(
    meta: Metadata,
    rng: np.random.Generator,
    grid: int,
    forbidden_pairs: Sequence[tuple[str, str]] = (),
    background: str = "themes",
) -> Scene:
    """A random scene that satisfies the metadata exactly (counting's exclude included).

    Free colours (where the prompt names none) avoid `forbidden_pairs`, so held-out colour-shape pairs never
    appear in training images.
    """
    _check_renderable(meta, grid)
    forbidden = set(forbidden_pairs)
    free_cells = list(range(grid * grid))
    rng.shuffle(free_cells)
    placed: list[SceneObject] = []

    def pick_colour(shape: str) -> str:
        allowed = [c for c in COLOR_NAMES if (c, shape) not in forbidden]
        return allowed[int(rng.integers(len(allowed)))]

    for clause in meta["include"]:
        shape = clause["class"]
        for _ in range(clause.get("count", 1)):
            colour = clause.get("color") or pick_colour(shape)
            if "position" in clause:
                rel, group = clause["position"]
                anchor = [o for o in placed if o.shape == meta["include"][group]["class"]][0]
                options = [
                    cell
                    for cell in free_cells
                    if rel in relations(SceneObject(shape, colour, *divmod(cell, grid)).box(), anchor.box())
                ]
                if not options:  # the anchor sits on the edge that `rel` needs: move it and retry
                    return sample_scene(meta, rng, grid, forbidden_pairs, background)
                cell = options[int(rng.integers(len(options)))]
                free_cells.remove(cell)
            else:
                cell = free_cells.pop()
            placed.append(SceneObject(shape, colour, *divmod(cell, grid)))
    return Scene(tuple(placed), random_background(rng, background), grid, meta)
