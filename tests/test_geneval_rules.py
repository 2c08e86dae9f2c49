"""GenEval's rules on hand-made detections: every expected number is worked out in the test."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from htgrpo.eval import geneval
from htgrpo.eval.geneval import (
    Detection,
    aligned_reward,
    evaluate_image,
    partial_reward,
    postprocess,
    summarize,
)
from htgrpo.eval.relations import RELATIONS, relations
from htgrpo.world import grammar


def box(x: float, y: float, size: float = 10.0) -> tuple[float, float, float, float]:
    return (x, y, x + size, y + size)


def det(cls: str, x: float = 0.0, y: float = 0.0, color: str | None = "red", score: float = 1.0, size=10.0):
    return Detection(cls, box(x, y, size), score, color)


def group(*dets: Detection) -> dict[str, list[Detection]]:
    return postprocess(list(dets), "single_object")


def test_tasks_match_the_grammar():
    assert geneval.TASKS == grammar.TASKS


# --------------------------------------------------------------------------------------------- postprocess


def test_postprocess_threshold_is_strict_and_sorts_by_score():
    dets = [det("dog", score=0.3), det("dog", score=0.31), det("dog", score=0.9), det("cat", score=0.2)]
    out = postprocess(dets, "two_object")
    assert list(out) == ["dog"]  # cat (0.2) has nothing left, so it is absent
    assert [d.score for d in out["dog"]] == [0.9, 0.31]  # 0.3 is not > 0.3


def test_postprocess_counting_uses_0_9_for_every_class():
    dets = [det("dog", score=0.9), det("dog", score=0.95), det("cat", score=0.5), det("cat", score=0.91)]
    out = postprocess(dets, "counting")
    assert [d.score for d in out["dog"]] == [0.95]
    assert [d.score for d in out["cat"]] == [0.91]
    assert len(postprocess(dets, "colors")["cat"]) == 2


def test_postprocess_keeps_at_most_16_most_confident():
    dets = [det("dog", score=0.4 + i * 0.01) for i in range(20)]
    out = postprocess(dets, "single_object")["dog"]
    assert len(out) == 16
    assert out[0].score == pytest.approx(0.59) and out[-1].score == pytest.approx(0.44)
    assert len(postprocess(dets, "single_object", max_objects=3)["dog"]) == 3


# --------------------------------------------------------------------------------------------- counts


def test_include_means_at_least_count():
    meta = grammar.two_object("circle", "square")
    assert evaluate_image(meta, group(det("circle"), det("square"), det("square", 30)))[0]
    ok, reason = evaluate_image(meta, group(det("circle")))
    assert not ok and "square>=1, found 0" in reason


def test_counting_needs_exactly_n_through_the_exclude():
    meta = grammar.counting("ring", 3)  # include 3, exclude 4
    three = [det("ring", 20 * i) for i in range(3)]
    assert evaluate_image(meta, group(*three))[0]
    assert not evaluate_image(meta, group(*three[:2]))[0]
    ok, reason = evaluate_image(meta, group(*three, det("ring", 100)))
    assert not ok and "ring<4, found 4" in reason
    # other classes do not matter
    assert evaluate_image(meta, group(*three, det("square", 100)))[0]


# --------------------------------------------------------------------------------------------- colour


def test_colour_is_judged_on_the_top_count_objects_only():
    meta = grammar.colors("circle", "red")
    # top-1 (score 0.9) is blue: wrong even though a red circle is also detected
    dets = group(det("circle", color="blue", score=0.9), det("circle", 30, color="red", score=0.8))
    ok, reason = evaluate_image(meta, dets)
    assert not ok and "expected red circle>=1" in reason and "1 blue" in reason
    dets = group(det("circle", color="red", score=0.9), det("circle", 30, color="blue", score=0.8))
    assert evaluate_image(meta, dets)[0]


def test_colour_needs_all_count_objects():
    meta = {"tag": "colors", "include": [{"class": "circle", "count": 2, "color": "red"}], "exclude": []}
    assert evaluate_image(meta, group(det("circle"), det("circle", 30)))[0]
    assert not evaluate_image(meta, group(det("circle"), det("circle", 30, color="blue")))[0]


def test_colour_classifier_hook_and_missing_colour():
    meta = grammar.colors("circle", "red")
    dets = group(det("circle", color=None))
    calls = []

    def classify(found, cls):
        calls.append((len(found), cls))
        return ["red"] * len(found)

    assert evaluate_image(meta, dets, classify_colors=classify)[0]
    assert calls == [(1, "circle")]
    with pytest.raises(ValueError, match="colour"):
        evaluate_image(meta, dets)


def test_color_attr_each_object_in_its_own_colour():
    meta = grammar.color_attr("circle", "red", "square", "blue")
    assert evaluate_image(meta, group(det("circle", color="red"), det("square", 30, color="blue")))[0]
    assert not evaluate_image(meta, group(det("circle", color="blue"), det("square", 30, color="red")))[0]


# --------------------------------------------------------------------------------------------- position


def test_position_threshold_edges():
    # 10x10 boxes: threshold 0.1 * (10 + 10) = 2 per axis.
    b = box(0, 0)
    # |offset| 1.5 < 2 on both axes: revised (0, 0), no relation at all
    assert relations(box(1.5, -1.5), b) == set()
    # x offset 4: revised 2, 2 / 4 = 0.5 is not > 0.5
    assert relations(box(4, 0), b) == set()
    # x offset 4.25: 2.25 / 4.25 = 0.529 > 0.5
    assert relations(box(4.25, 0), b) == {"right of"}
    # x offset -3.75: -1.75 / 3.75 = -0.467, not < -0.5
    assert relations(box(-3.75, 0), b) == set()
    # offset (1.5, -3.5): revised (0, -1.5) divided by the *unrevised* norm sqrt(1.5^2 + 3.5^2) = 3.808
    # gives -0.394 (dividing by the revised norm would give -1, i.e. "above")
    assert relations(box(1.5, -3.5), b) == set()
    # offset (1.5, -6): revised (0, -4) / sqrt(2.25 + 36) = -0.647
    assert relations(box(1.5, -6), b) == {"above"}
    # diagonal (6, 6) with 10x10 boxes: (4, 4) / 8.485 = 0.471 on each axis, nothing;
    # with 2x2 boxes the threshold is 0.4: (5.6, 5.6) / 8.485 = 0.66, two relations at once
    assert relations(box(6, 6), b) == set()
    assert relations(box(6, 6, 2), box(0, 0, 2)) == {"right of", "below"}


def test_position_rule_in_evaluate_image():
    meta = grammar.position("circle", "left of", "square")  # include[0] square, include[1] circle
    square = det("square", 20, 0)
    assert evaluate_image(meta, group(square, det("circle", 0, 0)))[0]  # offset -20: left of
    ok, reason = evaluate_image(meta, group(square, det("circle", 40, 0)))
    assert not ok and "expected circle left of target, found right of" in reason
    # every found object against every object of the target group: with count 1 only the top-1 circle counts
    dets = group(square, det("circle", 0, 0, score=0.9), det("circle", 40, 0, score=0.8))
    assert evaluate_image(meta, dets)[0]
    dets = group(square, det("circle", 0, 0, score=0.8), det("circle", 40, 0, score=0.9))
    assert not evaluate_image(meta, dets)[0]


def test_position_against_every_object_of_the_target_group():
    meta = {
        "tag": "position",
        "include": [
            {"class": "square", "count": 2},
            {"class": "circle", "count": 1, "position": ["above", 0]},
        ],
        "exclude": [],
    }
    circle = det("circle", 20, 0)
    assert evaluate_image(meta, group(circle, det("square", 0, 40), det("square", 40, 40)))[0]
    # the second square is level with the circle
    assert not evaluate_image(meta, group(circle, det("square", 0, 40), det("square", 40, 0)))[0]


def test_unmatched_reference_group_fails_position():
    meta = grammar.position("circle", "left of", "square")
    ok, reason = evaluate_image(meta, group(det("circle")))
    assert not ok and "no target for circle to be left of" in reason


def test_forward_reference_is_malformed():
    meta = {"tag": "position", "include": [{"class": "circle", "count": 1, "position": ["above", 0]}]}
    with pytest.raises(ValueError, match="group 0"):
        evaluate_image(meta, group(det("circle")))


# --------------------------------------------------------------------------------------------- partial reward


def test_partial_reward_counts_all_detections_and_can_go_negative():
    meta = grammar.counting("ring", 2)
    five = group(*[det("ring", 20 * i) for i in range(5)])
    assert partial_reward(meta, five) == (pytest.approx(1 - 3 / 2), False)  # -0.5; the exclude is ignored
    three = group(*[det("ring", 20 * i) for i in range(3)])
    assert partial_reward(meta, three) == (pytest.approx(0.5), False)
    assert partial_reward(meta, group(det("ring"), det("ring", 20))) == (1.0, True)
    assert partial_reward(grammar.counting("ring", 3), group(det("ring"), det("ring", 20)))[
        0
    ] == pytest.approx(2 / 3)


def test_partial_reward_two_object_is_exact_count():
    meta = grammar.two_object("circle", "square")
    # circle 1 -> 1; square 2 -> 1 - 1/1 = 0: mean 0.5, while the official rule says correct
    dets = group(det("circle"), det("square", 20), det("square", 40))
    assert partial_reward(meta, dets) == (0.5, False)
    assert evaluate_image(meta, dets)[0]


def test_partial_reward_colour():
    meta = grammar.colors("circle", "red")
    assert partial_reward(meta, group(det("circle", color="red"))) == (1.0, True)
    assert partial_reward(meta, group(det("circle", color="blue"))) == (0.5, False)  # [1, 0]
    assert partial_reward(meta, group()) == (0.0, False)  # [0, extra 0]
    # two circles for count 1: [1 - 1 = 0, extra 0]; the colour is not checked
    assert partial_reward(meta, group(det("circle"), det("circle", 20))) == (0.0, False)
    meta = grammar.color_attr("circle", "red", "square", "blue")
    # [1, 1] for the red circle, [1, 0] for the green square
    assert partial_reward(meta, group(det("circle"), det("square", 20, color="green"))) == (0.75, False)


def test_partial_reward_position_quirks():
    meta = grammar.position("circle", "left of", "square")
    square = det("square", 20, 0)
    assert partial_reward(meta, group(square, det("circle", 0, 0))) == (1.0, True)  # [1, 1, 1]
    # wrong side: [1 (square), 1 (circle), 0 (failed pair), 1.0 (appended anyway)] -> 0.75
    assert partial_reward(meta, group(square, det("circle", 40, 0))) == (0.75, False)
    # square missing: [0 (square), 1 (circle), 0 (no target)] -> 1/3
    assert partial_reward(meta, group(det("circle", 40, 0))) == (pytest.approx(1 / 3), False)
    # circle missing: [1 (square), 0 (circle), extra 0] -> 1/3
    assert partial_reward(meta, group(square)) == (pytest.approx(1 / 3), False)


def test_partial_reward_empty_include_is_zero():
    assert partial_reward({"tag": "x", "include": []}, {}) == (0.0, True)


# --------------------------------------------------------------------------------------------- summary


def test_summarize_averages_tasks_not_images():
    records = []
    for i, ok in enumerate([1, 0, 0, 0]):
        records.append({"tag": "single_object", "prompt": "p1", "correct": bool(ok), "i": i})
    records += [{"tag": "single_object", "prompt": "p2", "correct": False}] * 4
    records += [{"tag": "counting", "prompt": "p3", "correct": True}] * 2
    out = summarize(records)
    assert [k for k in out if k in geneval.TASKS] == [
        "single_object",
        "counting",
    ]  # TASKS order, absent omitted
    assert out["single_object"] == 1 / 8 and out["counting"] == 1.0
    assert out["overall"] == pytest.approx((1 / 8 + 1) / 2)  # 0.5625, while the image mean is 3 / 10
    assert out["pct_correct_images"] == pytest.approx(0.3)
    assert out["pct_correct_prompts"] == pytest.approx(2 / 3)
    assert out["n_images"] == {"single_object": 8, "counting": 2}
    assert out["n_prompts"] == {"single_object": 2, "counting": 1}


def test_summarize_keys_prompts_by_task_and_rejects_bad_input():
    records = [
        {"tag": "colors", "prompt": "same", "correct": False},
        {"tag": "position", "prompt": "same", "correct": True},
    ]
    assert summarize(records)["pct_correct_prompts"] == 0.5
    with pytest.raises(ValueError):
        summarize([])
    with pytest.raises(ValueError, match="unknown tag"):
        summarize([{"tag": "nope", "prompt": "p", "correct": True}])


# --------------------------------------------------------------------------------------------- aligned reward


def test_aligned_reward_reads_includes_as_at_least():
    meta = grammar.single_object("circle")
    one, two, three = (group(*[det("circle", 20 * i) for i in range(k)]) for k in (1, 2, 3))
    assert [aligned_reward(meta, d) for d in (group(), one, two, three)] == [0.0, 1.0, 1.0, 1.0]
    # Flow-GRPO's rule ranks the empty image (0) above three circles (1 - |1 - 3| = -1)
    assert partial_reward(meta, group())[0] > partial_reward(meta, three)[0]
    meta = grammar.two_object("circle", "square")
    dets = group(det("circle"), det("square", 20), det("square", 40))
    assert aligned_reward(meta, dets) == 1.0 and evaluate_image(meta, dets)[0]
    assert aligned_reward(meta, group(det("square", 20))) == 0.5


def test_aligned_reward_counting_is_exact_and_never_negative():
    meta = grammar.counting("ring", 2)  # include 2, exclude 3
    got = [aligned_reward(meta, group(*[det("ring", 20 * i) for i in range(k)])) for k in range(7)]
    # 0, 1/2, 1; then each ring from the third on takes 1/2 back: 1/2, 0, and it stays at 0
    assert got == [0.0, 0.5, 1.0, 0.5, 0.0, 0.0, 0.0]
    # an exclude further out leaves a plateau: include 1, exclude 3 means one or two
    meta = {
        "tag": "counting",
        "include": [{"class": "ring", "count": 1}],
        "exclude": [{"class": "ring", "count": 3}],
    }
    got = [aligned_reward(meta, group(*[det("ring", 20 * i) for i in range(k)])) for k in range(5)]
    assert got == [0.0, 1.0, 1.0, 0.0, 0.0]


def test_aligned_reward_colour_is_the_share_of_the_top_count_in_colour():
    meta = grammar.colors("circle", "red")
    # [count 1, colour 0]: the top-1 is blue, the red circle below it is not looked at
    dets = group(det("circle", color="blue", score=0.9), det("circle", 30, color="red", score=0.8))
    assert aligned_reward(meta, dets) == 0.5
    assert aligned_reward(meta, group(det("circle", color="red"), det("circle", 30, color="blue"))) == 1.0
    meta = {"tag": "colors", "include": [{"class": "circle", "count": 2, "color": "red"}], "exclude": []}
    # one red circle of two: [1/2, 1/2]; two circles, one red: [1, 1/2]
    assert aligned_reward(meta, group(det("circle"))) == 0.5
    assert aligned_reward(meta, group(det("circle"), det("circle", 30, color="blue"))) == 0.75
    calls = []

    def classify(found, cls):
        calls.append(len(found))
        return ["red"] * len(found)

    dets = group(*[det("circle", 20 * i, color=None) for i in range(3)])
    assert aligned_reward(meta, dets, classify_colors=classify) == 1.0
    assert calls == [2]  # only the top-count objects are classified
    assert aligned_reward(meta, group(), classify_colors=classify) == 0.0 and calls == [2]


def test_aligned_reward_position_is_the_share_of_pairs_in_the_relation():
    meta = grammar.position("circle", "left of", "square")  # include[0] square, include[1] circle
    square = det("square", 20, 0)
    assert aligned_reward(meta, group(square, det("circle", 0, 0))) == 1.0
    assert aligned_reward(meta, group(square, det("circle", 40, 0))) == pytest.approx(2 / 3)  # [1, 1, 0]
    assert aligned_reward(meta, group(det("circle", 0, 0))) == pytest.approx(1 / 3)  # no target: [0, 1, 0]
    meta = {
        "tag": "position",
        "include": [
            {"class": "square", "count": 2},
            {"class": "circle", "count": 1, "position": ["above", 0]},
        ],
        "exclude": [],
    }
    # the circle is above one of the two squares: [1, 1, 1/2]
    dets = group(det("circle", 20, 0), det("square", 0, 40), det("square", 40, 0))
    assert aligned_reward(meta, dets) == pytest.approx(5 / 6)
    with pytest.raises(ValueError, match="group 1"):
        aligned_reward({"include": [{"class": "circle", "count": 1, "position": ["above", 1]}]}, dets)


def test_aligned_reward_color_attr_and_edge_cases():
    meta = grammar.color_attr("circle", "red", "square", "blue")
    assert aligned_reward(meta, group(det("circle", color="red"), det("square", 30, color="blue"))) == 1.0
    assert aligned_reward(meta, group(det("circle", color="blue"), det("square", 30, color="red"))) == 0.5
    assert aligned_reward({"tag": "x", "include": []}, group(det("circle"))) == 0.0
    with pytest.raises(ValueError, match="count of at least 1"):
        aligned_reward({"include": [{"class": "circle", "count": 0}]}, group())
    # an exclude for a class no include names: scaled by e / (found + 1) once broken, so below 1
    meta = {"include": [{"class": "circle", "count": 1}], "exclude": [{"class": "square", "count": 1}]}
    assert aligned_reward(meta, group(det("circle"))) == 1.0
    assert aligned_reward(meta, group(det("circle"), det("square", 20))) == 0.5
    assert not evaluate_image(meta, group(det("circle"), det("square", 20)))[0]


# --- properties over random metadata and detections

SHAPES3 = ("circle", "square", "ring")
COLOURS3 = ("red", "blue", "green")
EXTRA_CLASS = "triangle"
DIRECTION = {"left of": (-1, 0), "right of": (1, 0), "above": (0, -1), "below": (0, 1)}
PROPERTY_SETTINGS = settings(max_examples=1000, deadline=None, database=None)


@st.composite
def grammar_metas(draw, tags=geneval.TASKS):
    tag = draw(st.sampled_from(tags))
    a, b, _ = draw(st.permutations(SHAPES3))
    c1, c2, _ = draw(st.permutations(COLOURS3))
    return {
        "single_object": lambda: grammar.single_object(a),
        "two_object": lambda: grammar.two_object(a, b),
        "counting": lambda: grammar.counting(a, draw(st.integers(2, 4))),
        "colors": lambda: grammar.colors(a, c1),
        "position": lambda: grammar.position(a, draw(st.sampled_from(RELATIONS)), b),
        "color_attr": lambda: grammar.color_attr(a, c1, b, c2),
    }[tag]()


@st.composite
def free_metas(draw):
    """Beyond the grammar: repeated classes, counts up to 3, colours and positions anywhere, stray excludes."""
    includes = []
    for i in range(draw(st.integers(1, 3))):
        req = {"class": draw(st.sampled_from(SHAPES3)), "count": draw(st.integers(1, 3))}
        if draw(st.booleans()):
            req["color"] = draw(st.sampled_from(COLOURS3))
        if i and draw(st.booleans()):
            req["position"] = [draw(st.sampled_from(RELATIONS)), draw(st.integers(0, i - 1))]
        includes.append(req)
    exclude = st.fixed_dictionaries(
        {"class": st.sampled_from((*SHAPES3, EXTRA_CLASS)), "count": st.integers(1, 5)}
    )
    tag = draw(st.sampled_from(geneval.TASKS))
    return {"tag": tag, "include": includes, "exclude": draw(st.lists(exclude, max_size=2)), "prompt": "free"}


metas = st.one_of(grammar_metas(), free_metas())
scores = st.floats(0.31, 1.0)
coords = st.integers(-2, 12).map(lambda k: 10.0 * k)


def by_class(objs: list[Detection]) -> dict[str, list[Detection]]:
    """Class -> objects, most confident first (stable), as post-processing leaves them."""
    out: dict[str, list[Detection]] = {}
    for d in sorted(objs, key=lambda d: d.score, reverse=True):
        out.setdefault(d.cls, []).append(d)
    return out


def planted(draw, meta) -> list[Detection]:
    """Objects meant to satisfy the metadata: each include's count, in its colour, beyond its position targets."""
    objs: list[Detection] = []
    groups: list[list[Detection]] = []
    for req in meta["include"]:
        found = []
        for k in range(req["count"]):
            x, y = draw(coords), draw(coords)
            if "position" in req:
                rel, g = req["position"]
                targets = groups[g] or [det(req["class"])]
                tx = sum(t.box[0] for t in targets) / len(targets)
                ty = sum(t.box[1] for t in targets) / len(targets)
                dx, dy = DIRECTION[rel]
                x, y = tx + dx * (60 + 20 * k), ty + dy * (60 + 20 * k)
            colour = req.get("color") or draw(st.sampled_from(COLOURS3))
            found.append(det(req["class"], x, y, colour, draw(st.floats(0.5, 1.0))))
        objs += found
        groups.append(found)
    return objs


