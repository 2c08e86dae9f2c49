"""``htgrpo train --out`` with a store URI: ``s3://`` on a real S3 server (SeaweedFS on 127.0.0.1) and ``file://``,
through the same storage interface as the pipeline's checkpoints. A store run keeps config.yaml, metrics.jsonl
and its checkpoints (manifest last) in the store; ``--resume`` continues from the newest whole checkpoint there,
from an empty local cache (as on another machine).
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from htgrpo.checkpoint import load_checkpoint, save_checkpoint
from htgrpo.cli import main
from htgrpo.config import StorageConfig, config_to_dict
from htgrpo.storage import list_checkpoints, open_store
from rl_tiny import tiny_backbone, tiny_config
from servers import ACCESS_KEY, SECRET_KEY, SeaweedS3


@pytest.fixture
def s3(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    server = SeaweedS3(tmp_path / "seaweed").start()
    yield server
    server.stop()


@pytest.fixture
def run_files(tmp_path, monkeypatch):
    monkeypatch.setenv("HTGRPO_THREADS", "1")
    cfg = tiny_config(steps=2, checkpoint_every=1, keep_checkpoints=1)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(cfg)))
    base = save_checkpoint(tmp_path / "base", tiny_backbone(), cfg)
    return str(path), str(base)


def last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def weights(uri: str, storage: StorageConfig | None = None) -> dict[str, torch.Tensor]:
    return load_checkpoint(uri, storage=storage)[0].state_dict()


def test_train_into_s3_then_resume_from_another_cache(tmp_path, s3, run_files, capsys):
    config, base = run_files
    uri = f"s3://{s3.bucket}/runs/a"

    def args(cache: str) -> list[str]:
        return ["--config", config, "--set", f"storage.endpoint_url={s3.endpoint}",
                "--set", f"storage.cache_dir={tmp_path / cache}"]  # fmt: skip

    assert main(["train", *args("cache1"), "--init", base, "--out", uri]) == 0
    out = last_json(capsys)
    assert out["run"] == uri and out["checkpoint"] == f"{uri}/checkpoints/step-000002" and out["steps"] == 2
    storage = StorageConfig(uri=uri, endpoint_url=s3.endpoint, cache_dir=str(tmp_path / "reader"))
    store = open_store(uri, storage)
    keys = store.list()
    assert {"config.yaml", "metrics.jsonl"} <= set(keys)
    assert yaml.safe_load(store.get_bytes("config.yaml"))["rl"]["steps"] == 2
    assert [json.loads(x)["step"] for x in store.get_bytes("metrics.jsonl").decode().splitlines()] == [1, 2]
    # keep_checkpoints=1: step 1 was written, then pruned (manifest first) when step 2 was whole
    assert list_checkpoints(f"{uri}/checkpoints", storage) == [f"{uri}/checkpoints/step-000002"]
    assert not any(k.startswith("checkpoints/step-000001/") for k in keys)

    # the same run locally: the store changes where the run is, not what it computes
    assert main(["train", *args("cache1"), "--init", base, "--out", str(tmp_path / "local")]) == 0
    local = last_json(capsys)["checkpoint"]
    remote = weights(f"{uri}/checkpoints/step-000002", storage)
    for k, v in weights(local).items():
        assert torch.equal(v, remote[k]), k

    assert (
        main(["train", *args("cache1"), "--init", base, "--out", uri]) == 2
    )  # a finished run is not overwritten
    assert "already has checkpoints" in capsys.readouterr().err

    assert main(["train", *args("cache2"), "--out", uri, "--resume", "--steps", "3"]) == 0
    out = last_json(capsys)
    assert out["steps"] == 3 and out["checkpoint"] == f"{uri}/checkpoints/step-000003"
    assert [json.loads(x)["step"] for x in store.get_bytes("metrics.jsonl").decode().splitlines()] == [
        1,
        2,
        3,
    ]
    assert list_checkpoints(f"{uri}/checkpoints", storage) == [f"{uri}/checkpoints/step-000003"]


def test_train_into_a_file_uri(tmp_path, run_files, capsys):
    config, base = run_files
    assert main(["train", "--config", config, "--init", base, "--out", f"file://{tmp_path}/run"]) == 0
    out = last_json(capsys)
    assert out["checkpoint"] == f"{tmp_path}/run/checkpoints/step-000002"
    assert (tmp_path / "run/config.yaml").is_file() and (tmp_path / "run/checkpoints/step-000002").is_dir()
    assert not (tmp_path / "run/checkpoints/step-000001").exists()
    assert (
        main(["train", "--config", config, "--out", f"file://{tmp_path}/run", "--resume", "--steps", "3"])
        == 0
    )
    assert last_json(capsys)["steps"] == 3
