"""Prompt data shipped with the package (``benchmarks/<name>/``; provenance in ``benchmarks/PROVENANCE.md``)."""

from __future__ import annotations

from pathlib import Path

BENCHMARK_DATA = Path(__file__).resolve().parent / "benchmarks"
"""``htgrpo/data/benchmarks``: GenEval, Flow-GRPO, T2I-CompBench, ImageReward and DPG-Bench prompt files."""

SHARED_BENCHMARKS = Path(__file__).resolve().parents[3].parent / "shared" / "benchmarks"
"""``../shared/benchmarks`` beside a source checkout: where user-supplied files (DPG's dpg_bench.csv) go."""
