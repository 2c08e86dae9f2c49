"""GenEval's rules on hand-made detections: every expected number is worked out in the test."""

from __future__ import annotations

import pytest

from htgrpo.eval import geneval
from htgrpo.eval.geneval import Detection, evaluate_image, partial_reward, postprocess, summarize
from htgrpo.eval.relations import relations
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
