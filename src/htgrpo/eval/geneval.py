"""GenEval's scoring rules, independent of the detector that feeds them.

Specification: ``design/benchmarks.md`` section 1 (GenEval at af4902f, and Flow-GRPO's reward-server at
92ac29fb for the partial-credit reward). Any detector produces :class:`Detection` objects; the shapes world's
exact detector (``htgrpo.world.detect``) knows each object's colour, while a real-image detector (Mask2Former)
leaves ``color`` to a CLIP classifier, passed here as ``classify_colors`` so that, as in GenEval, only the
objects the rules look at get classified.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from htgrpo.eval.relations import relations

TASKS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
"""GenEval's six task tags, in the order its metadata file (and its summary) lists them."""

THRESHOLD = 0.3
COUNTING_THRESHOLD = 0.9
MAX_OBJECTS = 16

ColorClassifier = Callable[[Sequence["Detection"], str], list[str]]
"""(objects of one class, class name) -> one colour name per object."""


@dataclass
class Detection:
    """One detected object. ``box`` is (x1, y1, x2, y2) in pixels; ``mask`` (bool [H, W]) is optional."""

    cls: str
    box: tuple[float, float, float, float]
    score: float = 1.0
    color: str | None = None
    mask: np.ndarray | None = None


Detections = Mapping[str, Sequence[Detection]]
"""Post-processed detections: class name -> objects sorted by score, most confident first."""


def postprocess(
    detections: Iterable[Detection],
    tag: str,
    threshold: float = THRESHOLD,
    counting_threshold: float = COUNTING_THRESHOLD,
    max_objects: int = MAX_OBJECTS,
) -> dict[str, list[Detection]]:
    """GenEval's per-class post-processing (section 1.4).

    Keeps scores strictly above the threshold (0.9 for every class of a counting prompt, which is what makes
    counting demand confident detections), sorts each class by score descending and keeps at most
    ``max_objects``. The extra NMS is disabled in GenEval's defaults, so there is none. Classes with nothing
    left are absent.
    """
    cut = counting_threshold if tag == "counting" else threshold
    out: dict[str, list[Detection]] = {}
    for det in detections:
        if det.score > cut:
            out.setdefault(det.cls, []).append(det)
    for cls, dets in out.items():
        dets.sort(key=lambda d: d.score, reverse=True)  # stable: equal scores keep the detector's order
        del dets[max_objects:]
        out[cls] = dets
    return out


def _colors(
    found: Sequence[Detection], cls: str, classify_colors: ColorClassifier | None
) -> list[str | None]:
    if classify_colors is not None:
        return list(classify_colors(found, cls))
    missing = [d for d in found if d.color is None]
    if missing:
        raise ValueError(
            f"a colour clause needs the colour of each {cls!r} detection: fill Detection.color or pass "
            "classify_colors"
        )
    return [d.color for d in found]


def _target(matched: list[list[Detection] | None], group: int, meta: Mapping[str, Any]):
    if not 0 <= group < len(matched):
        raise ValueError(
            f"prompt {meta.get('prompt')!r}: position refers to include group {group}, which does not come "
            "before it"
        )
    return matched[group]


def _position_failure(found: Sequence[Detection], targets: Sequence[Detection], rel: str) -> set[str] | None:
    """None if every found object stands `rel` to every target object, else the relations of the first failure."""
    for obj in found:
        for target in targets:
            rels = relations(obj.box, target.box)
            if rel not in rels:
                return rels
    return None


def evaluate_image(
    meta: Mapping[str, Any], detections: Detections, classify_colors: ColorClassifier | None = None
) -> tuple[bool, str]:
    """GenEval's binary correctness of one image (section 1.5); returns (correct, reason when wrong).

    Includes are ANDed, excludes ORed. Each include looks only at the ``count`` most confident detections of
    its class, so it means "at least count"; the exact count of the counting task comes from its exclude
    (count + 1). A colour clause needs all ``count`` found objects in that colour. A position clause needs
    every found object to stand in the relation to every object of the referenced group, and fails if that
    group itself failed. Like GenEval, every clause is checked so the reason lists all failures.
    """
    correct = True
    reasons: list[str] = []
    matched: list[list[Detection] | None] = []
    for req in meta.get("include", []):
        cls, count = req["class"], req["count"]
        found = list(detections.get(cls, []))[:count]
        ok = True
        if len(found) < count:
            ok = False
            reasons.append(f"expected {cls}>={count}, found {len(found)}")
        else:
            if "color" in req:
                cols = _colors(found, cls, classify_colors)
                if cols.count(req["color"]) < count:
                    ok = False
                    seen = ", ".join(f"{cols.count(c)} {c}" for c in dict.fromkeys(cols))
                    reasons.append(f"expected {req['color']} {cls}>={count}, found {seen}")
            if "position" in req and ok:
                rel, group = req["position"]
                targets = _target(matched, group, meta)
                if targets is None:
                    ok = False
                    reasons.append(f"no target for {cls} to be {rel}")
                else:
                    got = _position_failure(found, targets, rel)
                    if got is not None:
                        ok = False
                        reasons.append(
                            f"expected {cls} {rel} target, found {' and '.join(sorted(got)) or 'none'}"
                        )
        correct &= ok
        matched.append(found if ok else None)
    for req in meta.get("exclude", []):
        n = len(detections.get(req["class"], []))
        if n >= req["count"]:
            correct = False
            reasons.append(f"expected {req['class']}<{req['count']}, found {n}")
    return correct, "; ".join(reasons)


