"""Orchestration overhead of the Kubeflow pipeline: the local pipeline run against ``htgrpo train``, same
configuration, same RL budget.

Both run on this machine as a user would run them: ``htgrpo pipeline run-local`` (the pipeline compiled with
``--rounds`` rounds, KFP's SubprocessRunner with ``use_venv=False``, every task its own process, the embedded MLflow
store) and ``htgrpo train --steps ROUNDS`` (one process, MLflow on as well). A pipeline round is exactly one RL step
of ``htgrpo train`` (``GRPOTrainer.train_step``: rollout, scoring, the three stages), so the budget is
ROUNDS x prompts_per_step x group_size images on both sides; ``--prompts-per-step`` and ``--group-size`` set the
work per step, and so how much each round's fixed cost (seven task processes) weighs.

The pipeline also scores the base and the trained model; ``htgrpo train`` does not. The result therefore gives two
ratios: pipeline / train (the issue's definition), and pipeline / (train + ``htgrpo evaluate`` of the base and of
the trained checkpoint), the same work done by hand. Per component it reports the tasks' wall time (process start to
the step's end, from ``timings/*.json`` that each step writes), split into start-up (interpreter, KFP executor,
imports) and the step itself, and the time outside all of them (a task's interpreter shutdown after its step, KFP's
own work between tasks).

    python benchmarks/pipeline_overhead.py                     # the demo's settings: 2 rounds, configs/tiny.yaml
    python benchmarks/pipeline_overhead.py --rounds 4 --prompts-per-step 8 --group-size 8
    python benchmarks/pipeline_overhead.py --rounds 1 --prompts-per-step 2 --group-size 2 \\
        --set eval.images_per_prompt=1 --out /tmp/overhead      # a quick check that it works

Writes OUT.json and OUT.md (default benchmarks/results/pipeline_overhead). Run it on a quiet machine: every
number is a wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import machine, write_results  # noqa: E402

# as `make` runs everything (Makefile exports): glibc keeps the large temporaries instead of unmapping them
ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000", "PYTHONUNBUFFERED": "1"}


def htgrpo() -> list[str]:
    exe = Path(sys.executable).parent / "htgrpo"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "htgrpo.cli"]


def timed(cmd: list[str], log: Path) -> dict[str, float]:
    """Run ``cmd`` (output to ``log``); wall seconds and the CPU seconds of it and every process it waited for."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, **ENV}, cwd=ROOT)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise SystemExit(f"{' '.join(cmd[:3])} ... failed ({proc.returncode}); end of {log}:\n{tail}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2)}


