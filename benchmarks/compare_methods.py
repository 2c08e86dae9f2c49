"""HT-GRPO against its baselines on the shapes world, from one base checkpoint, with one rollout budget.

Every method trains from the same base checkpoint for the same number of RL steps × prompts × group size (so the
same number of sampled images), on several seeds, and is then evaluated on the shapes test split (4 images per
prompt) and the unseen split. An HT-GRPO ablation table (no HCA, all-global inner loop, each partition rule, ρ) is
run on the first seed. Jobs run in parallel worker processes, one torch thread each.

    python benchmarks/compare_methods.py --init checkpoints/base --out benchmarks/results/compare_methods

Writes <out>.json (per method: overall_mean, overall_std, per_task, seeds, ...), <out>.md and <out>.png.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_results  # noqa: E402

METHODS = ("ht-grpo", "maskgrpo", "unigrpo", "d1", "tracegrpo", "coupled")
TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
ABLATIONS: dict[str, list[str]] = {
    "alpha=0 (no HCA)": ["rl.alpha=0"],
    "all-global inner loop": ["rl.n_global=6", "rl.n_struct=0", "rl.n_refine=0"],
    "partition=entropy0": ["rl.partition=entropy0"],
    "partition=entropy0_high": ["rl.partition=entropy0_high"],
    "rho=0.1": ["rl.rho=0.1"],
    "rho=0.5": ["rl.rho=0.5"],
}


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Train one (method, seed, overrides) from the base checkpoint and evaluate it. Runs in a worker."""
    import torch

    torch.set_num_threads(1)
    from htgrpo.checkpoint import load_checkpoint
    from htgrpo.config import Config, apply_overrides
    from htgrpo.evaluate import evaluate_shapes
    from htgrpo.rl.trainer import GRPOTrainer

    backbone, saved = load_checkpoint(job["init"])
    data = saved.model_dump(mode="json")
    data["rl"] = dict(job["rl"])  # the run config's rl section, not whatever the base was saved with
    apply_overrides(data, job["overrides"])
    cfg = Config.model_validate(data)
    start = time.perf_counter()
    history: list[dict[str, Any]] = []
    if job["method"] != "base":
        trainer = GRPOTrainer(cfg, backbone, run_dir=None, progress=False)
        history = trainer.train()
    train_seconds = time.perf_counter() - start
    evals = {}
    for split in job["splits"]:
        report, _, _ = evaluate_shapes(
            backbone,
            cfg,
            split=split,
            images_per_prompt=job["eval_images_per_prompt"],
            seed=job["eval_seed"],
            progress=False,
        )
        evals[split] = {"summary": report["summary"], "reward_mean": report["reward_mean"]}
        if split == "test":
            evals[split]["commit_order"] = report["commit_order"]
    fp = history[-1]["forward_passes_per_sample"] if history else None
    return {
        "label": job["label"],
        "method": job["method"],
        "seed": job["seed"],
        "overrides": job["overrides"],
        "train_seconds": round(train_seconds, 1),
        "time_split": {
            k: round(sum(h["times"][k] for h in history if "times" in h) / max(len(history), 1), 3)
            for k in ("rollout", "reward", "old_ref", "update")
        },
        "forward_passes_per_sample": fp,
        "reward_curve": [
            {"images": h["images_sampled"], "reward": h["reward_mean"], "zero_var": h["zero_variance_share"]}
            for h in history
        ],
        "zero_variance_share": (
            round(statistics.mean(h["zero_variance_share"] for h in history), 4) if history else None
        ),
        "eval": evals,
    }


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return (statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0)