@st.composite
def cases(draw, meta_strategy=metas):
    """(metadata, detections): planted objects or none, then random objects added, dropped or recoloured."""
    meta = draw(meta_strategy)
    objs = planted(draw, meta) if draw(st.booleans()) else []
    for _ in range(draw(st.integers(0, 3))):
        action = draw(st.sampled_from(("add", "drop", "recolour")))
        if action == "add":
            cls = draw(st.sampled_from((*SHAPES3, EXTRA_CLASS)))
            objs.append(det(cls, draw(coords), draw(coords), draw(st.sampled_from(COLOURS3)), draw(scores)))
        elif objs:
            k = draw(st.integers(0, len(objs) - 1))
            if action == "drop":
                del objs[k]
            else:
                objs[k] = replace(objs[k], color=draw(st.sampled_from(COLOURS3)))
    return meta, by_class(objs)


@PROPERTY_SETTINGS
@given(cases())
def test_aligned_reward_is_in_0_1_and_1_exactly_when_geneval_says_correct(case):
    meta, dets = case
    reward = aligned_reward(meta, dets)
    assert 0.0 <= reward <= 1.0
    correct, reason = evaluate_image(meta, dets)
    assert (reward == 1.0) == correct, reason


@PROPERTY_SETTINGS
@given(grammar_metas(), st.data())
def test_planted_grammar_scenes_are_correct_and_score_1(meta, data):
    dets = by_class(planted(data.draw, meta))
    assert evaluate_image(meta, dets)[0]
    assert aligned_reward(meta, dets) == 1.0


