"""DPG-Bench: question loading, the 2x2 grid, the exact-"yes" rule, the dependency cascade and aggregation."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from htgrpo.benchmarks import dpg
from htgrpo.errors import BenchmarkDataError, WeightsError
from tiny_models import blip_vqa_dir

HEADER = [
    "item_id",
    "text",
    "keywords",
    "proposition_id",
    "dependency",
    "category_broad",
    "category_detailed",
    "tuple",
    "question_natural_language",
]


def write_csv(path, rows):
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(HEADER)
        for item, pid, dep, tup, q in rows:
            w.writerow([item, "text", "kw", pid, dep, "b", "d", tup, q])
    return path


# two prompts; in "a", 2 and 3 depend on 1 and 4 depends on 3 (a chain), in "b" nothing depends on anything
ROWS = [
    ("a", 1, "0", "entity - whole (cat)", "is there a cat?"),
    ("a", 2, "1", "attribute - color (cat, black)", "is the cat black?"),
    ("a", 3, "1", "entity - part (cat's tail)", "does the cat have a tail?"),
    ("a", 4, "3", "attribute - size (tail, long)", "is the tail long?"),
    ("b", 1, "0", "global - (sunset)", "is it sunset?"),
    ("b", 2, "0", "relation - spatial (dog, tree, under)", "is the dog under the tree?"),
]


class FakeVQA:
    """Answers from a table keyed by (tile index, question); a tile is a constant image whose value is its index."""

    def __init__(self, table, default="no"):
        self.table, self.default, self.calls = table, default, 0

    def answer(self, images, questions):
        self.calls += 1
        return [
            self.table.get((int(im[0, 0, 0]), q), self.default)
            for im, q in zip(images, questions, strict=True)
        ]


def tiles(r=4):
    return [np.full((r, r, 3), t, np.uint8) for t in range(4)]


@pytest.fixture
def questions(tmp_path):
    return dpg.load_questions(write_csv(tmp_path / "q.csv", ROWS))


def test_staged_prompts_load():
    rows = dpg.load_prompts()
    assert (
        len(rows) == 1065 and rows[0]["item_id"] == "0" and rows[0]["prompt"].startswith("An expansive field")
    )


def test_missing_csv_says_where_it_comes_from(tmp_path):
    with pytest.raises(BenchmarkDataError) as exc:
        dpg.load_questions(tmp_path / "dpg_bench.csv")
    msg = str(exc.value)
    assert str(tmp_path / "dpg_bench.csv") in msg and "ELLA" in msg and "dpg_bench/dpg_bench.csv" in msg
    bad = tmp_path / "bad.csv"
    bad.write_text("item_id,text\nx,y\n")
    with pytest.raises(BenchmarkDataError, match="missing column"):
        dpg.load_questions(bad)


def test_questions_parse_parents_and_categories(questions):
    a = questions["a"]
    assert [q.proposition_id for q in a] == [1, 2, 3, 4]
    assert a[0].parents == () and a[3].parents == (3,)
    assert (a[1].l1, a[1].l2) == ("attribute", "attribute - color")
    assert questions["b"][0].l1 == "global"


def test_first_row_quirk_drops_proposition_1_and_fails_its_dependents(tmp_path, questions):
    quirky = dpg.load_questions(tmp_path / "q.csv", official_quirks=True)
    assert [q.proposition_id for q in quirky["a"]] == [2, 3, 4]
    with pytest.raises(KeyError):
        dpg.score_prompt("a", tiles(), quirky["a"], FakeVQA({}))


def test_grid_round_trip_and_official_crop_order():
    imgs = np.stack(tiles(3))
    grid = dpg.make_grid(imgs)
    assert grid.shape == (6, 6, 3)
    assert grid[0, 3, 0] == 1 and grid[3, 0, 0] == 2 and grid[5, 5, 0] == 3  # TR, BL, BR
    back = dpg.split_grid(grid, 3)
    assert all((b == i).all() for b, i in zip(back, imgs, strict=True))
    assert len(dpg.split_grid(grid, 3, pic_num=2)) == 2
    with pytest.raises(ValueError, match="must be 8x8"):
        dpg.split_grid(grid, 4)


def test_exact_yes_rule():
    assert dpg.apply_dependencies([], {}) == {}
    qs = [dpg.Question(1, (), "entity - whole (x)", "q")]
    for answer, expected in [("yes", 1.0), ("Yes", 0.0), ("yes ", 0.0), ("no", 0.0), ("yes.", 0.0)]:
        res = dpg.score_prompt("p", tiles()[:1], qs, FakeVQA({(0, "q"): answer}))
        assert res.score == expected, answer


def test_dependency_cascade_uses_live_scores(questions):
    a = questions["a"]
    # parent 1 says yes: children keep their own answers
    assert dpg.apply_dependencies(a, {1: 1.0, 2: 1.0, 3: 1.0, 4: 1.0}) == {1: 1.0, 2: 1.0, 3: 1.0, 4: 1.0}
    # 1 fails: 2 and 3 zeroed, and 4 through 3 (cascade, since 3 comes before 4)
    assert dpg.apply_dependencies(a, {1: 0.0, 2: 1.0, 3: 1.0, 4: 1.0}) == {1: 0.0, 2: 0.0, 3: 0.0, 4: 0.0}
    # only 3 fails: 4 zeroed, 2 untouched
    assert dpg.apply_dependencies(a, {1: 1.0, 2: 1.0, 3: 0.0, 4: 1.0}) == {1: 1.0, 2: 1.0, 3: 0.0, 4: 0.0}
    # a child listed before its parent is judged on the parent's score at that moment (no look-ahead)
    rev = [a[3], a[2]]
    assert dpg.apply_dependencies(rev, {1: 0.0, 3: 1.0, 4: 1.0}) == {1: 0.0, 3: 0.0, 4: 1.0}


def _table():
    yes = "yes"
    # tile 0: all yes; tile 1: "cat" no -> all zero; tile 2: tail no -> 1,2 yes; tile 3: all yes except 2 (raw)
    t = {}
    for q in ROWS[:4]:
        t[(0, q[4])] = yes
        t[(3, q[4])] = yes
    t[(3, ROWS[1][4])] = "no"
    t[(1, ROWS[1][4])] = yes  # child yes while parent no: cascade zeroes it
    t[(2, ROWS[0][4])] = yes
    t[(2, ROWS[1][4])] = yes
    t[(2, ROWS[3][4])] = yes  # its parent (tail) is no
    return t


def test_prompt_score_and_both_category_modes(questions):
    vqa = FakeVQA(_table())
    res = dpg.score_prompt("a", tiles(), questions["a"], vqa)
    assert vqa.calls == 1  # all tiles x questions in one batched call
    assert res.tile_scores == [1.0, 0.0, 0.5, 0.75]
    assert res.score == pytest.approx(2.25 / 4)
    # default: per question, mean over tiles after the cascade
    assert res.question_scores == {1: 0.75, 2: 0.5, 3: 0.5, 4: 0.5}
    quirk = dpg.score_prompt("a", tiles(), questions["a"], FakeVQA(_table()), official_quirks=True)
    assert quirk.score == res.score
    assert quirk.question_scores == {1: 1.0, 2: 0.0, 3: 1.0, 4: 1.0}  # raw answers of the last tile


def test_aggregate_overall_and_question_weighted_categories(questions):
    ra = dpg.PromptResult("a", 0.5, [0.5], {1: 1.0, 2: 0.0, 3: 1.0, 4: 0.0})
    rb = dpg.PromptResult("b", 1.0, [1.0], {1: 1.0, 2: 1.0})
    out = dpg.aggregate([ra, rb], questions)
    assert out["overall"] == pytest.approx(75.0) and out["n_prompts"] == 2
    assert out["l1"] == pytest.approx({"attribute": 0.0, "entity": 100.0, "global": 100.0, "relation": 100.0})
    assert out["l2"]["entity - part"] == 100.0 and out["l2"]["attribute - size"] == 0.0
    with pytest.raises(ValueError):
        dpg.aggregate([], questions)


def test_evaluate_dpg_folder_with_failures(tmp_path, questions):
    csv_path = tmp_path / "q.csv"

    def generate(prompts, seed):
        return np.stack(tiles(5))

    report_dir = tmp_path / "run"
    prompts = [{"item_id": "a", "prompt": "x"}, {"item_id": "b", "prompt": "y"}]
    dpg.generate_grids(report_dir / "images", prompts, generate)
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(report_dir / "images" / "zzz.png")  # no questions
    (report_dir / "images" / "notes.txt").write_text("stray")
    report = dpg.evaluate_dpg(FakeVQA(_table()), report_dir, csv_path)
    assert report["summary"]["n_prompts"] == 2
    assert report["summary"]["overall"] == pytest.approx(100 * (2.25 / 4 + 0.0) / 2)
    assert {f["file"].rsplit("/", 1)[1] for f in report["failures"]} == {"zzz.png", "notes.txt"}
    assert (report_dir / "results.jsonl").read_text().count("\n") == 2


def test_missing_vqa_weights(tmp_path):
    with pytest.raises(WeightsError, match=r"^dpg: .*config\.json.*preprocessor_config\.json"):
        dpg.TransformersVQA(tmp_path / "none")


def test_tiny_blip_vqa_real_path(tmp_path, questions):
    vqa = dpg.TransformersVQA(blip_vqa_dir(tmp_path / "blip"), device="cpu", max_new_tokens=4)
    answers = vqa.answer(tiles(8)[:3], ["is there a cat?", "is it red?", "two dogs?"])
    assert len(answers) == 3 and all(isinstance(a, str) for a in answers)
    res = dpg.score_prompt("a", tiles(8), questions["a"], vqa)
    assert 0.0 <= res.score <= 1.0 and len(res.tile_scores) == 4
