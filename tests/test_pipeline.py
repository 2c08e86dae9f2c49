"""The Kubeflow pipeline: components as bare functions, the committed YAML (current, strictly valid, node pools
and secrets in its platform spec, no credentials), and the compiled pipeline under KFP's local runner with its
checkpoints in a real S3 server (SeaweedFS) and an embedded MLflow store.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from htgrpo.checkpoint import save_checkpoint
from htgrpo.config import PipelineConfig, StepResources, config_to_dict, load_config
from htgrpo.pipeline import steps
from htgrpo.pipeline.local import format_summary, load_pipeline_module, run_local
from htgrpo.storage import checkpoint_is_whole
from rl_tiny import tiny_backbone, tiny_config
from servers import ACCESS_KEY, SECRET_KEY, SeaweedS3

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "pipelines" / "htgrpo.yaml"
COMMITTED_ROUNDS = (
    2  # `htgrpo pipeline compile --rounds 2 --out pipelines/htgrpo.yaml` (Makefile: make pipeline)
)
sys.path.insert(0, str(ROOT))
pipeline_module = load_pipeline_module(ROOT / "pipelines" / "htgrpo.py")


@pytest.fixture
def tiny_base(tmp_path):
    """A random tiny checkpoint (d_model 32, 2 layers) and its configuration as inline YAML."""
    cfg = tiny_config(steps=1)
    cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"images_per_prompt": 1})})
    base = save_checkpoint(tmp_path / "base", tiny_backbone(), cfg)
    return base, yaml.safe_dump(config_to_dict(cfg))


def docs(path: Path) -> list[dict]:
    return list(yaml.safe_load_all(path.read_text()))


def strip_sdk(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if "sdkVersion" not in line)


# --- the compiled YAML ----------------------------------------------------------------------------------------


def test_committed_yaml_is_compiled_from_the_code(tmp_path):
    settings = load_config(ROOT / "configs" / "tiny.yaml").pipeline
    fresh = pipeline_module.compile_pipeline(tmp_path / "p.yaml", rounds=COMMITTED_ROUNDS, settings=settings)
    assert strip_sdk(fresh.read_text()) == strip_sdk(COMMITTED.read_text()), (
        "pipelines/htgrpo.yaml is stale: run `make pipeline` (htgrpo pipeline compile --rounds 2) and commit it"
    )


def test_yaml_parses_strictly_with_node_pools_and_secrets():
    from google.protobuf import json_format
    from kfp.kubernetes import kubernetes_executor_config_pb2 as kpb
    from kfp.pipeline_spec import pipeline_spec_pb2

    spec, platform = docs(COMMITTED)
    json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec())
    json_format.ParseDict(platform, pipeline_spec_pb2.PlatformSpec())
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    kinds = {"rollout", "score-rewards", "train-global", "train-structure", "train-refinement", "evaluate"}
    for name, conf in executors.items():
        json_format.ParseDict(conf, kpb.KubernetesExecutorConfig())
        secrets = {s["secretName"]: [k["envVar"] for k in s["keyToEnv"]] for s in conf["secretAsEnv"]}
        assert secrets == {
            "htgrpo-s3": ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"],
            "htgrpo-mlflow": ["MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"],
        }
        gpu = any(name.removeprefix("exec-").startswith(k) for k in kinds)
        assert ("nodeSelector" in conf) == gpu, name
        if gpu:
            assert conf["nodeSelector"]["labels"] == {"nvidia.com/gpu.present": "true"}
            assert conf["tolerations"] == [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ]
            res = spec["deploymentSpec"]["executors"][name]["container"]["resources"]
            assert (
                res["accelerator"]["resourceType"] == "nvidia.com/gpu"
                and res["accelerator"]["resourceCount"] == "1"
            )
    assert {"exec-prepare-data", "exec-register", "exec-plan-shards"} <= set(executors)
    assert sum(n.startswith("exec-train-global") for n in executors) == COMMITTED_ROUNDS
    text = COMMITTED.read_text()
    for name, env in spec["deploymentSpec"]["executors"].items():
        assert {e["name"] for e in env["container"].get("env", [])} <= {
            "MALLOC_MMAP_MAX_",
            "MALLOC_TRIM_THRESHOLD_",
            "PYTHONUNBUFFERED",
        }
        gpu = any(name.removeprefix("exec-").startswith(k) for k in kinds)
        want = (
            "ghcr.io/htgrpo/htgrpo-cuda:0.1.0" if gpu else "ghcr.io/htgrpo/htgrpo:0.1.0"
        )  # CUDA vs CPU image
        assert env["container"]["image"] == want, name
        assert "pip install" not in " ".join(env["container"]["command"])
    assert ACCESS_KEY not in text and SECRET_KEY not in text
    first_doc = text.split("\n---\n")[0]
    assert "AWS_SECRET_ACCESS_KEY" not in first_doc and "MLFLOW_TRACKING_PASSWORD" not in first_doc


def test_parameters_and_graph():
    spec, _ = docs(COMMITTED)
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert set(params) == {
        "config", "overrides", "init_checkpoint", "run_name", "shards", "storage_uri", "tracking_uri"
    }  # fmt: skip
    tasks = spec["root"]["dag"]["tasks"]
    loops = [t for t in tasks.values() if "parameterIterator" in t]
    assert len(loops) == COMMITTED_ROUNDS
    assert (
        tasks["train-global-2"]["inputs"]["parameters"]["checkpoint_uri"]["taskOutputParameter"][
            "producerTask"
        ]
        == "train-refinement"
    )


def test_compile_takes_node_pools_from_settings(tmp_path):
    gpu = StepResources(
        accelerator_type="nvidia.com/gpu",
        accelerator_limit=4,
        memory_limit="64G",
        node_selector={"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"},
        tolerations=[{"key": "dedicated", "operator": "Equal", "value": "rl", "effect": "NoSchedule"}],
    )
    settings = PipelineConfig(
        image="registry.example/htgrpo:1",
        gpu_image="registry.example/htgrpo-cuda:1",
        train=gpu,
        reward=StepResources(),
        shards=4,
    )
    out = pipeline_module.compile_pipeline(tmp_path / "p.yaml", rounds=1, settings=settings)
    spec, platform = docs(out)
    images = {k: v["container"]["image"] for k, v in spec["deploymentSpec"]["executors"].items()}
    assert images["exec-prepare-data"] == images["exec-register"] == "registry.example/htgrpo:1"
    assert images["exec-train-global"] == images["exec-evaluate"] == "registry.example/htgrpo-cuda:1"
    ex = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert ex["exec-train-structure"]["nodeSelector"]["labels"] == {
        "cloud.google.com/gke-accelerator": "nvidia-h100-80gb"
    }
    assert ex["exec-train-structure"]["tolerations"][0]["value"] == "rl"
    res = spec["deploymentSpec"]["executors"]["exec-train-refinement"]["container"]["resources"]
    assert res["accelerator"]["resourceCount"] == "4" and res["resourceMemoryLimit"] == "64G"
    assert "nodeSelector" not in ex["exec-score-rewards"]
    assert "resources" not in spec["deploymentSpec"]["executors"]["exec-score-rewards"]["container"]
    assert spec["root"]["inputDefinitions"]["parameters"]["shards"]["defaultValue"] == 4
    with pytest.raises(ValueError, match="rounds"):
        pipeline_module.build(0)


def test_cli_compile(tmp_path, capsys):
    from htgrpo.cli import main

    out = tmp_path / "x.yaml"
    assert main(["pipeline", "compile", "--rounds", "1", "--out", str(out), "--pipeline-py",
                 str(ROOT / "pipelines/htgrpo.py"), "--config", str(ROOT / "configs/tiny.yaml")]) == 0  # fmt: skip
    assert "compiled 1 round(s)" in capsys.readouterr().out
    assert sum(1 for k in docs(out)[0]["root"]["dag"]["tasks"] if k.startswith("train-global")) == 1


# --- the components as bare functions -----------------------------------------------------------------------


class FakeMetrics:
    def __init__(self) -> None:
        self.logged: dict[str, float] = {}

    def log_metric(self, key: str, value: float) -> None:
        self.logged[key] = value


def test_components_as_bare_functions(tmp_path, tiny_base):
    from components.evaluate.component import evaluate
    from components.plan_shards.component import plan_shards
    from components.prepare_data.component import prepare_data
    from components.register.component import register
    from components.rollout.component import rollout
    from components.score_rewards.component import score_rewards
    from components.train_global.component import train_global
    from components.train_refinement.component import train_refinement
    from components.train_structure.component import train_structure

    base, text = tiny_base
    prep = prepare_data.python_func(
        text, [], str(base), "bare", 1, 2, f"file://{tmp_path}/store", "", "kfp-id", "{{$.pipeline_job_name}}"
    )
    cj, root = prep.config_json, prep.run_root
    items = plan_shards.python_func(cj, root, prep.init_checkpoint, 1, 2)
    assert [i["shard"] for i in items] == [0, 1]
    uris = [rollout.python_func(json.loads(json.dumps(i))) for i in items]
    scored = score_rewards.python_func(cj, root, prep.init_checkpoint, 1, uris, prep.parent_run_id)
    ck = prep.init_checkpoint
    for fn in (train_global, train_structure, train_refinement):
        ck = fn.python_func(cj, root, ck, scored, 1, prep.parent_run_id)
        assert checkpoint_is_whole(ck)
    metrics = FakeMetrics()
    result = evaluate.python_func(cj, root, ck, "trained", prep.parent_run_id, metrics)
    assert metrics.logged == result and "overall" in result
    summary = register.python_func(cj, root, ck, result, result, prep.parent_run_id)
    assert summary["checkpoint"] == ck and summary["registry"]["version"] is None  # tracking off


def test_prepare_data_component_names_a_run_when_kfp_does_not(tmp_path, tiny_base):
    from components.prepare_data.component import prepare_data

    base, text = tiny_base
    prep = prepare_data.python_func(text, [], str(base), "", 1, 1, f"file://{tmp_path}/s", "", "", "{{x}}")
    assert "/runs/htgrpo-" in prep.run_root
    with pytest.raises(Exception, match="rl.group_size"):
        prepare_data.python_func(
            text, ["rl.group_size=1"], str(base), "", 1, 1, f"file://{tmp_path}/s", "", "", ""
        )


# --- the compiled pipeline under the local runner, checkpoints in S3 ---------------------------------------


@pytest.mark.slow
def test_local_runner_runs_the_committed_pipeline_with_s3_checkpoints(tmp_path, tiny_base, monkeypatch):
    from mlflow import MlflowClient

    base, text = tiny_base
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)  # the task subprocesses inherit the environment
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("HTGRPO_THREADS", "1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    server = SeaweedS3(tmp_path / "seaweed").start()
    try:
        summary = run_local(
            COMMITTED,
            config=text,
            init_checkpoint=str(base),
            out=tmp_path / "out",
            overrides=[f"storage.endpoint_url={server.endpoint}", f"storage.cache_dir={tmp_path / 'cache'}"],
            shards=2,
            run_name="ci",
            storage_uri=f"s3://{server.bucket}/pipelines",
        )
        final = f"s3://{server.bucket}/pipelines/runs/ci/round-{COMMITTED_ROUNDS:03d}/refinement"
        assert summary["checkpoint"] == final
        cfg = steps.load_run_config(json.dumps(load_config(None).model_dump(mode="json")))
        storage = cfg.storage.model_copy(
            update={"endpoint_url": server.endpoint, "cache_dir": str(tmp_path / "c")}
        )
        assert checkpoint_is_whole(final, storage)
        names = [t["step"] for t in summary["timings"]]
        assert "round-001-rollout-001" in names and f"round-{COMMITTED_ROUNDS:03d}-refinement" in names
        assert set(summary["base"]) == set(summary["trained"]) and "overall" in summary["base"]
        text_out = format_summary(summary)
        assert "| overall |" in text_out and "MLflow: sqlite:///" in text_out
        comp = summary["comparison"]
        assert comp["base"]["value"] == pytest.approx(summary["base"]["overall"], abs=1e-4)
        assert f"change  {comp['change']['value']:+.3f} [{comp['change']['lo']:+.3f}" in text_out

        client = MlflowClient(summary["mlflow"]["tracking_uri"])
        parent = client.get_run(summary["mlflow"]["parent_run_id"])
        assert parent.data.params["storage.uri"] == f"s3://{server.bucket}/pipelines"
        children = client.search_runs(
            [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
        )
        got = {r.info.run_name for r in children}
        want = {f"round-{r}-{s}" for r in range(1, COMMITTED_ROUNDS + 1) for s in ("score", *steps.STAGES)}
        assert want | {"evaluate-base", "evaluate-trained"} <= got
        tagged = {r.info.run_name: r.data.tags.get("checkpoint_uri") for r in children}
        assert tagged[f"round-{COMMITTED_ROUNDS}-refinement"] == final
        mv = client.get_model_version_by_alias("htgrpo-tiny", "candidate")
        assert mv.source == final
    finally:
        server.stop()
