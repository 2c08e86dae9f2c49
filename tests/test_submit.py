"""`htgrpo pipeline submit` (htgrpo.submit): parameters checked against the compiled pipeline's root inputs and
converted to their types, errors that name the key, the GPU pool rewrite, and the real submission path with a
stand-in kfp.Client (no KFP server exists here) reading the projected token from its file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from htgrpo.cli import main
from htgrpo.submit import (
    GpuPool,
    SubmitError,
    check_params,
    pipeline_inputs,
    plan_submission,
    read_package,
    submit,
)

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pipelines" / "htgrpo.yaml"


@pytest.fixture(scope="module")
def inputs():
    return pipeline_inputs(read_package(PACKAGE))


def test_params_are_converted_to_the_declared_types(inputs):
    args = check_params(
        inputs,
        [
            "shards=8",
            'overrides=["rl.lr=1e-5", "sampler.steps=16"]',
            "run_name=2026",
            "storage_uri=s3://b/p=q",
        ],
    )
    assert args == {
        "shards": 8,
        "overrides": ["rl.lr=1e-5", "sampler.steps=16"],
        "run_name": "2026",  # a STRING input stays a string even when it looks like a number
        "storage_uri": "s3://b/p=q",  # only the first '=' splits
    }
    assert check_params(inputs, []) == {}  # every input has a default


@pytest.mark.parametrize(
    "param,message",
    [
        ("shard=4", "parameter shard: not an input of the pipeline (did you mean shards?)"),
        ("shards=four", "parameter shards: expected an integer (NUMBER_INTEGER), got 'four'"),
        ("shards=2.5", "parameter shards: expected an integer"),
        ("overrides=rl.lr=1e-5", "parameter overrides: expected a JSON list (LIST)"),
        ('overrides={"a": 1}', "parameter overrides: expected a JSON list (LIST)"),
        ("shards", "expected KEY=VALUE"),
        ("=3", "expected KEY=VALUE"),
    ],
)
def test_bad_params_name_the_key(inputs, param, message):
    with pytest.raises(SubmitError) as exc:
        check_params(inputs, [param])
    assert message in str(exc.value)


def test_repeated_and_missing_params(inputs):
    with pytest.raises(SubmitError, match="parameter shards: given twice"):
        check_params(inputs, ["shards=1", "shards=2"])
    required = {**inputs, "must": {"parameterType": "STRING"}}
    with pytest.raises(SubmitError, match="parameter\\(s\\) must: required by the pipeline and not given"):
        check_params(required, [])


@pytest.mark.parametrize(
    "data,message",
    [
        ({"count": 0}, "count must be an integer of at least 1"),
        ({"count": "2"}, "count must be an integer"),
        ({"resourceName": "gpu"}, "resourceName must be an extended resource"),
        ({"nodeSelector": {"a": 1}}, "nodeSelector must map label keys to string values"),
        (
            {"tolerations": [{"key": "k", "operator": "Maybe"}]},
            "tolerations[0].operator must be Equal or Exists",
        ),
        ({"tolerations": [{"kee": "k"}]}, "tolerations[0]: unknown key(s) ['kee']"),
        ({"nodeSelectors": {}}, "unknown key(s) ['nodeSelectors']"),
    ],
)
def test_bad_gpu_pool_names_the_key(data, message):
    with pytest.raises(SubmitError) as exc:
        GpuPool.from_dict(data)
    assert message in str(exc.value)
    with pytest.raises(SubmitError, match="not valid JSON"):
        GpuPool.from_json("{count: 1}")


def test_gpu_pool_moves_only_the_gpu_steps():
    pool = GpuPool("amd.com/gpu", 4, {"pool": "mi300"}, [{"key": "amd.com/gpu", "operator": "Exists"}])
    plan = plan_submission(PACKAGE, experiment="e", gpu_pool=pool)
    spec, platform = plan.documents
    ex = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name in plan.gpu_executors:
        acc = spec["deploymentSpec"]["executors"][name]["container"]["resources"]["accelerator"]
        assert acc == {
            "resourceType": "amd.com/gpu",
            "type": "amd.com/gpu",
            "resourceCount": "4",
            "count": "4",
        }
        assert ex[name]["nodeSelector"] == {"labels": {"pool": "mi300"}}
        assert ex[name]["tolerations"] == [{"key": "amd.com/gpu", "operator": "Exists"}]
        assert ex[name]["secretAsEnv"]  # the secrets stay
    assert "nodeSelector" not in ex["exec-prepare-data"] and "exec-register" not in plan.gpu_executors
    assert yaml.safe_load_all(plan.package_text())  # serialisable


def test_package_errors(tmp_path):
    with pytest.raises(SubmitError, match="no such file"):
        read_package(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: ConfigMap\n")
    with pytest.raises(SubmitError, match="not a compiled KFP pipeline"):
        read_package(bad)
    docs = list(yaml.safe_load_all(PACKAGE.read_text()))
    docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-rollout"]["nodeSelectors"] = {}
    bad.write_text(yaml.safe_dump_all(docs))
    with pytest.raises(SubmitError, match="not a valid KFP pipeline spec.*nodeSelectors"):
        read_package(bad)
    with pytest.raises(SubmitError, match="expected s3://BUCKET/KEY"):
        read_package("s3://only-a-bucket")


class FakeResult:
    run_id = "run-123"


class FakeClient:
    calls: list[dict] = []

    def __init__(self, **kwargs):
        FakeClient.calls.append({"init": kwargs})

    def create_run_from_pipeline_package(self, path, **kwargs):
        FakeClient.calls.append({"package": Path(path).read_text(), **kwargs})
        return FakeResult()


def test_submit_reads_the_projected_token_and_creates_the_run(tmp_path, monkeypatch):
    import kfp

    token = tmp_path / "token"
    token.write_text("header.payload.signature\n")
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token))
    monkeypatch.setattr(kfp, "Client", FakeClient)
    FakeClient.calls = []
    plan = plan_submission(
        PACKAGE,
        experiment="htgrpo",
        params=["shards=3"],
        run_name="nightly-1",
        host="http://kfp.example:8888",
        namespace="team-a",
        service_account="default-editor",
    )
    result = submit(plan)
    assert result == {
        "run_id": "run-123",
        "run_name": "nightly-1",
        "experiment": "htgrpo",
        "host": "http://kfp.example:8888",
        "authenticated": True,
    }
    init, call = FakeClient.calls
    assert init["init"] == {
        "host": "http://kfp.example:8888",
        "namespace": "team-a",
        "existing_token": "header.payload.signature",
    }
    assert call["arguments"] == {"shards": 3} and call["experiment_name"] == "htgrpo"
    assert call["run_name"] == "nightly-1" and call["namespace"] == "team-a"
    assert call["service_account"] == "default-editor"
    assert yaml.safe_load_all(call["package"]) and "pipelineInfo" in call["package"]


def test_submit_reports_a_refusal_without_a_traceback(tmp_path, monkeypatch, capsys):
    import kfp

    class Refusing(FakeClient):
        def create_run_from_pipeline_package(self, path, **kwargs):
            raise RuntimeError("(403) Forbidden")

    monkeypatch.setattr(kfp, "Client", Refusing)
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(tmp_path / "absent"))
    code = main(
        ["pipeline", "submit", "--package", str(PACKAGE), "--experiment", "e", "--host", "http://k:1"]
    )
    assert code == 2
    assert (
        "error: KFP at http://k:1 refused the run: RuntimeError: (403) Forbidden" in capsys.readouterr().err
    )


def test_cli_dry_run_and_errors(capsys):
    assert main(["pipeline", "submit", "--package", str(PACKAGE), "--experiment", "e", "--dry-run",
                 "--param", "shards=5", "--run-name-prefix", "nightly"]) == 0  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert out["arguments"] == {"shards": 5} and out["run_name"].startswith("nightly-")
    assert out["defaults"]["config"] == "configs/tiny.yaml" and out["token_present"] is False
    assert main(["pipeline", "submit", "--package", str(PACKAGE), "--experiment", "e", "--dry-run",
                 "--param", "tracking=http://x"]) == 2  # fmt: skip
    assert "error: parameter tracking: not an input of the pipeline" in capsys.readouterr().err
