"""Prompt sources: GenEval-style training prompts (no test leak, task mix, unseen objects, determinism), the shipped
prompt sets by name, `htgrpo prompts`, and `rl.prompts` naming a source."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from htgrpo import prompts as P
from htgrpo.cli import main
from htgrpo.config import load_config
from htgrpo.errors import ConfigError
from htgrpo.world import grammar

ROOT = Path(__file__).resolve().parents[1]
MIX = "two_object=1,counting=1,colors=1,position=1,color_attr=1"


def classes(row):
    return {inc["class"] for inc in row["include"]}


def test_grammar_reproduces_every_official_geneval_row():
    for row in P.geneval_test_rows():
        inc = row["include"]
        if row["tag"] == "single_object":
            mine = grammar.single_object(inc[0]["class"])
        elif row["tag"] == "two_object":
            mine = grammar.two_object(inc[0]["class"], inc[1]["class"])
        elif row["tag"] == "counting":
            mine = grammar.counting(inc[0]["class"], inc[0]["count"])
        elif row["tag"] == "colors":
            mine = grammar.colors(inc[0]["class"], inc[0]["color"])
        elif row["tag"] == "position":
            mine = grammar.position(inc[1]["class"], inc[1]["position"][0], inc[0]["class"])
        else:
            mine = grammar.color_attr(inc[0]["class"], inc[0]["color"], inc[1]["class"], inc[1]["color"])
        assert mine["prompt"] == row["prompt"] and mine["include"] == inc
        assert mine["exclude"] == row.get("exclude", [])
    assert len(P.geneval_objects()) == 80 and set(P.FLOW_GRPO_UNSEEN) <= set(P.geneval_objects())


def test_no_test_prompt_leaks_into_training_prompts():
    test = P.test_prompt_texts()
    assert len(test) == 553 + 256 - 42  # 42 of Flow-GRPO's unseen-object prompts are GenEval's own
    rows = P.geneval_train_prompts(4000, mix=MIX, seed=3, unseen="none")
    assert not {P._fold(r["prompt"]) for r in rows} & test
    # a small space (counting: 240 prompts, 111 of them test prompts) is used up and repeated, still without a leak
    space = P.task_space("counting", P.geneval_objects())
    allowed = {space.decode(i)["prompt"] for i in range(space.size)} - test
    small = P.geneval_train_prompts(500, mix="counting=1", seed=0, unseen="none")
    texts = [r["prompt"] for r in small]
    assert not {P._fold(t) for t in texts} & test and set(texts) == allowed and len(allowed) == 129
    assert min(texts.count(t) for t in allowed) == 3  # 500 = 3 whole passes of 129 + 113
    with pytest.raises(ConfigError, match="single_object weight 0"):
        P.geneval_train_prompts(100, mix="single_object=1,position=1")


def test_mix_proportions_are_exact():
    rows = P.geneval_train_prompts(1000, mix="two_object=1,position=3", seed=0)
    assert P.tag_counts(rows) == {"two_object": 250, "position": 750}
    counts = P.task_counts(7, P.parse_mix("two_object=1,colors=1,position=1"))
    assert sum(counts.values()) == 7 and sorted(v for v in counts.values() if v) == [2, 2, 3]
    default = P.tag_counts(P.geneval_train_prompts(1700, seed=0))  # Flow-GRPO's weights, sum 1.7
    assert default == {"two_object": 100, "counting": 500, "colors": 100, "position": 700, "color_attr": 300}
    assert len({r["prompt"] for r in rows if r["tag"] == "position"}) == 750  # drawn without replacement


def test_unseen_objects_absent_from_training_and_present_in_the_unseen_split():
    held = set(P.FLOW_GRPO_UNSEEN)
    train = P.geneval_train_prompts(3000, mix=MIX, seed=1)
    assert not set().union(*map(classes, train)) & held
    unseen = P.geneval_unseen_prompts(600, mix="uniform", seed=1)
    used = set().union(*map(classes, unseen))
    assert used == held and all(classes(r) <= held for r in unseen)
    assert P.tag_counts(unseen) == dict.fromkeys(grammar.TASKS, 100)
    custom = P.geneval_train_prompts(500, mix=MIX, seed=1, unseen="dog,cat")
    assert not set().union(*map(classes, custom)) & {"dog", "cat"}
    picked = P.parse_unseen("random:5:7")
    assert len(picked) == 5 and picked == P.parse_unseen("random:5:7") != P.parse_unseen("random:5:8")
    assert P.parse_unseen("none") == () and P.parse_unseen(None) == P.FLOW_GRPO_UNSEEN
    with pytest.raises(ConfigError, match="'unicorn' not among GenEval's 80"):
        P.parse_unseen("dog,unicorn")


def test_generation_is_deterministic():
    a = P.geneval_train_prompts(300, mix=MIX, seed=5)
    assert a == P.geneval_train_prompts(300, mix=MIX, seed=5)
    assert a != P.geneval_train_prompts(300, mix=MIX, seed=6)
    assert P.load_source("geneval-train?n=300&seed=5&mix=" + MIX) == a


def test_bad_mix_and_unknown_sources_are_clear_errors():
    with pytest.raises(ConfigError, match="mix: unknown task 'positon'; expected one of single_object"):
        P.parse_mix("positon=1")
    with pytest.raises(ConfigError, match="weight of colors must be a number"):
        P.parse_mix("colors=lots")
    with pytest.raises(ConfigError, match="not TASK=WEIGHT"):
        P.parse_mix("colors")
    with pytest.raises(ConfigError, match="at least one task"):
        P.parse_mix("colors=0")
    with pytest.raises(ConfigError, match="unknown prompt source 'geneval-trian'; known sources: train"):
        P.load_source("geneval-trian")
    with pytest.raises(ConfigError, match="unknown option.*seeed"):
        P.load_source("geneval-train?seeed=1")
    with pytest.raises(ConfigError, match="apply only to geneval-train"):
        P.load_source("drawbench", n=5)
    with pytest.raises(ConfigError, match="unknown category 'colour'"):
        P.load_source("t2i-compbench:colour")
    with pytest.raises(ConfigError, match="no val_seen split"):
        P.load_source("t2i-compbench:spatial:val_seen")


def test_shipped_prompt_sets_by_name():
    sizes = {
        "geneval": 553,
        "geneval-unseen-test": 256,
        "t2i-compbench": 2400,
        "t2i-compbench:color": 300,
        "t2i-compbench:numeracy:train": 700,
        "t2i-compbench:texture:val_unseen": 100,
        "drawbench": 200,
        "pickscore-sfw": 1024,
        "imagereward": 100,
        "dpg": 1065,
    }
    for name, n in sizes.items():
        rows = P.load_source(name)
        assert len(rows) == n, name
        assert all({"tag", "include", "exclude", "prompt"} <= r.keys() and r["prompt"] for r in rows[:50])
    assert P.load_source("t2i-compbench:color")[0]["tag"] == "t2i-compbench/color"
    assert "item_id" in P.load_source("dpg")[0]


def test_cli_writes_geneval_metadata_jsonl(tmp_path, capsys):
    out = tmp_path / "p.jsonl"
    rc = main(
        [
            "prompts",
            "--source",
            "geneval-train",
            "--n",
            "120",
            "--mix",
            "colors=1,position=2",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 120 and list(rows[0]) == ["tag", "include", "exclude", "prompt"]
    assert "wrote 120 prompts of geneval-train" in capsys.readouterr().out
    assert main(["prompts", "--source", "t2i-compbench:color", "--out", str(tmp_path / "t.jsonl")]) == 0
    assert len((tmp_path / "t.jsonl").read_text().splitlines()) == 300
    assert main(["prompts", "--source", "nope", "--out", str(out)]) == 2
    assert "unknown prompt source 'nope'" in capsys.readouterr().err
    assert main(["prompts", "--source", "geneval-train", "--mix", "x=1", "--out", str(out)]) == 2
    assert "mix: unknown task 'x'" in capsys.readouterr().err
    assert main(["prompts", "--list"]) == 0 and "t2i-compbench:color" in capsys.readouterr().out


def test_rl_prompts_names_a_source(monkeypatch):
    from htgrpo.rl.trainer import load_prompt_pool

    monkeypatch.chdir(ROOT)
    cfg = load_config("configs/tiny.yaml", ["rl.prompts=geneval-train?n=40&seed=2&mix=position=1"])
    rows = load_prompt_pool(cfg)
    assert len(rows) == 40 and {r["tag"] for r in rows} == {"position"}
    with pytest.raises(ConfigError, match="rl.prompts: mix: unknown task 'place'"):
        load_prompt_pool(load_config("configs/tiny.yaml", ["rl.prompts=geneval-train?mix=place=1"]))
    with pytest.raises(ConfigError, match="neither a split.*geneval-train.*nor a file"):
        load_prompt_pool(load_config("configs/tiny.yaml", ["rl.prompts=missing.jsonl"]))


# --- bad prompt files and rows ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{good}\n{{not json\n", ":2: not valid JSON (Expecting property name"),
        ("{good}\n\n[1, 2]\n", ":3: a GenEval row must be a JSON object, got a JSON array ([1, 2])"),
        ('"a photo of a ring"\n', ":1: a GenEval row must be a JSON object, got a JSON string"),
        ("{good}\n7\n", ":2: a GenEval row must be a JSON object, got a JSON number (7)"),
    ],
)
def test_a_prompt_file_line_that_is_not_a_json_object_names_the_file_and_line(tmp_path, text, message):
    path = tmp_path / "pool.jsonl"
    path.write_text(text.format(good=json.dumps(grammar.single_object("ring"))))
    cfg = load_config(ROOT / "configs" / "tiny.yaml", [f"rl.prompts={path}"])
    with pytest.raises(ConfigError) as exc:
        P.load_prompt_pool(cfg)
    assert str(exc.value).startswith(f"rl.prompts: {path}{message}") and "\n" not in str(exc.value)


def test_the_shapes_world_refuses_classes_and_colours_it_does_not_have():
    from htgrpo.errors import RLError

    pool = [
        grammar.counting("ring", 2),
        grammar.colors("circle", "red"),
        grammar.position("cross", "above", "ring"),
    ]
    P.check_shapes_pool(pool, "pool.jsonl")  # the world's own rows pass
    cases = [
        ({**pool[1], "include": [{"class": "circel", "count": 1, "color": "red"}]}, "include class 'circel'"),
        ({**pool[0], "exclude": [{"class": "dog", "count": 3}]}, "exclude class 'dog'"),
        ({**pool[1], "include": [{"class": "circle", "count": 1, "color": "teal"}]}, "include colour 'teal'"),
        ({**pool[1], "include": [{"count": 1}]}, "include class None"),
    ]
    for row, cause in cases:
        with pytest.raises(RLError) as exc:
            P.check_shapes_pool([pool[0], row], "pool.jsonl")
        text = str(exc.value)
        assert text.startswith(f"prompt set 'pool.jsonl', row 1 ({row['prompt']!r}): {cause}"), text
        assert ("palette" if "colour" in cause else "not a shape of the shapes world") in text
