"""Sharded safetensors loading with strict key checking, s3:// weights directories, and `htgrpo weights download`
where no hub can be reached."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from htgrpo.backbones.llada import LLaDAConfig, LLaDAModelLM
from htgrpo.backbones.weights_io import (
    INDEX,
    load_safetensors,
    resolve_weights_dir,
    save_sharded,
    weight_files,
)
from htgrpo.errors import WeightsError

CFG = LLaDAConfig(vocab_size=96, d_model=16, n_layers=2, n_heads=2, mlp_hidden_size=32)


def net(seed: int) -> LLaDAModelLM:
    torch.manual_seed(seed)
    return LLaDAModelLM(CFG)


@pytest.fixture
def sharded(tmp_path) -> Path:
    names = save_sharded(net(0).state_dict(), tmp_path / "ckpt", max_shard_bytes=4096)
    assert len(names) > 2 and (tmp_path / "ckpt" / INDEX).is_file()
    return tmp_path / "ckpt"


def test_sharded_checkpoint_loads_into_a_meta_built_model(sharded):
    model = LLaDAModelLM(CFG, device="meta")
    model.to_empty(device="cpu")
    files = load_safetensors(model, sharded)
    assert len(files) > 2
    ref = net(0).state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())
    assert set(weight_files(sharded)) == set(ref)


def test_single_file_and_dtype_cast(tmp_path):
    save_sharded(net(1).state_dict(), tmp_path)  # fits one file
    assert (tmp_path / "model.safetensors").is_file() and not (tmp_path / INDEX).exists()
    model = LLaDAModelLM(CFG, dtype=torch.bfloat16)
    load_safetensors(model, tmp_path)
    w = model.model.transformer["wte"].weight
    assert w.dtype == torch.bfloat16 and torch.equal(w, net(1).model.transformer["wte"].weight.bfloat16())


def _rewrite_shard(directory: Path, key: str, change) -> str:
    index = json.loads((directory / INDEX).read_text())
    shard = index["weight_map"][key]
    tensors = load_file(str(directory / shard))
    change(tensors, index)
    save_file(tensors, str(directory / shard))
    (directory / INDEX).write_text(json.dumps(index))
    return shard


def test_missing_key_names_the_key_and_the_index(sharded):
    key = "model.transformer.blocks.1.up_proj.weight"

    def drop(tensors, index):
        del tensors[key]
        del index["weight_map"][key]

    _rewrite_shard(sharded, key, drop)
    with pytest.raises(WeightsError, match=rf"{INDEX} does not fit the model: missing 1 key\(s\): {key}"):
        load_safetensors(LLaDAModelLM(CFG), sharded)


def test_unexpected_key_names_the_key_and_its_shard(sharded):
    key = "model.transformer.blocks.0.q_proj.weight"

    def add(tensors, index):
        tensors["model.transformer.blocks.0.q_proj.bias"] = torch.zeros(16)
        index["weight_map"]["model.transformer.blocks.0.q_proj.bias"] = index["weight_map"][key]

    shard = _rewrite_shard(sharded, key, add)
    with pytest.raises(
        WeightsError, match=rf"unexpected 1 key\(s\) \(in {shard}\): model.transformer.blocks.0.q_proj.bias"
    ):
        load_safetensors(LLaDAModelLM(CFG), sharded)


def test_shape_mismatch_names_key_file_and_shapes(sharded):
    key = "model.transformer.ln_f.weight"
    shard = _rewrite_shard(sharded, key, lambda t, i: t.__setitem__(key, torch.ones(17)))
    with pytest.raises(WeightsError, match=rf"{shard}: {key} has shape \[17\], the model expects \[16\]"):
        load_safetensors(LLaDAModelLM(CFG), sharded)


def test_missing_shard_and_bad_index_and_pickles(sharded, tmp_path):
    shard = sorted(p for p in sharded.iterdir() if p.suffix == ".safetensors")[0]
    shard.unlink()
    with pytest.raises(WeightsError, match=rf"lists the shard {shard.name}, which is missing"):
        load_safetensors(LLaDAModelLM(CFG), sharded)
    (sharded / INDEX).write_text("{}")
    with pytest.raises(WeightsError, match="is not a safetensors index"):
        load_safetensors(LLaDAModelLM(CFG), sharded)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(
        WeightsError, match="holds only pytorch_model.bin .pickle.; htgrpo loads safetensors only"
    ):
        load_safetensors(LLaDAModelLM(CFG), pickled)
    with pytest.raises(WeightsError, match="does not exist"):
        resolve_weights_dir(tmp_path / "nowhere")


@pytest.mark.slow
def test_weights_from_s3_are_downloaded_once_through_the_store(tmp_path, monkeypatch):
    from htgrpo.config import StorageConfig
    from htgrpo.storage.base import open_store
    from servers import ACCESS_KEY, SECRET_KEY, SeaweedS3

    server = SeaweedS3(tmp_path / "seaweed").start()
    try:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        storage = StorageConfig(
            uri=f"s3://{server.bucket}/weights",
            endpoint_url=server.endpoint,
            cache_dir=str(tmp_path / "cache"),
        )
        local = tmp_path / "local"
        save_sharded(net(2).state_dict(), local, max_shard_bytes=4096)
        store = open_store(f"s3://{server.bucket}/weights/llada", storage)
        for p in sorted(local.iterdir()):
            store.put_file(p.name, p)
        first = resolve_weights_dir(f"s3://{server.bucket}/weights/llada", storage)
        assert first.is_relative_to(tmp_path / "cache")
        model = LLaDAModelLM(CFG)
        load_safetensors(model, first)
        assert torch.equal(model.model.transformer["wte"].weight, net(2).model.transformer["wte"].weight)
        marker = next(first.glob(".htgrpo-complete.json")).stat().st_mtime_ns
        assert resolve_weights_dir(f"s3://{server.bucket}/weights/llada", storage) == first
        assert (
            next(first.glob(".htgrpo-complete.json")).stat().st_mtime_ns == marker
        )  # reused, not fetched again
        with pytest.raises(WeightsError, match="holds no files"):
            resolve_weights_dir(f"s3://{server.bucket}/weights/none", storage)
    finally:
        server.stop()


@pytest.mark.parametrize(
    "env, message",
    [
        ({"HF_HUB_OFFLINE": "1"}, "HF_HUB_OFFLINE is set"),
        (
            {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_ETAG_TIMEOUT": "2"},
            "cannot download Gen-Verse/MMaDA-8B-Base",
        ),
    ],
)
def test_weights_download_without_a_hub_fails_clearly(tmp_path, env, message):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "htgrpo.cli",
            "weights",
            "download",
            "--model",
            "mmada",
            "--to",
            str(tmp_path / "w"),
        ],
        env={**clean, "HF_HOME": str(tmp_path / "hf"), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ")


def test_weights_download_lays_out_the_repositories_and_converts_pickles(tmp_path, monkeypatch):
    """snapshot_download replaced by a fake hub: the layout, the pickle conversion, the result record."""
    import huggingface_hub

    from htgrpo.backbones import hub

    calls = []

    def fake_snapshot(repo_id, revision=None, local_dir=None, allow_patterns=None):
        calls.append((repo_id, Path(local_dir).relative_to(tmp_path / "w").as_posix(), revision))
        d = Path(local_dir)
        d.mkdir(parents=True, exist_ok=True)
        if repo_id == "showlab/magvitv2":
            assert "pytorch_model.bin" in allow_patterns
            torch.save({"quantize.embedding": torch.ones(4, 2)}, d / "pytorch_model.bin")
            (d / "config.json").write_text("{}")
        else:
            assert not any(p.endswith(".bin") for p in allow_patterns)
            save_sharded(net(3).state_dict(), d, max_shard_bytes=4096)
            (d / "config.json").write_text(json.dumps(CFG.to_checkpoint_config()))
            (d / "tokenizer.json").write_text("{}")
        return str(d)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    monkeypatch.setattr(hub, "_offline_reason", lambda: None)
    out = hub.download_weights("mmada", str(tmp_path / "w"), revision="main")
    assert calls == [("Gen-Verse/MMaDA-8B-Base", ".", "main"), ("showlab/magvitv2", "magvitv2", None)]
    vq = tmp_path / "w" / "magvitv2"
    assert not (vq / "pytorch_model.bin").exists()
    assert torch.equal(load_file(str(vq / "model.safetensors"))["quantize.embedding"], torch.ones(4, 2))
    assert out["converted"] == ["pytorch_model.bin -> model.safetensors"] and out["files"] > 4
    model = LLaDAModelLM(CFG)
    load_safetensors(model, tmp_path / "w")  # the downloaded checkpoint loads
    with pytest.raises(WeightsError, match="unknown model 'sd3'"):
        hub.download_weights("sd3", str(tmp_path / "x"))
