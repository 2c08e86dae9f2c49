"""Run the compiled pipeline (pipelines/htgrpo.yaml) on this machine with KFP's local SubprocessRunner.

Every task runs as a subprocess of this Python environment (``use_venv=False``: nothing is installed), with
local storage (``OUT/store``) and the embedded MLflow store (``sqlite:///OUT/mlflow.db``) unless told otherwise.
Kubernetes settings (node pools, secrets, accelerators) have no effect locally.
"""

from __future__ import annotations

import builtins
import importlib.util
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from htgrpo.cpus import SHARED_ENV
from htgrpo.errors import HtgrpoError
from htgrpo.world.grammar import TASKS


def load_pipeline_module(path: str | Path = "pipelines/htgrpo.py"):
    """Import pipelines/htgrpo.py (it is not part of the installed package)."""
    path = Path(path).resolve()
    if not path.is_file():
        raise HtgrpoError(f"{path} does not exist; run this from the repository root or pass --pipeline-py")
    if str(path.parents[1]) not in sys.path:
        sys.path.insert(0, str(path.parents[1]))
    spec = importlib.util.spec_from_file_location("htgrpo_pipeline_module", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def run_local(
    pipeline_yaml: str | Path,
    *,
    config: str,
    init_checkpoint: str,
    out: str | Path,
    overrides: list[str] | None = None,
    shards: int | None = None,
    run_name: str | None = None,
    storage_uri: str | None = None,
    tracking_uri: str | None = None,
) -> dict[str, Any]:
    """Run the compiled pipeline; returns summary.json of the run plus the wall time and the per-step split."""
    from kfp import components, local

    from htgrpo.config import check_run_name
    from htgrpo.pipeline.steps import load_run_config, read_timings, resolve_config
    from htgrpo.storage import join_uri, open_store

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    run_name = check_run_name(run_name or time.strftime("local-%Y%m%d-%H%M%S"), "--run-name")
    storage_uri = storage_uri or f"file://{out / 'store'}"
    tracking_uri = tracking_uri or f"sqlite:///{out / 'mlflow.db'}"
    overrides = [*(overrides or []), f"tracking.artifact_root={out / 'mlruns'}"]
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(out / "kfp"),
        raise_on_error=True,
    )
    pipeline = components.load_component_from_file(str(pipeline_yaml))
    args: dict[str, Any] = {
        "config": str(Path(config).resolve()) if "\n" not in config else config,
        "overrides": overrides,
        "init_checkpoint": init_checkpoint,
        "run_name": run_name,
        "storage_uri": storage_uri,
        "tracking_uri": tracking_uri,
    }
    if shards is not None:
        args["shards"] = shards
    start = time.perf_counter()
    # kfp.local indents print() per task by swapping builtins.print; ParallelFor iterations run in threads, and
    # their interleaved swaps can leave it indented for the rest of the process (kfp 2.17.3): put it back
    original_print = builtins.print
    # every task of this run shares this machine: parallel rollout shards split its threads (htgrpo.cpus)
    shared_before = os.environ.get(SHARED_ENV)
    os.environ[SHARED_ENV] = "1"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*non-Python base image.*")
            warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
            pipeline(**args)
    finally:
        builtins.print = original_print
        if shared_before is None:
            os.environ.pop(SHARED_ENV, None)
        else:
            os.environ[SHARED_ENV] = shared_before
    wall = time.perf_counter() - start
    storage = resolve_config(args["config"], overrides, rounds=1, shards=1, storage_uri=storage_uri).storage
    run_root = join_uri(storage_uri, "runs", run_name)
    store = open_store(run_root, storage)
    summary = json.loads(store.get_bytes("summary.json"))
    cfg = load_run_config(json.dumps(_yaml_to_dict(store.get_bytes("config.yaml"))))
    timings = read_timings(run_root, cfg)
    summary.update(wall_seconds=round(wall, 2), timings=timings)
    (out / f"{run_name}.json").write_text(json.dumps(summary, indent=2))
    return summary


