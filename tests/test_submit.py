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
                 "--param", "shards=3", "--run-name-prefix", "nightly"]) == 0  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    assert out["arguments"] == {"shards": 3} and out["run_name"].startswith("nightly-")
    assert out["defaults"]["config"] == "configs/tiny.yaml" and out["token_present"] is False
    assert main(["pipeline", "submit", "--package", str(PACKAGE), "--experiment", "e", "--dry-run",
                 "--param", "tracking=http://x"]) == 2  # fmt: skip
    assert "error: parameter tracking: not an input of the pipeline" in capsys.readouterr().err


RULE = (
    "is not a valid run name: it must match [a-z0-9][a-z0-9._-]{0,62} (lowercase letters, digits, '.', '_' and "
    "'-', starting with a letter or digit, at most 63 characters) and contain no '..' or '/'"
)


@pytest.mark.parametrize("name", ["..", "a..b", "a/b", "Nightly", "-x", "x" * 64, ""])
def test_check_run_name_names_the_value_and_the_rule(name):
    from htgrpo.config import check_run_name
    from htgrpo.errors import ConfigError

    with pytest.raises(ConfigError) as exc:
        check_run_name(name, "run_name")
    assert str(exc.value) == f"run_name: {name!r} {RULE}"


def test_check_run_name_accepts_run_names():
    from htgrpo.config import check_run_name

    for name in ("nightly", "htgrpo-scheduled-20260101-030000", "r.1_a", "x" * 63, "2026"):
        assert check_run_name(name) == name


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--run-name", ".."], f"error: --run-name: '..' {RULE}"),
        (["--run-name", "a/b"], f"error: --run-name: 'a/b' {RULE}"),
        (["--run-name", "Nightly-1"], f"error: --run-name: 'Nightly-1' {RULE}"),
        (["--run-name-prefix", "Nightly"], "error: the default run name (--run-name-prefix + '-YYYYmmdd-HHMMSS'; "
                                           "pass --run-name-prefix): 'Nightly-"),
        (["--param", "run_name=.."], f"error: parameter run_name: '..' {RULE}"),
        (["--param", 'overrides=["rl.lrr=1e-5"]'], "error: parameters: configs/tiny.yaml (with overrides "
                                                   "rl.lrr=1e-5): rl.lrr: unknown key"),
        (["--param", 'overrides=["rl.lr=-1"]'], "error: parameters: configs/tiny.yaml (with overrides rl.lr=-1): "
                                                "rl.lr: Input should be greater than 0"),
        (["--param", "shards=0"], "error: parameters: shards: 0 rollout shards for rl.prompts_per_step=4; "
                                  "use 1 to 4"),
        (["--param", "shards=5"], "error: parameters: shards: 5 rollout shards for rl.prompts_per_step=4"),
        (["--param", "storage_uri=gs://b/p"], "error: parameters: configs/tiny.yaml: storage: uri: 'gs://b/p' has "
                                              "an unsupported scheme gs://"),
        (["--param", "config=nowhere.yaml", "--param", 'overrides=["rl.lrr=1"]'], "error: parameters: the default "
         "configuration (config 'nowhere.yaml' is not on this machine) (with overrides rl.lrr=1): rl.lrr: unknown key"),
        (["--param", "config=nowhere.yaml", "--param", "shards=0"], "error: parameter shards: 0 rollout shards; "
                                                                    "use at least 1"),
    ],
)  # fmt: skip
def test_dry_run_checks_the_run_name_and_parameters_as_prepare_data_does(capsys, monkeypatch, argv, message):
    monkeypatch.chdir(ROOT)  # the pipeline's default config, configs/tiny.yaml, is relative
    rc = main(["pipeline", "submit", "--package", str(PACKAGE), "--experiment", "e", "--dry-run", *argv])
    captured = capsys.readouterr()
    assert rc == 2 and captured.out == ""
    assert captured.err.startswith(message) and captured.err.count("\n") == 1, captured.err


def test_dry_run_checks_overrides_against_the_defaults_when_the_config_is_elsewhere(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    argv = [
        "--param",
        "config=/in/the/image.yaml",
        "--param",
        'overrides=["rl.lr=1e-5"]',
        "--param",
        "shards=12",
    ]
    assert (
        main(["pipeline", "submit", "--package", str(PACKAGE), "--experiment", "e", "--dry-run", *argv]) == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert out["config_note"].startswith("config '/in/the/image.yaml' is not on this machine")
    plan = plan_submission(PACKAGE, experiment="e", params=["shards=4"])  # configs/tiny.yaml is here: no note
    assert "config_note" not in plan.to_dict()
