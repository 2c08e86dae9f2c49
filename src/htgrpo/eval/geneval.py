"""GenEval's scoring rules, independent of the detector that feeds them.

Specification: ``design/benchmarks.md`` section 1 (GenEval at af4902f, and Flow-GRPO's reward-server at
92ac29fb for the partial-credit reward). :func:`evaluate_image` is GenEval's binary rule, :func:`partial_reward`
Flow-GRPO's partial credit (exact counts, can go negative, its maximum is not GenEval's ``correct``) and
:func:`aligned_reward` a partial credit in [0, 1] whose maximum is exactly GenEval's ``correct``. Any detector produces :class:`Detection` objects; the shapes world's
exact detector (``htgrpo.world.detect``) knows each object's colour, while a real-image detector (Mask2Former)
leaves ``color`` to a CLIP classifier, passed here as ``classify_colors`` so that, as in GenEval, only the
objects the rules look at get classified.
"""

from __future__ import annotations

import math
import numbers
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
    """Flow-GRPO's partial-credit GenEval reward and its ``strict_correct`` (section 1.10), quirks included.

    Kept faithful for comparison with Flow-GRPO; it does not agree with GenEval's metric, which asks for at
    least ``count`` wherever no exclude clause makes the count exact. Two copies of a single object score 0
    and three score -1 (GenEval: correct), so an empty image (0) ties with or outranks them; its maximum is
    not :func:`evaluate_image`'s ``correct``. :func:`aligned_reward` is the partial credit that agrees with
    the metric (in [0, 1], 1.0 exactly when GenEval says correct).

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


def _count(req: Mapping[str, Any], meta: Mapping[str, Any], clause: str) -> int:
    count = req["count"]
    if isinstance(count, bool) or not isinstance(count, numbers.Integral) or count < 1:
        raise ValueError(
            f"prompt {meta.get('prompt')!r}: an {clause} clause needs a whole count of at least 1, "
            f"got {count!r} for {req.get('class')!r}"
        )
    return int(count)


def _count_term(n_found: int, count: int, limit: int | None) -> float:
    """min(found, count) / count; with an exclude at ``limit`` (exact count), each object from ``limit`` on
    takes one ``1 / count`` back, down to 0."""
    if limit is None:
        return min(n_found, count) / count
    kept = min(n_found, count, limit - 1)
    over = max(0, n_found - limit + 1)
    return max(0.0, (kept - over) / count)


def aligned_reward(
    meta: Mapping[str, Any], detections: Detections, classify_colors: ColorClassifier | None = None
) -> float:
    """Partial credit that agrees with GenEval's metric: in [0, 1], and 1.0 exactly when :func:`evaluate_image`
    says correct.

    Every clause is read as :func:`evaluate_image` reads it, and earns a share of its credit. Per include
    (class ``c``, ``count`` n), in order:

    - count: ``min(found, n) / n``, "at least n", where ``found`` is every detection of ``c``. Where an exclude
      clause for ``c`` exists (count e, the smallest if several; counting has e = n + 1), the count is exact:
      ``found / n`` below n, 1 from n up to e - 1, and from e on each extra object takes ``1 / n`` back,
      down to 0 (``1 - (found - e + 1) / n`` when e = n + 1).
    - colour, if the include has one: the share of the top-n detections (the n most confident, the ones
      GenEval classifies) in that colour, counted over n; 0 when none is found.
    - position, if it has one: the share of (object, target) pairs, over the found top-n objects of ``c`` and
      the found top objects of the referenced include (its top ``count``), whose relations (``relations``)
      include the requested one; 0 when either side found nothing. The referenced group counts whether or not its own clauses
      held, since its own terms already pay for that.

    The score is the mean of all these terms. An exclude clause for a class that no include names (none in
    GenEval's grammar) multiplies the score by ``e / (found + 1)`` once ``found >= e``, so that no image
    breaking an exclude reaches 1.0 while an image with no detections still scores 0. Hence: never negative,
    at most 1, 0 with no detections, 1.0 if and only if GenEval says correct, and never lowered by adding an
    object to an "at least" include when the object has the include's colour and satisfies the position
    clauses it takes part in (its own, and those of later includes that refer to its group), nor by
    recolouring a found object to its include's colour.

    An empty include list scores 0. Counts must be whole numbers of at least 1. ``classify_colors`` is the same
    hook as in :func:`evaluate_image`; it is asked only about the top-n objects of an include with a colour.
    """
    includes = list(meta.get("include", []))
    if not includes:
        return 0.0
    limits: dict[str, int] = {}
    for req in meta.get("exclude", []):
        e = _count(req, meta, "exclude")
        limits[req["class"]] = min(e, limits.get(req["class"], e))
    terms: list[float] = []
    tops: list[list[Detection]] = []
    for req in includes:
        cls, count = req["class"], _count(req, meta, "include")
        every = list(detections.get(cls, []))
        found = every[:count]
        terms.append(_count_term(len(every), count, limits.get(cls)))
        if "color" in req:
            in_colour = _colors(found, cls, classify_colors).count(req["color"]) if found else 0
            terms.append(in_colour / count)
        if "position" in req:
            rel, group = req["position"]
            targets = _target(tops, group, meta)
            pairs = [rel in relations(obj.box, t.box) for obj in found for t in targets]
            terms.append(sum(pairs) / len(pairs) if pairs else 0.0)
        tops.append(found)
    # a mean of terms below 1 stays below 1, whatever the rounding
    below_one = math.nextafter(1.0, 0.0)
    score = 1.0 if all(t == 1.0 for t in terms) else min(sum(terms) / len(terms), below_one)
    named = {req["class"] for req in includes}
    for cls, e in limits.items():
        n_found = len(detections.get(cls, []))
        if cls not in named and n_found >= e:
            score *= e / (n_found + 1)
    return score


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