def covered(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of intervals."""
    total, end = 0.0, -float("inf")
    for lo, hi in sorted(intervals):
        if hi <= end:
            continue
        total += hi - max(lo, end)
        end = hi
    return total


def rounds_wall(timings: list[dict[str, Any]]) -> float | None:
    """Wall time of the RL rounds: from the first round task's process start to the last round task's end, less
    any other task (the local runner may run evaluate-base between rounds) that ran inside that span."""
    spans = [(r.get("process_start", r["start"]), r["end"], r["step"]) for r in timings if "end" in r]
    rounds = [(lo, hi) for lo, hi, step in spans if step.startswith("round-")]
    if not rounds:
        return None
    first, last = min(lo for lo, _ in rounds), max(hi for _, hi in rounds)
    others = [
        (max(lo, first), min(hi, last))
        for lo, hi, step in spans
        if not step.startswith("round-") and hi > first
    ]
    return last - first - covered([(lo, hi) for lo, hi in others if hi > lo])


def components(timings: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    from htgrpo.pipeline.local import step_kind

    out: dict[str, dict[str, float]] = {}
    for r in timings:
        row = out.setdefault(
            step_kind(r["step"]), {"tasks": 0, "wall_s": 0.0, "startup_s": 0.0, "inside_s": 0.0}
        )
        startup = r.get("startup_s", 0.0)
        row["tasks"] += 1
        row["wall_s"] += startup + r["seconds"]
        row["startup_s"] += startup
        row["inside_s"] += r["seconds"]
        row["cpu_s"] = row.get("cpu_s", 0.0) + r.get("cpu_s", 0.0)
    return {k: {kk: round(v, 2) for kk, v in row.items()} for k, row in out.items()}


def combine(paths: list[str], out: str) -> None:
    """One table and plot over several runs of this script that differ in work per round (``--sweep``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = sorted((json.loads(Path(p).read_text()) for p in paths), key=lambda d: d["images"] / d["rounds"])
    rows = []
    for d in runs:
        evals = sum(e["wall_s"] for e in d["evaluate"].values())
        rounds = rounds_wall(d["timings"])
        rows.append(
            {
                "prompts_per_round": d["prompts_per_step"],
                "images_per_round": d["images"] // d["rounds"],
                "rounds": d["rounds"],
                "pipeline_s": d["pipeline"]["wall_s"],
                "train_s": d["train"]["wall_s"],
                "evaluate_s": round(evals, 2),
                "pipeline_to_train": round(d["pipeline"]["wall_s"] / d["train"]["wall_s"], 3),
                "pipeline_to_train_and_evaluate": round(
                    d["pipeline"]["wall_s"] / (d["train"]["wall_s"] + evals), 3
                ),
                "rounds_to_train": round(rounds / d["train"]["wall_s"], 3) if rounds else None,
                "scores": d["scores"],
            }
        )
    x = [r["images_per_round"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(
        x,
        [r["pipeline_to_train_and_evaluate"] for r in rows],
        "o-",
        label="pipeline / (train + 2 evaluations)",
    )
    ax.plot(x, [r["rounds_to_train"] for r in rows], "s-", label="RL rounds / train")
    ax.plot(x, [r["pipeline_to_train"] for r in rows], "^--", label="pipeline / train (no evaluations)")
    ax.axhline(1.3, color="grey", linestyle=":", label="target 1.3x")
    ax.set_xlabel("images sampled per round (prompts x group size)")
    ax.set_ylabel("wall-time ratio")
    ax.set_xscale("log", base=2)
    ax.set_title("Local pipeline vs htgrpo train, same config and budget")
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = Path(out).with_suffix(".png")
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)
    lines = [
        "# Pipeline orchestration overhead against work per round",
        "",
        f"{runs[0]['rounds']} rounds, {runs[0]['config']}, {runs[0]['shards']} rollout shards, MLflow on (sqlite) on "
        "both sides; one `python benchmarks/pipeline_overhead.py --prompts-per-step N` run per row. A round's fixed "
        "cost (seven task processes, torch imported by four of them, MLflow by one) is the same at every size; "
        "the work grows with the images per round.",
        "",
        "| prompts / round | images / round | pipeline s | train s | 2 evaluations s | pipeline / (train + evals) "
        "| RL rounds / train | pipeline / train |",
        "|---|---|---|---|---|---|---|---|",
        *[
            f"| {r['prompts_per_round']} | {r['images_per_round']} | {r['pipeline_s']:.1f} | {r['train_s']:.1f} | "
            f"{r['evaluate_s']:.1f} | **{r['pipeline_to_train_and_evaluate']:.2f}x** | {r['rounds_to_train']:.2f}x | "
            f"{r['pipeline_to_train']:.2f}x |"
            for r in rows
        ],
        "",
        f"![ratio against work per round]({png.name})",
        "",
        "Wall seconds per component (tasks summed; the two rollout shards of a round run side by side):",
        "",
        "| component | " + " | ".join(f"{r['prompts_per_round']} prompts / round" for r in rows) + " |",
        "|---|" + "---|" * len(rows),
        *[
            f"| {name} | "
            + " | ".join(f"{d['components'].get(name, {}).get('wall_s', 0):.1f}" for d in runs)
            + " |"
            for name in runs[-1]["components"]
        ],
        "| task start-up, all tasks | "
        + " | ".join(f"{d['task_startup_s']['total']:.1f}" for d in runs)
        + " |",
        "| outside every task | " + " | ".join(f"{d['outside_steps_s']:.1f}" for d in runs) + " |",
        "",
        f"Machine: {runs[0]['machine']}.",
    ]
    write_results(
        out,
        {"runs": rows, "sources": [str(p) for p in paths], "machine": runs[0]["machine"]},
        "\n".join(lines),
    )
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/tiny.yaml")
    p.add_argument("--init", default="checkpoints/base", help="base checkpoint")
    p.add_argument(
        "--rounds", type=int, default=2, help="pipeline rounds = RL steps of htgrpo train (demo: 2)"
    )
    p.add_argument(
        "--prompts-per-step", type=int, default=None, help="rl.prompts_per_step (default: config's)"
    )
    p.add_argument("--group-size", type=int, default=None, help="rl.group_size (default: config's)")
    p.add_argument(
        "--shards", type=int, default=None, help="rollout shards (default: the pipeline's, as the demo)"
    )
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--no-eval", action="store_true", help="skip the htgrpo evaluate runs of the train side")
    p.add_argument("--work", default=".cache/pipeline_overhead", help="scratch directory (emptied first)")
    p.add_argument("--out", default="benchmarks/results/pipeline_overhead", help="result stem (.json, .md)")
    p.add_argument(
        "--sweep",
        default=None,
        metavar="N,N,...",
        help="run once per prompts-per-step value (OUT-N.json/.md each), then write OUT.md/.json/.png over them",
    )
    p.add_argument("--combine", nargs="+", default=None, metavar="RUN.json", help="only redo the sweep table")
    args = p.parse_args(argv)
    if args.combine:
        combine(args.combine, args.out)
        return 0
    if args.sweep:
        stems = []
        given = list(sys.argv[1:] if argv is None else argv)
        # the other arguments, as given, for each run ("--sweep N,N" and "--sweep=N,N" both dropped)
        rest = [
            a for k, a in enumerate(given) if not a.startswith("--sweep") and given[k - 1 : k] != ["--sweep"]
        ]
        for n in args.sweep.split(","):
            stem = f"{args.out}-{int(n)}"
            main([*rest, "--prompts-per-step", n, "--out", stem])
            stems.append(stem + ".json")
        combine([str(ROOT / s) if not Path(s).is_absolute() else s for s in stems], args.out)
        return 0

    from htgrpo.config import load_config
    from htgrpo.pipeline.local import load_pipeline_module

    overrides = list(args.overrides)
    if args.prompts_per_step is not None:
        overrides.append(f"rl.prompts_per_step={args.prompts_per_step}")
    if args.group_size is not None:
        overrides.append(f"rl.group_size={args.group_size}")
    cfg = load_config(ROOT / args.config, overrides)
    shards = args.shards or cfg.pipeline.shards
    work = (ROOT / args.work).resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    sets = [x for o in overrides for x in ("--set", o)]
    cache = ["--set", f"storage.cache_dir={work / 'cache'}"]

    package = load_pipeline_module(ROOT / "pipelines" / "htgrpo.py").compile_pipeline(
        work / "htgrpo.yaml", rounds=args.rounds, settings=cfg.pipeline
    )
    pipe = timed(
        [*htgrpo(), "pipeline", "run-local", "--pipeline", str(package), "--config", args.config, "--init",
         args.init, "--out", str(work / "pipeline"), "--run-name", "bench", "--shards", str(shards), *sets, *cache],
        work / "pipeline.log",
    )  # fmt: skip
    summary = json.loads((work / "pipeline" / "bench.json").read_text())
    train = timed(
        [*htgrpo(), "train", "--config", args.config, "--init", args.init, "--out", str(work / "train"),
         "--steps", str(args.rounds), *sets, *cache, "--set", "tracking.enabled=true",
         "--set", f"tracking.tracking_uri=sqlite:///{work / 'train' / 'mlflow.db'}"],
        work / "train.log",
    )  # fmt: skip
    trained = json.loads((work / "train.log").read_text().strip().splitlines()[-1])["checkpoint"]
    evals: dict[str, dict[str, float]] = {}
    if not args.no_eval:
        for name, ckpt in (("base", args.init), ("trained", trained)):
            evals[name] = timed(
                [*htgrpo(), "evaluate", "--benchmark", "shapes", "--checkpoint", ckpt, "--config", args.config,
                 *sets, "--out", str(work / "eval" / f"{name}.json")],
                work / f"eval-{name}.log",
            )  # fmt: skip

    timings = summary["timings"]
    spans = [(r.get("process_start", r["start"]), r["end"]) for r in timings if "end" in r]
    rl_span = rounds_wall(timings)
    by_task = covered(spans)
    startups = [r["startup_s"] for r in timings if "startup_s" in r]
    script = train["wall_s"] + sum(e["wall_s"] for e in evals.values())
    data = {
        "what": "htgrpo pipeline run-local vs htgrpo train, same config and RL budget",
        "config": args.config,
        "overrides": overrides,
        "rounds": args.rounds,
        "prompts_per_step": cfg.rl.prompts_per_step,
        "group_size": cfg.rl.group_size,
        "images": args.rounds * cfg.rl.prompts_per_step * cfg.rl.group_size,
        "shards": shards,
        "eval": {"split": cfg.eval.split, "images_per_prompt": cfg.eval.images_per_prompt},
        "pipeline": {**pipe, "tasks": len(timings), "rl_span_s": round(rl_span, 2) if rl_span else None},
        "train": train,
        "evaluate": evals,
        "ratio_pipeline_to_train": round(pipe["wall_s"] / train["wall_s"], 3),
        "ratio_pipeline_to_train_and_evaluate": round(pipe["wall_s"] / script, 3) if evals else None,
        "ratio_rl_rounds_to_train": round(rl_span / train["wall_s"], 3) if rl_span else None,
        "components": components(timings),
        "task_startup_s": {
            "mean": round(sum(startups) / len(startups), 3) if startups else None,
            "max": round(max(startups), 3) if startups else None,
            "total": round(sum(startups), 2),
        },
        "outside_steps_s": round(pipe["wall_s"] - by_task, 2),
        "scores": {"base": summary["base"]["overall"], "trained": summary["trained"]["overall"]},
        "reward_last_train": json.loads((work / "train.log").read_text().strip().splitlines()[-1])[
            "reward_last"
        ],
        "machine": machine(),
        "timings": timings,
    }
    lines = [
        "# Pipeline orchestration overhead",
        "",
        f"`htgrpo pipeline run-local` (KFP SubprocessRunner, use_venv=False) vs `htgrpo train`, {args.config}"
        + (f" with {' '.join(overrides)}" if overrides else "")
        + f": {args.rounds} round(s) = RL steps x {cfg.rl.prompts_per_step} prompts x {cfg.rl.group_size} images"
        f" = {data['images']} images; {shards} rollout shard(s); MLflow on (sqlite) on both sides.",
        "",
        "| run | wall s | CPU s |",
        "|---|---|---|",
        f"| pipeline ({len(timings)} tasks, evaluations of base and trained included) | {pipe['wall_s']:.1f} | "
        f"{pipe['cpu_s']:.1f} |",
        f"| htgrpo train | {train['wall_s']:.1f} | {train['cpu_s']:.1f} |",
        *[f"| htgrpo evaluate ({n}) | {e['wall_s']:.1f} | {e['cpu_s']:.1f} |" for n, e in evals.items()],
        "",
        f"* pipeline / train: **{data['ratio_pipeline_to_train']:.2f}x**",
    ]
    if evals:
        lines.append(
            f"* pipeline / (train + the two evaluations, the same work): "
            f"**{data['ratio_pipeline_to_train_and_evaluate']:.2f}x**"
        )
    if rl_span:
        lines.append(
            f"* the RL rounds alone (first round task's start to the last stage's end, other tasks run between "
            f"them excluded) / train: "
            f"{data['ratio_rl_rounds_to_train']:.2f}x"
        )
    lines += [
        f"* task start-up (process start to the step function: interpreter, KFP executor, imports): mean "
        f"{data['task_startup_s']['mean']} s, {data['task_startup_s']['total']} s in all",
        f"* outside every task's start-up and step (interpreter shutdown after a step, KFP between tasks): "
        f"{data['outside_steps_s']:.1f} s",
        f"* overall score: base {data['scores']['base']:.3f}, trained {data['scores']['trained']:.3f}",
        "",
        "Per component (tasks summed; the rollout shards of a round run in parallel):",
        "",
        "| component | tasks | wall s | start-up s | inside s | CPU s |",
        "|---|---|---|---|---|---|",
        *[
            f"| {k} | {c['tasks']} | {c['wall_s']:.1f} | {c['startup_s']:.1f} | {c['inside_s']:.1f} | "
            f"{c.get('cpu_s', 0):.1f} |"
            for k, c in data["components"].items()
        ],
        "",
        f"Machine: {data['machine']}. Reproduce: `python benchmarks/pipeline_overhead.py "
        + " ".join(sys.argv[1:] if argv is None else argv)
        + "`",
    ]
    js, md = write_results(
        ROOT / args.out if not Path(args.out).is_absolute() else args.out, data, "\n".join(lines)
    )
    print("\n".join(lines))
    print(f"wrote {js} and {md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
