"""The method comparison (benchmarks/compare_methods.py): the plan's overrides and keys, the grid choice, the
ablation-rerun rule, and a tiny resumable run (cache, pending jobs, verdicts, --render-only)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from htgrpo.checkpoint import save_checkpoint
from htgrpo.config import load_config
from rl_tiny import tiny_backbone
from test_rl_trainer import SMALL as TRAIN_SMALL

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "tiny.yaml"
SMALL = [
    o for o in TRAIN_SMALL if not o.startswith("rl.")
]  # the tiny model; the benchmark sets the RL budget


@pytest.fixture(scope="module")
def cm():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location(
        "compare_methods", ROOT / "benchmarks" / "compare_methods.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def small_base(tmp_path_factory) -> Path:
    """A tiny base checkpoint (random weights) whose config is the tiny one, shrunk."""
    cfg = load_config(CONFIG, SMALL)
    return save_checkpoint(tmp_path_factory.mktemp("cm") / "base", tiny_backbone(), cfg)


def plan_for(cm, *argv):
    return cm.Plan(cm.plan_settings(cm.parse_args(["--config", str(CONFIG), *argv])))


# --- units ------------------------------------------------------------------------------------------------


def test_grid_choice_picks_the_best_val_score(cm):
    points = [
        {"setting": ["rl.lr=1e-5"], "val_overall": 0.31},
        {"setting": ["rl.lr=3e-5"], "val_overall": 0.42},
        {"setting": ["rl.lr=1e-4"], "val_overall": 0.42},
    ]
    assert cm.choose_setting(points) == 1  # the first of equals
    points[0]["val_overall"] = 0.5
    assert cm.choose_setting(points) == 0
    points[2]["val_overall"] = None
    assert cm.choose_setting(points) is None  # incomplete grid: no choice, its main jobs wait
    assert cm.choose_setting([]) is None


def test_ablation_rerun_rule(cm):
    deltas = {
        "alpha=0 (no HCA)": {"value": 0.05, "lo": 0.01, "hi": 0.09, "half_width": 0.04},
        "rho=0.1": {"value": 0.03, "lo": -0.01, "hi": 0.07, "half_width": 0.04},
        "rho=0.5": {"value": -0.06, "lo": -0.1, "hi": -0.02, "half_width": 0.04},
        "all-global": {"value": 0.0, "lo": 0.0, "hi": 0.0, "half_width": 0.0},
        "partition=oracle": None,  # not run yet
    }
    assert cm.ablations_to_rerun(deltas) == ["alpha=0 (no HCA)"]


def test_plan_overrides_keys_and_ablations(cm):
    plan = plan_for(cm, "--grid", "rl.lr=1e-5,3e-5", "--grid", "rl.rho=0.25,0.5")
    assert plan.grid == [
        ["rl.lr=1e-5", "rl.rho=0.25"],
        ["rl.lr=1e-5", "rl.rho=0.5"],
        ["rl.lr=3e-5", "rl.rho=0.25"],
        ["rl.lr=3e-5", "rl.rho=0.5"],
    ]
    job = plan.main_job("ht-grpo", 1, ["rl.lr=3e-5"])
    rl = cm.resolve_rl(plan.rl_section, job["overrides"])
    assert cm.METHOD_OVERRIDES["ht-grpo"] == ["rl.partition=prompt_pmi", "rl.estimator=staged"]
    assert rl["optimizer_steps"] == 6 and rl["rewards"] == {"geneval_aligned": 1.0}
    assert rl["partition"] == "prompt_pmi" and rl["estimator"] == "staged" and rl["lr"] == 3e-5
    assert rl["steps"] == 60 and rl["seed"] == 1 and rl["task_weights"] is None  # the config's RL mix
    assert job["splits"] == ["test", "unseen"] and job["images_per_prompt"] == 8
    grid_job = plan.grid_jobs("maskgrpo")[0]
    assert grid_job["splits"] == ["val"] and grid_job["images_per_prompt"] == 4 and grid_job["seed"] == 0
    # the key follows what determines the job, not its label
    assert plan.main_job("ht-grpo", 1, ["rl.lr=3e-5"])["key"] == job["key"]
    assert plan.main_job("ht-grpo", 2, ["rl.lr=3e-5"])["key"] != job["key"]
    other = plan_for(cm, "--eval-images-per-prompt", "4").main_job("ht-grpo", 1, ["rl.lr=3e-5"])
    assert other["key"] != job["key"]
    partial = plan_for(cm, "--reward", "geneval_partial").main_job("ht-grpo", 1, ["rl.lr=3e-5"])
    assert cm.resolve_rl(plan.rl_section, partial["overrides"])["rewards"] == {"geneval_partial": 1.0}
    abl = plan.ablations(["rl.lr=3e-5"])
    assert "partition=prompt_pmi" not in abl and "partition=commit" in abl and "partition=oracle" in abl
    assert (
        abl["estimator=trajectory"] == ["rl.estimator=trajectory"] and abl["all-global"][0] == "rl.n_global=6"
    )
    assert abl["score_cfg=false"] == ["rl.score_cfg=false"]  # the config scores the guided policy


# --- a tiny run, resumed ----------------------------------------------------------------------------------


def test_resumable_run_pending_verdicts_and_render_only(cm, small_base, tmp_path, monkeypatch):
    out = tmp_path / "cmp"
    runs = tmp_path / "cmp.runs"
    notes = tmp_path / "notes.md"
    notes.write_text("## Notes\n\nhand-written investigation")
    argv = [
        *("--init", str(small_base), "--config", str(CONFIG), "--out", str(out)),
        *("--methods", "ht-grpo", "maskgrpo", "--seeds", "0"),
        *("--steps", "1", "--prompts-per-step", "2", "--group-size", "2", "--reward", "geneval_partial"),
        *("--grid", "rl.lr=1e-3", "--grid-images-per-prompt", "1", "--eval-images-per-prompt", "1"),
        *("--eval-prompts", "1", "--workers", "1", "--notes", str(notes)),
    ]
    # 1: the two grid jobs and the base only
    cm.main([*argv, "--max-jobs", "3"])
    cached = {p.name for p in runs.glob("*.json")} - {"plan.json"}
    assert len(cached) == 3
    data = json.loads(out.with_suffix(".json").read_text())
    assert set(data) == {"settings", "base", "methods", "ablations", "grid", "comparisons", "pending"}
    assert data["settings"]["eval_prompts_per_task"] == 1
    assert data["grid"]["ht-grpo"]["choice"] == ["rl.lr=1e-3"]
    assert data["grid"]["ht-grpo"]["points"][0]["val_overall"] is not None
    assert {"value", "lo", "hi", "half_width"} <= set(data["base"]["overall"])
    assert {(p["label"], p["phase"]) for p in data["pending"]} >= {("ht-grpo", "main"), ("maskgrpo", "main")}
    assert any(p["phase"] == "ablation" for p in data["pending"])
    md = out.with_suffix(".md").read_text()
    assert "| base |" in md and "## Pending" in md and "hand-written investigation" in md
    assert out.with_suffix(".png").is_file()

    # 2: the main phase: both methods against the base and against each other, with verdicts
    cm.main([*argv, "--phase", "main"])
    data = json.loads(out.with_suffix(".json").read_text())
    ht = data["methods"]["ht-grpo"]
    assert ht["vs_base"]["overall"]["verdict"] in ("better", "worse", "tied")
    assert ht["setting"] == ["rl.lr=1e-3"] and ht["optimizer_steps_per_rollout"] is not None
    assert ht["forward_passes_per_sample"]["total"] > ht["forward_passes_per_sample"]["train"] > 0
    assert sum(ht["task_mix_drawn"].values()) == 2  # 1 step x 2 prompts
    assert ht["rl"]["partition"] == "prompt_pmi" and ht["rl"]["optimizer_steps"] == 6
    pairs = {(c["a"], c["b"], c["metric"]) for c in data["comparisons"]}
    assert ("ht-grpo", "maskgrpo", "overall") in pairs and ("maskgrpo", "base", "reward") in pairs
    assert all(c["verdict"] in ("better", "worse", "tied") for c in data["comparisons"])
    assert not any(p["phase"] in ("grid", "main") for p in data["pending"])
    md = out.with_suffix(".md").read_text()
    assert "## HT-GRPO against each baseline" in md and "| maskgrpo |" in md

    # 3: one ablation, compared with the full method's run on the same seed
    cm.main([*argv, "--phase", "ablation", "--max-jobs", "1"])
    data = json.loads(out.with_suffix(".json").read_text())
    (label, abl), *_ = data["ablations"].items()
    assert label == "ht-grpo, alpha=0 (no HCA)" and abl["change"] == ["rl.alpha=0"]
    assert abl["vs_full_first_seed"]["overall"]["verdict"] in ("better", "worse", "tied")
    pending = len(data["pending"])
    assert pending == len(cm.Plan(json.loads((runs / "plan.json").read_text())).ablations(["rl.lr=1e-3"])) - 1

    # 4: nothing cached is rerun
    calls = []
    monkeypatch.setattr(cm, "run_job", lambda job: calls.append(job) or pytest.fail("a cached job was rerun"))
    cm.main([*argv, "--phase", "grid", "main"])
    assert calls == []

    # 5: --render-only rebuilds the three files from the cache with the last run's settings
    for suffix in (".json", ".md", ".png"):
        out.with_suffix(suffix).unlink()
    cm.main(["--out", str(out), "--render-only", "--notes", str(notes)])
    assert calls == []
    again = json.loads(out.with_suffix(".json").read_text())
    assert again["methods"].keys() == data["methods"].keys() and len(again["pending"]) == pending
    assert again["ablations"].keys() == data["ablations"].keys()
    assert out.with_suffix(".png").is_file() and "| base |" in out.with_suffix(".md").read_text()


def test_a_field_added_at_its_default_keeps_cached_keys(cm):
    """A job cached before RLConfig gained a field (at a default that keeps the old behaviour) is still found."""
    from htgrpo.config import RLConfig

    rl = RLConfig(method="maskgrpo").model_dump(mode="json")
    before = {k: v for k, v in rl.items() if k != "max_skipped_steps"}  # as a job cached earlier stored it
    args = ("checkpoints/base", "abc", [], ["val"], 4, 1234, None)
    assert cm.job_key(args[0], args[1], before, *args[2:]) == cm.job_key(args[0], args[1], rl, *args[2:])
    changed = {**rl, "max_skipped_steps": 5}
    assert cm.job_key(args[0], args[1], changed, *args[2:]) != cm.job_key(args[0], args[1], rl, *args[2:])
    assert cm.job_key(args[0], args[1], {**rl, "lr": 1e-4}, *args[2:]) != cm.job_key(
        args[0], args[1], rl, *args[2:]
    )
