"""The shapes benchmark: GenEval's protocol on the shapes world, scored exactly.

For every prompt of a split, `images_per_prompt` images are sampled, decoded, detected by the exact shape
detector and judged by GenEval's rules; the summary is GenEval's (task means, overall = mean of tasks). The report
also carries the partial-credit reward per task, how often a prompt's samples get different rewards (RL needs that
signal), and which tokens the sampler commits first: object cells or background cells, by step.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from htgrpo.backbones.base import Backbone
from htgrpo.config import Config, SamplerConfig
from htgrpo.eval.bootstrap import interval, per_prompt
from htgrpo.eval.geneval import summarize
from htgrpo.sampling import SampleResult, sample
from htgrpo.world.dataset import splits_for
from htgrpo.world.detect import ShapeDetector, score_images
from htgrpo.world.grammar import SHARED_PROMPT_TASKS, TASKS, Metadata
from htgrpo.world.palette import CELL_PX


def object_cells(records: list[dict[str, Any]], results, grid: int) -> torch.Tensor:
    """[B, N] bool: cells holding a detected object."""
    mask = torch.zeros(len(results), grid * grid, dtype=torch.bool)
    for i, res in enumerate(results):
        for det in res.detections:
            col, row = int(det.box[0]) // CELL_PX, int(det.box[1]) // CELL_PX
            mask[i, row * grid + col] = True
    return mask


def commit_order(sample_result: SampleResult, objects: torch.Tensor, steps: int) -> dict[str, Any]:
    """Per sampler step: tokens committed, and the share of them that are object cells."""
    per_step = []
    for s in range(1, steps + 1):
        at = sample_result.commit_step == s
        n = int(at.sum())
        per_step.append(
            {
                "step": s,
                "committed": n,
                "object_share": round(float((at & objects).sum()) / n, 4) if n else None,
            }
        )
    steps_f = sample_result.commit_step.float()
    obj_mean = float(steps_f[objects].mean()) if objects.any() else None
    bg_mean = float(steps_f[~objects].mean()) if (~objects).any() else None
    return {"per_step": per_step, "mean_step_object": obj_mean, "mean_step_background": bg_mean}


def reward_spread(records: list[dict[str, Any]], group: int) -> float:
    """Share of prompts whose `group` samples do not all get the same partial-credit reward."""
    rewards = np.array([r["reward"] for r in records]).reshape(-1, group)
    return float((rewards.max(1) - rewards.min(1) > 1e-9).mean())


def evaluate_shapes(
    backbone: Backbone,
    cfg: Config,
    *,
    split: str | None = None,
    images_per_prompt: int | None = None,
    seed: int | None = None,
    sampler: SamplerConfig | None = None,
    rows: list[Metadata] | None = None,
    progress: bool = True,
) -> tuple[dict[str, Any], np.ndarray, list[Metadata]]:
    """Sample, detect and score a split. Returns (report, images, metadata per image)."""
    split = split or cfg.eval.split
    ipp = images_per_prompt or cfg.eval.images_per_prompt
    sampler = sampler or cfg.sampler
    rows = rows if rows is not None else splits_for(cfg.world).get(split)
    metas = [r for r in rows for _ in range(ipp)]
    gen = torch.Generator().manual_seed(cfg.eval.seed if seed is None else seed)
    start = time.perf_counter()
    result = sample(backbone, [m["prompt"] for m in metas], sampler, gen, progress=progress)
    images = result.decode(backbone)
    detector = ShapeDetector()
    detections = detector.detect_many(images)
    records = score_images(metas, images, detector, results=detections)
    seconds = time.perf_counter() - start
    summary = summarize(records)
    prompt_rows = per_prompt(records)
    by_task: dict[str, list[float]] = defaultdict(list)
    for r in records:
        by_task[r["tag"]].append(r["reward"])
    objects = object_cells(records, detections, backbone.layout.grid_h)
    report = {
        "benchmark": "shapes",
        "split": split,
        "images_per_prompt": ipp,
        "seed": cfg.eval.seed if seed is None else seed,
        "prompts": len(rows),
        "images": len(metas),
        "summary": summary,
        "overall_interval": interval(prompt_rows, "correct", seed=0),
        "per_prompt": prompt_rows,
        "reward_per_task": {t: round(float(np.mean(v)), 4) for t, v in by_task.items()},
        "reward_mean": round(float(np.mean([r["reward"] for r in records])), 4),
        "valid_images": round(float(np.mean([r["valid"] for r in records])), 4),
        "prompts_with_reward_spread": round(reward_spread(records, ipp), 4),
        "commit_order": commit_order(result, objects, sampler.steps) if sampler.kind == "maskgit" else None,
        "sampler": sampler.model_dump(),
        "seconds": round(seconds, 2),
        "images_per_second": round(len(metas) / max(result.total_seconds, 1e-9), 2),
        "outside_forward_share": round(1 - result.model_seconds / max(result.total_seconds, 1e-9), 4),
        "forward_passes_per_image": result.forward_passes,
        "note": f"{', '.join(SHARED_PROMPT_TASKS)}: test prompts are also training prompts (tiny prompt space)",
    }
    return report, images, metas


def markdown_table(report: dict[str, Any], name: str = "model") -> str:
    s = report["summary"]
    tasks = [t for t in TASKS if t in s]
    head = "| model | overall | " + " | ".join(tasks) + " |"
    sep = "|" + "---|" * (len(tasks) + 2)
    row = f"| {name} | {s['overall']:.3f} | " + " | ".join(f"{s[t]:.3f}" for t in tasks) + " |"
    return "\n".join([head, sep, row])


def write_report(report: dict[str, Any], out: str | Path, name: str = "model") -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    out.with_suffix(".md").write_text(
        f"# Shapes benchmark ({report['split']} split, {report['images_per_prompt']} images per prompt)\n\n"
        + markdown_table(report, name)
        + f"\n\n{report['note']}\n"
    )
    return out
