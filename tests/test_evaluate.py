"""The shapes benchmark's bookkeeping: object cells, commit order by step, reward spread, the report table."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from htgrpo.evaluate import commit_order, markdown_table, object_cells, reward_spread, write_report
from htgrpo.sampling.result import SampleResult
from htgrpo.world.detect import ShapeDetector
from htgrpo.world.grammar import two_object
from htgrpo.world.render import Background, Scene, SceneObject, render


def _scene(objects):
    return Scene(tuple(objects), Background((220, 220, 220), (230, 230, 230), "horizontal"), 3)


def test_object_cells_marks_exactly_the_detected_cells():
    images = np.stack(
        [
            render(_scene([SceneObject("circle", "red", 0, 2), SceneObject("square", "blue", 2, 1)])),
            render(_scene([])),
        ]
    )
    results = ShapeDetector().detect_many(images)
    cells = object_cells([], results, grid=3)
    assert cells.shape == (2, 9)
    assert cells[0].nonzero().flatten().tolist() == [2, 7]  # row 0 col 2, row 2 col 1
    assert not cells[1].any()


def test_commit_order_counts_and_object_share_by_step():
    commit = torch.tensor([[1, 1, 2, 3], [2, 3, 3, 3]])
    objects = torch.tensor([[True, False, False, False], [False, False, True, True]])
    res = SampleResult(commit, commit, torch.zeros(2, 4), torch.zeros(2, 4), 6, 0.0, 1.0)
    out = commit_order(res, objects, steps=3)
    assert [p["committed"] for p in out["per_step"]] == [2, 2, 4]
    assert [p["object_share"] for p in out["per_step"]] == [0.5, 0.0, 0.5]
    assert out["mean_step_object"] == pytest.approx((1 + 3 + 3) / 3)
    assert out["mean_step_background"] == pytest.approx((1 + 2 + 3 + 2 + 3) / 5)


def test_commit_order_reports_none_for_a_step_with_no_commits():
    commit = torch.tensor([[1, 1]])
    res = SampleResult(commit, commit, torch.zeros(1, 2), torch.zeros(1, 2), 2, 0.0, 1.0)
    out = commit_order(res, torch.tensor([[True, False]]), steps=2)
    assert out["per_step"][1] == {"step": 2, "committed": 0, "object_share": None}


def test_reward_spread_is_the_share_of_groups_with_differing_rewards():
    records = [{"reward": r} for r in (1.0, 1.0, 0.5, 0.0, 0.2, 0.2)]
    assert reward_spread(records, group=2) == 1 / 3  # (1, 1) and (0.2, 0.2) agree
    assert reward_spread(records, group=3) == 1.0
    assert reward_spread([{"reward": 0.3}] * 4, group=4) == 0.0


def test_report_files_hold_the_table(tmp_path):
    report = {
        "split": "test",
        "images_per_prompt": 4,
        "note": "single_object, counting: shared prompts",
        "summary": {"overall": 0.5, "single_object": 1.0, "position": 0.0},
    }
    out = write_report(report, tmp_path / "r.json", name="base")
    table = out.with_suffix(".md").read_text()
    assert "| base | 0.500 | 1.000 | 0.000 |" in table
    assert markdown_table(report).splitlines()[0] == "| model | overall | single_object | position |"
    assert two_object("circle", "ring")["tag"] == "two_object"
