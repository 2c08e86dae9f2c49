"""Evaluation summaries as the papers lay them out (rows = models, columns = tasks), side by side, as a bar chart.

An evaluation directory (``htgrpo evaluate --benchmark geneval|dpg|metrics --out DIR``) holds ``summary.json``:
``{"benchmark", "name", "summary", ...}``. The shapes benchmark's report JSON has the same keys, so it can be
set beside them too. GenEval-style scores are on the 0-1 scale with 2 decimals, DPG-Bench on 0-100.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from htgrpo.errors import BenchmarkDataError
from htgrpo.eval.geneval import TASKS

GENEVAL_COLUMNS = [("overall", "Overall")] + [
    (t, h)
    for t, h in zip(
        TASKS, ("Single obj.", "Two obj.", "Counting", "Colors", "Position", "Color attri."), strict=True
    )
]
DPG_COLUMNS = [
    ("overall", "Overall"),
    ("global", "Global"),
    ("entity", "Entity"),
    ("attribute", "Attribute"),
    ("relation", "Relation"),
    ("other", "Other"),
]


def columns(report: dict[str, Any]) -> list[tuple[str, str, float | None]]:
    """(key, header, value) of one evaluation, in the paper's column order."""
    bench, s = report["benchmark"], report["summary"]
    if bench in ("geneval", "shapes"):
        return [(k, h, s.get(k)) for k, h in GENEVAL_COLUMNS if k in s]
    if bench == "dpg":
        return [(k, h, s["overall"] if k == "overall" else s.get("l1", {}).get(k)) for k, h in DPG_COLUMNS]
    if bench == "metrics":
        return [(k, k, v["mean"]) for k, v in s.items()]
    raise BenchmarkDataError(f"unknown benchmark {bench!r} in an evaluation summary")


def _fmt(bench: str, v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v:.2f}"


def markdown_table(reports: Sequence[dict[str, Any]]) -> str:
    """One table for evaluations of one benchmark; columns are the union, in order of first appearance."""
    bench = reports[0]["benchmark"]
    head: dict[str, str] = {}
    rows = []
    for r in reports:
        cols = columns(r)
        for k, h, _ in cols:
            head.setdefault(k, h)
        rows.append((r.get("name", "model"), {k: v for k, _, v in cols}))
    lines = ["| Model | " + " | ".join(head.values()) + " |", "|---|" + "---|" * len(head)]
    for name, vals in rows:
        lines.append(f"| {name} | " + " | ".join(_fmt(bench, vals.get(k)) for k in head) + " |")
    return "\n".join(lines)


TITLES = {
    "geneval": "GenEval (0-1; overall = mean of the six tasks)",
    "shapes": "Shapes benchmark (GenEval rules; 0-1)",
    "dpg": "DPG-Bench (0-100)",
    "metrics": "Image metrics (mean per image; scales in htgrpo.benchmarks.metrics)",
}


def write_summary(report: dict[str, Any], out_dir: str | Path) -> Path:
    """``summary.json`` and ``summary.md`` (the paper-layout table) in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(report, indent=2))
    note = ""
    if report.get("benchmark") == "dpg" and report.get("official_quirks"):
        note = "\n\nCategory scores reproduce the official script's quirks (last tile, raw answers; row 0 skipped).\n"
    (out / "summary.md").write_text(
        f"# {TITLES.get(report['benchmark'], report['benchmark'])}\n\n"
        + markdown_table([report])
        + note
        + "\n"
    )
    return out / "summary.json"


def load_summary(path: str | Path) -> dict[str, Any]:
    """An evaluation directory (its summary.json) or a report JSON file; ``name`` defaults to the folder's name."""
    p = Path(path)
    f = p / "summary.json" if p.is_dir() else p
    if not f.is_file():
        raise BenchmarkDataError(
            f"{p} is neither an evaluation directory with summary.json nor a report JSON"
        )
    try:
        report = json.loads(f.read_text())
    except json.JSONDecodeError as exc:
        raise BenchmarkDataError(f"{f}: not JSON ({exc})") from None
    if not isinstance(report, dict) or "benchmark" not in report or "summary" not in report:
        raise BenchmarkDataError(f"{f}: not an evaluation summary (needs benchmark and summary)")
    report.setdefault("name", p.name if p.is_dir() else p.stem)
    return report


def side_by_side(paths: Sequence[str | Path], out_dir: str | Path) -> tuple[Path, Path]:
    """``report.md`` (one table per benchmark) and ``report.png`` (grouped bars per benchmark) in ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    if len(paths) < 2:
        raise BenchmarkDataError("a report sets at least two evaluations side by side")
    reports = [load_summary(p) for p in paths]
    names = [r["name"] for r in reports]
    if len(set(names)) < len(names):  # same folder name from different places: disambiguate
        for i, r in enumerate(reports):
            r["name"] = f"{r['name']} ({i + 1})"
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in reports:
        groups.setdefault(r["benchmark"], []).append(r)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = ["# Evaluations side by side", ""]
    for bench, rs in groups.items():
        md += [f"## {TITLES.get(bench, bench)}", "", markdown_table(rs), ""]
    md_path = out / "report.md"
    md_path.write_text("\n".join(md))

    fig, axes = plt.subplots(len(groups), 1, figsize=(10, 3.6 * len(groups)), squeeze=False)
    for ax, (bench, rs) in zip(axes[:, 0], groups.items(), strict=True):
        keys: dict[str, str] = {}
        for r in rs:
            for k, h, _ in columns(r):
                keys.setdefault(k, h)
        x = np.arange(len(keys))
        width = 0.8 / len(rs)
        for i, r in enumerate(rs):
            vals = {k: v for k, _, v in columns(r)}
            ys = [np.nan if vals.get(k) is None else vals[k] for k in keys]
            ax.bar(x + (i - (len(rs) - 1) / 2) * width, ys, width, label=r["name"])
        ax.set_xticks(x, list(keys.values()), rotation=20)
        ax.set_title(TITLES.get(bench, bench))
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    png = out / "report.png"
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return md_path, png
