"""The Helm chart (helm/htgrpo), checked with the real helm binary: lint, templates that pass the Kubernetes schemas
strictly, hardened pods, least-privilege RBAC, the schema rejecting bad values, and the CronJob's own submit command
run in dry-run mode against the compiled pipeline that the chart ships.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from htgrpo.cli import main
from k8s import CHART, KUBE_VERSIONS, ROOT, load_docs, run, validate_strict

pytestmark = pytest.mark.k8s
CONFIGMAP_PACKAGE = "/etc/htgrpo/pipeline/htgrpo.yaml"
TOKEN_DIR = "/var/run/secrets/kubeflow/pipelines"


@pytest.fixture(scope="module")
def helm(k8s_bin, helm_env):
    def helm(*args: str | Path, check: bool = True):
        proc = run([k8s_bin / "helm", *args], env=helm_env)
        if check:
            assert proc.returncode == 0, f"helm {' '.join(map(str, args))} failed:\n{proc.stderr}"
        return proc

    return helm


@pytest.fixture(scope="module")
def render(helm):
    def render(*sets: str, extra: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        args = ["template", "retrain", CHART, "--namespace", "ml", *extra]
        for s in sets:
            args += ["--set", s]
        return load_docs(helm(*args).stdout)

    return render


def one(docs: list[dict[str, Any]], kind: str, name_part: str = "") -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and name_part in d["metadata"]["name"]]
    assert len(found) == 1, f"expected one {kind} {name_part!r}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


def pod_specs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {}
    for d in docs:
        if d["kind"] == "CronJob":
            out[d["metadata"]["name"]] = d["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        elif d["kind"] in ("Deployment", "Job", "Pod"):
            out[d["metadata"]["name"]] = d["spec"]["template"]["spec"] if d["kind"] != "Pod" else d["spec"]
    return out


ALL_ON = ("mlflow.enabled=true", "kfp.runServiceAccount=default-editor", "imagePullSecrets[0].name=regcred")
S3_SOURCE = ("pipeline.source=s3", "pipeline.s3Uri=s3://htgrpo-artifacts/pipelines/htgrpo.yaml",
             "s3.endpointUrl=http://seaweedfs.kubeflow:8333")  # fmt: skip


# --- lint and schemas -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", ["defaults", "ci/mlflow-values.yaml", "ci/s3-values.yaml"])
def test_helm_lint_strict(helm, values):
    extra = [] if values == "defaults" else ["--values", CHART / values]
    out = helm("lint", "--strict", CHART, *extra).stdout
    assert "1 chart(s) linted, 0 chart(s) failed" in out


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("sets", [(), ALL_ON, S3_SOURCE], ids=["defaults", "mlflow", "s3-source"])
def test_rendered_manifests_pass_the_kubernetes_schema_strictly(render, sets, version):
    docs = render(*sets)
    kinds = validate_strict(docs, version)
    want = {"ServiceAccount", "Role", "RoleBinding", "CronJob"}
    want |= {"Deployment", "Service"} if "mlflow.enabled=true" in sets else set()
    want |= {"ConfigMap"} if "pipeline.source=s3" not in sets else set()
    assert kinds == want


def test_every_pod_is_non_root_read_only_and_bounded(render):
    pods = pod_specs(render(*ALL_ON))
    assert len(pods) == 2  # the CronJob's and MLflow's
    for name, spec in pods.items():
        sec = spec["securityContext"]
        assert sec["runAsNonRoot"] is True and sec["runAsUser"] > 0, name
        assert sec["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["automountServiceAccountToken"] is False, name
        tmp = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        for c in spec["containers"]:
            cs = c["securityContext"]
            assert cs["readOnlyRootFilesystem"] is True and cs["allowPrivilegeEscalation"] is False, name
            assert cs["capabilities"] == {"drop": ["ALL"]}, name
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][part]), (name, part)
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            assert mounts.get("/tmp") in tmp, (
                f"{name}: /tmp must be an emptyDir (the root filesystem is read-only)"
            )


def test_cronjob_schedule_and_switches(render):
    cron = one(render(), "CronJob")["spec"]
    assert cron["schedule"] == "0 3 * * *" and cron["timeZone"] == "Etc/UTC"
    assert cron["concurrencyPolicy"] == "Forbid" and cron["suspend"] is False
    assert cron["successfulJobsHistoryLimit"] == 3 and cron["failedJobsHistoryLimit"] == 3
    assert cron["startingDeadlineSeconds"] > 0 and cron["jobTemplate"]["spec"]["activeDeadlineSeconds"] > 0
    changed = one(render("suspend=true", "schedule=30 1 * * 1-5", "timeZone=Europe/Paris"), "CronJob")["spec"]
    assert changed["suspend"] is True and changed["schedule"] == "30 1 * * 1-5"
    assert changed["timeZone"] == "Europe/Paris"


def test_cronjob_authenticates_with_a_projected_token_of_the_configured_audience(render):
    spec = pod_specs(render("kfp.token.audience=kfp.example.org"))["retrain-htgrpo-retrain"]
    token = next(v for v in spec["volumes"] if v["name"] == "kfp-token")["projected"]["sources"][0]
    assert token["serviceAccountToken"]["audience"] == "kfp.example.org"
    assert token["serviceAccountToken"]["path"] == "token"
    c = spec["containers"][0]
    assert {m["mountPath"] for m in c["volumeMounts"] if m["name"] == "kfp-token"} == {TOKEN_DIR}
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["KF_PIPELINES_SA_TOKEN_PATH"] == f"{TOKEN_DIR}/token"
    args = c["args"]
    assert args[args.index("--token-path") + 1] == f"{TOKEN_DIR}/token"
    default = pod_specs(render())["retrain-htgrpo-retrain"]
    assert json.dumps(default).count("pipelines.kubeflow.org") == 1  # the default audience


def test_rbac_is_least_privilege(render):
    docs = render("kfp.namespace=team-a")
    role, binding = one(docs, "Role"), one(docs, "RoleBinding")
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "team-a"
    rules = {
        (g, r): set(rule["verbs"])
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
    }
    assert rules == {
        ("pipelines.kubeflow.org", "experiments"): {"create", "get", "list"},
        ("pipelines.kubeflow.org", "runs"): {"create", "get"},
    }
    sa = one(docs, "ServiceAccount")
    assert sa["automountServiceAccountToken"] is False
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "ml"}
    ]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert {d["kind"] for d in render("rbac.create=false", "serviceAccount.create=false")} == {
        "CronJob",
        "ConfigMap",
    }


def test_secrets_only_by_reference(render):
    """No credential in any rendered object: secret-like env vars come from secretKeyRef, nothing else."""
    for d in render(*ALL_ON, *S3_SOURCE):
        assert d["kind"] != "Secret"
        for spec in pod_specs([d]).values():
            for c in spec["containers"]:
                for e in c.get("env", []):
                    secretish = ("SECRET", "PASSWORD", "TOKEN", "KEY", "BACKEND_STORE")
                    if any(w in e["name"] for w in secretish) and not e["name"].endswith("_PATH"):
                        assert "secretKeyRef" in e.get("valueFrom", {}), e


# --- MLflow ---------------------------------------------------------------------------------------------------


def test_mlflow_server_allows_its_own_service_names_and_the_pipeline_uses_it(render):
    docs = render(*ALL_ON, "mlflow.allowedHosts[0]=mlflow.example.org")
    dep, svc = one(docs, "Deployment"), one(docs, "Service")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["mlflow", "server"]
    opts = dict(a.removeprefix("--").split("=", 1) for a in c["args"] if a.startswith("--"))
    hosts = set(opts["allowed-hosts"].split(","))
    port = svc["spec"]["ports"][0]["port"]
    fq = f"{svc['metadata']['name']}.ml.svc.cluster.local"
    assert {fq, f"{fq}:{port}", svc["metadata"]["name"], f"{svc['metadata']['name']}:{port}"} <= hosts
    assert "mlflow.example.org" in hosts and "*" not in hosts
    assert opts["artifacts-destination"].startswith("s3://") and opts["port"] == str(port)
    env = {e["name"]: e for e in c["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"] == {
        "name": "htgrpo-mlflow-backend",
        "key": "uri",
    }
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"]["value"] == "false"
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"
    # the CronJob hands the pipeline this server, by a name the server accepts
    args = one(docs, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
    tracking = next(a for a in args if a.startswith("tracking_uri=")).split("=", 1)[1]
    assert urlsplit(tracking).netloc in hosts
    assert (
        dep["spec"]["selector"]["matchLabels"].items()
        <= dep["spec"]["template"]["metadata"]["labels"].items()
    )
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]


# --- the shipped pipeline and the CronJob's command -----------------------------------------------------------


def test_chart_ships_the_committed_pipeline():
    shipped = CHART / "files" / "htgrpo.yaml"
    assert shipped.read_text() == (ROOT / "pipelines" / "htgrpo.yaml").read_text(), (
        "helm/htgrpo/files/htgrpo.yaml differs from pipelines/htgrpo.yaml: run `make pipeline` (it copies it)"
    )


def test_schema_params_are_the_pipeline_inputs():
    schema = json.loads((CHART / "values.schema.json").read_text())
    params = schema["properties"]["pipeline"]["properties"]["params"]
    spec = load_docs((ROOT / "pipelines" / "htgrpo.yaml").read_text())[0]
    inputs = spec["root"]["inputDefinitions"]["parameters"]
    assert set(params["properties"]) == set(inputs) and params["additionalProperties"] is False
    json_types = {"STRING": "string", "NUMBER_INTEGER": "integer", "LIST": "array"}
    for key, p in inputs.items():
        assert params["properties"][key]["type"] == json_types[p["parameterType"]], key
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values["pipeline"]["params"]) <= set(inputs)


def submit_args(docs: list[dict[str, Any]], package: Path) -> list[str]:
    """The CronJob's command line, with the ConfigMap's pipeline written to ``package`` in place of its mount."""
    c = one(docs, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["htgrpo"] and c["args"][:2] == ["pipeline", "submit"]
    args = list(c["args"])
    if CONFIGMAP_PACKAGE in args:
        package.write_text(one(docs, "ConfigMap")["data"]["htgrpo.yaml"])
        args[args.index(CONFIGMAP_PACKAGE)] = str(package)
    return args


def dry_run(args: list[str], capsys, tmp_path: Path) -> dict[str, Any]:
    written = tmp_path / "submitted.yaml"
    assert main([*args, "--dry-run", "--write-package", str(written)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dry_run"] is True
    out["_written"] = written
    return out


def test_cronjob_command_checks_the_shipped_pipeline_in_dry_run(render, tmp_path, capsys):
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    docs = render(
        "mlflow.enabled=true",
        "pipeline.params.shards=4",
        "pipeline.params.run_name=nightly",
        "gpu.count=2",
        "gpu.nodeSelector.nvidia\\.com/gpu\\.product=NVIDIA-H100-80GB-HBM3",
        extra=("--set-json", 'pipeline.params.overrides=["rl.lr=1e-5","sampler.steps=16"]'),
    )
    out = dry_run(submit_args(docs, tmp_path / "htgrpo.yaml"), capsys, tmp_path)
    assert out["pipeline"] == "htgrpo" and out["experiment"] == "htgrpo"
    assert out["run_name"].startswith("htgrpo-scheduled-")
    assert out["namespace"] == "ml" and out["host"] == "http://ml-pipeline.kubeflow.svc.cluster.local:8888"
    args = out["arguments"]
    assert args["shards"] == 4 and args["overrides"] == ["rl.lr=1e-5", "sampler.steps=16"]
    assert args["run_name"] == "nightly" and args["storage_uri"] == "s3://htgrpo-artifacts/htgrpo"
    assert args["tracking_uri"] == "http://retrain-htgrpo-mlflow.ml.svc.cluster.local:5000"
    assert out["token_path"] == f"{TOKEN_DIR}/token"
    assert out["gpu_pool"]["count"] == 2 and len(out["gpu_executors"]) == 12
    spec, platform = load_docs(out["_written"].read_text())
    json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec())
    json_format.ParseDict(platform, pipeline_spec_pb2.PlatformSpec())
    ex = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-train-global"]
    assert ex["nodeSelector"]["labels"] == {
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
    }
    res = spec["deploymentSpec"]["executors"]["exec-train-global"]["container"]["resources"]["accelerator"]
    assert res["resourceCount"] == "2"


def test_cronjob_command_keeps_the_compiled_placement_without_gpu_apply(render, tmp_path, capsys):
    out = dry_run(submit_args(render("gpu.apply=false"), tmp_path / "p.yaml"), capsys, tmp_path)
    assert out["gpu_pool"] is None and out["gpu_executors"] == []
    assert out["_written"].read_text().count("nvidia.com/gpu.present") == 12


def test_cronjob_command_reads_an_s3_package(render, tmp_path, capsys, monkeypatch):
    from moto import mock_aws

    docs = render(*S3_SOURCE)
    assert "ConfigMap" not in {d["kind"] for d in docs}
    c = one(docs, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in c["env"]}
    assert env["AWS_ENDPOINT_URL"]["value"] == "http://seaweedfs.kubeflow:8333"
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "htgrpo-s3"
    args = submit_args(docs, tmp_path / "unused.yaml")
    assert args[args.index("--package") + 1] == "s3://htgrpo-artifacts/pipelines/htgrpo.yaml"
    for k in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        import boto3

        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="htgrpo-artifacts")
        s3.put_object(
            Bucket="htgrpo-artifacts",
            Key="pipelines/htgrpo.yaml",
            Body=(ROOT / "pipelines" / "htgrpo.yaml").read_bytes(),
        )
        out = dry_run(args, capsys, tmp_path)
    assert out["package"] == "s3://htgrpo-artifacts/pipelines/htgrpo.yaml" and out["arguments"]["shards"] == 2


def test_set_file_replaces_the_shipped_pipeline(render, tmp_path):
    custom = tmp_path / "custom.yaml"
    custom.write_text(
        (ROOT / "pipelines" / "htgrpo.yaml").read_text().replace("htgrpo-cuda:0.1.0", "htgrpo-cuda:9")
    )
    data = one(render(extra=("--set-file", f"pipeline.package={custom}")), "ConfigMap")["data"]["htgrpo.yaml"]
    assert "htgrpo-cuda:9" in data and "htgrpo-cuda:0.1.0" not in data


def test_image_digest_wins_over_tag(render):
    digest = "sha256:" + "a" * 64
    spec = pod_specs(render(f"image.digest={digest}", "mlflow.enabled=true"))
    assert {c["image"] for s in spec.values() for c in s["containers"]} == {f"ghcr.io/htgrpo/htgrpo@{digest}"}


# --- values.schema.json rejects bad values, naming the key ----------------------------------------------------

BAD_VALUES = [
    ("schedule=0 0 3 * * *", "/schedule"),  # KFP's 6-field cron with seconds is not a Kubernetes schedule
    ("schedule=every night", "/schedule"),
    ("suspend=yes", "/suspend"),
    ("successfulJobsHistoryLimit=-1", "/successfulJobsHistoryLimit"),
    ("pipeline.source=git", "/pipeline/source"),
    ("pipeline.source=s3", "/pipeline/s3Uri"),  # s3 without s3Uri
    ("pipeline.params.shard=3", "'shard'"),  # not an input of the pipeline
    ("pipeline.params.shards=0", "/pipeline/params/shards"),
    ("pipeline.params.run_name=Nightly", "/pipeline/params/run_name"),  # run names are lowercase
    ("pipeline.params.run_name=a..b", "/pipeline/params/run_name"),
    ("pipeline.params.run_name=" + "r" * 64, "/pipeline/params/run_name"),
    ("kfp.runNamePrefix=Nightly", "/kfp/runNamePrefix"),
    ("kfp.runNamePrefix=a..b", "/kfp/runNamePrefix"),
    ("kfp.runNamePrefix=" + "p" * 48, "/kfp/runNamePrefix"),  # PREFIX-YYYYmmdd-HHMMSS must fit 63 characters
    ("pipeline.params.shards=four", "/pipeline/params/shards"),
    ("pipeline.params.storage_uri=file:///tmp/store", "/pipeline/params/storage_uri"),
    ("pipeline.params.tracking_uri=mlflow:5000", "/pipeline/params/tracking_uri"),
    ("kfp.host=ml-pipeline:8888", "/kfp/host"),
    ("kfp.token.audience=", "/kfp/token/audience"),
    ("kfp.token.expirationSeconds=60", "/kfp/token/expirationSeconds"),
    ("image.repository=", "/image/repository"),
    ("image.digest=sha256:abc", "/image/digest"),
    ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
    ("gpu.count=two", "/gpu/count"),
    ("gpu.count=0", "/gpu/count"),
    ("gpu.resourceName=gpu", "/gpu/resourceName"),
    ("gpu.tolerations[0].operator=Maybe", "/gpu/tolerations/0/operator"),
    ("podSecurityContext.runAsUser=0", "/podSecurityContext/runAsUser"),
    ("resources.limits=null", "limits"),
    ("resources.requests.memory=lots", "/resources/requests/memory"),
    ("mlflow.allowedHosts[0]=*", "/mlflow/allowedHosts/0"),
    ("mlflow.artifactsDestination=/mnt/artifacts", "/mlflow/artifactsDestination"),
    ("mlflow.service.port=70000", "/mlflow/service/port"),
    ("unknownTopLevel=1", "'unknownTopLevel'"),
]


@pytest.mark.parametrize("bad,key", BAD_VALUES, ids=[b for b, _ in BAD_VALUES])
def test_schema_rejects_bad_values(helm, bad, key):
    for cmd in (["template", "x", CHART], ["lint", CHART]):
        proc = helm(*cmd, "--set", bad, check=False)
        assert proc.returncode != 0, f"helm {cmd[0]} accepted --set {bad}"
        text = proc.stderr + proc.stdout
        assert key in text, f"helm {cmd[0]} --set {bad}: the error does not name {key}:\n{text}"
