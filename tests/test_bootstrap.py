"""Bootstrap intervals over prompts: the point value, coverage of a known difference, pairing, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from htgrpo.eval.bootstrap import interval, mean_rows, paired_difference, per_prompt, verdict


def _records(p_correct: dict[str, float], prompts: int, images: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for tag, p in p_correct.items():
        for k in range(prompts):
            for _ in range(images):
                ok = bool(rng.random() < p)
                out.append({"tag": tag, "prompt": f"{tag} {k}", "correct": ok, "reward": float(ok) * 0.5})
    return out


def test_per_prompt_rows_and_the_point_value_is_geneval_s_overall():
    recs = [
        {"tag": "a", "prompt": "x", "correct": True, "reward": 1.0},
        {"tag": "a", "prompt": "x", "correct": False, "reward": 0.0},
        {"tag": "a", "prompt": "y", "correct": True, "reward": 1.0},
        {"tag": "b", "prompt": "z", "correct": False, "reward": 0.5},
    ]
    rows = per_prompt(recs)
    assert [(r["prompt"], r["correct"], r["reward"]) for r in rows] == [
        ("x", 0.5, 0.5),
        ("y", 1.0, 1.0),
        ("z", 0.0, 0.5),
    ]
    # overall = mean of task means (a: 0.75, b: 0), not the mean over prompts or images
    assert interval(rows)["value"] == 0.375
    assert interval(rows, "reward")["value"] == pytest.approx(2 / 3, abs=1e-4)


def test_interval_covers_and_narrows_with_more_prompts():
    small = interval(per_prompt(_records({"a": 0.5, "b": 0.2}, 10, 4, 0)))
    large = interval(per_prompt(_records({"a": 0.5, "b": 0.2}, 200, 4, 0)))
    assert small["lo"] <= small["value"] <= small["hi"]
    assert large["lo"] < 0.35 < large["hi"]
    assert large["half_width"] < small["half_width"] / 3


def test_paired_difference_detects_a_real_gain_and_not_a_null_one():
    base = per_prompt(_records({"a": 0.4, "b": 0.4}, 100, 8, 0))
    better = per_prompt(_records({"a": 0.6, "b": 0.6}, 100, 8, 1))
    same = per_prompt(_records({"a": 0.4, "b": 0.4}, 100, 8, 2))
    d = paired_difference(better, base)
    assert verdict(d) == "better" and d["lo"] > 0.05
    assert verdict(paired_difference(base, better)) == "worse"
    assert verdict(paired_difference(same, base)) == "tied"
    # pairing: a model against itself has a zero-width interval
    assert paired_difference(base, base) == {"value": 0.0, "lo": 0.0, "hi": 0.0, "half_width": 0.0}


def test_runs_on_different_prompts_are_refused():
    a = per_prompt(_records({"a": 0.5}, 3, 2, 0))
    b = per_prompt(_records({"b": 0.5}, 3, 2, 0))
    with pytest.raises(ValueError, match="same prompts"):
        paired_difference(a, b)
    with pytest.raises(ValueError, match="same prompts"):
        mean_rows([a, b])
    assert mean_rows([a, a])[0]["correct"] == a[0]["correct"]