def _yaml_to_dict(data: bytes) -> dict[str, Any]:
    import yaml

    return yaml.safe_load(data)


def step_kind(step: str) -> str:
    """The component a timings row belongs to (round-001-rollout-000 -> rollout, evaluate-base, ...)."""
    kind = step.split("-", 2)[-1] if step.startswith("round-") else step
    return "rollout" if kind.startswith("rollout") else kind


def format_summary(summary: dict[str, Any]) -> str:
    """Base-vs-trained scores per task, the time split per component, and where to look in MLflow."""
    base, trained = summary["base"], summary["trained"]
    tasks = ["overall", *[t for t in TASKS if t in base]]
    lines = [
        f"shapes benchmark, {summary['split']} split: base vs trained",
        "| task | base | trained | change |",
        "|---|---|---|---|",
    ]
    for t in tasks:
        lines.append(f"| {t} | {base[t]:.3f} | {trained[t]:.3f} | {trained[t] - base[t]:+.3f} |")
    comp = summary.get("comparison")
    if comp:
        b, t, d = comp["base"], comp["trained"], comp["change"]
        says = {
            "better": "the trained model beats the base beyond the interval",
            "worse": "the trained model is worse than the base beyond the interval",
            "tied": "the interval includes 0: no difference is shown at this sample size",
        }[comp["verdict"]]
        lines += [
            "",
            f"overall with 95 % intervals ({comp['images_per_prompt']} images per prompt; bootstrap over prompts):",
            f"  base    {b['value']:.3f} [{b['lo']:.3f}, {b['hi']:.3f}]",
            f"  trained {t['value']:.3f} [{t['lo']:.3f}, {t['hi']:.3f}]",
            f"  change  {d['value']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] (paired): {says}",
        ]
    timings = summary.get("timings", [])
    if timings:
        inside = sum(r["seconds"] for r in timings)
        startup = sum(r.get("startup_s", 0.0) for r in timings)
        lines += [
            "",
            f"wall time {summary['wall_seconds']:.1f} s for {len(timings)} tasks; per component (tasks summed, "
            "some run in parallel):",
            f"  {'component':<16} {'tasks':>5} {'inside':>9} {'start-up':>9}",
        ]
        by_kind: dict[str, list[float]] = {}
        for r in timings:
            row = by_kind.setdefault(step_kind(r["step"]), [0, 0.0, 0.0])
            row[0] += 1
            row[1] += r["seconds"]
            row[2] += r.get("startup_s", 0.0)
        lines += [f"  {k:<16} {n:>5} {s_in:>7.1f} s {s_up:>7.1f} s" for k, (n, s_in, s_up) in by_kind.items()]
        lines.append(
            f"  inside the steps {inside:.1f} s, task start-up (interpreter, KFP executor, imports) {startup:.1f} s"
        )
    reg = summary.get("registry") or {}
    ml = summary.get("mlflow") or {}
    uri = ml.get("tracking_uri")
    if uri:
        promoted = ", promoted to champion" if reg.get("promoted") else ""
        lines += [
            "",
            f"MLflow: {uri}, experiment {ml['experiment']!r}, parent run {ml['parent_run_id']} (one child run per "
            "round and stage, and per evaluation)",
            f"  registered model {reg.get('name')} version {reg.get('version')} (alias candidate{promoted})",
        ]
        if reg.get("reason"):
            lines.append(f"  {reg['reason']}")
        page = (
            f"#/experiments/{ml['experiment_id']}/runs/{ml['parent_run_id']}"
            if ml.get("experiment_id")
            else ""
        )
        if uri.startswith("sqlite:///"):
            lines.append(
                f"  look: make mlflow-ui MLFLOW_DB={uri[len('sqlite:///') :]}, then http://127.0.0.1:5000/{page}"
            )
        elif uri.startswith(("http://", "https://")):
            lines.append(f"  look: {uri.rstrip('/')}/{page}")
    lines.append(f"run directory: {summary['run_root']}")
    return "\n".join(lines)


__all__ = ["format_summary", "load_pipeline_module", "run_local", "step_kind"]
