"""The pipeline's step functions (what each component runs), called as bare functions in this process.

With one rollout shard, rounds of rollout -> score -> global -> structure -> refinement give exactly the weights
and the history of ``htgrpo train`` (GRPOTrainer.train) with the same configuration.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml

from htgrpo.checkpoint import save_checkpoint
from htgrpo.config import config_to_dict
from htgrpo.errors import ConfigError
from htgrpo.pipeline import steps
from htgrpo.rl import rewards as rw
from htgrpo.rl.rewards import register_reward
from htgrpo.rl.trainer import GRPOTrainer
from htgrpo.storage import checkpoint_is_whole
from rl_tiny import tiny_backbone, tiny_config


@pytest.fixture
def varied_reward(monkeypatch):
    monkeypatch.setattr(rw, "_REGISTRY", dict(rw._REGISTRY))
    register_reward("mean_pixel", lambda images, p, m: images.reshape(len(images), -1).mean(1) / 255.0)
    return {"mean_pixel": 1.0}


def base_and_config(tmp_path, rewards, **rl):
    cfg = tiny_config(rewards=rewards, **rl)
    base = save_checkpoint(tmp_path / "base", tiny_backbone(), cfg)
    text = yaml.safe_dump(config_to_dict(cfg))
    return cfg, base, text


def run_rounds(text, base, tmp_path, rounds, shards):
    prep = steps.prepare_data(
        text, [], str(base), "run-1", rounds, shards, storage_uri=f"file://{tmp_path}/store"
    )
    cj, root = prep["config_json"], prep["run_root"]
    ckpt = prep["init_checkpoint"]
    for r in range(1, rounds + 1):
        shard_uris = [steps.rollout(cj, root, ckpt, r, s, shards) for s in prep["shard_ids"]]
        scored = steps.score_rewards(cj, root, ckpt, r, shard_uris, "")
        for stage in steps.STAGES:
            ckpt = steps.train_stage(cj, root, stage, ckpt, scored, r, "")
    return prep, ckpt


def test_steps_reproduce_htgrpo_train_exactly(tmp_path, varied_reward):
    cfg, base, text = base_and_config(tmp_path, varied_reward, steps=2)
    prep, final = run_rounds(text, base, tmp_path, rounds=2, shards=1)
    assert final == f"file://{tmp_path}/store/runs/run-1/round-002/refinement"
    piped, state = GRPOTrainer.from_checkpoint(steps.load_run_config(prep["config_json"]), final)

    ref = GRPOTrainer(cfg, tiny_backbone(), progress=False)
    ref.train()
    for k, v in ref.policy.state_dict().items():
        assert torch.equal(v, piped.policy.state_dict()[k]), k
    strip = lambda hs: [{k: v for k, v in h.items() if k != "times"} for h in hs]  # noqa: E731
    assert strip(state["history"]) == strip(ref.history)
    assert piped.step == 2 and "pending" not in state


def test_sharded_rounds_and_resume_of_a_killed_stage(tmp_path, varied_reward, monkeypatch):
    cfg, base, text = base_and_config(tmp_path, varied_reward, steps=1)
    prep = steps.prepare_data(text, [], str(base), "run-2", 1, 2, storage_uri=f"file://{tmp_path}/store")
    cj, root = prep["config_json"], prep["run_root"]
    shard_uris = [steps.rollout(cj, root, prep["init_checkpoint"], 1, s, 2) for s in (0, 1)]
    scored = steps.score_rewards(cj, root, prep["init_checkpoint"], 1, shard_uris[::-1], "")  # any order
    g = steps.train_stage(cj, root, "global", prep["init_checkpoint"], scored, 1, "")

    def killed(*a, **k):
        raise KeyboardInterrupt  # the pod dies in the middle of the structure stage

    real_update = GRPOTrainer.update
    monkeypatch.setattr(GRPOTrainer, "update", killed)
    with pytest.raises(KeyboardInterrupt):
        steps.train_stage(cj, root, "structure", g, scored, 1, "")
    assert not checkpoint_is_whole(steps.round_uri(root, 1, "structure"))
    # a finished stage is not redone: its whole checkpoint comes back as it is
    assert steps.train_stage(cj, root, "global", prep["init_checkpoint"], scored, 1, "") == g
    monkeypatch.setattr(GRPOTrainer, "update", real_update)
    s = steps.train_stage(cj, root, "structure", g, scored, 1, "")
    r = steps.train_stage(cj, root, "refinement", s, scored, 1, "")
    trainer, state = GRPOTrainer.from_checkpoint(steps.load_run_config(cj), r)
    rec = state["history"][0]
    assert list(rec["stages"]) == ["global", "structure", "refinement"] and trainer.step == 1
    assert rec["images_sampled"] == cfg.rl.prompts_per_step * cfg.rl.group_size
    shutil.rmtree(tmp_path / "store/runs/run-2/round-001/refinement")
    with pytest.raises(steps.PipelineError, match="needs the structure checkpoint"):
        steps.train_stage(cj, root, "refinement", g, scored, 1, "")  # the global checkpoint: a stage skipped


@pytest.mark.parametrize(
    ("overrides", "kw", "message"),
    [
        (["rl.lr=-1"], {}, "rl.lr: Input should be greater than 0"),
        (["rl.method=d1"], {}, "the pipeline trains ht-grpo"),
        (["sampler.stepz=3"], {}, "sampler.stepz: unknown key"),
        ([], {"shards": 9}, "9 rollout shards for rl.prompts_per_step=2"),
        ([], {"run_name": "a/b"}, r"^run_name: 'a/b' is not a valid run name: it must match \[a-z0-9\]"),
        ([], {"run_name": ".."}, r"^run_name: '\.\.' is not a valid run name: .* no '\.\.' or '/'$"),
        ([], {"run_name": "x..y"}, r"^run_name: 'x\.\.y' is not a valid run name"),
        ([], {"run_name": "Nightly"}, r"^run_name: 'Nightly' is not a valid run name"),
        ([], {"run_name": ""}, r"^run_name: '' is not a valid run name"),
        ([], {"run_name": "r" * 64}, r"^run_name: 'r{64}' is not a valid run name: .* at most 63 characters"),
    ],
)
def test_prepare_data_rejects_bad_parameters(tmp_path, overrides, kw, message):
    cfg, base, text = base_and_config(tmp_path, {"geneval_partial": 1.0})
    args = {"run_name": "r", "rounds": 1, "shards": 1, **kw}
    with pytest.raises(ConfigError, match=message):
        steps.prepare_data(text, overrides, str(base), storage_uri=f"file://{tmp_path}/s", **args)


def test_prepare_data_rejects_a_prompt_class_the_shapes_world_lacks(tmp_path):
    from htgrpo.errors import RLError
    from htgrpo.world import grammar

    cfg, base, text = base_and_config(tmp_path, {"geneval_partial": 1.0})
    pool = tmp_path / "pool.jsonl"
    rows = [
        grammar.counting("ring", 2),
        {**grammar.single_object("ring"), "include": [{"class": "rnig", "count": 1}]},
    ]
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(
        RLError, match=rf"^prompt set '{pool}', row 1 \('a photo of a ring'\): include class 'rnig'"
    ):
        steps.prepare_data(
            text, [f"rl.prompts={pool}"], str(base), "r", 1, 1, storage_uri=f"file://{tmp_path}/s"
        )
    assert not (tmp_path / "s" / "runs").exists()  # refused before anything was written


def test_prepare_data_rejects_a_checkpoint_of_another_backbone(tmp_path):
    cfg, base, text = base_and_config(tmp_path, {"geneval_partial": 1.0})
    with pytest.raises(ConfigError, match="backbone or grid differs"):
        steps.prepare_data(
            text, ["backbone.d_model=64"], str(base), "r", 1, 1, storage_uri=f"file://{tmp_path}/s"
        )
    with pytest.raises(Exception, match="does not exist"):
        steps.prepare_data(text, [], str(tmp_path / "nope"), "r", 1, 1, storage_uri=f"file://{tmp_path}/s")


def test_evaluate_and_register_with_embedded_mlflow(tmp_path):
    cfg, base, text = base_and_config(tmp_path, {"geneval_partial": 1.0})
    text = yaml.safe_dump({**yaml.safe_load(text), "eval": {"images_per_prompt": 1, "split": "test"}})
    prep = steps.prepare_data(
        text,
        ["tracking.registered_model=tiny-test"],
        str(base),
        "run-3",
        1,
        1,
        storage_uri=f"file://{tmp_path}/store",
        tracking_uri=f"sqlite:///{tmp_path}/mlflow.db",
    )
    cj, root, parent = prep["config_json"], prep["run_root"], prep["parent_run_id"]
    assert parent
    m = steps.evaluate(cj, root, prep["init_checkpoint"], "base", parent)
    assert 0.0 <= m["overall"] <= 1.0
    assert steps.compare_evaluations(steps.load_run_config(cj), root) is None  # no trained evaluation yet
    steps.evaluate(cj, root, prep["init_checkpoint"], "trained", parent)
    summary = steps.register(cj, root, prep["init_checkpoint"], m, m, parent)
    comp = summary["comparison"]
    # the same checkpoint, prompts and seed: the paired change is exactly 0, and its interval too
    assert comp["change"] == {"value": 0.0, "lo": 0.0, "hi": 0.0, "half_width": 0.0}
    assert comp["verdict"] == "tied" and comp["base"] == comp["trained"]
    assert comp["base"]["lo"] <= comp["base"]["value"] <= comp["base"]["hi"]
    # the "trained" model is the base itself: a candidate, not promoted, and the step says why
    reg = summary["registry"]
    assert reg["version"] == 1 and not reg["promoted"] and "does not beat its base" in reg["reason"]
    assert reg["margin"] == comp["change"]["half_width"] == 0.0
    assert json.loads((tmp_path / "store/runs/run-3/summary.json").read_text())["base"] == m
    trained = tmp_path / "store/runs/run-3/eval/trained.json"
    trained.write_text(json.dumps({**json.loads(trained.read_text()), "images_per_prompt": 4}))
    with pytest.raises(steps.PipelineError, match="differ in protocol"):
        steps.compare_evaluations(steps.load_run_config(cj), root)
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_run(parent).info.experiment_id])
    names = {r.info.run_name for r in runs}
    assert {"run-3", "evaluate-base"} <= names


def test_score_step_loads_neither_torch_nor_the_backbone(tmp_path):
    """The reward step imports only the reward functions: a fresh process scores a round without torch, and
    gets what the trainer's own ``score`` gets."""
    import subprocess
    import sys

    from htgrpo.rl.phases import RolloutBatch, ScoredBatch

    cfg, base, text = base_and_config(tmp_path, {"geneval_partial": 1.0})
    prep = steps.prepare_data(text, [], str(base), "run-4", 1, 1, storage_uri=f"file://{tmp_path}/store")
    cj, root, ckpt = prep["config_json"], prep["run_root"], prep["init_checkpoint"]
    shard = steps.rollout(cj, root, ckpt, 1, 0, 1)
    code = (
        "import sys, json\n"
        "from htgrpo.pipeline import steps\n"
        "a = json.loads(sys.argv[1])\n"
        "print(steps.score_rewards(a['cj'], a['root'], a['ckpt'], 1, [a['shard']], ''))\n"
        "print(json.dumps(sorted(m for m in ('torch', 'mlflow', 'htgrpo.backbones.tiny') if m in sys.modules)))\n"
    )
    args = json.dumps({"cj": cj, "root": root, "ckpt": ckpt, "shard": shard})
    out = subprocess.run([sys.executable, "-c", code, args], capture_output=True, text=True, check=True)
    uri, loaded = out.stdout.strip().splitlines()[-2:]
    assert json.loads(loaded) == []
    scored = ScoredBatch.from_bytes((tmp_path / uri.removeprefix(f"file://{tmp_path}/")).read_bytes())
    trainer, _ = GRPOTrainer.from_checkpoint(steps.load_run_config(cj), ckpt)
    batch = RolloutBatch.from_bytes((tmp_path / shard.removeprefix(f"file://{tmp_path}/")).read_bytes())
    direct = trainer.score(batch)
    assert scored.record == direct.record and scored.skip == direct.skip
    assert (scored.advantages == direct.advantages).all() and (scored.keep == direct.keep).all()
    assert torch.equal(scored.rollout.sample.codes, batch.sample.codes)
    assert scored.info["shards"] == 1 and len(scored.rollout.images) == 0  # the stages need no images
    rows = steps.read_timings(root, steps.load_run_config(cj))
    score_row = next(r for r in rows if r["step"] == "round-001-score")
    assert score_row["startup_s"] >= 0 and score_row["cpu_s"] > 0


