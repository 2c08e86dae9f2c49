"""HT-GRPO against its baselines on the shapes world: like for like, resumable, with bootstrap intervals.

Every method trains from the same base checkpoint (--init) with the rl section of --config and the same budget:
rl.steps x rl.prompts_per_step x rl.group_size sampled images, rl.optimizer_steps optimizer steps per rollout
(plans accumulated), the same reward (rl.rewards) and the run's own prompt mix (rl.task_weights of the config;
null = even over the pool), never the mix the base was pretrained on. Per-method settings are METHOD_OVERRIDES.

Phases, in this order:

  grid      each method's hyperparameter grid (--grid, a cartesian product over the flags) on the validation split,
            seed 0; the best val GenEval overall is the method's setting in the next two phases
  main      the base (no training) and every method x seed, evaluated on test and unseen; per method the seed-mean
            per-prompt rows give the scores, their bootstrap intervals and the paired differences (every method
            against the base, HT-GRPO against every baseline)
  ablation  HT-GRPO with its setting plus one change each, on the first seed; an ablation whose paired difference
            against the full method's run has lo > 0 is rerun on every seed

Each finished job is cached in <out>.runs/<key>.json (the key hashes everything that determines it: the base and
its manifest, the resolved rl section, the evaluation), and a cached job is never rerun. After every invocation,
interrupted or limited (--max-jobs, --phase, --methods, --seeds), all cached jobs are merged into <out>.json,
<out>.md and <out>.png, and the missing ones are listed as pending. <out>.json holds:

  settings     the budget, reward, RL task mix, seeds, grid, evaluation and bootstrap settings
  base         the base's test and unseen scores (as a method entry, without training costs)
  methods      per method: overall, reward, reward_aligned (when evaluated) as {value, lo, hi, half_width,
               seed_std}, per_task, unseen, vs_base (paired differences with verdicts), the chosen setting, the
               resolved rl section, forward passes per sample, optimizer steps per rollout, seconds, the task
               mix drawn and its runs (with their reward curves)
  ablations    per variant: the same, its change, vs_full_first_seed and, when rerun, vs_full_same_seeds
  grid         per method: each point's setting and val scores, the choice
  comparisons  every paired difference: {a, b, metric, value, lo, hi, half_width, verdict}
  pending      the jobs not finished yet, and why

    python benchmarks/compare_methods.py --init checkpoints/base --out benchmarks/results/compare_methods
    python benchmarks/compare_methods.py --phase grid --max-jobs 4     # a part of the work now
    python benchmarks/compare_methods.py --render-only                  # rebuild the three files from the cache
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import itertools
import json
import multiprocessing as mp
import os
import signal
import statistics
import sys
import time
import traceback
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_results  # noqa: E402
from htgrpo.config import RLConfig, apply_overrides  # noqa: E402
from htgrpo.eval.bootstrap import BOOTSTRAP_SAMPLES, interval, mean_rows, paired_difference, verdict  # noqa: E402
from htgrpo.world.grammar import TASKS  # noqa: E402

METHODS = ("ht-grpo", "maskgrpo", "unigrpo", "d1", "tracegrpo", "coupled")
DEFAULT_METHODS = ("ht-grpo", "maskgrpo", "tracegrpo", "unigrpo")
FULL = "ht-grpo"
METHOD_OVERRIDES: dict[str, list[str]] = {
    "ht-grpo": ["rl.partition=prompt_pmi", "rl.estimator=staged"],
    "maskgrpo": [],
    "unigrpo": [],
    "d1": [],
    "tracegrpo": [],
    "coupled": [],
}
"""Each method's own settings, applied to every job of that method (before its grid choice)."""

PHASES = ("grid", "main", "ablation")
PARTITIONS = ("commit", "entropy0", "entropy0_high", "oracle", "prompt_pmi", "group_disagreement")
DEFAULT_GRID = "rl.lr=1e-5,3e-5,1e-4"
GRID_SEED = 0
EVAL_SEED = 1234
METRICS = {"overall": "correct", "reward": "reward", "reward_aligned": "reward_aligned"}
"""Reported score -> the per-prompt row key it is computed from."""
TASK_ABBREV = {
    "single_object": "so",
    "two_object": "to",
    "counting": "cnt",
    "colors": "col",
    "position": "pos",
    "color_attr": "attr",
}
PLAN_FILE = "plan.json"


# --- the plan: settings, overrides and jobs ---------------------------------------------------------------


def short_hash(obj: Any, n: int = 16) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:n]


def _keyed_rl(rl: dict[str, Any] | None) -> dict[str, Any] | None:
    """The resolved rl section without the keys at their field default: a field added to RLConfig later (with a
    default that keeps the old behaviour) leaves the keys of cached jobs unchanged."""
    if rl is None:
        return None
    fields = RLConfig.model_fields
    return {
        k: v
        for k, v in rl.items()
        if k not in fields
        or fields[k].default_factory is not None
        or json.dumps(v) != json.dumps(_jsonable(fields[k].default))
    }


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def job_key(
    init: str,
    manifest: str | None,
    rl: dict[str, Any] | None,
    other: list[str],
    splits: list[str],
    images_per_prompt: int,
    eval_seed: int,
    eval_prompts: int | None,
) -> str:
    """The cache key of a job: everything that determines its result."""
    return short_hash(
        {
            "init": init,
            "manifest": manifest,
            "rl": _keyed_rl(rl),
            "other": other,
            "splits": splits,
            "images_per_prompt": images_per_prompt,
            "eval_seed": eval_seed,
            "eval_prompts": eval_prompts,
        }
    )


