"""Image metrics on tiny random CLIPs: the real code paths, batching, score ranges and the registry."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from htgrpo.benchmarks import metrics as M
from htgrpo.errors import HtgrpoError, WeightsError
from tiny_models import clip_dir, mask2former_dir


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return clip_dir(tmp_path_factory.mktemp("w") / "clip")


@pytest.fixture(scope="module")
def aesthetic_dir(clip, tmp_path_factory):
    d = tmp_path_factory.mktemp("w") / "aesthetic"
    shutil.copytree(clip, d)
    torch.manual_seed(1)
    dims = [16, 1024, 128, 64, 16, 1]
    idx = [0, 2, 4, 6, 7]
    state = {}
    for i, (a, b) in zip(idx, zip(dims[:-1], dims[1:], strict=True), strict=True):
        lin = torch.nn.Linear(a, b)
        state[f"layers.{i}.weight"], state[f"layers.{i}.bias"] = lin.weight.data, lin.bias.data
    torch.save(state, d / M.AESTHETIC_HEAD)
    return d


def _batch(n=5, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 24, 20, 3), dtype=np.uint8)
    prompts = ["a photo of a red cat", "a dog", "two cats and a dog", "a photo of a blue car", "yes"][:n]
    return images, prompts


def test_clipscore_range_and_batching(clip):
    images, prompts = _batch()
    m = M.load_metric("clipscore", clip, device="cpu", batch_size=2)
    s = m(images, prompts, [{}] * 5)
    assert s.shape == (5,) and (s >= 0).all() and (s <= 100).all()
    whole = M.load_metric("clipscore", clip, device="cpu", batch_size=8)(images, prompts, [{}] * 5)
    assert np.allclose(s, whole, atol=1e-4)
    paper = M.ClipScore(clip, device="cpu", scale="paper")(images, prompts)
    assert np.allclose(paper, s * 0.025, atol=1e-5) and (paper <= 2.5).all()


def test_pickscore_is_logit_scaled_cosine(clip):
    images, prompts = _batch()
    m = M.load_metric("pickscore", clip, device="cpu")
    s = m(images, prompts, [{}] * 5)
    scale = float(m.model.logit_scale.detach().exp())
    assert s.shape == (5,) and (np.abs(s) <= scale + 1e-4).all()
    assert np.allclose(s, scale * m.cosine(images, prompts), atol=1e-4)


def test_aesthetic_head_on_normalised_embeddings(aesthetic_dir):
    images, prompts = _batch()
    m = M.load_metric("aesthetic", aesthetic_dir, device="cpu", batch_size=3)
    s = m(images, prompts, [{}] * 5)
    assert s.shape == (5,) and np.isfinite(s).all()
    emb = m.image_embeds(images[:2])
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)
    with torch.no_grad():
        assert np.allclose(m.head(emb).squeeze(-1).numpy(), s[:2], atol=1e-5)
    assert np.allclose(m(images, ["other"] * 5, [{}] * 5), s)  # the prompt does not matter


def test_missing_weights_and_unknown_metrics(tmp_path, clip):
    with pytest.raises(
        WeightsError, match=r"^clipscore: .*does not exist.*config\.json.*openai/clip-vit-large"
    ):
        M.load_metric("clipscore", tmp_path / "none")
    with pytest.raises(WeightsError, match=r"aesthetic: .*lacks sac\+logos\+ava1-l14-linearMSE\.pth"):
        M.load_metric("aesthetic", clip)
    with pytest.raises(WeightsError, match=r"^hpsv2\.1: no weights directory configured"):
        M.load_metric("hpsv2.1", None)
    with pytest.raises(HtgrpoError, match="unknown metric 'nope'"):
        M.load_metric("nope", None)


def test_input_checks(clip):
    m = M.load_metric("clipscore", clip, device="cpu")
    images, prompts = _batch(2)
    with pytest.raises(ValueError, match="uint8"):
        m(images.astype(np.float32), prompts, [{}] * 2)
    with pytest.raises(ValueError, match="one each"):
        m(images, prompts[:1], [{}] * 2)


def test_geneval_reward_metric(tmp_path, clip):
    root = tmp_path / "geneval"
    mask2former_dir(root / "mask2former")
    shutil.copytree(clip, root / "clip")
    m = M.load_metric("geneval", root, device="cpu", batch_size=2)
    images, _ = _batch(3)
    meta = [
        {
            "tag": "single_object",
            "include": [{"class": "person", "count": 1}],
            "prompt": "a photo of a person",
        },
        {"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a dog"},
        {"tag": "colors", "include": [{"class": "dog", "count": 1, "color": "red"}], "prompt": "a red dog"},
    ]
    s = m(images, [x["prompt"] for x in meta], meta)
    assert s.shape == (3,) and (s <= 1).all()
    assert s[1] == 0.0 and s[2] == 0.0  # no dog: 1 - |1 - 0| / 1 = 0 (and the colour's extra 0)
    assert len(m.last_records) == 3
    with pytest.raises(ValueError, match="GenEval metadata"):
        m(images, ["x"] * 3, [{}] * 3)


def test_geneval_aligned_metric_is_in_0_1(tmp_path, clip):
    root = tmp_path / "geneval"
    mask2former_dir(root / "mask2former")
    shutil.copytree(clip, root / "clip")
    m = M.load_metric("geneval_aligned", root, device="cpu", batch_size=2)
    assert isinstance(m, M.GenEvalReward) and m.aligned and M.METRICS["geneval_aligned"].needs_metadata
    images, _ = _batch(3)
    meta = [
        {"tag": "single_object", "include": [{"class": "person", "count": 1}], "prompt": "a person"},
        {"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a dog"},
        {"tag": "colors", "include": [{"class": "dog", "count": 1, "color": "red"}], "prompt": "a red dog"},
    ]
    s = m(images, [x["prompt"] for x in meta], meta)
    assert s.shape == (3,) and ((s >= 0) & (s <= 1)).all()
    assert s.tolist() == [r["reward_aligned"] for r in m.last_records]
    assert [v == 1.0 for v in s] == [r["correct"] for r in m.last_records]
    assert s[1] == 0.0 and s[2] == 0.0  # no dog
    with pytest.raises(ValueError, match="geneval_aligned reward needs GenEval metadata"):
        m(images, ["x"] * 3, [{}] * 3)


def test_jpeg_round_trip_keeps_shape():
    img = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    out = M.jpeg_round_trip(img)
    assert out.shape == img.shape and out.dtype == np.uint8 and not (out == img).all()


def test_evaluate_metrics_summary(clip):
    images, prompts = _batch(3)
    out = M.evaluate_metrics({"clipscore": M.ClipScore(clip, device="cpu")}, images, prompts)
    s = out["clipscore"]
    assert len(s["scores"]) == 3 and s["min"] <= s["mean"] <= s["max"]


def test_metric_registers_as_an_rl_reward(clip):
    rewards = pytest.importorskip("htgrpo.rl.rewards")
    M.register_as_reward("clipscore", clip, reward_name="clipscore_test", device="cpu")
    images, prompts = _batch(2)
    s = rewards.get_reward("clipscore_test")(images, prompts, [{}] * 2)
    assert s.shape == (2,) and (s >= 0).all()
