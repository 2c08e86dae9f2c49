"""Helpers for the Helm chart and infra/ tests: the real helm and kubectl (installed by scripts/install_tools.py),
rendering, and strict schema validation of Kubernetes objects with kubernetes-validate.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "htgrpo"
INFRA = ROOT / "infra"
# Kubernetes versions the manifests are validated against: the oldest the chart claims that has every field it
# uses (CronJob timeZone is GA in 1.27; 1.33 is still in support) and the newest kubernetes-validate bundles.
KUBE_VERSIONS = ("1.33.0", "latest")


def _install_tools():
    spec = importlib.util.spec_from_file_location("install_tools", ROOT / "scripts" / "install_tools.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def tool_bin() -> Path:
    """helm and kubectl, pinned (scripts/install_tools.py). In CI a failed install fails; elsewhere it skips."""
    tools = _install_tools()
    try:
        return tools.install()
    except tools.ToolInstallError as exc:
        reason = f"helm/kubectl could not be installed by scripts/install_tools.py: {exc}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


def run(cmd: list[str | Path], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, timeout=120)


def load_docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def kube_version(version: str) -> str:
    import kubernetes_validate

    return kubernetes_validate.utils.latest_version() if version == "latest" else version


def validate_strict(
    docs: list[dict[str, Any]], version: str, crds: set[tuple[str, str]] = frozenset()
) -> set[str]:
    """Validate every object strictly (unknown fields rejected); returns the kinds seen.

    ``crds``: (apiVersion, kind) pairs of custom resources, which have no schema here; they are skipped explicitly,
    and any other object without a schema fails the test.
    """
    import kubernetes_validate

    kinds = set()
    for doc in docs:
        kinds.add(doc["kind"])
        if (doc["apiVersion"], doc["kind"]) in crds:
            continue
        name = f"{doc['kind']}/{doc['metadata'].get('name')}"
        try:
            kubernetes_validate.validate(doc, kube_version(version), strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name} fails the Kubernetes {version} schema at {list(exc.path)}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError:
            pytest.fail(
                f"{name}: no schema for {doc['apiVersion']} {doc['kind']} (not a custom resource we expect)"
            )
    return kinds