def manifest_sha256(init: str) -> str | None:
    """sha256 of the base checkpoint's manifest file (it lists every file's hash), if the base is a local one."""
    path = Path(init) / "manifest.json"
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def split_values(text: str) -> list[str]:
    """'1e-5,3e-5' -> ['1e-5', '3e-5']; commas inside [...] or {...} do not split ('[0.9,0.99],[0.8,0.9]')."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    out.append(cur.strip())
    return [v for v in out if v]


def grid_points(specs: Sequence[str]) -> list[list[str]]:
    """['rl.lr=1e-5,3e-5', 'rl.rho=0.25,0.5'] -> the cartesian product as override lists (first flag slowest)."""
    axes = []
    for spec in specs:
        if "=" not in spec:
            raise SystemExit(f"--grid {spec!r}: expected KEY=V1,V2,..., e.g. {DEFAULT_GRID}")
        key, values = spec.split("=", 1)
        vals = split_values(values)
        if not vals:
            raise SystemExit(f"--grid {spec!r}: no values")
        axes.append([f"{key.strip()}={v}" for v in vals])
    return [list(p) for p in itertools.product(*axes)] if axes else [[]]


def reward_override(text: str | None) -> str:
    """--reward NAME (weight 1) or a YAML mapping {name: weight, ...}; default {geneval_aligned: 1.0}."""
    if not text:
        return "rl.rewards={geneval_aligned: 1.0}"
    return f"rl.rewards={text}" if text.strip().startswith("{") else f"rl.rewards={{{text.strip()}: 1.0}}"


def resolve_rl(rl_section: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """The rl section a job trains with: the config's, with the job's rl.* overrides, validated and resolved
    (each method's own defaults filled in)."""
    data = {"rl": copy.deepcopy(rl_section)}
    apply_overrides(data, [o for o in overrides if o.startswith("rl.")])
    return RLConfig.model_validate(data["rl"]).model_dump(mode="json")


class Plan:
    """Everything that determines the jobs of one comparison."""

    def __init__(self, p: dict[str, Any]) -> None:
        self.p = p
        self.init: str = p["init"]
        self.rl_section: dict[str, Any] = p["rl_section"]
        self.manifest = manifest_sha256(self.init)
        self.common = [
            f"rl.steps={p['steps']}",
            f"rl.prompts_per_step={p['prompts_per_step']}",
            f"rl.group_size={p['group_size']}",
            f"rl.optimizer_steps={p['optimizer_steps']}",
            reward_override(p["reward"]),
            *p["extra"],
        ]
        self.grid = grid_points(p["grid"])
        self.methods: list[str] = list(p["methods"])
        self.seeds: list[int] = sorted(set(p["seeds"]))
        self.eval_prompts: int | None = p["eval_prompts"]
        self.signature = short_hash(
            {
                "init": self.init,
                "manifest": self.manifest,
                "rl": self.rl_section,
                "common": self.common,
                "grid": self.grid,
                "eval": [p["eval_images_per_prompt"], p["grid_images_per_prompt"], p["eval_seed"]],
                "eval_prompts": self.eval_prompts,
                "ablations": p["ablations"],
            }
        )

    def widen(self, cache: dict[str, dict[str, Any]]) -> None:
        """Add the methods and seeds of cached main jobs of this same comparison (a run limited with --methods
        or --seeds leaves the rest of the table in place)."""
        for res in cache.values():
            if (
                res.get("signature") != self.signature
                or res.get("phase") != "main"
                or res["method"] == "base"
            ):
                continue
            if res["method"] not in self.methods:
                self.methods.append(res["method"])
            if res["seed"] not in self.seeds:
                self.seeds = sorted({*self.seeds, res["seed"]})

    @property
    def first_seed(self) -> int:
        return self.seeds[0]

    def job(
        self,
        label: str,
        method: str,
        seed: int,
        phase: str,
        overrides: list[str],
        splits: list[str],
        images_per_prompt: int,
        **extra: Any,
    ) -> dict[str, Any]:
        rl = None if method == "base" else resolve_rl(self.rl_section, overrides)
        other = [o for o in overrides if not o.startswith("rl.")]
        key = job_key(
            self.init,
            self.manifest,
            rl,
            other,
            splits,
            images_per_prompt,
            self.p["eval_seed"],
            self.eval_prompts,
        )
        return {
            "key": key,
            "signature": self.signature,
            "label": label,
            "method": method,
            "seed": seed,
            "phase": phase,
            "overrides": overrides,
            "init": self.init,
            "rl_section": self.rl_section,
            "splits": splits,
            "images_per_prompt": images_per_prompt,
            "eval_seed": self.p["eval_seed"],
            "eval_prompts": self.eval_prompts,
            **extra,
        }

    def trained(self, method: str, seed: int, *parts: Sequence[str]) -> list[str]:
        """The overrides of a trained job: common, the method's own, then each part (grid choice, ablation)."""
        more = [o for part in parts for o in part]
        return [
            *self.common,
            *METHOD_OVERRIDES.get(method, []),
            *more,
            f"rl.method={method}",
            f"rl.seed={seed}",
        ]

    def base_job(self) -> dict[str, Any]:
        extra = [
            o for o in self.p["extra"] if not o.startswith("rl.")
        ]  # e.g. sampler settings change the eval
        return self.job(
            "base", "base", 0, "main", extra, ["test", "unseen"], self.p["eval_images_per_prompt"]
        )

    def grid_jobs(self, method: str) -> list[dict[str, Any]]:
        return [
            self.job(
                method,
                method,
                GRID_SEED,
                "grid",
                self.trained(method, GRID_SEED, point),
                ["val"],
                self.p["grid_images_per_prompt"],
                point=point,
            )
            for point in self.grid
        ]

    def main_job(self, method: str, seed: int, choice: list[str]) -> dict[str, Any]:
        return self.job(
            method,
            method,
            seed,
            "main",
            self.trained(method, seed, choice),
            ["test", "unseen"],
            self.p["eval_images_per_prompt"],
            choice=choice,
        )

    def ablations(self, choice: list[str]) -> dict[str, list[str]]:
        """HT-GRPO's ablations: one change each to its chosen setting (a change that resolves to the full method
        itself, e.g. its own partition rule, is left out)."""
        full = resolve_rl(self.rl_section, self.trained(FULL, 0, choice))
        candidates: dict[str, list[str]] = {
            "alpha=0 (no HCA)": ["rl.alpha=0"],
            "all-global": ["rl.n_global=6", "rl.n_struct=0", "rl.n_refine=0"],
            **{f"partition={p}": [f"rl.partition={p}"] for p in PARTITIONS if p != full["partition"]},
            "rho=0.1": ["rl.rho=0.1"],
            "rho=0.5": ["rl.rho=0.5"],
        }
        # the other reading of the estimator (re-masking the final image, or replaying the visited states)
        other = "staged" if full["estimator"] == "trajectory" else "trajectory"
        candidates[f"estimator={other}"] = [f"rl.estimator={other}"]
        if not full.get("score_cfg"):
            candidates["score_cfg=true"] = ["rl.score_cfg=true"]
        else:
            candidates["score_cfg=false"] = ["rl.score_cfg=false"]
        return {
            name: change
            for name, change in candidates.items()
            if resolve_rl(self.rl_section, self.trained(FULL, 0, choice, change)) != full
        }

    def ablation_job(self, name: str, change: list[str], seed: int, choice: list[str]) -> dict[str, Any]:
        return self.job(
            f"{FULL}, {name}",
            FULL,
            seed,
            "ablation",
            self.trained(FULL, seed, choice, change),
            ["test", "unseen"],
            self.p["eval_images_per_prompt"],
            ablation=name,
            change=change,
            choice=choice,
        )


# --- choices and rules ------------------------------------------------------------------------------------


def choose_setting(points: Sequence[dict[str, Any]]) -> int | None:
    """Index of the grid point with the best val GenEval overall (the first of equals), or None while a point
    has no score yet (the grid is incomplete)."""
    if not points or any(p.get("val_overall") is None for p in points):
        return None
    best = max(p["val_overall"] for p in points)
    return next(i for i, p in enumerate(points) if p["val_overall"] == best)


def ablations_to_rerun(deltas: dict[str, dict[str, float] | None]) -> list[str]:
    """Ablations whose paired difference against the full method (GenEval overall, same seed) has lo > 0: they
    beat the full method beyond the interval on one seed, so every seed is run to see whether that holds."""
    return [name for name, d in deltas.items() if d is not None and d["lo"] > 0]


# --- one job (runs in a worker process) -------------------------------------------------------------------


def eval_rows(world: Any, split: str, per_task: int | None) -> list[dict[str, Any]] | None:
    """The split's prompts, or only the first ``per_task`` of each task (None: the whole split)."""
    if per_task is None:
        return None
    from htgrpo.world.grammar import splits_for

    seen: Counter[str] = Counter()
    rows = []
    for row in splits_for(world).get(split):
        if seen[row["tag"]] < per_task:
            rows.append(row)
            seen[row["tag"]] += 1
    return rows


def drawn_task_mix(trainer: Any) -> dict[str, int]:
    """How many prompts of each task the trainer drew over its steps (the draws are seeded per step, so they
    are recomputed without sampling anything)."""
    done, counts = trainer.step, Counter()
    try:
        for step in range(done):
            trainer.step = step
            counts.update(trainer.prompts[i]["tag"] for i in trainer.step_prompts())
    finally:
        trainer.step = done
    return {t: counts[t] for t in TASKS if counts[t]}


def _mean(xs: Sequence[float]) -> float | None:
    return round(statistics.mean(xs), 4) if xs else None


def history_summary(history: Sequence[dict[str, Any]]) -> dict[str, Any]:
    updated = [h for h in history if "train" in h.get("forward_passes_per_sample", {})]
    timed = [h for h in history if "times" in h]
    return {
        "forward_passes_per_sample": (
            {
                k: _mean([h["forward_passes_per_sample"][k] for h in updated])
                for k in ("rollout", "old", "ref", "train", "total")
            }
            if updated
            else None
        ),
        "optimizer_steps_per_rollout": _mean(
            [h["optimizer_steps"] for h in updated if "optimizer_steps" in h]
        ),
        "time_split_s_per_step": (
            {k: _mean([h["times"][k] for h in timed]) for k in ("rollout", "reward", "old_ref", "update")}
            if timed
            else None
        ),
        "zero_variance_share": _mean(
            [h["zero_variance_share"] for h in history if "zero_variance_share" in h]
        ),
        "steps_skipped": sum(1 for h in history if "skipped" in h),
        "reward_curve": [
            {
                "images": h["images_sampled"],
                "reward": h["reward_mean"],
                "zero_var": h.get("zero_variance_share"),
            }
            for h in history
        ],
    }


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Train one job from the base checkpoint (not the base itself) and evaluate it on its splits."""
    import torch

    torch.set_num_threads(1)
    from htgrpo.checkpoint import load_checkpoint
    from htgrpo.config import Config
    from htgrpo.evaluate import evaluate_shapes
    from htgrpo.rl.trainer import GRPOTrainer

    backbone, saved = load_checkpoint(job["init"])
    data = saved.model_dump(mode="json")
    # the run config's rl section, not the one the base was saved with
    data["rl"] = copy.deepcopy(job["rl_section"])
    apply_overrides(data, job["overrides"])
    cfg = Config.model_validate(data)
    start = time.perf_counter()
    history: list[dict[str, Any]] = []
    task_mix: dict[str, int] = {}
    task_weights = None
    if job["method"] != "base":
        trainer = GRPOTrainer(cfg, backbone, run_dir=None, progress=False)
        task_weights = dict(trainer.task_weights)
        history = trainer.train()
        task_mix = drawn_task_mix(trainer)
    train_seconds = time.perf_counter() - start
    evals = {}
    start = time.perf_counter()
    for split in job["splits"]:
        report, _, _ = evaluate_shapes(
            backbone,
            cfg,
            split=split,
            images_per_prompt=job["images_per_prompt"],
            seed=job["eval_seed"],
            rows=eval_rows(cfg.world, split, job["eval_prompts"]),
            progress=False,
        )
        evals[split] = {
            k: report[k]
            for k in ("prompts", "images", "summary", "overall_interval", "reward_mean", "reward_per_task")
        }
        evals[split]["per_prompt"] = report["per_prompt"]
    job_fields = {k: v for k, v in job.items() if k != "rl_section"}
    return {
        **job_fields,
        "rl": cfg.rl.model_dump(mode="json") if job["method"] != "base" else None,
        "task_weights_used": task_weights,
        "task_mix_drawn": task_mix,
        "train_seconds": round(train_seconds, 1),
        "eval_seconds": round(time.perf_counter() - start, 1),
        **history_summary(history),
        "eval": evals,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _attempt(job: dict[str, Any]) -> dict[str, Any]:
    try:
        return run_job(job)
    except Exception:  # reported by the parent; the job stays pending
        return {
            "key": job["key"],
            "label": job["label"],
            "seed": job["seed"],
            "error": traceback.format_exc(),
        }


def _init_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which ends the pool
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


# --- the cache and the scheduler ---------------------------------------------------------------------------


def runs_dir(out: Path) -> Path:
    return out.parent / f"{out.name}.runs"


def load_cache(runs: Path, manifest: str | None = None) -> dict[str, dict[str, Any]]:
    """Every finished job, by its key as this version of the script computes it from the job's stored inputs (so
    a job cached before a new rl field was added is still found); ``manifest``: the base's, for that key."""
    cache = {}
    if runs.is_dir():
        for path in sorted(runs.glob("*.json")):
            if path.name == PLAN_FILE:
                continue
            try:
                res = json.loads(path.read_text())
            except json.JSONDecodeError:
                continue  # a file cut short: the job is simply pending again
            key = res.get("key", path.stem)
            if all(k in res for k in ("init", "overrides", "splits", "images_per_prompt", "eval_seed")):
                other = [o for o in res["overrides"] if not o.startswith("rl.")]
                key = job_key(
                    res["init"],
                    manifest,
                    res.get("rl"),
                    other,
                    res["splits"],
                    res["images_per_prompt"],
                    res["eval_seed"],
                    res.get("eval_prompts"),
                )
                res["key"] = key
            cache[key] = res
    return cache


