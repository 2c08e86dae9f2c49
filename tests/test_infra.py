"""Cluster set-up (infra/) and the images (images/): the kustomize overlays built with the real kubectl and
validated strictly against the Kubernetes schemas, the KFP launcher's object-store settings, the secrets the
pipeline and the chart read (names and keys agree everywhere, values never committed), the Kubeflow Trainer
runtime, the GPU node-pool example, and the Dockerfiles' pins.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from htgrpo.config import PipelineConfig
from k8s import CHART, INFRA, KUBE_VERSIONS, ROOT, load_docs, run, validate_strict

pytestmark = pytest.mark.k8s
TRAINER = ("trainer.kubeflow.org/v1alpha1", "TrainingRuntime")
OVERLAYS = ["base", "overlays/aws", "overlays/s3-compatible"]


@pytest.fixture(scope="module")
def kustomize(k8s_bin):
    def kustomize(path: Path) -> list[dict[str, Any]]:
        proc = run([k8s_bin / "kubectl", "kustomize", path])
        assert proc.returncode == 0, f"kubectl kustomize {path} failed:\n{proc.stderr}"
        return load_docs(proc.stdout)

    return kustomize


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, kind
    return found[0]


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlays_build_and_pass_the_kubernetes_schema_strictly(kustomize, overlay, version):
    docs = kustomize(INFRA / overlay)
    kinds = validate_strict(
        docs, version, crds={TRAINER}
    )  # a CRD: no schema to check against, skipped by name
    # the Trainer runtime is a component the overlays add (the base works without Kubeflow Trainer)
    assert kinds == {"Namespace", "ConfigMap"} | ({"TrainingRuntime"} if overlay != "base" else set())
    ns = by_kind(docs, "Namespace")["metadata"]["name"]
    assert all(d["metadata"].get("namespace") == ns for d in docs if d["kind"] != "Namespace")
    assert all(d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "htgrpo" for d in docs)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kfp_launcher_points_the_pipeline_root_at_s3_without_credentials(kustomize, overlay):
    cm = by_kind(kustomize(INFRA / overlay), "ConfigMap")
    assert cm["metadata"]["name"] == "kfp-launcher"
    assert set(cm["data"]) == {"defaultPipelineRoot", "providers"}
    assert re.fullmatch(r"s3://[a-z0-9.-]{3,63}/\S+", cm["data"]["defaultPipelineRoot"])
    providers = yaml.safe_load(cm["data"]["providers"])
    default = providers["s3"]["default"]
    assert default["endpoint"] and default["region"]
    creds = default["credentials"]
    if creds.get("fromEnv"):
        assert "secretRef" not in creds
    else:
        assert creds["secretRef"] == {
            "secretName": PipelineConfig().s3_secret,
            "accessKeyKey": "AWS_ACCESS_KEY_ID",
            "secretKeyKey": "AWS_SECRET_ACCESS_KEY",
        }
        assert default["forcePathStyle"] is True  # S3-compatible servers want path-style addressing


def test_training_runtime_runs_htgrpo_train_on_the_gpu_pool(kustomize):
    rt = by_kind(kustomize(INFRA / "overlays/aws"), "TrainingRuntime")
    assert rt["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and rt["spec"]["mlPolicy"]["torch"] == {}
    (job,) = rt["spec"]["template"]["spec"]["replicatedJobs"]
    assert (
        job["name"] == "node"
    )  # the Trainer's torch plugin injects PET_* env into replicated job/container node
    pod = job["template"]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["name"] == "node" and c["command"] == ["torchrun", "--no-python", "htgrpo", "train"]
    settings = PipelineConfig()
    assert c["image"] == settings.gpu_image
    assert c["resources"]["limits"][settings.train.accelerator_type] == settings.train.accelerator_limit
    assert pod["nodeSelector"] == settings.train.node_selector
    assert pod["tolerations"] == settings.train.tolerations
    assert (
        pod["securityContext"]["runAsNonRoot"] is True
        and c["securityContext"]["readOnlyRootFilesystem"] is True
    )
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory" and "emptyDir" in vols[mounts["/tmp"]]
    env = {e["name"]: e for e in c["env"]}
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_PASSWORD"):
        assert "secretKeyRef" in env[name]["valueFrom"], name
    for path in sorted((INFRA / "trainer").glob("trainjob-*.yaml")):
        example = load_docs(path.read_text())[0]
        assert example["kind"] == "TrainJob", path
        assert example["spec"]["runtimeRef"]["name"] == rt["metadata"]["name"], path


def test_s3_compatible_overlay_gives_the_trainer_the_same_endpoint(kustomize):
    docs = kustomize(INFRA / "overlays/s3-compatible")
    endpoint = yaml.safe_load(by_kind(docs, "ConfigMap")["data"]["providers"])["s3"]["default"]["endpoint"]
    c = by_kind(docs, "TrainingRuntime")["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"][
        "template"
    ]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["AWS_ENDPOINT_URL"] == f"http://{endpoint}"


# --- secrets: generated from git-ignored env files; names and keys agree with the pipeline and the chart --------


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_secrets_are_generated_from_ignored_env_files(kustomize, tmp_path, version):
    work = tmp_path / "secrets"
    shutil.copytree(INFRA / "secrets", work)
    examples = sorted(work.glob("*.env.example"))
    for ex in examples:
        shutil.copy(ex, ex.with_suffix(""))  # s3.env.example -> s3.env
    docs = kustomize(work)
    assert validate_strict(docs, version) == {"Secret"}
    secrets = {d["metadata"]["name"]: set(d["data"]) for d in docs}
    # what the compiled pipeline's pods read (secretAsEnv), and what the chart reads
    _, platform = load_docs((ROOT / "pipelines" / "htgrpo.yaml").read_text())
    read: dict[str, set[str]] = {}
    for conf in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values():
        for ref in conf["secretAsEnv"]:
            read.setdefault(ref["secretName"], set()).update(k["secretKey"] for k in ref["keyToEnv"])
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    backend = values["mlflow"]["backendStore"]
    read[backend["secretName"]] = {backend["secretKey"]}
    assert secrets == read
    assert values["s3"]["secretName"] == PipelineConfig().s3_secret
    # the filled-in files are never committed; the examples hold placeholders only
    for name in ("s3.env", "mlflow.env", "mlflow-backend.env"):
        proc = subprocess.run(["git", "check-ignore", "-q", f"infra/secrets/{name}"], cwd=ROOT)
        assert proc.returncode == 0, f"infra/secrets/{name} must be git-ignored"
    for ex in examples:
        for line in ex.read_text().splitlines():
            if line and not line.startswith("#"):
                assert "replace" in line.split("=", 1)[1], f"{ex.name}: {line!r} is not a placeholder"


def test_gpu_node_pool_example_matches_the_default_placement():
    pool = load_docs((INFRA / "gpu-node-pool" / "karpenter-nodepool.yaml").read_text())[0]
    assert pool["apiVersion"] == "karpenter.sh/v1" and pool["kind"] == "NodePool"
    tmpl = pool["spec"]["template"]
    train = PipelineConfig().train
    assert train.node_selector.items() <= tmpl["metadata"]["labels"].items()
    (tol,) = train.tolerations
    assert any(t["key"] == tol["key"] and t["effect"] == tol["effect"] for t in tmpl["spec"]["taints"])
    assert train.accelerator_type in pool["spec"]["limits"]


# --- images ---------------------------------------------------------------------------------------------------


def dockerfile(name: str) -> str:
    return (ROOT / "images" / name).read_text()


@pytest.mark.parametrize("name", ["cpu.Dockerfile", "cuda.Dockerfile"])
def test_dockerfiles_are_pinned_multi_stage_and_non_root(name):
    text = dockerfile(name)
    bases = dict(re.findall(r"^ARG (\w+_IMAGE)=(\S+)$", text, re.M))
    assert bases and all(
        re.fullmatch(r"[\w./-]+:[\w.-]+", b) and not b.endswith(":latest") for b in bases.values()
    )
    assert len(re.findall(r"^FROM ", text, re.M)) == 2 and " AS build" in text and "COPY --from=build" in text
    assert "ARG TORCH_VERSION=2.13.0" in text and "--constraint /tmp/constraints.txt" in text
    assert re.search(r"^USER 10001:10001$", text, re.M)
    assert "digest" in text  # tells the user to pin the base by digest in their registry
    for line in text.splitlines():
        if line.lstrip().startswith(("ENV", "ARG")):
            assert not re.search(r"(SECRET|PASSWORD|TOKEN|ACCESS_KEY)", line), line
    # the uid the chart and the training runtime run as
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["podSecurityContext"]["runAsUser"] == 10001


def test_images_match_the_pipeline_settings_and_the_build_context_is_small():
    settings = PipelineConfig()
    assert settings.image.rsplit("/", 1)[1].startswith("htgrpo:")
    assert settings.gpu_image.rsplit("/", 1)[1].startswith("htgrpo-cuda:")
    assert "nvidia/cuda:" in dockerfile("cuda.Dockerfile") and "python:3.11-slim" in dockerfile(
        "cpu.Dockerfile"
    )
    ignore = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    assert ignore[0] == "**", (
        ".dockerignore must exclude everything by default, then allow what the images copy"
    )
    assert "**/*.env" in ignore
    pins = (ROOT / "images" / "constraints.txt").read_text()
    assert "kfp==2.17.3" in pins and "mlflow==3.17.2" in pins and not re.search(r"^torch==", pins, re.M)
    copied = re.findall(
        r"^COPY (?!--from)(\S+)", dockerfile("cpu.Dockerfile") + dockerfile("cuda.Dockerfile"), re.M
    )
    allowed = [line.removeprefix("!").rstrip("/") for line in ignore if line.startswith("!")]
    for src in copied:
        assert any(src.rstrip("/") == a or src.startswith(a + "/") for a in allowed), (
            f"COPY {src} is excluded"
        )
