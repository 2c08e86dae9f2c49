"""GenEval on real images: prompt loading, folder layout, colour crop, and tiny Mask2Former + CLIP end to end."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from htgrpo.benchmarks import geneval as g
from htgrpo.errors import BenchmarkDataError, WeightsError
from htgrpo.eval.geneval import Detection, summarize
from tiny_models import clip_dir, mask2former_dir


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    return {"m2f": mask2former_dir(root / "m2f"), "clip": clip_dir(root / "clip")}


@pytest.fixture(scope="module")
def scorer(weights):
    return g.load_scorer(weights["m2f"], weights["clip"], device="cpu")


# --- prompts and layout ----------------------------------------------------------------------------------------


def test_official_prompts_load_with_the_documented_task_sizes():
    rows = g.load_prompts()
    assert len(rows) == 553
    assert Counter(r["tag"] for r in rows) == {
        "single_object": 80,
        "two_object": 99,
        "counting": 80,
        "colors": 94,
        "position": 100,
        "color_attr": 100,
    }
    assert len(g.load_object_names()) == 80 and g.load_object_names()[0] == "person"


def test_prompt_file_errors(tmp_path):
    with pytest.raises(BenchmarkDataError, match="djghosh13/geneval"):
        g.load_prompts(tmp_path / "none.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"tag": "nope", "prompt": "x", "include": []}\n')
    with pytest.raises(BenchmarkDataError, match="unknown tag 'nope'"):
        g.load_prompts(bad)


def _fake_generator(calls):
    def generate(prompts, seed):
        calls.append((list(prompts), seed))
        rng = np.random.default_rng(seed + len(calls))
        return rng.integers(0, 256, (len(prompts), 12, 16, 3), dtype=np.uint8)

    return generate


def test_folder_layout_round_trip_and_resume(tmp_path):
    rows = g.load_prompts()[:3]
    calls: list = []
    out = g.generate_folder(tmp_path / "imgs", rows, _fake_generator(calls), n_samples=4, seed=42)
    assert [c[1] for c in calls] == [42, 42, 42] and calls[0][0] == [rows[0]["prompt"]] * 4
    assert sorted(p.name for p in out.iterdir()) == ["00000", "00001", "00002"]
    assert sorted(p.name for p in (out / "00001" / "samples").iterdir()) == [f"{k:05d}.png" for k in range(4)]
    # metadata.jsonl holds the single JSON line, readable with json.load as the official evaluator does
    with (out / "00002" / "metadata.jsonl").open() as fh:
        assert json.load(fh) == rows[2]
    (out / "notes").mkdir()  # not all digits: ignored
    (out / "00000" / "samples" / "grid.png").write_bytes(b"")  # not \d+.png: ignored
    folders = g.read_folder(out)
    assert [f.index for f in folders] == [0, 1, 2]
    assert [f.metadata for f in folders] == rows
    assert all(len(f.samples) == 4 for f in folders)
    first = g.load_image(folders[0].samples[0])
    assert first.shape == (12, 16, 3) and first.dtype == np.uint8
    # a second run regenerates nothing; a changed prompt is regenerated
    n = len(calls)
    g.generate_folder(out, rows, _fake_generator(calls))
    assert len(calls) == n
    g.generate_folder(out, [rows[0], rows[2], rows[1]], _fake_generator(calls))
    assert len(calls) == n + 2


def test_generator_output_is_checked(tmp_path):
    with pytest.raises(ValueError, match="uint8 images"):
        g.generate_folder(tmp_path, g.load_prompts()[:1], lambda p, s: np.zeros((1, 4, 4, 3), np.uint8))


# --- colour crop -----------------------------------------------------------------------------------------------


def test_colour_crop_composites_the_mask_over_999_then_crops_to_the_box():
    img = np.zeros((6, 8, 3), np.uint8)
    img[..., 0] = np.arange(8)[None, :] * 10  # red channel encodes the column
    img[..., 1] = np.arange(6)[:, None] * 10  # green channel encodes the row
    img[..., 2] = 200
    mask = np.zeros((6, 8), bool)
    mask[2:4, 3:5] = True
    mask[1, 6] = True  # inside the mask but outside the box: cropped away
    det = Detection("cat", box=(2.4, 1.6, 5.5, 4.0), mask=mask)  # PIL-style rounding: x 2..6, y 2..4
    crop = g.color_crop(img, det)
    assert crop.shape == (2, 4, 3)
    # column x=2 and x=5 are outside the mask: grey #999; x=3,4 keep the image's pixels
    assert (crop[:, 0] == 153).all() and (crop[:, 3] == 153).all()
    assert crop[:, 1:3, 0].tolist() == [[30, 40], [30, 40]]
    assert crop[:, 1:3, 1].tolist() == [[20, 20], [30, 30]]
    assert (crop[:, 1:3, 2] == 200).all()
    # without a mask the box content is kept as is; a degenerate box gives one grey pixel
    assert (g.color_crop(img, Detection("cat", (0, 0, 8, 6))) == img).all()
    assert g.color_crop(img, Detection("cat", (3, 3, 3, 5), mask=mask)).tolist() == [[[153, 153, 153]]]


def test_mask_to_box_is_mmdetections_tight_box():
    mask = np.zeros((10, 10), bool)
    mask[2:5, 3:9] = True
    assert g.mask_to_box(mask) == (3.0, 2.0, 9.0, 5.0)
    assert g.mask_to_box(np.zeros((4, 4), bool)) == (0.0, 0.0, 0.0, 0.0)


# --- weights ---------------------------------------------------------------------------------------------------


def test_missing_weights_is_one_error_naming_the_metric_and_files(tmp_path, weights):
    with pytest.raises(WeightsError) as exc:
        g.load_scorer(tmp_path / "absent", weights["clip"])
    msg = str(exc.value)
    assert msg.startswith("geneval:") and str(tmp_path / "absent") in msg
    for name in ("config.json", "model.safetensors", "pytorch_model.bin", "preprocessor_config.json"):
        assert name in msg
    assert "facebook/mask2former-swin-small-coco-instance" in msg
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text("{}")
    with pytest.raises(WeightsError, match="lacks model.safetensors/pytorch_model.bin.*preprocessor_config"):
        g.load_scorer(weights["m2f"], partial)
    with pytest.raises(WeightsError, match="no weights directory configured for the CLIP"):
        g.load_scorer(weights["m2f"], None)


# --- tiny real models end to end -------------------------------------------------------------------------------


def test_mask2former_detections_have_image_sized_masks_and_mask_boxes(scorer):
    rng = np.random.default_rng(0)
    images = [
        rng.integers(0, 256, (40, 72, 3), dtype=np.uint8),
        rng.integers(0, 256, (64, 48, 3), dtype=np.uint8),
    ]
    dets = scorer.detector.detect(images)
    assert len(dets) == 2
    for img, per_image in zip(images, dets, strict=True):
        assert per_image, "the tiny detector is biased to find persons"
        for d in per_image:
            assert d.cls == "person"
            assert d.mask.shape == img.shape[:2] and d.mask.dtype == bool
            assert d.box == g.mask_to_box(d.mask)
            assert 0.3 < d.score <= 1.0
    # batching (same-size images only) does not change the result
    again = scorer.detector.detect([images[1], images[0], images[1][::-1].copy()])
    assert [d.score for d in again[0]] == pytest.approx([d.score for d in dets[1]], abs=1e-5)
    assert [d.box for d in again[1]] == [d.box for d in dets[0]]


def test_clip_colour_weights_and_predictions(scorer):
    clf = scorer.classifier
    w = clf.text_weights("dog")
    assert tuple(w.shape) == (16, 10)
    assert np.allclose(w.norm(dim=0).numpy(), 1.0, atol=1e-5)
    crops = [np.full((5, 7, 3), v, np.uint8) for v in (0, 128, 255)]
    preds = clf.classify_crops(crops, "dog")
    assert len(preds) == 3 and set(preds) <= set(g.COLORS)
    assert clf.classify_crops(crops[:1], "dog") == preds[:1]


def test_score_folder_end_to_end_gives_the_official_summary(tmp_path, scorer):
    rows = [
        {
            "tag": "single_object",
            "include": [{"class": "person", "count": 1}],
            "prompt": "a photo of a person",
        },
        {"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a dog"},
        {
            "tag": "colors",
            "include": [{"class": "person", "count": 1, "color": "red"}],
            "prompt": "a red person",
        },
    ]
    g.generate_folder(tmp_path / "images", rows, _fake_generator([]), n_samples=2)
    report = g.evaluate_geneval(scorer, tmp_path)
    assert report["images"] == 6 and report["prompts"] == 3
    s = report["summary"]
    assert s["single_object"] == 0.5  # every person image is correct, no dog is ever found
    assert s["overall"] == pytest.approx((s["single_object"] + s["colors"]) / 2)
    assert s["pct_correct_prompts"] >= 1 / 3
    results = tmp_path / "results.jsonl"
    assert g.summary_from_results(results) == summarize(
        [json.loads(x) for x in results.read_text().splitlines()]
    )
    recs = [json.loads(x) for x in results.read_text().splitlines()]
    assert {r["index"] for r in recs} == {0, 1, 2} and all(r["filename"].endswith(".png") for r in recs)
    # Flow-GRPO's partial credit goes negative with too many detections (the tiny model finds up to 8 persons)
    assert report["reward"]["reward"] <= 1.0 and 0.0 <= report["reward"]["strict_accuracy"] <= 1.0


def test_scorer_records_the_aligned_reward_and_classifies_each_object_once(scorer, monkeypatch):
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (40, 48, 3), dtype=np.uint8) for _ in range(4)]
    metas = [
        {"tag": "single_object", "include": [{"class": "person", "count": 1}], "prompt": "a person"},
        {
            "tag": "counting",
            "include": [{"class": "person", "count": 2}],
            "exclude": [{"class": "person", "count": 3}],
            "prompt": "two persons",
        },
        {
            "tag": "colors",
            "include": [{"class": "person", "count": 1, "color": "red"}],
            "prompt": "a red person",
        },
        {
            "tag": "color_attr",
            "include": [
                {"class": "person", "count": 1, "color": "blue"},
                {"class": "dog", "count": 1, "color": "red"},
            ],
            "prompt": "a blue person and a red dog",
        },
    ]
    crops = []
    classify = scorer.classifier.classify_crops
    monkeypatch.setattr(
        scorer.classifier, "classify_crops", lambda c, name: crops.extend(c) or classify(c, name)
    )
    records = scorer.score(images, metas)
    for rec in records:
        assert 0.0 <= rec["reward_aligned"] <= 1.0
        assert (rec["reward_aligned"] == 1.0) == rec["correct"], rec
    # the tiny detector finds persons in every image: at least one person is GenEval-correct whatever
    # Flow-GRPO's exact count says
    assert records[0]["detections"]["person"] >= 1 and records[0]["reward_aligned"] == 1.0
    # three rules ask about the top person (the partial reward about all, when their number is exact): CLIP
    # sees each crop once, so one crop per colour clause whose class was found
    persons = sum(min(r["detections"].get("person", 0), 1) for r in records[2:])
    assert len(crops) == persons + min(records[3]["detections"].get("dog", 0), 1)
    summary = g.reward_summary(records)
    assert 0.0 <= summary["reward_aligned"] <= 1.0
    assert summary["reward_aligned_single_object"] == 1.0
