"""Reward registry, the built-in shapes rewards on rendered scenes, weighted mixing and non-finite values."""

from __future__ import annotations

import numpy as np
import pytest

from htgrpo.errors import ConfigError
from htgrpo.rl import rewards as rw
from htgrpo.rl.rewards import (
    available_rewards,
    check_reward_metadata,
    get_reward,
    mixed_reward,
    register_reward,
    reward_needs_metadata,
)
from htgrpo.world.render import metadata_for_prompt, render, sample_scene


@pytest.fixture
def scratch_registry(monkeypatch):
    """Registrations made by a test disappear after it."""
    monkeypatch.setattr(rw, "_REGISTRY", dict(rw._REGISTRY))
    monkeypatch.setattr(rw, "_NEEDS_METADATA", set(rw._NEEDS_METADATA))


def scenes(prompts: list[str], grid: int = 6, seed: int = 0):
    rng = np.random.default_rng(seed)
    metas = [metadata_for_prompt(p) for p in prompts]
    images = np.stack([render(sample_scene(m, rng, grid)) for m in metas])
    return images, metas


def test_builtins_are_registered():
    geneval_rewards = {"geneval_aligned", "geneval_partial", "geneval_strict"}
    assert geneval_rewards | {"background_smoothness"} <= set(available_rewards())
    assert all(reward_needs_metadata(name) for name in geneval_rewards)
    assert not reward_needs_metadata("background_smoothness")


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


def test_geneval_aligned_reads_includes_as_at_least_unlike_geneval_partial():
    # two rendered circles judged against "a photo of a circle": GenEval says correct
    images, _ = scenes(["a photo of two circles", "a photo of a red circle"])
    metas = [metadata_for_prompt("a photo of a circle"), metadata_for_prompt("a photo of a red circle")]
    prompts = [m["prompt"] for m in metas]
    aligned = get_reward("geneval_aligned")(images, prompts, metas)
    assert aligned.tolist() == [1.0, 1.0]
    assert get_reward("geneval_strict")(images, prompts, metas).tolist() == [1.0, 1.0]
    assert get_reward("geneval_partial")(images, prompts, metas).tolist() == [0.0, 1.0]  # exact count: 1 - 1
    # judged against the other prompt: a red circle is one of the two circles asked for
    swapped = [metadata_for_prompt("a photo of two circles")]
    assert get_reward("geneval_aligned")(images[1:], [swapped[0]["prompt"]], swapped).tolist() == [0.5]
    # an image the detector rejects scores 0, like an empty one
    noise = np.random.default_rng(0).integers(0, 256, size=images[:1].shape, dtype=np.uint8)
    assert get_reward("geneval_aligned")(noise, prompts[:1], metas[:1]).tolist() == [0.0]
    assert get_reward("geneval_aligned")(images[:0], [], []).shape == (0,)


def test_check_reward_metadata(scratch_registry):
    _, metas = scenes(["a photo of a ring", "a photo of two squares"])
    plain = [{"prompt": "a cat on a sofa"}, {"prompt": "a bowl of soup", "tag": "single_object"}]
    check_reward_metadata({"geneval_aligned": 1.0, "geneval_partial": 0.0}, metas)
    check_reward_metadata({"background_smoothness": 1.0}, plain)
    with pytest.raises(
        ConfigError, match=r"^rl\.rewards\.geneval_aligned: .*no row of the prompt pool \(2 rows\)"
    ):
        check_reward_metadata({"background_smoothness": 0.5, "geneval_aligned": 1.0}, plain)
    # a weight of 0 still computes the reward, so it still needs the metadata; every such reward is named
    with pytest.raises(
        ConfigError, match=r"rl\.rewards\.geneval_strict: .*\(so do rl\.rewards\.geneval_partial\)"
    ):
        check_reward_metadata({"geneval_strict": 0.0, "geneval_partial": 1.0}, plain)
    mixed = [*metas, plain[1], {"include": [], "tag": "single_object", "prompt": "nothing"}, plain[0]]
    with pytest.raises(
        ConfigError, match=r"3 of the 5 rows .* lack it \(the first is row 2: 'a bowl of soup'\)"
    ):
        check_reward_metadata({"geneval_partial": 1.0}, mixed)
    # rewards registered later say whether they need it; re-registering without the flag clears it
    register_reward("judge", lambda im, p, m: np.ones(len(im)), needs_metadata=True)
    with pytest.raises(ConfigError, match=r"^rl\.rewards\.judge: "):
        check_reward_metadata({"judge": 1.0}, plain)
    register_reward("judge", lambda im, p, m: np.ones(len(im)), overwrite=True)
    check_reward_metadata({"judge": 1.0}, plain)
    with pytest.raises(ConfigError, match="unknown reward 'nope'"):
        check_reward_metadata({"nope": 1.0}, metas)


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