def store(runs: Path, res: dict[str, Any]) -> None:
    runs.mkdir(parents=True, exist_ok=True)
    tmp = runs / f".{res['key']}.tmp"
    tmp.write_text(json.dumps(res, indent=1))
    tmp.replace(runs / f"{res['key']}.json")


def _score_line(res: dict[str, Any]) -> str:
    split = "test" if "test" in res["eval"] else res["splits"][0]
    return (
        f"{split} overall {res['eval'][split]['summary']['overall']:.3f}, train {res['train_seconds']:.0f} s"
    )


def run_jobs(
    jobs: list[dict[str, Any]], runs: Path, cache: dict[str, dict[str, Any]], workers: int, phase: str
) -> list[dict[str, Any]]:
    """Run ``jobs`` (none of them cached), storing each result as it finishes; returns the failures."""
    if not jobs:
        return []
    failures = []

    def done(i: int, res: dict[str, Any]) -> None:
        if "error" in res:
            failures.append(res)
            print(
                f"[{phase} {i}/{len(jobs)}] {res['label']} seed {res['seed']} FAILED:\n{res['error']}",
                flush=True,
            )
            return
        store(runs, res)
        cache[res["key"]] = res
        print(f"[{phase} {i}/{len(jobs)}] {res['label']} seed {res['seed']}: {_score_line(res)}", flush=True)

    if workers <= 1:
        for i, job in enumerate(jobs, start=1):
            done(i, _attempt(job))
        return failures
    pool = mp.get_context("spawn").Pool(min(workers, len(jobs)), initializer=_init_worker)
    try:
        for i, res in enumerate(pool.imap_unordered(_attempt, jobs), start=1):
            done(i, res)
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()
    return failures


