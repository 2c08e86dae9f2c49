"""The pretraining-recipe table (benchmarks/pretrain_recipes.py): rows, overrides and argument errors."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location(
        "pretrain_recipes", ROOT / "benchmarks" / "pretrain_recipes.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _result(label, step, seconds, fill, kept, tasks, overall, weights=None):
    summary = dict.fromkeys(
        ("single_object", "two_object", "counting", "colors", "position", "color_attr"), 0.25
    )
    summary["overall"] = overall
    return {
        "label": label,
        "recipe": {
            "steps": 1900,
            "fill_steps": fill,
            "fill_decay_steps": 300,
            "fill_final_share": kept,
            "fill_final_tasks": tasks,
        },
        "trained": {"step": step, "seconds": seconds},
        **({"task_weights": weights} if weights is not None else {}),
        "summary": summary,
        "colour_given_shape": {"colors": 0.4, "color_attr": 0.3},
    }


def test_rows_carry_the_recipe_and_the_scores(bench):
    data = {
        "split": "test",
        "machine": {"cpu_count": 2},
        "results": [
            _result("plain", None, 4662.0, 0, 0.0, [], 0.312),
            _result("fill", 1900, 3151.5, 300, 0.5, ["colors", "color_attr"], 0.4),
            _result(
                "weighted", 1900, 3000.0, 300, 0.2, [], 0.5, {"counting": 2, "colors": 1, "color_attr": 4}
            ),
        ],
    }
    lines = bench.render(data)
    plain = next(line for line in lines if line.startswith("| plain |"))
    fill = next(line for line in lines if line.startswith("| fill |"))
    weighted = next(line for line in lines if line.startswith("| weighted |"))
    assert plain.split(" | ")[1:9] == ["–", "0", "300", "0.0", "–", "–", "77.7", "0.312"]
    assert fill.split(" | ")[1:9] == ["1900", "300", "300", "0.5", "colors, color_attr", "–", "52.5", "0.400"]
    assert weighted.split(" | ")[6:9] == ["counting 2, color_attr 4", "50.0", "0.500"]
    assert fill.endswith("| 0.400 / 0.300 |")
    header = next(line for line in lines if line.startswith("| recipe |"))
    separator = lines[lines.index(header) + 1]
    assert header.count("|") == separator.count("|") == fill.count("|")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--run", "nolabel"], "expected LABEL=CHECKPOINT"),
        (["--run", "x=/nonexistent/ckpt"], "is not a checkpoint"),
    ],
)
def test_bad_runs_are_named(bench, monkeypatch, argv, message):
    monkeypatch.setattr(sys, "argv", ["pretrain_recipes.py", *argv])
    with pytest.raises(SystemExit, match=message):
        bench.main()


def test_bad_minutes_are_named(bench, monkeypatch, tmp_path):
    (tmp_path / "manifest.json").write_text("{}")
    monkeypatch.setattr(sys, "argv", ["pretrain_recipes.py", "--run", f"a={tmp_path}", "--minutes", "a=soon"])
    with pytest.raises(SystemExit, match="expected LABEL=MINUTES"):
        bench.main()


def test_weights_label(bench):
    assert bench.weights_label(None) == "–"
    assert bench.weights_label(dict.fromkeys(("colors", "counting", "position"), 2.0)) == "–"
    assert bench.weights_label({"colors": 0.5, "counting": 1, "position": 1, "color_attr": 4}) == (
        "colors 0.5, color_attr 4"
    )


def test_reuse_keeps_rows_of_the_same_checkpoint_under_the_new_label(bench, monkeypatch, tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "manifest.json").write_text("{}")
    earlier = _result("a", 1900, 60.0, 300, 0.2, [], 0.321) | {"checkpoint": str(ckpt)}
    previous = tmp_path / "prev.json"
    previous.write_text(json.dumps({"split": "test", "results": [earlier], "machine": {}}))
    monkeypatch.setattr(bench, "score", lambda *a: pytest.fail("a reusable row was scored again"))
    out = tmp_path / "out"
    monkeypatch.setattr(
        sys,
        "argv",
        ["pretrain_recipes.py", "--run", f"renamed={ckpt}", "--reuse", str(previous), "--out", str(out)],
    )
    bench.main()
    written = json.loads(out.with_suffix(".json").read_text())
    assert [(r["label"], r["summary"]["overall"]) for r in written["results"]] == [("renamed", 0.321)]


def test_unreadable_reuse_file_is_named(bench, monkeypatch, tmp_path):
    (tmp_path / "manifest.json").write_text("{}")
    monkeypatch.setattr(
        sys, "argv", ["pretrain_recipes.py", "--run", f"a={tmp_path}", "--reuse", str(tmp_path / "none.json")]
    )
    with pytest.raises(SystemExit, match="none.json: cannot read it"):
        bench.main()
