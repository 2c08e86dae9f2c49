"""HPSv2.1, ImageReward, HPSv3, UnifiedReward and DeQA on tiny random models of the real transformers classes,
loaded from checkpoints in their original key layouts: conversion, output shapes, batching, score ranges, errors."""

from __future__ import annotations

import argparse
import re
import shutil

import numpy as np
import pytest
import torch

from htgrpo.benchmarks import metrics as M
from htgrpo.benchmarks import preference, vlm_judges
from htgrpo.errors import WeightsError
from tiny_reward_models import (
    PIXELS,
    hps_dir,
    hpsv3_dir,
    imagereward_dir,
    qwen_vl_dir,
    transformers_to_open_clip,
)

QWEN = {"min_pixels": PIXELS, "max_pixels": PIXELS}


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def hps(tmp_path_factory):
    return hps_dir(tmp_path_factory.mktemp("w") / "hps")


@pytest.fixture(scope="module")
def imagereward(tmp_path_factory):
    return imagereward_dir(tmp_path_factory.mktemp("w") / "imagereward")


@pytest.fixture(scope="module")
def hpsv3(tmp_path_factory):
    return hpsv3_dir(tmp_path_factory.mktemp("w") / "hpsv3")


@pytest.fixture(scope="module")
def qwen25(tmp_path_factory):
    return qwen_vl_dir(tmp_path_factory.mktemp("w") / "qwen25", "qwen2_5_vl")


def _batch(n=5, seed=0, h=24, w=20):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    prompts = ["a photo of a red cat", "a dog", "two cats and a dog", "a photo of a blue car", "yes"][:n]
    return images, prompts


def test_hpsv21_loads_the_open_clip_checkpoint_exactly(hps):
    path, ref = hps
    m = M.load_metric("hpsv2.1", path, device="cpu", batch_size=2)
    loaded = m.model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in ref.state_dict().items())
    images, prompts = _batch()
    s = m(images, prompts, [{}] * 5)
    assert s.shape == (5,) and (np.abs(s) <= 1 + 1e-5).all()
    m.model = ref
    assert np.allclose(m(images, prompts), s, atol=1e-5)
    whole = M.load_metric("hpsv2.1", path, device="cpu", batch_size=8, scale=100)(images, prompts)
    assert np.allclose(whole, 100 * s, atol=1e-3)


def test_hpsv21_safetensors_and_pickle_safety(hps, tmp_path):
    from safetensors.torch import save_file

    path, ref = hps
    alt = tmp_path / "alt"
    shutil.copytree(path, alt)
    state = transformers_to_open_clip(ref.state_dict())
    (alt / "HPS_v2.1_compressed.pt").unlink()
    save_file({k: v.contiguous() for k, v in state.items()}, str(alt / "HPS_v2.1.safetensors"))
    images, prompts = _batch(2)
    a = M.load_metric("hpsv2.1", alt, device="cpu")(images, prompts)
    assert np.allclose(a, M.load_metric("hpsv2.1", path, device="cpu")(images, prompts), atol=1e-6)
    # a pickle holding anything but tensors is refused by torch.load(weights_only=True), with advice
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": state, "args": argparse.Namespace(lr=1)}, evil)
    with pytest.raises(
        WeightsError, match=r"hpsv2\.1: .*evil\.pt cannot be read with torch\.load\(weights_only=True\)"
    ):
        M.load_metric("hpsv2.1", alt, device="cpu", checkpoint=evil)
    broken = tmp_path / "broken.pt"
    torch.save({"state_dict": {k: v for k, v in state.items() if k != "ln_final.weight"}}, broken)
    with pytest.raises(
        WeightsError, match=r"does not match the model: missing: text_model\.final_layer_norm\.weight"
    ):
        M.load_metric("hpsv2.1", alt, device="cpu", checkpoint=broken)
    odd = tmp_path / "odd.pt"
    torch.save({"state_dict": {**state, "visual.attn_pool.query": torch.zeros(1)}}, odd)
    with pytest.raises(WeightsError, match=r"no CLIPModel counterpart.*visual\.attn_pool\.query"):
        M.load_metric("hpsv2.1", alt, device="cpu", checkpoint=odd)


