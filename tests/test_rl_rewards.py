"""Reward registry, the built-in shapes rewards on rendered scenes, weighted mixing and non-finite values."""

from __future__ import annotations

import numpy as np
import pytest

from htgrpo.errors import ConfigError
from htgrpo.rl import rewards as rw
from htgrpo.rl.rewards import available_rewards, get_reward, mixed_reward, register_reward
from htgrpo.world.render import metadata_for_prompt, render, sample_scene


@pytest.fixture
def scratch_registry(monkeypatch):
    """Registrations made by a test disappear after it."""
    monkeypatch.setattr(rw, "_REGISTRY", dict(rw._REGISTRY))


def scenes(prompts: list[str], grid: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    metas = [metadata_for_prompt(p) for p in prompts]
    images = np.stack([render(sample_scene(m, rng, grid)) for m in metas])
    return images, metas


def test_builtins_are_registered():
    assert {"geneval_partial", "geneval_strict", "background_smoothness"} <= set(available_rewards())


def test_unknown_reward_names_the_registered_ones():
    with pytest.raises(ConfigError, match="unknown reward 'clip_score'.*geneval_partial"):
        get_reward("clip_score")
    with pytest.raises(ConfigError, match="unknown reward"):
        mixed_reward({"geneval_partial": 1.0, "clip_score": 0.5})


def test_register_twice_needs_overwrite(scratch_registry):
    register_reward("const", lambda im, p, m: np.ones(len(im)))
    with pytest.raises(ValueError, match="already registered"):
        register_reward("const", lambda im, p, m: np.zeros(len(im)))
    register_reward("const", lambda im, p, m: np.zeros(len(im)), overwrite=True)
    assert get_reward("const")(np.zeros((2, 1, 1, 3), np.uint8), ["a", "b"], [{}, {}]).tolist() == [0, 0]

    @register_reward("decorated")
    def decorated(images, prompts, metadata):
        return np.full(len(images), 0.25)

    assert get_reward("decorated") is decorated


def test_geneval_rewards_on_rendered_and_wrong_scenes():
    prompts = ["a photo of a red circle", "a photo of two squares"]
    images, metas = scenes(prompts)
    partial = get_reward("geneval_partial")(images, prompts, metas)
    strict = get_reward("geneval_strict")(images, prompts, metas)
    assert partial.tolist() == [1.0, 1.0] and strict.tolist() == [1.0, 1.0]
    # the image of "a red circle" judged against "two squares": no squares at all
    swapped = get_reward("geneval_partial")(images[::-1], prompts, metas)
    assert swapped[1] < 1.0
    assert get_reward("geneval_strict")(images[::-1], prompts, metas)[1] == 0.0


def test_background_smoothness_reward():
    images, metas = scenes(["a photo of a ring"])
    prompts = [m["prompt"] for m in metas]
    assert get_reward("background_smoothness")(images, prompts, metas)[0] == pytest.approx(1.0)
    noisy = images.copy()
    noisy[0, :8, :8] = np.random.default_rng(0).integers(200, 255, size=(8, 8, 3))
    assert get_reward("background_smoothness")(noisy, prompts, metas)[0] < 1.0


def test_mixed_reward_weights_and_components(scratch_registry):
    register_reward("half", lambda im, p, m: np.full(len(im), 0.5))
    register_reward("index", lambda im, p, m: np.arange(len(im), dtype=float))
    mix = mixed_reward({"half": 2.0, "index": -1.0})
    out = mix(np.zeros((3, 4, 4, 3), np.uint8), ["a"] * 3, [{}] * 3)
    np.testing.assert_allclose(out.total, [1.0, 0.0, -1.0])
    assert set(out.components) == {"half", "index"}
    np.testing.assert_allclose(out.components["index"], [0, 1, 2])


def test_mixed_reward_keeps_nan_visible_even_at_weight_zero(scratch_registry):
    register_reward("broken", lambda im, p, m: np.array([0.1, np.nan, np.inf]))
    register_reward("fine", lambda im, p, m: np.ones(3))
    out = mixed_reward({"fine": 1.0, "broken": 0.0})(np.zeros((3, 4, 4, 3), np.uint8), ["a"] * 3, [{}] * 3)
    assert out.total[0] == 1.0 and np.isnan(out.total[1]) and np.isnan(out.total[2])


def test_mixed_reward_checks_shapes(scratch_registry):
    register_reward("short", lambda im, p, m: np.ones(1))
    with pytest.raises(ValueError, match="returned 1 values for 2 images"):
        mixed_reward({"short": 1.0})(np.zeros((2, 4, 4, 3), np.uint8), ["a", "b"], [{}, {}])
    with pytest.raises(ValueError, match="2 images, 1 prompts"):
        mixed_reward({"short": 1.0})(np.zeros((2, 4, 4, 3), np.uint8), ["a"], [{}, {}])
