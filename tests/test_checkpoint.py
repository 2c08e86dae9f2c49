"""Checkpoints: round trip, manifest, damage detection, config checks and atomic, crash-safe saving."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import htgrpo.checkpoint as checkpoint_module
from htgrpo.backbones.base import MASK_CODE
from htgrpo.backbones.tiny import TinyBackbone
from htgrpo.checkpoint import (
    MANIFEST,
    checkpoint_sha,
    load_checkpoint,
    save_checkpoint,
    sha256_file,
    verify_checkpoint,
)
from htgrpo.config import Config, load_config
from htgrpo.errors import CheckpointError
from htgrpo.tokenizers.kmeans import PatchKMeansTokenizer

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    "backbone.d_model=32",
    "backbone.n_layers=2",
    "backbone.n_heads=2",
    "backbone.mlp_hidden_size=64",
    "tokenizer.codebook_size=64",
    "world.grid=6",
]
K, GRID, N = 64, 6, 36
FILES = {"config.json", "model.safetensors", "image_tokenizer.safetensors"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: much faster for tiny models when the CPU is shared with a training job."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cfg() -> Config:
    return load_config(ROOT / "configs" / "tiny.yaml", SMALL)


def make_backbone(cfg: Config, seed: int = 0, codes: int = K) -> TinyBackbone:
    torch.manual_seed(seed)
    tok = PatchKMeansTokenizer(torch.rand(codes, 192, generator=torch.Generator().manual_seed(seed)))
    return TinyBackbone(cfg.backbone, tok, cfg.world.grid).eval()


def probe(bb: TinyBackbone) -> torch.Tensor:
    prompts = bb.encode_prompts(["a photo of a red circle", "a photo of two rings", "a photo of a cross"])
    g = torch.Generator().manual_seed(0)
    state = torch.randint(K, (3, N), generator=g)
    state[torch.rand(3, N, generator=g) < 0.5] = MASK_CODE
    with torch.no_grad():
        return bb.logits(prompts, state)


def leftovers(parent: Path) -> list[str]:
    """Temporary or backup directories a save may have left beside the checkpoint."""
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def rewrite_manifest(d: Path) -> None:
    """Re-hash every file (to plant a deliberate, internally consistent change)."""
    files = {
        p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(d.iterdir())
        if p.is_file() and p.name != MANIFEST
    }
    (d / MANIFEST).write_text(json.dumps({"format_version": 1, "files": files}))


@pytest.fixture
def saved(cfg, tmp_path) -> tuple[Path, TinyBackbone]:
    bb = make_backbone(cfg)
    return save_checkpoint(tmp_path / "ckpt", bb, cfg, {"step": 7}), bb


# --- round trip and manifest ---------------------------------------------------------------------------------


def test_save_then_load_gives_identical_logits(saved, cfg):
    path, bb = saved
    loaded, loaded_cfg = load_checkpoint(path, cfg)
    assert loaded_cfg == cfg
    assert not loaded.training
    assert loaded.layout == bb.layout
    assert torch.equal(loaded.image_tokenizer.codebook, bb.image_tokenizer.codebook)
    torch.testing.assert_close(probe(loaded), probe(bb), atol=0, rtol=0)
    # without a config the checkpoint's own is used
    again, own_cfg = load_checkpoint(path)
    assert own_cfg == cfg
    torch.testing.assert_close(probe(again), probe(bb), atol=0, rtol=0)


def test_file_uri_is_accepted(saved, cfg):
    path, bb = saved
    loaded, _ = load_checkpoint(f"file://{path}", cfg)
    torch.testing.assert_close(probe(loaded), probe(bb), atol=0, rtol=0)


def test_manifest_lists_sha256_and_sizes(saved):
    path, bb = saved
    assert {p.name for p in path.iterdir()} == FILES | {MANIFEST}
    manifest = json.loads((path / MANIFEST).read_text())
    assert set(manifest["files"]) == FILES
    for name, info in manifest["files"].items():
        assert info["bytes"] == (path / name).stat().st_size > 0
        assert info["sha256"] == sha256_file(path / name)
        assert len(info["sha256"]) == 64
    meta = verify_checkpoint(path)
    assert meta["extra"] == {"step": 7}
    assert meta["backbone"]["codebook_size"] == K
    assert meta["backbone"]["grid"] == GRID
    assert meta["backbone"]["parameters"] == bb.num_parameters()
    assert meta["config"]["backbone"]["d_model"] == 32
    assert len(checkpoint_sha(path)) == 16


def test_checkpoint_sha_changes_with_content(cfg, tmp_path):
    a = save_checkpoint(tmp_path / "a", make_backbone(cfg, 0), cfg)
    b = save_checkpoint(tmp_path / "b", make_backbone(cfg, 1), cfg)
    c = save_checkpoint(tmp_path / "c", make_backbone(cfg, 0), cfg)
    assert checkpoint_sha(a) != checkpoint_sha(b)
    # the same weights give byte-identical weight files. (Not the whole manifest: safetensors writes the
    # tokenizer file's two metadata keys in hash-map order, so image_tokenizer.safetensors can differ.)
    files = [json.loads((d / MANIFEST).read_text())["files"] for d in (a, b, c)]
    assert files[0]["model.safetensors"] == files[2]["model.safetensors"] != files[1]["model.safetensors"]
    assert files[0]["config.json"] == files[2]["config.json"]


# --- damage ---------------------------------------------------------------------------------------------------


def test_missing_directory(tmp_path, cfg):
    path = tmp_path / "nowhere"
    with pytest.raises(CheckpointError, match="does not exist") as info:
        load_checkpoint(path, cfg)
    assert str(path) in str(info.value)


def test_directory_without_manifest_is_incomplete(saved, cfg):
    path, _ = saved
    (path / MANIFEST).unlink()
    with pytest.raises(CheckpointError, match="incomplete") as info:
        load_checkpoint(path, cfg)
    assert str(path) in str(info.value)


def test_unreadable_manifest(saved):
    path, _ = saved
    (path / MANIFEST).write_text("{not json")
    with pytest.raises(CheckpointError, match="not a valid manifest"):
        verify_checkpoint(path)


def test_modified_byte_is_corrupt(saved, cfg):
    path, _ = saved
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size, one bit off
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, cfg)
    msg = str(info.value)
    assert "model.safetensors" in msg and "corrupt" in msg


def test_truncated_tokenizer_is_corrupt(saved):
    path, _ = saved
    tok = path / "image_tokenizer.safetensors"
    tok.write_bytes(tok.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match="image_tokenizer.safetensors .*corrupt"):
        verify_checkpoint(path)


def test_missing_listed_file(saved, cfg):
    path, _ = saved
    (path / "image_tokenizer.safetensors").unlink()
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, cfg)
    msg = str(info.value)
    assert "image_tokenizer.safetensors" in msg and "missing" in msg


def test_manifest_must_list_required_files(saved):
    path, _ = saved
    manifest = json.loads((path / MANIFEST).read_text())
    del manifest["files"]["model.safetensors"]
    (path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="lists no model.safetensors"):
        verify_checkpoint(path)


# --- mismatches ---------------------------------------------------------------------------------------------


def test_config_mismatch_names_the_key(saved, cfg):
    path, _ = saved
    other = load_config(ROOT / "configs" / "tiny.yaml", [*SMALL, "backbone.d_model=64"])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, other)
    msg = str(info.value)
    assert "backbone.d_model" in msg
    assert "64" in msg and "32" in msg
    assert "n_layers" not in msg  # only the keys that differ


def test_sampler_settings_may_differ(saved, cfg):
    path, bb = saved
    other = load_config(ROOT / "configs" / "tiny.yaml", [*SMALL, "sampler.steps=3"])
    loaded, saved_cfg = load_checkpoint(path, other)
    assert saved_cfg.sampler.steps == cfg.sampler.steps  # the checkpoint's own config comes back
    torch.testing.assert_close(probe(loaded), probe(bb), atol=0, rtol=0)


def test_codebook_size_mismatch_is_clear(saved, cfg):
    path, _ = saved
    PatchKMeansTokenizer(torch.rand(32, 192)).save(path / "image_tokenizer.safetensors")
    rewrite_manifest(path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, cfg)
    msg = str(info.value)
    assert "32 codes" in msg and "expects 64" in msg


def test_weights_of_another_vocabulary_are_named(cfg, tmp_path):
    """Weights and tokenizer agree with each other but not with config.json: the shapes that differ are named."""
    path = save_checkpoint(tmp_path / "ckpt", make_backbone(cfg), cfg)
    bigger = make_backbone(cfg, codes=80)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in bigger.state_dict().items()}, str(path / "model.safetensors"))
    rewrite_manifest(path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, cfg)
    msg = str(info.value)
    assert "net.model.transformer.wte.weight" in msg
    assert "do not fit" in msg


# --- atomic saving -----------------------------------------------------------------------------------------------


def test_save_over_existing_replaces_atomically(cfg, tmp_path):
    path = tmp_path / "ckpt"
    first = make_backbone(cfg, seed=0)
    second = make_backbone(cfg, seed=1)
    save_checkpoint(path, first, cfg, {"which": "first"})
    (path / "stray.txt").write_text("from an old run")
    out = save_checkpoint(path, second, cfg, {"which": "second"})
    assert out == path
    assert verify_checkpoint(path)["extra"] == {"which": "second"}
    # the directory was replaced, not merged into
    assert {p.name for p in path.iterdir()} == FILES | {MANIFEST}
    loaded, _ = load_checkpoint(path, cfg)
    torch.testing.assert_close(probe(loaded), probe(second), atol=0, rtol=0)
    assert leftovers(tmp_path) == []
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_save_creates_parent_directories(cfg, tmp_path):
    path = save_checkpoint(tmp_path / "a" / "b" / "ckpt", make_backbone(cfg), cfg)
    assert (path / MANIFEST).is_file()


def _boom(*args, **kwargs):
    raise RuntimeError("disk full (simulated)")


def test_crash_in_weights_save_leaves_nothing(cfg, tmp_path, monkeypatch):
    monkeypatch.setattr("safetensors.torch.save_file", _boom)  # imported by save_checkpoint when it runs
    with pytest.raises(RuntimeError, match="simulated"):
        save_checkpoint(tmp_path / "ckpt", make_backbone(cfg), cfg)
    assert not (tmp_path / "ckpt").exists()
    assert list(tmp_path.iterdir()) == []


def test_crash_in_tokenizer_save_leaves_nothing(cfg, tmp_path, monkeypatch):
    monkeypatch.setattr(PatchKMeansTokenizer, "save", _boom)
    with pytest.raises(RuntimeError, match="simulated"):
        save_checkpoint(tmp_path / "ckpt", make_backbone(cfg), cfg)
    assert not (tmp_path / "ckpt").exists()
    assert list(tmp_path.iterdir()) == []


def test_crash_while_overwriting_keeps_the_old_checkpoint(cfg, tmp_path, monkeypatch):
    path = tmp_path / "ckpt"
    old = make_backbone(cfg, seed=0)
    save_checkpoint(path, old, cfg, {"which": "old"})
    monkeypatch.setattr(PatchKMeansTokenizer, "save", _boom)
    with pytest.raises(RuntimeError, match="simulated"):
        save_checkpoint(path, make_backbone(cfg, seed=1), cfg, {"which": "new"})
    assert verify_checkpoint(path)["extra"] == {"which": "old"}
    loaded, _ = load_checkpoint(path, cfg)
    torch.testing.assert_close(probe(loaded), probe(old), atol=0, rtol=0)
    assert leftovers(tmp_path) == []


def test_interrupt_during_save_is_cleaned_up(cfg, tmp_path, monkeypatch):
    """A KeyboardInterrupt (Ctrl-C) is a BaseException, and is cleaned up too."""

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_module, "sha256_file", interrupt)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "ckpt", make_backbone(cfg), cfg)
    assert list(tmp_path.iterdir()) == []


def test_verify_once_hashes_each_file_once_and_still_sees_changes(saved, cfg, monkeypatch):
    """Inside ``verify_once`` repeated verifications (trainer state, weights, reference, ... of one step) reuse
    the first hash; a file whose size, time or inode changes is hashed again, and damage is still found."""
    from htgrpo.checkpoint import verify_once

    path, _ = saved
    hashed = []
    real = checkpoint_module.sha256_file
    monkeypatch.setattr(checkpoint_module, "sha256_file", lambda p: hashed.append(p.name) or real(p))
    with verify_once():
        for _ in range(3):
            assert verify_checkpoint(path)["extra"] == {"step": 7}
        load_checkpoint(path, cfg)
        assert sorted(hashed) == sorted(FILES)
        tok = path / "image_tokenizer.safetensors"
        tok.write_bytes(tok.read_bytes()[:-10])
        with pytest.raises(CheckpointError, match="image_tokenizer.safetensors .*corrupt"):
            verify_checkpoint(path)
    hashed.clear()
    with pytest.raises(CheckpointError):  # outside the block every call hashes
        verify_checkpoint(path)
    assert hashed