def grid_state(plan: Plan, method: str, cache: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A method's grid points with their val scores (None: not run yet) and the chosen point."""
    points = []
    for job in plan.grid_jobs(method):
        res = cache.get(job["key"])
        val = res["eval"]["val"] if res else None
        points.append(
            {
                "setting": job["point"],
                "key": job["key"],
                "val_overall": val["summary"]["overall"] if val else None,
                "val_interval": val["overall_interval"] if val else None,
                "val_reward": val["reward_mean"] if val else None,
            }
        )
    i = choose_setting(points)
    return {"points": points, "choice": None if i is None else points[i]["setting"], "choice_index": i}


def full_seed_rows(plan: Plan, choice: list[str], seed: int, cache: dict[str, dict[str, Any]]) -> list | None:
    res = cache.get(plan.main_job(FULL, seed, choice)["key"])
    return res["eval"]["test"]["per_prompt"] if res else None


def ablation_deltas(
    plan: Plan, choice: list[str], cache: dict[str, dict[str, Any]]
) -> dict[str, dict[str, float] | None]:
    """Each ablation's paired difference (GenEval overall) against the full method, both on the first seed."""
    full = full_seed_rows(plan, choice, plan.first_seed, cache)
    out: dict[str, dict[str, float] | None] = {}
    for name, change in plan.ablations(choice).items():
        res = cache.get(plan.ablation_job(name, change, plan.first_seed, choice)["key"])
        out[name] = (
            paired_difference(res["eval"]["test"]["per_prompt"], full, "correct") if res and full else None
        )
    return out


def has_ablations(plan: Plan) -> bool:
    return bool(plan.p["ablations"]) and FULL in plan.methods


def ablation_jobs(plan: Plan, choice: list[str], cache: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The first-seed ablations, and every seed of those the rerun rule picks (from what is cached now)."""
    abl = plan.ablations(choice)
    jobs = [plan.ablation_job(name, change, plan.first_seed, choice) for name, change in abl.items()]
    for name in ablations_to_rerun(ablation_deltas(plan, choice, cache)):
        jobs += [plan.ablation_job(name, abl[name], s, choice) for s in plan.seeds[1:]]
    return jobs


def execute(
    plan: Plan,
    runs: Path,
    cache: dict[str, dict[str, Any]],
    *,
    phases: Sequence[str],
    methods: Sequence[str],
    seeds: Sequence[int],
    max_jobs: int | None,
    workers: int,
) -> list[dict[str, Any]]:
    """Run what is missing, phase by phase; ``methods``, ``seeds``, ``phases`` and ``max_jobs`` limit what runs
    now. Returns the failures."""
    failures: list[dict[str, Any]] = []
    left = [max_jobs]

    def run(phase: str, jobs: list[dict[str, Any]]) -> None:
        todo = list({j["key"]: j for j in jobs if j["key"] not in cache}.values())
        if left[0] is not None:
            todo, left[0] = todo[: left[0]], max(0, left[0] - len(todo))
        failures.extend(run_jobs(todo, runs, cache, workers, phase))

    if "grid" in phases:
        run("grid", [j for m in plan.methods if m in methods for j in plan.grid_jobs(m)])
    choices = {m: grid_state(plan, m, cache)["choice"] for m in plan.methods}
    if "main" in phases:
        jobs = [plan.base_job()]
        jobs += [
            plan.main_job(m, s, choices[m])
            for m in plan.methods
            if m in methods and choices[m] is not None
            for s in plan.seeds
            if s in seeds
        ]
        run("main", jobs)
    if "ablation" in phases and has_ablations(plan) and FULL in methods and choices.get(FULL) is not None:
        first = [j for j in ablation_jobs(plan, choices[FULL], cache) if j["seed"] == plan.first_seed]
        run("ablation", [j for j in first if j["seed"] in seeds])
        reruns = [j for j in ablation_jobs(plan, choices[FULL], cache) if j["seed"] != plan.first_seed]
        run("ablation", [j for j in reruns if j["seed"] in seeds])
    return failures


# --- merging the cache into the results --------------------------------------------------------------------


def _std(xs: Sequence[float]) -> float:
    return round(statistics.stdev(xs), 4) if len(xs) > 1 else 0.0


def _mean_dicts(ds: Sequence[dict[str, Any] | None]) -> dict[str, Any] | None:
    ds = [d for d in ds if d]
    if not ds:
        return None
    return {k: _mean([d[k] for d in ds if d.get(k) is not None]) for k in ds[0]}


def _slim(res: dict[str, Any]) -> dict[str, Any]:
    """A run as the results file keeps it: scores and costs, not its per-prompt rows (they stay in the cache)."""
    return {
        "key": res["key"],
        "seed": res["seed"],
        "test_overall": res["eval"]["test"]["summary"]["overall"],
        "test_reward": res["eval"]["test"]["reward_mean"],
        "unseen_overall": res["eval"]["unseen"]["summary"]["overall"] if "unseen" in res["eval"] else None,
        "train_seconds": res["train_seconds"],
        "task_mix_drawn": res.get("task_mix_drawn"),
        "reward_curve": res.get("reward_curve", []),
    }


def point(rows: Sequence[dict[str, Any]], key: str) -> float:
    """The score of one run's rows: GenEval's overall (mean of task means) for ``correct``, else the mean."""
    if key != "correct":
        return statistics.mean(r[key] for r in rows)
    by_task: dict[str, list[float]] = {}
    for r in rows:
        by_task.setdefault(r["tag"], []).append(r[key])
    return statistics.mean(statistics.mean(v) for v in by_task.values())


def metric_keys(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The reported scores these rows carry (reward_aligned only where the evaluation reports it)."""
    return [m for m, k in METRICS.items() if rows and all(k in r for r in rows)]


def aggregate(results: Sequence[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Scores over seeds: intervals of the seed-mean per-prompt rows, seed spreads, task means and costs.
    Returns (the entry, the seed-mean test rows)."""
    results = sorted(results, key=lambda r: r["seed"])
    rows = mean_rows([r["eval"]["test"]["per_prompt"] for r in results])
    test = [r["eval"]["test"] for r in results]
    entry: dict[str, Any] = {
        "seeds": [r["seed"] for r in results],
        "overrides": results[0]["overrides"],
        "rl": results[0].get("rl"),
    }
    for metric in metric_keys(rows):
        per_seed = [point(r["eval"]["test"]["per_prompt"], METRICS[metric]) for r in results]
        entry[metric] = {**interval(rows, METRICS[metric]), "seed_std": _std(per_seed)}
    entry["per_task"] = {
        t: {
            "mean": round(statistics.mean(x["summary"][t] for x in test), 4),
            "std": _std([x["summary"][t] for x in test]),
        }
        for t in TASKS
        if all(t in x["summary"] for x in test)
    }
    if all("unseen" in r["eval"] for r in results):
        unseen = mean_rows([r["eval"]["unseen"]["per_prompt"] for r in results])
        entry["unseen"] = {"overall": interval(unseen, "correct"), "reward": interval(unseen, "reward")}
    entry["forward_passes_per_sample"] = _mean_dicts([r.get("forward_passes_per_sample") for r in results])
    entry["optimizer_steps_per_rollout"] = _mean(
        [
            r["optimizer_steps_per_rollout"]
            for r in results
            if r.get("optimizer_steps_per_rollout") is not None
        ]
    )
    entry["train_seconds"] = _mean([r["train_seconds"] for r in results])
    entry["time_split_s_per_step"] = _mean_dicts([r.get("time_split_s_per_step") for r in results])
    entry["zero_variance_share"] = _mean(
        [r["zero_variance_share"] for r in results if r.get("zero_variance_share") is not None]
    )
    mix: Counter[str] = Counter()
    for r in results:
        mix.update(r.get("task_mix_drawn") or {})
    entry["task_mix_drawn"] = {t: mix[t] for t in TASKS if mix[t]}
    entry["runs"] = [_slim(r) for r in results]
    return entry, rows


def compare(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Paired differences a - b (same test prompts) of every score both carry, each with its verdict."""
    out = {}
    for metric in metric_keys(a):
        if metric in metric_keys(b):
            d = paired_difference(a, b, METRICS[metric])
            out[metric] = {**d, "verdict": verdict(d)}
    return out


def _pending(job: dict[str, Any], reason: str = "not run yet") -> dict[str, Any]:
    return {
        "label": job["label"],
        "method": job["method"],
        "seed": job["seed"],
        "phase": job["phase"],
        "key": job["key"],
        "reason": reason,
    }


def collect(plan: Plan, cache: dict[str, dict[str, Any]], failed: Iterable[str] = ()) -> dict[str, Any]:
    """Merge the cached runs of the plan into the results (settings, base, methods, ablations, grid,
    comparisons, pending)."""
    failed = set(failed)
    pending: list[dict[str, Any]] = []

    used: dict[str, dict[str, Any]] = {}

    def get(job: dict[str, Any]) -> dict[str, Any] | None:
        res = cache.get(job["key"])
        if res is None:
            pending.append(_pending(job, "failed in this run" if job["key"] in failed else "not run yet"))
        else:
            used[job["key"]] = res
        return res

    data: dict[str, Any] = {"settings": {}, "base": None, "methods": {}, "ablations": {}}
    rows: dict[str, list[dict[str, Any]]] = {}
    base = get(plan.base_job())
    if base:
        data["base"], rows["base"] = aggregate([base])
    grid = {}
    for m in plan.methods:
        grid[m] = state = grid_state(plan, m, cache)
        for job in plan.grid_jobs(m):
            get(job)
        if state["choice"] is None:
            pending += [
                {
                    "label": m,
                    "method": m,
                    "seed": s,
                    "phase": "main",
                    "key": None,
                    "reason": "waits for its grid",
                }
                for s in plan.seeds
            ]
            continue
        found = [r for r in (get(plan.main_job(m, s, state["choice"])) for s in plan.seeds) if r]
        if found:
            entry, rows[m] = aggregate(found)
            entry["setting"] = state["choice"]
            if "base" in rows:
                entry["vs_base"] = compare(rows[m], rows["base"])
            data["methods"][m] = entry
    data["grid"] = grid
    comparisons = []
    for m in data["methods"]:
        for metric, d in data["methods"][m].get("vs_base", {}).items():
            comparisons.append({"a": m, "b": "base", "metric": metric, **d})
    if FULL in rows:
        for m in data["methods"]:
            if m != FULL:
                for metric, d in compare(rows[FULL], rows[m]).items():
                    comparisons.append({"a": FULL, "b": m, "metric": metric, **d})
    data["comparisons"] = comparisons
    if has_ablations(plan):
        choice = grid[FULL]["choice"]
        if choice is None:
            pending.append(
                {
                    "label": f"{FULL}, ablations",
                    "method": FULL,
                    "seed": plan.first_seed,
                    "phase": "ablation",
                    "key": None,
                    "reason": "waits for its grid",
                }
            )
        else:
            data["ablations"] = collect_ablations(plan, choice, cache, get)
    data["pending"] = pending
    data["settings"] = settings(plan, list(used.values()))
    data["settings"]["jobs"] = {"done": len(used), "pending": len(pending)}
    return data


def collect_ablations(
    plan: Plan, choice: list[str], cache: dict[str, dict[str, Any]], get: Any
) -> dict[str, Any]:
    abl = plan.ablations(choice)
    deltas = ablation_deltas(plan, choice, cache)
    rerun = set(ablations_to_rerun(deltas))
    full_seed = full_seed_rows(plan, choice, plan.first_seed, cache)
    out = {}
    for name, change in abl.items():
        seeds = plan.seeds if name in rerun else [plan.first_seed]
        found = [r for r in (get(plan.ablation_job(name, change, s, choice)) for s in seeds) if r]
        if not found:
            continue
        entry, rows = aggregate(found)
        entry.update(change=change, rerun_on_every_seed=name in rerun)
        first = [r for r in found if r["seed"] == plan.first_seed]
        if first and full_seed:
            entry["vs_full_first_seed"] = compare(first[0]["eval"]["test"]["per_prompt"], full_seed)
        if name in rerun and len(found) > 1:
            fulls = [cache.get(plan.main_job(FULL, r["seed"], choice)["key"]) for r in found]
            if all(fulls):
                full_rows = mean_rows(
                    [f["eval"]["test"]["per_prompt"] for f in sorted(fulls, key=lambda f: f["seed"])]
                )
                entry["vs_full_same_seeds"] = compare(rows, full_rows)
        out[f"{FULL}, {name}"] = entry
    return out


def settings(plan: Plan, done: Sequence[dict[str, Any]]) -> dict[str, Any]:
    p = plan.p
    typical = resolve_rl(plan.rl_section, plan.common)
    out = {
        "init": plan.init,
        "init_manifest_sha256": plan.manifest,
        "config": p["config"],
        "methods": plan.methods,
        "method_overrides": {m: METHOD_OVERRIDES.get(m, []) for m in plan.methods},
        "seeds": plan.seeds,
        "steps": p["steps"],
        "prompts_per_step": p["prompts_per_step"],
        "group_size": p["group_size"],
        "sampled_images_per_run": p["steps"] * p["prompts_per_step"] * p["group_size"],
        "optimizer_steps_per_rollout": p["optimizer_steps"],
        "rewards": typical["rewards"],
        "task_weights": typical["task_weights"],
        "extra": p["extra"],
        "grid": p["grid"],
        "grid_seed": GRID_SEED,
        "grid_split": "val",
        "grid_images_per_prompt": p["grid_images_per_prompt"],
        "eval_splits": ["test", "unseen"],
        "eval_images_per_prompt": p["eval_images_per_prompt"],
        "eval_seed": p["eval_seed"],
        "bootstrap": {"samples": BOOTSTRAP_SAMPLES, "level": 0.95, "over": "prompts, within each task"},
        "signature": plan.signature,
        "train_seconds_total": round(sum(r.get("train_seconds", 0) for r in done), 1),
        "eval_seconds_total": round(sum(r.get("eval_seconds", 0) for r in done), 1),
    }
    if plan.eval_prompts is not None:
        out["eval_prompts_per_task"] = plan.eval_prompts
    return out


# --- Markdown and plot -------------------------------------------------------------------------------------


def _iv(d: dict[str, Any] | None) -> str:
    if not d:
        return "–"
    return f"{d['value']:.3f} ± {d['half_width']:.3f} [{d['lo']:.3f}, {d['hi']:.3f}]"


def _diff(d: dict[str, Any] | None) -> str:
    if not d:
        return "–"
    return f"{d['value']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}] {d['verdict']}"


def _num(x: Any, fmt: str = ".0f") -> str:
    return "–" if x is None else format(x, fmt)


def _fp(e: dict[str, Any]) -> str:
    fp = e.get("forward_passes_per_sample")
    return "–" if not fp else f"{_num(fp.get('total'), 'g')} / {_num(fp.get('train'), 'g')}"


def _tasks(e: dict[str, Any]) -> str:
    return " / ".join(f"{e['per_task'][t]['mean']:.2f}" if t in e["per_task"] else "–" for t in TASKS)


def markdown(data: dict[str, Any]) -> str:
    s = data["settings"]
    mix = "even over the pool" if s["task_weights"] is None else json.dumps(s["task_weights"])
    lines = [
        "# HT-GRPO and its baselines on the shapes world",
        "",
        f"Settings: base `{s['init']}`; {s['steps']} RL steps x {s['prompts_per_step']} prompts x group "
        f"{s['group_size']} = {s['sampled_images_per_run']} sampled images per run, "
        f"{s['optimizer_steps_per_rollout']} optimizer steps per rollout; reward {json.dumps(s['rewards'])}; "
        f"RL task mix {mix}; seeds {s['seeds']}; grid {' x '.join(s['grid'])} on val (seed {s['grid_seed']}, "
        f"{s['grid_images_per_prompt']} images/prompt); test and unseen at {s['eval_images_per_prompt']} images/"
        f"prompt, eval seed {s['eval_seed']}"
        + (
            f"; first {s['eval_prompts_per_task']} prompts per task only"
            if "eval_prompts_per_task" in s
            else ""
        )
        + f". Intervals: 95 % bootstrap over prompts ({s['bootstrap']['samples']} resamples, within each task "
        "for GenEval); a method's rows are the mean over its seeds; differences are paired (same prompts).",
        "",
        "## Test split",
        "",
        "| method | seeds | GenEval overall (test) ± half-width [lo, hi] | seed sd | partial reward ± | aligned "
        "reward ± | per task ("
        + " / ".join(TASK_ABBREV[t] for t in TASKS)
        + ") | unseen overall | Δ overall vs "
        "base [lo, hi] | fwd passes/sample (total / train) | optimizer steps/rollout | s/run |",
        "|" + "---|" * 12,
    ]
    entries = ([("base", data["base"])] if data["base"] else []) + list(data["methods"].items())
    for label, e in entries:
        lines.append(
            f"| {label} | {len(e['seeds'])} | {_iv(e['overall'])} | {e['overall']['seed_std']:.3f} | "
            f"{_iv(e['reward'])} | {_iv(e.get('reward_aligned'))} | {_tasks(e)} | "
            f"{_iv(e.get('unseen', {}).get('overall'))} | {_diff(e.get('vs_base', {}).get('overall'))} | {_fp(e)} | "
            f"{_num(e['optimizer_steps_per_rollout'], 'g')} | {_num(e['train_seconds'] if label != 'base' else None)} |"
        )
    if not entries:
        lines.append("| (no finished run yet) |" + " |" * 11)
    lines += [
        "",
        "Tasks: " + ", ".join(f"{a} {t}" for t, a in TASK_ABBREV.items()) + ".",
        "",
        "## HT-GRPO against each baseline",
        "",
        "Paired differences HT-GRPO minus the baseline on the seed-mean test rows; the verdict is 'better' or "
        "'worse' when the interval excludes 0, else 'tied'.",
        "",
        "| baseline | Δ GenEval overall [lo, hi] | Δ partial reward [lo, hi] | Δ aligned reward [lo, hi] |",
        "|---|---|---|---|",
    ]
    vs = {}
    for c in data["comparisons"]:
        if c["a"] == FULL and c["b"] != "base":
            vs.setdefault(c["b"], {})[c["metric"]] = c
    for b, d in vs.items():
        lines.append(
            f"| {b} | {_diff(d.get('overall'))} | {_diff(d.get('reward'))} | {_diff(d.get('reward_aligned'))} |"
        )
    if not vs:
        lines.append("| (needs HT-GRPO and a baseline) | | | |")
    lines += [
        "",
        "## Hyperparameter grid (val split, seed 0)",
        "",
        "| method | setting | val GenEval overall ± half-width | val partial reward | chosen |",
        "|---|---|---|---|---|",
    ]
    for m, g in data["grid"].items():
        for i, pt in enumerate(g["points"]):
            lines.append(
                f"| {m} | {' '.join(pt['setting']) or '(config)'} | "
                + (_iv(pt["val_interval"]) if pt["val_interval"] else "pending")
                + f" | {_num(pt['val_reward'], '.3f')} | {'yes' if g['choice_index'] == i else ''} |"
            )
    if data["ablations"] or any(p["phase"] == "ablation" for p in data["pending"]):
        seed = data["settings"]["seeds"][0]
        lines += [
            "",
            f"## HT-GRPO ablations (seed {seed}; rerun on every seed when the ablation beats the full method)",
            "",
            f"| variant | change | seeds | GenEval overall (test) ± half-width | Δ overall vs full method, seed {seed} "
            "[lo, hi] | Δ overall vs full method, same seeds | partial reward | fwd passes/sample | s/run |",
            "|" + "---|" * 9,
        ]
        for label, e in data["ablations"].items():
            lines.append(
                f"| {label} | {' '.join(e['change'])} | {len(e['seeds'])} | {_iv(e['overall'])} | "
                f"{_diff(e.get('vs_full_first_seed', {}).get('overall'))} | "
                f"{_diff(e.get('vs_full_same_seeds', {}).get('overall'))} | {_iv(e['reward'])} | {_fp(e)} | "
                f"{_num(e['train_seconds'])} |"
            )
    lines += [
        "",
        "## Time per RL step",
        "",
        "Seconds per step, mean over steps and runs: rollout / reward / old+ref log-probs / update.",
        "",
    ]
    for label, e in [*data["methods"].items(), *data["ablations"].items()]:
        ts = e.get("time_split_s_per_step")
        if ts:
            lines.append(
                f"- {label}: "
                + " / ".join(_num(ts[k], ".3f") for k in ("rollout", "reward", "old_ref", "update"))
            )
    if data["pending"]:
        lines += ["", f"## Pending ({len(data['pending'])} jobs)", ""]
        for p in data["pending"]:
            lines.append(f"- {p['phase']}: {p['label']}, seed {p['seed']} ({p['reason']})")
    return "\n".join(lines)


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    drawn = 0
    for label, e in data["methods"].items():
        curves = [r["reward_curve"] for r in e["runs"] if r["reward_curve"]]
        if not curves:
            continue
        n = min(len(c) for c in curves)
        xs = [curves[0][i]["images"] for i in range(n)]
        ys = [statistics.mean(c[i]["reward"] or 0.0 for c in curves) for i in range(n)]
        k = max(1, n // 10)  # moving average over ~10 % of the run
        smooth = [statistics.mean(ys[max(0, i - k + 1) : i + 1]) for i in range(n)]
        ax.plot(xs, smooth, label=f"{label} ({len(curves)} seeds)", lw=2 if label == FULL else 1)
        drawn += 1
    if not drawn:
        ax.text(0.5, 0.5, "no finished training run yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("sampled images")
    ax.set_ylabel("rollout reward (mean over seeds)")
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def render(
    plan: Plan, out: Path, cache: dict[str, dict[str, Any]], notes: str | None, failed: Iterable[str] = ()
) -> dict[str, Any]:
    """Merge the cache into <out>.json, <out>.md and <out>.png."""
    data = collect(plan, cache, failed)
    data["settings"]["machine"] = machine()
    md = markdown(data) + ("\n\n" + Path(notes).read_text() if notes else "")
    write_results(out, data, md)
    plot(data, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.json')}, .md and .png ({len(data['pending'])} jobs pending)", flush=True)
    return data


# --- the command line ----------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--init", default="checkpoints/base", help="the base checkpoint every job starts from")
    ap.add_argument(
        "--config", default="configs/tiny.yaml", help="its rl section is every job's starting point"
    )
    ap.add_argument(
        "--out", default="benchmarks/results/compare_methods", help="<out>.json/.md/.png, <out>.runs/"
    )
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(DEFAULT_METHODS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=60, help="rl.steps of every job")
    ap.add_argument("--prompts-per-step", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument(
        "--optimizer-steps", type=int, default=6, help="rl.optimizer_steps: the same for every method"
    )
    ap.add_argument(
        "--reward", help="a reward name or a YAML mapping {name: weight} (default {geneval_aligned: 1.0})"
    )
    ap.add_argument(
        "--grid",
        action="append",
        help=f"KEY=V1,V2,... searched on val per method (repeatable: cartesian product; default {DEFAULT_GRID})",
    )
    ap.add_argument("--grid-images-per-prompt", type=int, default=4)
    ap.add_argument("--eval-images-per-prompt", type=int, default=8)
    ap.add_argument("--eval-seed", type=int, default=EVAL_SEED)
    ap.add_argument("--eval-prompts", type=int, help=argparse.SUPPRESS)  # first N prompts per task (tests)
    ap.add_argument("--extra", nargs="*", default=[], help="more KEY=VALUE overrides for every trained job")
    ap.add_argument("--no-ablations", action="store_true")
    ap.add_argument(
        "--phase", nargs="+", choices=PHASES, default=list(PHASES), help="run only these phases now"
    )
    ap.add_argument("--max-jobs", type=int, help="run at most this many jobs now")
    ap.add_argument("--workers", type=int, default=2, help="worker processes (one torch thread each)")
    ap.add_argument(
        "--render-only",
        action="store_true",
        help="rebuild <out>.json, .md and .png from <out>.runs/ with the last run's settings (no training)",
    )
    ap.add_argument(
        "--notes", help="a Markdown file appended to <out>.md (e.g. the investigation of the results)"
    )
    return ap.parse_args(argv)


def plan_settings(args: argparse.Namespace) -> dict[str, Any]:
    import yaml

    rl_section = (yaml.safe_load(Path(args.config).read_text()) or {}).get("rl") or {}
    return {
        "init": args.init,
        "config": args.config,
        "rl_section": rl_section,
        "methods": list(dict.fromkeys(args.methods)),
        "seeds": list(args.seeds),
        "steps": args.steps,
        "prompts_per_step": args.prompts_per_step,
        "group_size": args.group_size,
        "optimizer_steps": args.optimizer_steps,
        "reward": args.reward,
        "grid": args.grid or [DEFAULT_GRID],
        "grid_images_per_prompt": args.grid_images_per_prompt,
        "eval_images_per_prompt": args.eval_images_per_prompt,
        "eval_seed": args.eval_seed,
        "eval_prompts": args.eval_prompts,
        "extra": list(args.extra),
        "ablations": not args.no_ablations,
    }


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    runs = runs_dir(out)
    saved = runs / PLAN_FILE
    # --render-only reads the last run's settings, so that its cache keys match
    p = json.loads(saved.read_text()) if args.render_only and saved.is_file() else plan_settings(args)
    plan = Plan(p)
    try:
        for m in plan.methods:  # a bad override or grid value fails here, before any job
            resolve_rl(plan.rl_section, plan.trained(m, 0, plan.grid[0]))
    except Exception as exc:
        raise SystemExit(f"the settings do not give a valid rl section: {exc}") from None
    cache = load_cache(runs, plan.manifest)
    plan.widen(cache)
    failures: list[dict[str, Any]] = []
    interrupted = False
    if not args.render_only:
        runs.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(p, indent=1))
        start = time.perf_counter()
        try:
            failures = execute(
                plan,
                runs,
                cache,
                phases=args.phase,
                methods=args.methods,
                seeds=args.seeds,
                max_jobs=args.max_jobs,
                workers=args.workers,
            )
        except KeyboardInterrupt:
            interrupted = True
            print("interrupted: merging what finished", flush=True)
        print(f"ran for {(time.perf_counter() - start) / 60:.1f} min", flush=True)
    render(plan, out, cache, args.notes, [f["key"] for f in failures])
    if interrupted:
        raise SystemExit(130)
    if failures:
        raise SystemExit(f"{len(failures)} job(s) failed; they stay pending")


if __name__ == "__main__":
    main()