def test_prepare_data_runs_without_torch(tmp_path):
    """prepare_data validates the run, verifies the initial checkpoint and writes the prompts without torch (whose
    import is most of a short task's time)."""
    import subprocess
    import sys

    _, base, text = base_and_config(tmp_path, {"geneval_partial": 1.0})
    code = (
        "import sys, json\n"
        "from htgrpo.pipeline import steps\n"
        "a = json.loads(sys.argv[1])\n"
        "out = steps.prepare_data(a['text'], [], a['base'], 'run-5', 1, 1, storage_uri=a['store'])\n"
        "print(json.dumps([out['run_root'], 'torch' in sys.modules]))\n"
    )
    args = json.dumps({"text": text, "base": str(base), "store": f"file://{tmp_path}/store"})
    out = subprocess.run([sys.executable, "-c", code, args], capture_output=True, text=True, check=True)
    run_root, torch_loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert torch_loaded is False
    assert (tmp_path / "store" / "runs" / "run-5" / "prompts.jsonl").is_file()


def test_round_runs_are_logged_by_its_last_step(tmp_path, varied_reward, monkeypatch):
    """score, global and structure open no MLflow client: refinement logs the round's four runs."""
    from mlflow import MlflowClient

    cfg, base, text = base_and_config(tmp_path, varied_reward, steps=1)
    db = f"sqlite:///{tmp_path}/mlflow.db"
    prep = steps.prepare_data(
        text, [], str(base), "run-5", 1, 1, storage_uri=f"file://{tmp_path}/store", tracking_uri=db
    )
    cj, root, parent = prep["config_json"], prep["run_root"], prep["parent_run_id"]
    opened = []
    real_tracker = steps._tracker
    monkeypatch.setattr(steps, "_tracker", lambda *a: opened.append(a) or real_tracker(*a))
    ckpt = prep["init_checkpoint"]
    shard = steps.rollout(cj, root, ckpt, 1, 0, 1)
    scored = steps.score_rewards(cj, root, ckpt, 1, [shard], parent)
    for stage in steps.STAGES:
        ckpt = steps.train_stage(cj, root, stage, ckpt, scored, 1, parent)
        assert len(opened) == (1 if stage == "refinement" else 0), stage
    client = MlflowClient(db)
    exp = client.get_run(parent).info.experiment_id
    runs = {r.info.run_name: r for r in client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent}'")}
    assert {"round-1-score", "round-1-global", "round-1-structure", "round-1-refinement"} <= set(runs)
    score = runs["round-1-score"]
    assert "reward_mean" in score.data.metrics and score.data.tags["shards"] == "1"
    assert score.data.tags["scored_uri"] == scored
    grids = client.list_artifacts(score.info.run_id, "images")
    assert any(a.path.startswith("images/rollout_samples") for a in grids)
    for stage in steps.STAGES:
        run = runs[f"round-1-{stage}"]
        assert run.data.tags["checkpoint_uri"] == steps.round_uri(root, 1, stage)
        assert run.data.metrics["time/stage_s"] > 0
        assert any(k.startswith("stage/") for k in run.data.metrics), stage
        assert client.get_metric_history(run.info.run_id, "iteration/loss"), stage
    assert runs["round-1-structure"].data.tags["input_checkpoint_uri"] == steps.round_uri(root, 1, "global")
    assert "reward_mean" in runs["round-1-refinement"].data.metrics


def test_trainer_state_name_matches_the_trainer():
    from htgrpo.rl import trainer

    assert steps.TRAINER_STATE == trainer.TRAINER_STATE
