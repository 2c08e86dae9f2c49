"""The overhead benchmark's time accounting (benchmarks/pipeline_overhead.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location(
        "pipeline_overhead", ROOT / "benchmarks" / "pipeline_overhead.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _task(step, start, end):
    return {
        "step": step,
        "process_start": start,
        "start": start + 0.5,
        "end": end,
        "seconds": end - start - 0.5,
    }


def test_covered_is_the_length_of_the_union(bench):
    assert bench.covered([(0, 2), (1, 3), (5, 6)]) == pytest.approx(4.0)
    assert bench.covered([(0, 10), (2, 3)]) == pytest.approx(10.0)
    assert bench.covered([]) == 0.0


def test_rounds_wall_leaves_out_tasks_run_between_rounds(bench):
    timings = [
        _task("prepare_data", 0, 5),
        _task("round-001-rollout-000", 5, 9),
        _task("round-001-rollout-001", 5, 10),  # shards side by side
        _task("round-001-refinement", 10, 14),
        _task("evaluate-base", 14, 40),  # the local runner may put it between rounds
        _task("round-002-rollout-000", 40, 45),
        _task("round-002-refinement", 45, 50),
        _task("evaluate-trained", 50, 70),
    ]
    assert bench.rounds_wall(timings) == pytest.approx((50 - 5) - (40 - 14))
    assert bench.rounds_wall([_task("prepare_data", 0, 1)]) is None
