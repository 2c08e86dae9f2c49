"""GenEval's prompt grammar over the shapes world, metadata layout, splits and JSONL files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from htgrpo.errors import PromptError
from htgrpo.world import grammar
from htgrpo.world.grammar import (
    SHARED_PROMPT_TASKS,
    TASKS,
    article,
    colour_pairs,
    make_splits,
    plural,
    prompt_space,
    read_jsonl,
    write_jsonl,
)
from htgrpo.world.palette import COLOR_NAMES, SHAPES
from htgrpo.world.render import metadata_for_prompt

ROOM_TASKS = ("two_object", "colors", "position", "color_attr")
SPLIT_ARGS = dict(
    test_per_task={t: 4 for t in TASKS},
    val_per_task={t: 2 for t in TASKS},
    unseen_pairs=3,
    unseen_color_attr=20,
)

# --------------------------------------------------------------------------------------------- grammar


def test_articles_and_plurals():
    assert article("orange") == "an" and article("apple") == "an" and article("red") == "a"
    assert plural("cross") == "crosses" and plural("circle") == "circles"
    assert plural("bus") == "buses" and plural("skis") == "skises"  # GenEval's rule, awkward forms included
    assert grammar.colors("ring", "orange")["prompt"] == "a photo of an orange ring"
    assert grammar.counting("cross", 3)["prompt"] == "a photo of three crosses"


def test_the_six_templates():
    assert grammar.single_object("ring")["prompt"] == "a photo of a ring"
    assert grammar.two_object("circle", "square")["prompt"] == "a photo of a circle and a square"
    assert grammar.counting("diamond", 2)["prompt"] == "a photo of two diamonds"
    assert grammar.colors("cross", "red")["prompt"] == "a photo of a red cross"
    assert grammar.position("circle", "left of", "ring")["prompt"] == "a photo of a circle left of a ring"
    assert (
        grammar.color_attr("circle", "orange", "square", "blue")["prompt"]
        == "a photo of an orange circle and a blue square"
    )


def test_metadata_layout():
    pos = grammar.position("circle", "above", "square")
    assert pos["tag"] == "position" and pos["exclude"] == []
    # GenEval's order: the reference B first, then A placed relative to group 0
    assert pos["include"] == [
        {"class": "square", "count": 1},
        {"class": "circle", "count": 1, "position": ["above", 0]},
    ]
    cnt = grammar.counting("ring", 4)
    assert cnt["include"] == [{"class": "ring", "count": 4}] and cnt["exclude"] == [
        {"class": "ring", "count": 5}
    ]
    ca = grammar.color_attr("circle", "red", "square", "blue")
    assert ca["include"] == [
        {"class": "circle", "count": 1, "color": "red"},
        {"class": "square", "count": 1, "color": "blue"},
    ]
    assert colour_pairs(ca) == {("red", "circle"), ("blue", "square")}


def test_prompt_spaces():
    n_s, n_c = len(SHAPES), len(COLOR_NAMES)
    sizes = {t: len(prompt_space(t)) for t in TASKS}
    assert sizes == {
        "single_object": n_s,
        "two_object": n_s * (n_s - 1),
        "counting": 3 * n_s,
        "colors": n_s * n_c,
        "position": 4 * n_s * (n_s - 1),
        "color_attr": n_s * (n_s - 1) * n_c * (n_c - 1),
    }
    for t in TASKS:
        prompts = [m["prompt"] for m in prompt_space(t)]
        assert len(set(prompts)) == len(prompts)
        assert {m["tag"] for m in prompt_space(t)} == {t}
    with pytest.raises(ValueError, match="unknown GenEval task"):
        prompt_space("spatial")


# --------------------------------------------------------------------------------------------- splits


def prompts(rows) -> set[str]:
    return {m["prompt"] for m in rows}


def test_splits_are_deterministic():
    a, b = make_splits(seed=5, **SPLIT_ARGS), make_splits(seed=5, **SPLIT_ARGS)
    for name in ("train", "val", "test", "unseen"):
        assert [m["prompt"] for m in a.get(name)] == [m["prompt"] for m in b.get(name)]
    assert a.unseen_pairs == b.unseen_pairs
    c = make_splits(seed=6, **SPLIT_ARGS)
    assert [m["prompt"] for m in a.test] != [m["prompt"] for m in c.test]
    with pytest.raises(ValueError, match="unknown split"):
        a.get("dev")


def test_test_prompts_are_new_for_tasks_with_room():
    s = make_splits(seed=1, **SPLIT_ARGS)
    for task in ROOM_TASKS:
        test = prompts(m for m in s.test if m["tag"] == task)
        val = prompts(m for m in s.val if m["tag"] == task)
        train = prompts(m for m in s.train if m["tag"] == task)
        assert len(test) == 4 and len(val) == 2 and train
        assert not test & train and not val & train and not test & val


def test_unseen_pairs_never_appear_outside_the_unseen_split():
    s = make_splits(seed=2, **SPLIT_ARGS)
    held = set(s.unseen_pairs)
    assert len(held) == 3
    # no shape or colour is held out twice while that is possible
    assert len({c for c, _ in held}) == 3 and len({sh for _, sh in held}) == 3
    for name in ("train", "val", "test"):
        for m in s.get(name):
            assert not colour_pairs(m) & held, (name, m["prompt"])
    assert s.unseen
    assert {m["tag"] for m in s.unseen} == {"colors", "color_attr"}
    for m in s.unseen:
        assert colour_pairs(m) & held
    # every colour prompt of a held pair is in unseen; color_attr is sampled down to the requested number
    assert sum(m["tag"] == "colors" for m in s.unseen) == 3
    assert sum(m["tag"] == "color_attr" for m in s.unseen) == 20


def test_shared_prompt_tasks_reuse_training_prompts():
    assert set(SHARED_PROMPT_TASKS) == {"single_object", "counting"}
    s = make_splits(seed=3, **SPLIT_ARGS)
    train = prompts(s.train)
    for task in SHARED_PROMPT_TASKS:
        test = prompts(m for m in s.test if m["tag"] == task)
        assert len(test) == 4 and test <= train
        # the whole (tiny) prompt space is trained on
        assert prompts(prompt_space(task)) <= train


def test_splits_refuse_to_leave_no_training_prompts():
    args = dict(SPLIT_ARGS, test_per_task={"two_object": 25}, val_per_task={"two_object": 5})
    with pytest.raises(ValueError, match="two_object"):
        make_splits(seed=0, **args)


# --------------------------------------------------------------------------------------------- JSONL


def test_jsonl_round_trip(tmp_path):
    rows = [m for t in TASKS for m in prompt_space(t)[:3]]
    path = write_jsonl(rows, tmp_path / "sub" / "rows.jsonl")
    assert read_jsonl(path) == rows
    # GenEval's own rows omit "exclude" unless they are counting rows
    raw = {"tag": "colors", "include": [{"class": "ring", "count": 1, "color": "red"}], "prompt": "p"}
    path.write_text(json.dumps(raw) + "\n\n")
    assert read_jsonl(path) == [dict(raw, exclude=[])]


def test_jsonl_errors_name_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(grammar.single_object("ring")) + "\n{not json\n")
    with pytest.raises(ValueError, match=rf"{path}:2: not valid JSON"):
        read_jsonl(path)
    path.write_text(json.dumps({"tag": "colors", "prompt": "p"}) + "\n")
    with pytest.raises(ValueError, match=rf"{path}:1: GenEval row lacks include"):
        read_jsonl(path)
    with pytest.raises(FileNotFoundError):
        read_jsonl(tmp_path / "missing.jsonl")


def test_official_geneval_metadata_reads():
    path = (
        Path(__file__).resolve().parents[2]
        / "shared"
        / "benchmarks"
        / "geneval"
        / "evaluation_metadata.jsonl"
    )
    if not path.is_file():
        pytest.skip("shared GenEval metadata not present")
    rows = read_jsonl(path)
    assert len(rows) == 553 and {r["tag"] for r in rows} == set(TASKS)


# --------------------------------------------------------------------------------------------- prompts


def test_metadata_for_prompt():
    assert metadata_for_prompt("  A photo of  an ORANGE ring ") == grammar.colors("ring", "orange")
    assert metadata_for_prompt("a photo of three crosses") == grammar.counting("cross", 3)
    for bad in ("a photo of a dog", "a photo of a white circle", "a photo of five rings", "a red circle"):
        with pytest.raises(PromptError, match="cannot render"):
            metadata_for_prompt(bad)
    assert issubclass(PromptError, ValueError)
