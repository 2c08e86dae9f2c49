"""The k-means patch tokenizer: patch layout, fit/encode/decode, files, and round trips the detector can read."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

import htgrpo.tokenizers.kmeans as kmeans_module
from htgrpo.config import load_config
from htgrpo.errors import CheckpointError
from htgrpo.eval.geneval import summarize
from htgrpo.tokenizers.kmeans import PATCH, PatchKMeansTokenizer, images_to_patches, patches_to_images
from htgrpo.world import dataset as dataset_module
from htgrpo.world import grammar, palette, render
from htgrpo.world.dataset import draw_prompts, render_rows, splits_for
from htgrpo.world.detect import ShapeDetector, score_images
from htgrpo.world.grammar import TASKS

ROOT = Path(__file__).resolve().parents[1]
CFG = load_config(ROOT / "configs" / "tiny.yaml")
GRID = CFG.world.grid
SPLITS = splits_for(CFG.world)
SHIPPED_TOKENIZER = ROOT / "checkpoints" / "base" / "image_tokenizer.safetensors"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: much faster for these small tensors when the CPU is shared with a training job."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def train_scenes(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    index = draw_prompts(SPLITS.train, CFG.world.task_weights, n, rng)
    return render_rows([SPLITS.train[i] for i in index], rng, GRID, SPLITS.unseen_pairs)


@pytest.fixture(scope="module")
def small_images() -> np.ndarray:
    return train_scenes(300, seed=11)


@pytest.fixture(scope="module")
def small_tok(small_images) -> PatchKMeansTokenizer:
    return PatchKMeansTokenizer.fit(small_images, 64, iterations=3, seed=0, progress=False)


# --- patch layout ---------------------------------------------------------------------------------------------


def test_patches_round_trip_exactly(small_images):
    images = small_images[:16]
    patches = images_to_patches(images)
    assert patches.shape == (16, GRID * GRID, PATCH * PATCH * 3)
    assert patches.dtype == torch.float32
    assert float(patches.min()) >= 0.0 and float(patches.max()) <= 1.0
    back = patches_to_images(patches, (GRID, GRID))
    assert back.dtype == np.uint8
    np.testing.assert_array_equal(back, images)


def test_patches_are_raster_order_cells():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(2, 16, 24, 3), dtype=np.uint8)  # a 2x3 grid of cells
    patches = images_to_patches(images)
    assert patches.shape == (2, 6, PATCH * PATCH * 3)
    # cell (row 1, col 2) is patch 1 * 3 + 2, pixels in row-major order
    cell = images[1, 8:16, 16:24].reshape(-1).astype(np.float32) / 255.0
    np.testing.assert_allclose(patches[1, 5].numpy(), cell, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(patches_to_images(patches, (2, 3)), images)


def test_patches_reject_sizes_not_multiple_of_patch():
    with pytest.raises(ValueError, match="not a multiple"):
        images_to_patches(np.zeros((1, 20, 16, 3), np.uint8))


# --- fit / encode / decode ------------------------------------------------------------------------------------


def test_fitted_tokenizer_encodes_and_decodes(small_tok, small_images):
    assert small_tok.codebook_size == 64
    assert small_tok.codebook.shape == (64, PATCH * PATCH * 3)
    assert small_tok.grid_for(48, 48) == (6, 6)
    codes = small_tok.encode(small_images[:10])
    assert codes.shape == (10, GRID * GRID)
    assert codes.dtype == torch.long
    assert int(codes.min()) >= 0 and int(codes.max()) < 64
    decoded = small_tok.decode(codes, (GRID, GRID))
    assert decoded.dtype == np.uint8
    assert decoded.shape == small_images[:10].shape
    # encoding is nearest-centroid: re-encoding a decoded image gives the same codes
    assert torch.equal(small_tok.encode(decoded), codes)
    # and the reconstruction is close to the original (most of every image is smooth background)
    err = np.abs(decoded.astype(np.int32) - small_images[:10].astype(np.int32)).mean()
    assert err < 20


def test_fit_is_deterministic(small_images):
    a = PatchKMeansTokenizer.fit(small_images[:100], 32, iterations=2, seed=5, progress=False)
    b = PatchKMeansTokenizer.fit(small_images[:100], 32, iterations=2, seed=5, progress=False)
    assert torch.equal(a.codebook, b.codebook)


def test_few_distinct_patches_give_a_lossless_codebook_of_that_size():
    images = np.full((4, 16, 16, 3), 220, np.uint8)
    images[1, :8, :8] = 30  # two distinct patches in all
    tok = PatchKMeansTokenizer.fit(images, 16, iterations=1, progress=False)
    assert tok.codebook_size == 2
    assert np.array_equal(tok.decode(tok.encode(images), (2, 2)), images)


def test_decode_rejects_out_of_range_codes(small_tok):
    good = torch.zeros(1, GRID * GRID, dtype=torch.long)
    for bad_value in (64, -1):
        bad = good.clone()
        bad[0, 3] = bad_value
        with pytest.raises(ValueError, match=r"outside \[0, 64\)"):
            small_tok.decode(bad, (GRID, GRID))
    with pytest.raises(ValueError, match="do not fill"):
        small_tok.decode(good[:, :-1], (GRID, GRID))


def test_codebook_shape_is_checked():
    with pytest.raises(ValueError, match=r"\[K, 192\]"):
        PatchKMeansTokenizer(torch.zeros(16, 100))


# --- files ------------------------------------------------------------------------------------------------------


def test_save_load_round_trip(small_tok, tmp_path):
    path = tmp_path / "tok.safetensors"
    small_tok.save(path)
    loaded = PatchKMeansTokenizer.load(path)
    assert loaded.codebook_size == small_tok.codebook_size
    assert torch.equal(loaded.codebook, small_tok.codebook)
    codes = torch.randint(64, (3, GRID * GRID), generator=torch.Generator().manual_seed(0))
    np.testing.assert_array_equal(loaded.decode(codes, (GRID, GRID)), small_tok.decode(codes, (GRID, GRID)))


def test_load_missing_file_names_path(tmp_path):
    path = tmp_path / "absent.safetensors"
    with pytest.raises(CheckpointError) as info:
        PatchKMeansTokenizer.load(path)
    assert str(path) in str(info.value)
    assert "does not exist" in str(info.value)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_load_corrupt_file_names_path(small_tok, tmp_path, damage):
    path = tmp_path / "tok.safetensors"
    small_tok.save(path)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, size=4096, dtype=np.uint8).tobytes())
    else:
        path.write_bytes(b"")
    with pytest.raises(CheckpointError) as info:
        PatchKMeansTokenizer.load(path)
    assert str(path) in str(info.value)
    assert "corrupt" in str(info.value)


def test_load_file_without_codebook(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"weights": torch.zeros(4, 192)}, str(path))
    with pytest.raises(CheckpointError, match="no 'codebook'"):
        PatchKMeansTokenizer.load(path)


# --- round trips through the shapes detector -------------------------------------------------------------------


def _source_digest() -> str:
    """Digest of everything that determines a fitted tokenizer, so a cached fit is never stale."""
    h = hashlib.sha256()
    for module in (kmeans_module, render, palette, grammar, dataset_module):
        h.update(Path(module.__file__).read_bytes())
    h.update(repr((CFG.world.model_dump(), 3000, 512, 3)).encode())
    return h.hexdigest()[:16]


@pytest.fixture(scope="module")
def full_tok(request) -> PatchKMeansTokenizer:
    """The shipped base tokenizer if there is one, else a 512-code fit on 3000 training scenes (tiny.yaml's world).

    Fitting takes several seconds on a busy CPU (k-means++ seeding of 512 codes), so the fit is kept in pytest's
    cache keyed by the sources that determine it; `pytest --cache-clear` forces a refit.
    """
    if SHIPPED_TOKENIZER.is_file():
        tok = PatchKMeansTokenizer.load(SHIPPED_TOKENIZER)
        assert (
            tok.codebook_size <= CFG.tokenizer.codebook_size
        )  # an upper bound: fewer distinct patches, fewer codes
        return tok
    cache = getattr(request.config, "cache", None)  # absent under `-p no:cacheprovider`
    cached = None
    if cache is not None:
        cached = Path(cache.mkdir("htgrpo-tokenizer")) / f"kmeans-512-{_source_digest()}.safetensors"
        if cached.is_file():
            try:
                return PatchKMeansTokenizer.load(cached)
            except CheckpointError:
                cached.unlink()
    # tiny.yaml's tokenizer section, with 3000 scenes and 3 Lloyd iterations: the seeding gives every object
    # type its own code, the rest is refinement
    images = train_scenes(3000, seed=CFG.tokenizer.seed + 7919)
    tok = PatchKMeansTokenizer.fit(images, CFG.tokenizer.codebook_size, 3, CFG.tokenizer.seed, progress=False)
    if cached is not None:
        tmp = cached.with_suffix(".tmp")
        tok.save(tmp)
        tmp.replace(cached)
    return tok


def test_round_trip_keeps_test_scenes_correct(full_tok):
    metas = [m for m in SPLITS.test for _ in range(4)]
    assert {m["tag"] for m in metas} == set(TASKS)
    images = render_rows(metas, np.random.default_rng(2024), GRID, SPLITS.unseen_pairs)
    detector = ShapeDetector()
    originals = score_images(metas, images, detector)
    assert all(r["correct"] for r in originals)  # the renderer itself is exact
    recon = full_tok.decode(full_tok.encode(images), (GRID, GRID))
    records = score_images(metas, recon, detector)
    accuracy = float(np.mean([r["correct"] for r in records]))
    failures = [(r["prompt"], r["reason"]) for r in records if not r["correct"]][:5]
    assert accuracy >= 0.99, f"round-trip accuracy {accuracy:.3f}; e.g. {failures}"


def test_random_codes_score_zero_on_every_task(full_tok):
    metas = [m for m in SPLITS.test for _ in range(4)]
    codes = torch.randint(
        full_tok.codebook_size, (len(metas), GRID * GRID), generator=torch.Generator().manual_seed(7)
    )
    images = full_tok.decode(codes, (GRID, GRID))
    records = score_images(metas, images, ShapeDetector())
    assert not any(r["correct"] for r in records)
    assert all(r["reward"] == 0.0 for r in records)
    summary = summarize(records)
    for task in TASKS:
        assert summary[task] == 0.0
    assert summary["overall"] == 0.0


def test_magvit2_decode_truncates_to_uint8_like_mmada():
    """MMaDA's inference maps clamp((x + 1) / 2, 0, 1) * 255 to uint8 with astype, which truncates: 0.0 becomes
    127 (127.5), not 128."""
    import torch

    from htgrpo.tokenizers.magvit2 import Magvit2Tokenizer, MAGVITv2
    from real_tiny import TINY_MAGVIT

    model = MAGVITv2(TINY_MAGVIT)
    values = torch.tensor([-1.5, -1.0, -0.999, 0.0, 0.5, 0.9999, 1.0, 2.0])
    model.decode_codes = lambda codes, grid: values.reshape(1, 1, 1, -1).expand(len(codes), 3, 1, 8)
    got = Magvit2Tokenizer(model).decode(torch.zeros(2, 1, dtype=torch.long), (1, 1))
    # by hand: 0, 0, 0.1275 -> 0, 127.5 -> 127, 191.25 -> 191, 254.98725 -> 254, 255, 255
    assert got.dtype == np.uint8 and got.shape == (2, 1, 8, 3)
    assert got[0, 0, :, 0].tolist() == [0, 0, 0, 127, 191, 254, 255, 255]