@PROPERTY_SETTINGS
@given(metas)
def test_aligned_reward_is_0_without_detections(meta):
    assert aligned_reward(meta, {}) == 0.0


def _only_include_of(meta, i: int) -> bool:
    return sum(r["class"] == meta["include"][i]["class"] for r in meta["include"]) == 1


@PROPERTY_SETTINGS
@given(cases(), st.data())
def test_adding_a_correct_object_of_an_at_least_include_never_lowers_it(case, data):
    meta, dets = case
    limited = {r["class"] for r in meta.get("exclude", [])}
    choices = [
        i for i, r in enumerate(meta["include"]) if r["class"] not in limited and _only_include_of(meta, i)
    ]
    assume(choices)
    i = data.draw(st.sampled_from(choices))
    req = meta["include"][i]
    tops = [list(dets.get(r["class"], []))[: r["count"]] for r in meta["include"]]
    # where the new object may stand: its own clause against its targets, and later clauses that refer to it
    checks = []
    if "position" in req:
        rel, g = req["position"]
        checks += [(rel, None, t) for t in tops[g]]
    for j, r in enumerate(meta["include"]):
        if "position" in r and r["position"][1] == i:
            checks += [(r["position"][0], o, None) for o in tops[j]]
    colour = req.get("color") or data.draw(st.sampled_from(COLOURS3))
    score = data.draw(scores)
    spots = [(10.0 * x, 10.0 * y) for x in range(-8, 20) for y in range(-8, 20)]
    start = data.draw(st.integers(0, len(spots) - 1))
    for x, y in spots[start:] + spots[:start]:
        new = det(req["class"], x, y, colour, score)
        if all(rel in relations((obj or new).box, (tgt or new).box) for rel, obj, tgt in checks):
            break
    else:
        assume(False)
    before = aligned_reward(meta, dets)
    after = aligned_reward(meta, by_class([*(d for ds in dets.values() for d in ds), new]))
    assert after >= before


@PROPERTY_SETTINGS
@given(cases(st.one_of(grammar_metas(("colors", "color_attr")), free_metas())), st.data())
def test_recolouring_a_found_object_to_its_colour_never_lowers_it(case, data):
    meta, dets = case
    choices = [i for i, r in enumerate(meta["include"]) if "color" in r and _only_include_of(meta, i)]
    assume(choices)
    req = meta["include"][data.draw(st.sampled_from(choices))]
    if not dets.get(req["class"]):
        extra = det(req["class"], data.draw(coords), data.draw(coords), data.draw(st.sampled_from(COLOURS3)))
        dets = {**dets, req["class"]: [extra]}
    found = dets[req["class"]][: req["count"]]
    k = data.draw(st.integers(0, len(found) - 1))
    recoloured = dict(dets)
    recoloured[req["class"]] = [
        replace(d, color=req["color"]) if d is found[k] else d for d in dets[req["class"]]
    ]
    assert aligned_reward(meta, recoloured) >= aligned_reward(meta, dets)