def aggregate(results: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label in dict.fromkeys(r["label"] for r in results):
        rs = [r for r in results if r["label"] == label]
        test = [r["eval"]["test"]["summary"] for r in rs]
        m, s = _mean_std([t["overall"] for t in test])
        entry = {
            "method": rs[0]["method"],
            "overrides": rs[0]["overrides"],
            "overall_mean": round(m, 4),
            "overall_std": round(s, 4),
            "per_task": {
                t: {
                    "mean": round(_mean_std([x[t] for x in test])[0], 4),
                    "std": round(_mean_std([x[t] for x in test])[1], 4),
                }
                for t in TASKS
                if all(t in x for x in test)
            },
            "seeds": {str(r["seed"]): r["eval"]["test"]["summary"]["overall"] for r in rs},
            "wall_time_s_mean": round(statistics.mean(r["train_seconds"] for r in rs), 1),
            "time_split_s_per_step": rs[0]["time_split"],
            "forward_passes_per_sample": rs[0]["forward_passes_per_sample"],
            "zero_variance_share": rs[0]["zero_variance_share"]
            if len(rs) == 1
            else round(statistics.mean(r["zero_variance_share"] or 0 for r in rs), 4),
            "runs": rs,
        }
        rm, rsd = _mean_std([r["eval"]["test"]["reward_mean"] for r in rs])
        entry["test_reward_mean"], entry["test_reward_std"] = round(rm, 4), round(rsd, 4)
        if all("unseen" in r["eval"] for r in rs):
            um, us = _mean_std([r["eval"]["unseen"]["summary"]["overall"] for r in rs])
            entry["unseen_overall_mean"], entry["unseen_overall_std"] = round(um, 4), round(us, 4)
        out[label] = entry
    return out


def markdown(agg: dict[str, Any], settings: dict[str, Any], ablation_labels: list[str]) -> str:
    lines = [
        "# HT-GRPO and its baselines on the shapes world",
        "",
        "Settings: " + ", ".join(f"{k} {v}" for k, v in settings.items() if k != "machine"),
        "",
        "| method | overall (test) | "
        + " | ".join(TASKS)
        + " | unseen | reward (test) | zero-adv groups | s/run | fwd/sample |",
        "|" + "---|" * (len(TASKS) + 7),
    ]

    def row(label: str, e: dict[str, Any]) -> str:
        tasks = " | ".join(
            f"{e['per_task'][t]['mean']:.3f} ± {e['per_task'][t]['std']:.3f}" if t in e["per_task"] else "–"
            for t in TASKS
        )
        unseen = f"{e['unseen_overall_mean']:.3f}" if "unseen_overall_mean" in e else "–"
        reward = (
            f"{e['test_reward_mean']:.3f} ± {e['test_reward_std']:.3f}" if "test_reward_mean" in e else "–"
        )
        fp = (e["forward_passes_per_sample"] or {}).get("total", "–")
        zv = "–" if e["zero_variance_share"] is None else f"{e['zero_variance_share']:.2f}"
        return (
            f"| {label} | {e['overall_mean']:.3f} ± {e['overall_std']:.3f} | {tasks} | {unseen} | {reward} | {zv} | "
            f"{e['wall_time_s_mean']:.0f} | {fp} |"
        )

    for label, e in agg.items():
        if label not in ablation_labels:
            lines.append(row(label, e))
    if ablation_labels:
        lines += ["", "## HT-GRPO ablations (first seed)", "", lines[4], lines[5]]
        for label in ablation_labels:
            if label in agg:
                lines.append(row(label, agg[label]))
    lines += [
        "",
        "Time per RL step (s, mean over steps; rollout / reward / old+ref log-probs / update):",
        "",
    ]
    for label, e in agg.items():
        ts = e["time_split_s_per_step"]
        if e["method"] != "base":
            lines.append(f"- {label}: {ts['rollout']} / {ts['reward']} / {ts['old_ref']} / {ts['update']}")
    return "\n".join(lines)


def plot(agg: dict[str, Any], path: Path, ablation_labels: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for label, e in agg.items():
        if e["method"] == "base" or label in ablation_labels:
            continue
        curves = [r["reward_curve"] for r in e["runs"]]
        n = min(len(c) for c in curves)
        xs = [curves[0][i]["images"] for i in range(n)]
        ys = [statistics.mean(c[i]["reward"] or 0.0 for c in curves) for i in range(n)]
        k = max(1, n // 10)  # moving average over ~10 % of the run
        smooth = [statistics.mean(ys[max(0, i - k + 1) : i + 1]) for i in range(n)]
        ax.plot(xs, smooth, label=label, lw=2 if label == "ht-grpo" else 1)
    ax.set_xlabel("sampled images")
    ax.set_ylabel("rollout reward (partial credit, mean over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _notes(path: str | None) -> str:
    return "\n\n" + Path(path).read_text() if path else ""


def render(out: Path, notes: str | None) -> None:
    """Re-aggregate the stored runs of a finished benchmark and rewrite its Markdown table and plot."""
    import json

    data = json.loads(out.with_suffix(".json").read_text())
    runs = [
        r
        for entry in [data["base"], *data["methods"].values(), *data["ablations"].values()]
        for r in entry["runs"]
    ]
    agg = aggregate(runs)
    labels = list(data["ablations"])
    data["base"] = agg.get("base")
    data["methods"] = {m: agg[m] for m in data["methods"]}
    data["ablations"] = {label: agg[label] for label in labels}
    write_results(out, data, markdown(agg, data["settings"], labels) + _notes(notes))
    plot(agg, out.with_suffix(".png"), labels)
    print(f"rewrote {out.with_suffix('.md')} and .png from {out.with_suffix('.json')}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--init", default="checkpoints/base")
    ap.add_argument("--out", default="benchmarks/results/compare_methods")
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=20, help="RL steps per run (same for every method)")
    ap.add_argument("--prompts-per-step", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--eval-images-per-prompt", type=int, default=4)
    ap.add_argument("--no-ablations", action="store_true")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--extra", nargs="*", default=[], help="more KEY=VALUE overrides for every run")
    ap.add_argument("--config", default="configs/tiny.yaml", help="its rl section is the starting point")
    ap.add_argument(
        "--render-only",
        action="store_true",
        help="rebuild <out>.md and .png from the runs stored in <out>.json (no training)",
    )
    ap.add_argument(
        "--notes", help="a Markdown file appended to <out>.md (e.g. the investigation of the results)"
    )
    args = ap.parse_args()
    if args.render_only:
        render(Path(args.out), args.notes)
        return
    import yaml

    rl_section = (yaml.safe_load(Path(args.config).read_text()) or {}).get("rl", {})
    common = [
        f"rl.steps={args.steps}",
        f"rl.prompts_per_step={args.prompts_per_step}",
        f"rl.group_size={args.group_size}",
        f"rl.lr={args.lr}",
        *args.extra,
    ]
    base_job = {
        "init": args.init,
        "splits": ["test", "unseen"],
        "eval_images_per_prompt": args.eval_images_per_prompt,
        "eval_seed": 1234,
        "rl": rl_section,
    }
    jobs = [base_job | {"label": "base", "method": "base", "seed": 0, "overrides": []}]
    for method in args.methods:
        for seed in args.seeds:
            jobs.append(
                base_job
                | {
                    "label": method,
                    "method": method,
                    "seed": seed,
                    "overrides": [*common, f"rl.method={method}", f"rl.seed={seed}"],
                }
            )
    ablation_labels: list[str] = []
    if not args.no_ablations and "ht-grpo" in args.methods:
        for label, extra in ABLATIONS.items():
            ablation_labels.append(f"ht-grpo, {label}")
            jobs.append(
                base_job
                | {
                    "label": f"ht-grpo, {label}",
                    "method": "ht-grpo",
                    "seed": args.seeds[0],
                    "overrides": [*common, "rl.method=ht-grpo", f"rl.seed={args.seeds[0]}", *extra],
                }
            )
    start = time.perf_counter()
    results = []
    ctx = mp.get_context("spawn")
    with ctx.Pool(args.workers) as pool:
        for i, res in enumerate(pool.imap_unordered(run_job, jobs), start=1):
            results.append(res)
            overall = res["eval"]["test"]["summary"]["overall"]
            print(
                f"[{i}/{len(jobs)}] {res['label']} seed {res['seed']}: test overall {overall:.3f}", flush=True
            )
    order = {j["label"]: k for k, j in enumerate(jobs)}
    results.sort(key=lambda r: (order[r["label"]], r["seed"]))
    agg = aggregate(results)
    settings = {
        "steps": args.steps,
        "prompts_per_step": args.prompts_per_step,
        "group_size": args.group_size,
        "sampled_images_per_run": args.steps * args.prompts_per_step * args.group_size,
        "seeds": args.seeds,
        "lr": args.lr,
        "eval": f"test + unseen, {args.eval_images_per_prompt} images/prompt",
        "wall_minutes": round((time.perf_counter() - start) / 60, 1),
        "machine": machine(),
    }
    out = Path(args.out)
    data = {
        "settings": settings,
        "base": agg.get("base"),
        "methods": {m: agg[m] for m in args.methods if m in agg},
        "ablations": {label: agg[label] for label in ablation_labels if label in agg},
    }
    write_results(out, data, markdown(agg, settings, ablation_labels) + _notes(args.notes))
    plot(agg, out.with_suffix(".png"), ablation_labels)
    print(f"wrote {out.with_suffix('.json')}, .md and .png in {settings['wall_minutes']} min")
    if any(math.isnan(e["overall_mean"]) for e in agg.values()):
        raise SystemExit("a run produced no score")


if __name__ == "__main__":
    main()