def partial_reward(
    meta: Mapping[str, Any], detections: Detections, classify_colors: ColorClassifier | None = None
) -> tuple[float, bool]:
    """Flow-GRPO's partial-credit GenEval reward and its ``strict_correct`` (section 1.10).

    Unlike :func:`evaluate_image`, every detection of a class counts (not the top ``count``) and counts must be
    exact. The score is the mean of a list built per include, in order:

    - ``1 - |count - n_detected| / count``. Quirk: negative once n_detected > 2 * count.
    - If the count is wrong and the include has a colour or position clause: one extra 0 (one, even if both),
      and neither clause is checked.
    - Otherwise, with a colour clause: ``1 - |count - n_in_colour| / count``.
    - With a position clause (and the colour clause, if any, passed): 0 if the referenced group failed;
      else, quirk of the original loop, a failed pair appends 0 *and then* 1.0 (the 1.0 is appended after the
      loop regardless), and a full pass appends 1.0. So a wrong position still earns half of its two entries.

    Excludes are ignored, so counting's "no more than N" only enters through the count term. ``strict_correct``
    is True when every include has exactly ``count`` detections, exactly ``count`` of them in the colour, and
    passes its position check. An empty include list scores 0.
    """
    strict = True
    rewards: list[float] = []
    matched: list[list[Detection] | None] = []
    for req in meta.get("include", []):
        cls, count = req["class"], req["count"]
        found = list(detections.get(cls, []))
        ok = True
        rewards.append(1.0 - abs(count - len(found)) / count)
        if len(found) != count:
            ok = False
            if "color" in req or "position" in req:
                rewards.append(0.0)
        else:
            if "color" in req:
                n_colour = _colors(found, cls, classify_colors).count(req["color"])
                rewards.append(1.0 - abs(count - n_colour) / count)
                ok = n_colour == count
            if "position" in req and ok:
                rel, group = req["position"]
                targets = _target(matched, group, meta)
                if targets is None:
                    ok = False
                    rewards.append(0.0)
                else:
                    if _position_failure(found, targets, rel) is not None:
                        ok = False
                        rewards.append(0.0)
                    rewards.append(1.0)
        strict &= ok
        matched.append(found if ok else None)
    score = sum(rewards) / len(rewards) if rewards else 0.0
    return score, strict


def summarize(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """GenEval's summary (section 1.8) of per-image records with ``tag``, ``prompt`` and ``correct``.

    Returns each present task's mean ``correct`` over its images (keys in :data:`TASKS` order), ``overall`` =
    the unweighted mean of those task scores (not the mean over images, since tasks differ in size; absent
    tasks are left out rather than counted as 0), ``pct_correct_images`` (mean over all images) and
    ``pct_correct_prompts`` (share of prompts with at least one correct image) -- both fractions in [0, 1]
    despite the names, like the task scores -- and ``n_images`` / ``n_prompts`` per task. A prompt is
    identified by (tag, prompt text).
    """
    if not records:
        raise ValueError("summarize needs at least one scored image")
    per_task: dict[str, list[float]] = {}
    per_prompt: dict[tuple[str, str], bool] = {}
    for rec in records:
        tag = rec["tag"]
        if tag not in TASKS:
            raise ValueError(
                f"record for {rec.get('prompt')!r} has unknown tag {tag!r}; expected one of {TASKS}"
            )
        ok = bool(rec["correct"])
        per_task.setdefault(tag, []).append(float(ok))
        key = (tag, rec["prompt"])
        per_prompt[key] = per_prompt.get(key, False) or ok
    present = [t for t in TASKS if t in per_task]
    out: dict[str, Any] = {t: float(np.mean(per_task[t])) for t in present}
    out["overall"] = float(np.mean([out[t] for t in present]))
    out["pct_correct_images"] = float(np.mean([v for t in present for v in per_task[t]]))
    out["pct_correct_prompts"] = float(np.mean(list(per_prompt.values())))
    out["n_images"] = {t: len(per_task[t]) for t in present}
    out["n_prompts"] = {t: sum(1 for tag, _ in per_prompt if tag == t) for t in present}
    return out
