"""The shapes world's exact detector: rendered scenes score correct, perturbations and noise do not."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from htgrpo.world.detect import ShapeDetector, background_smoothness, classify_pixels, score_images
from htgrpo.world.grammar import TASKS, counting, prompt_space
from htgrpo.world.palette import CELL_PX, COLOR_NAMES, COLORS, SHAPES
from htgrpo.world.render import Background, Scene, SceneObject, render, sample_scene

GRID = 6
DETECTOR = ShapeDetector()


def scenes_for(task: str, n: int, seed: int) -> list[Scene]:
    rng = np.random.default_rng(seed)
    space = prompt_space(task)
    return [sample_scene(space[int(rng.integers(len(space)))], rng, GRID) for _ in range(n)]


def score(scenes: list[Scene]) -> list[dict]:
    return score_images([s.meta for s in scenes], np.stack([render(s) for s in scenes]), DETECTOR)


def key(shape: str, color: str, box) -> tuple:
    return (shape, color, tuple(int(v) for v in box))


def replace_objects(scene: Scene, objects) -> Scene:
    return dataclasses.replace(scene, objects=tuple(objects))


def free_cell(scene: Scene) -> tuple[int, int]:
    used = {(o.row, o.col) for o in scene.objects}
    return next((r, c) for r in range(scene.grid) for c in range(scene.grid) if (r, c) not in used)


# --------------------------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("task", TASKS)
def test_rendered_scenes_are_correct_and_detected_exactly(task):
    scenes = [s for seed in range(3) for s in scenes_for(task, 15, seed)]
    images = np.stack([render(s) for s in scenes])
    results = DETECTOR.detect_many(images)
    for scene, result in zip(scenes, results, strict=True):
        assert result.valid, result.reason
        got = sorted(key(d.cls, d.color, d.box) for d in result.detections)
        want = sorted(key(o.shape, o.color, o.box()) for o in scene.objects)
        assert got == want
        for d in result.detections:
            x1, y1, x2, y2 = d.box
            assert d.mask.shape == images.shape[1:3] and d.mask[y1:y2, x1:x2].any() and d.score == 1.0
    metas = [s.meta for s in scenes]
    records = score_images(metas, images, DETECTOR)
    for rec in records:
        assert rec["correct"] and rec["strict_correct"] and rec["reward"] == 1.0, rec
        assert rec["tag"] == task and rec["valid"]
    assert score_images(metas, images, results=results) == records


def test_every_shape_in_every_colour_anywhere():
    bg = Background((230, 230, 230), (200, 210, 220), "diagonal")
    scenes = [
        Scene((SceneObject(s, c, i % (GRID - 1), (i * 3) % (GRID - 1)),), bg, GRID)  # last row/col empty
        for i, (s, c) in enumerate((s, c) for s in SHAPES for c in COLOR_NAMES)
    ]
    images = np.stack([render(s) for s in scenes])
    # also off the cell grid, shifted by (3, 2) pixels: objects need not sit in cells to be detected
    shifted = np.roll(images, (3, 2), axis=(1, 2))
    for imgs, dy, dx in ((images, 0, 0), (shifted, 3, 2)):
        for scene, result in zip(scenes, DETECTOR.detect_many(imgs), strict=True):
            (obj,) = scene.objects
            x1, y1, x2, y2 = obj.box()
            assert result.valid, result.reason
            assert [key(d.cls, d.color, d.box) for d in result.detections] == [
                key(obj.shape, obj.color, (x1 + dx, y1 + dy, x2 + dx, y2 + dy))
            ]


def test_empty_canvas_is_valid_with_no_objects():
    scene = Scene((), Background((220, 220, 220), (240, 240, 240), "vertical"), GRID)
    result = DETECTOR.detect(render(scene))
    assert result.valid and result.detections == []


# --------------------------------------------------------------------------------------------- perturbations


@pytest.mark.parametrize("task", ["single_object", "two_object", "counting"])
def test_removing_an_object_fails(task):
    scenes = scenes_for(task, 12, seed=10)
    perturbed = [replace_objects(s, s.objects[1:]) for s in scenes]
    for rec in score(perturbed):
        assert rec["valid"] and not rec["correct"] and not rec["strict_correct"] and rec["reward"] < 1.0


@pytest.mark.parametrize("task", ["colors", "color_attr"])
def test_changing_a_colour_fails(task):
    scenes = scenes_for(task, 12, seed=11)
    perturbed = []
    for s in scenes:
        obj = s.objects[-1]
        other = next(c for c in COLOR_NAMES if c != obj.color)
        perturbed.append(replace_objects(s, s.objects[:-1] + (dataclasses.replace(obj, color=other),)))
    for rec in score(perturbed):
        assert rec["valid"] and not rec["correct"] and rec["reward"] < 1.0
        assert "expected" in rec["reason"]


def test_swapping_positions_fails():
    scenes = scenes_for("position", 20, seed=12)
    perturbed = []
    for s in scenes:
        b, a = s.objects  # include[0] is the reference B, include[1] the placed A
        perturbed.append(
            replace_objects(
                s,
                (dataclasses.replace(b, row=a.row, col=a.col), dataclasses.replace(a, row=b.row, col=b.col)),
            )
        )
    for rec in score(perturbed):
        assert rec["valid"] and not rec["correct"] and not rec["strict_correct"]
        assert rec["reward"] == 0.75  # the position quirk: [1, 1, 0, 1]


def test_counting_extra_object_fails_through_the_exclude():
    rng = np.random.default_rng(13)
    scenes = [
        sample_scene(counting(SHAPES[i % len(SHAPES)], n), rng, GRID) for i in range(6) for n in (2, 3, 4)
    ]
    perturbed = []
    for s in scenes:
        row, col = free_cell(s)
        perturbed.append(
            replace_objects(s, s.objects + (dataclasses.replace(s.objects[0], row=row, col=col),))
        )
    for scene, rec in zip(scenes, score(perturbed), strict=True):
        n = len(scene.objects)
        assert rec["valid"] and not rec["correct"]
        assert (
            rec["reason"] == f"expected {scene.objects[0].shape}<{n + 1}, found {n + 1}"
        )  # only the exclude
        assert rec["reward"] == pytest.approx(1 - 1 / n)


# --------------------------------------------------------------------------------------------- invalid images


def one_meta_per_task() -> list[dict]:
    return [prompt_space(t)[0] for t in TASKS]


def test_noise_images_are_invalid_and_score_zero():
    rng = np.random.default_rng(14)
    metas = one_meta_per_task()
    uniform = rng.integers(0, 256, size=(len(metas), 48, 48, 3), dtype=np.uint8)
    palette = np.array([COLORS[c] for c in COLOR_NAMES], np.uint8)
    palette_noise = palette[rng.integers(len(palette), size=(len(metas), 48, 48))]
    for images in (uniform, palette_noise):
        for rec in score_images(metas, images, DETECTOR):
            assert not rec["valid"] and not rec["correct"] and not rec["strict_correct"]
            assert rec["reward"] == 0.0 and rec["reason"].startswith("invalid image")


def test_a_single_stray_pixel_invalidates_the_image():
    (scene,) = scenes_for("two_object", 1, seed=15)
    image = render(scene)
    row, col = free_cell(scene)
    image[row * CELL_PX + 2, col * CELL_PX + 2] = (
        128,
        128,
        128,
    )  # too dark for background, no palette colour
    result = DETECTOR.detect(image)
    assert not result.valid and "1 stray" in result.reason and result.detections == []
    assert ShapeDetector(stray_tolerance=1).detect(image).valid


def test_junk_components_invalidate_the_image():
    (scene,) = scenes_for("single_object", 1, seed=16)
    obj = scene.objects[0]
    x1, y1, x2, y2 = obj.box()
    # a pixel of the object's colour in the gutter, touching it: the component is 8 wide
    image = render(scene)
    image[y1, x2] = COLORS[obj.color]
    assert not DETECTOR.detect(image).valid
    # a separate same-colour pixel elsewhere: a 1x1 component
    image = render(scene)
    row, col = free_cell(scene)
    image[row * CELL_PX, col * CELL_PX] = COLORS[obj.color]
    assert "size 1x1" in DETECTOR.detect(image).reason


def test_template_iou_tolerates_one_pixel_but_not_ambiguity():
    bg = Background((230, 230, 230), (230, 230, 230), "horizontal")
    scene = Scene((SceneObject("circle", "blue", 1, 1),), bg, 3)
    image = render(scene)
    # circle minus one of its 4 pixels outside the cross: IoU 36/37 with circle, 33/36 with cross
    image[CELL_PX + 1, CELL_PX + 1] = 230
    (only,) = DETECTOR.detect(image).detections
    assert only.cls == "circle"
    # minus two: IoU 35/37 = 0.946 with circle, 33/35 = 0.943 with cross -- too close to call
    image[CELL_PX + 1, CELL_PX + 5] = 230
    assert not DETECTOR.detect(image).valid
    assert ShapeDetector(template_iou=0.9).detect(image).detections[0].cls == "circle"


def test_too_many_objects_invalidate_the_image():
    bg = Background((230, 230, 230), (210, 210, 210), "vertical")
    objects = [SceneObject("square", "red", r, c) for r in range(3) for c in range(3)]
    image = render(Scene(tuple(objects), bg, GRID))
    assert not DETECTOR.detect(image).valid
    assert len(ShapeDetector(max_objects=9).detect(image).detections) == 9


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="uint8"):
        DETECTOR.detect(np.zeros((48, 48, 3), np.float32))
    with pytest.raises(ValueError, match="images"):
        score_images([prompt_space("single_object")[0]], np.zeros((2, 48, 48, 3), np.uint8), DETECTOR)


def test_pixel_classes():
    image = np.array([[[230, 230, 230], [215, 25, 30], [240, 30, 40], [128, 128, 128]]], np.uint8)
    red = COLOR_NAMES.index("red")
    assert classify_pixels(image[None])[0].tolist() == [[-1, red, red, -2]]


# --------------------------------------------------------------------------------------------- sampling, smoothness


def test_sample_scene_avoids_forbidden_pairs_for_free_colours():
    # forbid every colour but green on circles and every colour but black on squares
    forbidden = [(c, "circle") for c in COLOR_NAMES if c != "green"]
    forbidden += [(c, "square") for c in COLOR_NAMES if c != "black"]
    rng = np.random.default_rng(17)
    seen = set()
    for task in ("single_object", "two_object", "counting", "position"):
        for meta in prompt_space(task):
            if {inc["class"] for inc in meta["include"]} & {"circle", "square"}:
                for obj in sample_scene(meta, rng, GRID, forbidden).objects:
                    seen.add((obj.color, obj.shape))
    assert ("green", "circle") in seen and ("black", "square") in seen
    assert not seen & set(forbidden)


def test_background_smoothness():
    scenes = [s for t in TASKS for s in scenes_for(t, 5, seed=18)]
    assert all(background_smoothness(render(s), GRID) == 1.0 for s in scenes)
    # the steepest gradient the renderer can draw (62 levels) over the smallest grid still counts as smooth
    steep = Scene((), Background((188, 188, 188), (250, 250, 250), "horizontal"), 3)
    assert background_smoothness(render(steep), 3) == 1.0
    # one background cell off by 30: its 4 pairs of the 2 * 6 * 5 = 60 fail
    scene = Scene((), Background((220, 220, 220), (230, 230, 230), "vertical"), GRID)
    image = render(scene)
    image[2 * CELL_PX : 3 * CELL_PX, 2 * CELL_PX : 3 * CELL_PX] -= 30
    assert background_smoothness(image, GRID) == pytest.approx(56 / 60)
    # light noise passes the background test but is neither uniform nor smooth
    rng = np.random.default_rng(19)
    noise = rng.integers(190, 240, size=(48, 48, 3), dtype=np.uint8)
    assert background_smoothness(noise, GRID) == 0.0
    # no background at all scores 0
    assert background_smoothness(np.zeros((48, 48, 3), np.uint8), GRID) == 0.0


def test_a_patchwork_background_invalidates_an_otherwise_correct_image():
    # a correct single circle, but every background cell a random light colour: what random codes decode to
    rng = np.random.default_rng(3)
    scene = Scene(
        (SceneObject("circle", "red", 2, 3),), Background((210, 210, 210), (240, 240, 240), "vertical"), 6
    )
    image = render(scene)
    detector = ShapeDetector()
    assert detector.detect(image).valid
    patch = image.copy()
    for r in range(6):
        for c in range(6):
            if (r, c) != (2, 3):
                patch[r * CELL_PX : (r + 1) * CELL_PX, c * CELL_PX : (c + 1) * CELL_PX] = rng.integers(
                    195, 250, 3
                )
    result = detector.detect(patch)
    assert not result.valid and "background" in result.reason
    meta = prompt_space("single_object")[SHAPES.index("circle")]
    assert score_images([meta], patch[None], detector)[0]["correct"] is False
    assert ShapeDetector(min_background_coherence=0).detect(patch).valid