def test_imagereward_matches_its_modules_and_normalises(imagereward):
    path, vision, text, head = imagereward
    m = M.load_metric("imagereward", path, device="cpu", batch_size=2)
    images, prompts = _batch()
    s = m(images, prompts, [{}] * 5)
    assert s.shape == (5,) and np.isfinite(s).all()
    assert m.tokenizer.convert_tokens_to_ids("[ENC]") == len(m.tokenizer) - 1
    from PIL import Image

    pix = m.image_processor(images=[Image.fromarray(x) for x in images], return_tensors="pt")["pixel_values"]
    assert pix.shape[-2:] == (32, 32)
    tok = m.tokenizer(prompts, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    with torch.no_grad():
        img = vision(pixel_values=pix).last_hidden_state
        feat = text(
            input_ids=tok["input_ids"],
            attention_mask=tok["attention_mask"],
            encoder_hidden_states=img,
            encoder_attention_mask=torch.ones(img.shape[:-1], dtype=torch.long),
            is_decoder=False,
        ).last_hidden_state[:, 0]
        raw = head(feat).squeeze(-1).numpy()
    assert np.allclose(s, (raw - preference.IMAGEREWARD_MEAN) / preference.IMAGEREWARD_STD, atol=1e-4)
    assert np.allclose(
        M.load_metric("imagereward", path, device="cpu", batch_size=5)(images, prompts), s, atol=1e-5
    )


def test_hpsv3_reward_token_mu(hpsv3):
    path, model, head = hpsv3
    m = M.load_metric("hpsv3", path, device="cpu", batch_size=2, **QWEN)
    images, prompts = _batch(3)
    s = m(images, prompts, [{}] * 3)
    assert s.shape == (3,) and np.isfinite(s).all() and m.last_sigma.shape == (3,)
    batch = m.inputs(images[:1], [m.user_text(prompts[0])])
    assert int((batch["input_ids"] == m.reward_token_id).sum()) == 1
    with torch.no_grad():
        hidden = model.model(**batch).last_hidden_state
        want = head(hidden[batch["input_ids"] == m.reward_token_id])[0, 0].item()
    assert s[0] == pytest.approx(want, abs=1e-4)
    # right padding of a batch with prompts of different lengths changes nothing
    one = np.concatenate([M.load_metric("hpsv3", path, device="cpu", batch_size=1, **QWEN)(images, prompts)])
    assert np.allclose(one, s, atol=1e-4)
    with pytest.raises(WeightsError, match="lacks the reward token"):
        M.load_metric("hpsv3", path, device="cpu", template="{prompt}", **QWEN)


def test_unifiedreward_generates_and_parses(qwen25):
    m = M.load_metric("unifiedreward", qwen25, device="cpu", batch_size=2, max_new_tokens=3, resize=28)
    images, prompts = _batch(3)
    s = m(images, prompts, [{}] * 3)
    assert s.shape == (3,) and len(m.last_texts) == 3 and all(isinstance(t, str) for t in m.last_texts)
    assert all(x == 0.0 or 1 <= x <= 5 for x in s)  # a random judge's answer rarely parses: 0 (Flow-GRPO)
    assert vlm_judges.parse_final_score("Good match.\nFinal Score: 4") == 4.0
    assert vlm_judges.parse_final_score("final score: 2.5 ... Final Score: **3**") == 3.0
    assert vlm_judges.parse_final_score("no score here") is None
    nan = M.load_metric(
        "unifiedreward", qwen25, device="cpu", max_new_tokens=1, resize=28, unparsable=float("nan")
    )
    v = nan(images[:1], prompts[:1])[0]
    assert np.isnan(v) or 1 <= v <= 5


def test_prompt_template_file_overrides_the_default(qwen25, tmp_path):
    d = tmp_path / "judge"
    shutil.copytree(qwen25, d)
    (d / "prompt_template.txt").write_text("rate this image : {prompt}")
    m = M.load_metric("unifiedreward", d, device="cpu", max_new_tokens=1, resize=28)
    assert m.user_text("a cat") == "rate this image : a cat"
    (d / "prompt_template.txt").write_text("no placeholder")
    with pytest.raises(WeightsError, match=r"no \{prompt\} placeholder"):
        M.load_metric("unifiedreward", d, device="cpu")


def test_deqa_rule_on_a_qwen_vl(qwen25, tmp_path):
    m = M.load_metric("deqa", qwen25, device="cpu", batch_size=2, **QWEN)
    images, prompts = _batch(3, h=20, w=30)
    probs = m.level_probs(images)
    assert probs.shape == (3, 5) and np.allclose(probs.sum(1), 1, atol=1e-5)
    s = m(images, prompts, [{}] * 3)
    assert s.shape == (3,) and (s >= 1).all() and (s <= 5).all()
    assert np.allclose(s, probs @ np.array([5, 4, 3, 2, 1.0]), atol=1e-5)
    assert np.allclose(m(images, ["other"] * 3), s, atol=1e-5)  # prompt-independent
    assert np.allclose(
        M.load_metric("deqa", qwen25, device="cpu", batch_size=1, **QWEN)(images, prompts), s, atol=1e-4
    )
    assert m.prepare_image(images[0]).size == (30, 30)
    q2 = qwen_vl_dir(tmp_path / "q2", "qwen2_vl")
    assert M.load_metric("deqa", q2, device="cpu", **QWEN)(images[:2], prompts[:2]).shape == (2,)


@pytest.mark.parametrize(
    ("name", "expects"),
    [
        ("hpsv2.1", r"HPS_v2\.1_compressed\.pt/HPS_v2\.1\.safetensors.*xswu/HPSv2"),
        ("imagereward", r"ImageReward\.pt/ImageReward\.safetensors, med_config\.json.*THUDM/ImageReward"),
        ("hpsv3", r"HPSv3\.safetensors.*MizzenAI/HPSv3"),
        ("unifiedreward", r"config\.json, model\.safetensors.*CodeGoat24/UnifiedReward"),
        ("deqa", r"config\.json, model\.safetensors.*mPLUG-Owl2"),
    ],
)
def test_missing_weights_is_one_clear_error(tmp_path, name, expects):
    metric = re.escape(name)
    with pytest.raises(
        WeightsError, match=rf"^{metric}: weights directory \S*none for the .* does not exist; .*{expects}"
    ):
        M.load_metric(name, tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match=rf"^{metric}: weights directory \S*empty for the .* lacks "):
        M.load_metric(name, tmp_path / "empty")


def test_new_metrics_are_registered_and_usable_as_rewards(hps):
    from htgrpo.rl.rewards import get_reward, mixed_reward

    for name in ("hpsv2.1", "imagereward", "hpsv3", "unifiedreward", "deqa"):
        assert M.METRICS[name].resolve().spec.files
    M.register_as_reward("hpsv2.1", hps[0], reward_name="hps_test", device="cpu")
    images, prompts = _batch(2)
    assert get_reward("hps_test")(images, prompts, [{}] * 2).shape == (2,)
    out = mixed_reward({"hps_test": 2.0})(images, prompts, [{}] * 2)
    assert np.allclose(out.total, 2 * out.components["hps_test"])
