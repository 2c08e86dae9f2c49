"""`htgrpo evaluate --benchmark geneval|dpg|metrics` and `htgrpo report` with tiny models and a tiny checkpoint,
and every benchmark's MLflow run (one sqlite store in a tmp dir, shared by the module)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import matplotlib.pyplot  # noqa: F401  (imported at collection, not inside the report test's time)
import numpy as np
import pytest
import torch

from htgrpo.backbones.tiny import TinyBackbone
from htgrpo.checkpoint import save_checkpoint
from htgrpo.cli import main
from htgrpo.config import load_config
from htgrpo.tokenizers.kmeans import PatchKMeansTokenizer
from tiny_models import blip_vqa_dir, clip_dir, mask2former_dir

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    "backbone.d_model=32",
    "backbone.n_layers=2",
    "backbone.n_heads=2",
    "backbone.mlp_hidden_size=64",
    "tokenizer.codebook_size=64",
]


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("HTGRPO_THREADS", "1")
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    cfg = load_config(ROOT / "configs/tiny.yaml", SMALL)
    torch.manual_seed(0)
    tok = PatchKMeansTokenizer(torch.rand(64, 192, generator=torch.Generator().manual_seed(0)))
    bb = TinyBackbone(cfg.backbone, tok, cfg.world.grid).eval()
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", bb, cfg)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    mask2former_dir(root / "mask2former")
    clip_dir(root / "clip")
    blip_vqa_dir(root / "vqa")
    shutil.copytree(root / "clip", root / "clipscore")
    return root


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    """One sqlite store for the module; its schema is created here, once (MLflow's migrations take seconds)."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    MlflowClient(tracking_uri=uri).search_experiments()
    return uri


@pytest.fixture(autouse=True)
def clean_mlflow_env(monkeypatch):
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(var, raising=False)


def mlflow_runs(uri: str, experiment: str, benchmark: str):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return client, []
    return client, client.search_runs([exp.experiment_id], filter_string=f"tags.benchmark = '{benchmark}'")


def check_run(uri, experiment, benchmark, metrics, params, artifacts):
    client, runs = mlflow_runs(uri, experiment, benchmark)
    assert len(runs) == 1, [r.info.run_name for r in runs]
    r = runs[0]
    assert r.info.status == "FINISHED" and r.data.tags["htgrpo.kind"] == "evaluate"
    assert r.info.run_name.startswith(f"evaluate-{benchmark}-")
    for k, v in metrics.items():
        assert r.data.metrics[k] == pytest.approx(v), k
    for k, v in params.items():
        assert r.data.params[k] == v, k
    assert {a.path for a in client.list_artifacts(r.info.run_id)} >= set(artifacts)
    return r


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_geneval_end_to_end_from_a_checkpoint(capsys, tmp_path, ckpt, weights, mlflow_uri):
    prompts = tmp_path / "p.jsonl"
    rows = [
        {
            "tag": "single_object",
            "include": [{"class": "circle", "count": 1}],
            "prompt": "a photo of a circle",
        },
        {
            "tag": "colors",
            "include": [{"class": "square", "count": 1, "color": "red"}],
            "prompt": "a photo of a red square",
        },
    ]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "ev"
    rc, stdout, err = run(
        capsys,
        "evaluate",
        "--benchmark",
        "geneval",
        "--checkpoint",
        ckpt,
        "--out",
        out,
        "--weights",
        weights,
        "--prompts",
        prompts,
        "--images-per-prompt",
        "2",
        "--set",
        "sampler.steps=2",
        "--device",
        "cpu",
        "--tracking-uri",
        mlflow_uri,
        "--experiment",
        "bench",
    )
    assert rc == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["benchmark"] == "geneval" and summary["name"] == "tiny" and summary["images"] == 4
    r = check_run(
        mlflow_uri,
        "bench",
        "geneval",
        {"overall": summary["summary"]["overall"], "colors": summary["summary"]["colors"], "images": 4},
        {"benchmark": "geneval", "images_per_prompt": "2", "sampler.steps": "2", "checkpoint": str(ckpt)},
        ["summary.json", "summary.md", "results.jsonl"],
    )
    assert r.data.tags["checkpoint_uri"] == str(ckpt) and "logged to MLflow run" in stdout
    assert set(summary["summary"]) >= {"single_object", "colors", "overall", "pct_correct_images"}
    assert (out / "images" / "00001" / "samples" / "00001.png").is_file()
    assert "| Model | Overall | Single obj. | Colors |" in stdout and "| tiny | 0.00 |" in stdout


def test_geneval_missing_weights_is_exit_2_naming_files(capsys, tmp_path, ckpt):
    rc, _, err = run(
        capsys,
        "evaluate",
        "--benchmark",
        "geneval",
        "--checkpoint",
        ckpt,
        "--out",
        tmp_path,
        "--weights",
        tmp_path / "none",
    )
    assert rc == 2 and err.startswith("error: geneval:") and "config.json" in err and "Traceback" not in err


def _dpg_csv(path):
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            [
                "item_id",
                "text",
                "keywords",
                "proposition_id",
                "dependency",
                "category_broad",
                "category_detailed",
                "tuple",
                "question_natural_language",
            ]
        )
        w.writerow(
            ["x1", "t", "k", 1, "0", "entity", "whole", "entity - whole (circle)", "is there a circle?"]
        )
        w.writerow(
            ["x1", "t", "k", 2, "1", "attribute", "color", "attribute - color (circle, red)", "is it red?"]
        )
    return path


def test_dpg_needs_its_csv_then_runs(capsys, tmp_path, ckpt, weights, mlflow_uri):
    rc, _, err = run(
        capsys,
        "evaluate",
        "--benchmark",
        "dpg",
        "--checkpoint",
        ckpt,
        "--out",
        tmp_path / "d",
        "--weights",
        weights,
        "--dpg-csv",
        tmp_path / "dpg_bench.csv",
    )
    assert rc == 2 and "ELLA" in err and not (tmp_path / "d" / "images").exists()
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"item_id": "x1", "prompt": "a photo of a red circle"}) + "\n")
    rc, stdout, err = run(
        capsys,
        "evaluate",
        "--benchmark",
        "dpg",
        "--checkpoint",
        ckpt,
        "--out",
        tmp_path / "d",
        "--weights",
        weights,
        "--dpg-csv",
        _dpg_csv(tmp_path / "q.csv"),
        "--prompts",
        prompts,
        "--set",
        "sampler.steps=2",
        "--device",
        "cpu",
        "--tracking-uri",
        mlflow_uri,
        "--experiment",
        "bench",
    )
    assert rc == 0, err
    summary = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert summary["summary"]["n_prompts"] == 1 and 0 <= summary["summary"]["overall"] <= 100
    check_run(
        mlflow_uri,
        "bench",
        "dpg",
        {"overall": summary["summary"]["overall"], "n_prompts": 1},
        {"benchmark": "dpg"},
        ["summary.json", "summary.md"],
    )
    assert "| Model | Overall | Global | Entity |" in stdout


def test_metrics_and_report(capsys, tmp_path, ckpt, weights):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a photo of a red circle\na photo of a blue square\n")
    outs = []
    for seed in (1, 2):
        out = tmp_path / f"m{seed}"
        rc, _, err = run(
            capsys,
            "evaluate",
            "--benchmark",
            "metrics",
            "--checkpoint",
            ckpt,
            "--out",
            out,
            "--weights",
            weights,
            "--metric",
            "clipscore",
            "--prompts",
            prompts,
            "--seed",
            seed,
            "--set",
            "sampler.steps=2",
            "--device",
            "cpu",
            "--name",
            f"seed{seed}",
        )
        assert rc == 0, err
        outs.append(out)
    s = json.loads((outs[0] / "summary.json").read_text())
    assert s["images"] == 2 and 0 <= s["summary"]["clipscore"]["mean"] <= 100
    rc, stdout, err = run(capsys, "report", *outs, "--out", tmp_path / "rep")
    assert rc == 0, err
    assert "| seed1 |" in stdout and "| seed2 |" in stdout
    assert (tmp_path / "rep" / "report.png").stat().st_size > 1000
    rc, _, err = run(capsys, "report", outs[0], "--out", tmp_path / "rep2")
    assert rc == 2 and "at least two" in err


def test_unknown_benchmark_and_no_checkpoint(capsys, tmp_path):
    rc, _, err = run(capsys, "evaluate", "--benchmark", "nope", "--out", tmp_path)
    assert rc == 2 and "'nope'" in err
    rc, _, err = run(
        capsys,
        "evaluate",
        "--benchmark",
        "metrics",
        "--out",
        tmp_path,
        "--metric",
        "clipscore",
        "--weights",
        tmp_path,
    )
    assert rc == 2 and "clipscore" in err


def test_metrics_log_to_mlflow_unless_switched_off(capsys, tmp_path, weights, mlflow_uri):
    from PIL import Image

    images = tmp_path / "imgs"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(images / f"{i:05d}_0.png")
    args = [
        "evaluate",
        "--benchmark",
        "metrics",
        "--images",
        images,
        "--metric",
        f"clipscore={weights / 'clipscore'}",
    ]
    args += ["--prompts", "drawbench", "--limit", "2", "--device", "cpu", "--experiment", "bench"]
    # --no-track wins over a tracking URI: nothing is logged
    rc, _, err = run(capsys, *args, "--out", tmp_path / "off", "--tracking-uri", mlflow_uri, "--no-track")
    assert rc == 0, err
    assert mlflow_runs(mlflow_uri, "bench", "metrics")[1] == []
    # without any tracking option and no config, nothing is logged either
    rc, stdout, err = run(capsys, *args, "--out", tmp_path / "plain")
    assert rc == 0, err
    assert "MLflow" not in stdout
    rc, stdout, err = run(
        capsys, *args, "--out", tmp_path / "on", "--tracking-uri", mlflow_uri, "--name", "imgs"
    )
    assert rc == 0, err
    summary = json.loads((tmp_path / "on" / "summary.json").read_text())
    check_run(
        mlflow_uri,
        "bench",
        "metrics",
        {"clipscore/mean": summary["summary"]["clipscore"]["mean"], "images": 2},
        {"benchmark": "metrics", "metrics": f"clipscore={weights / 'clipscore'}", "prompts": "drawbench"},
        ["summary.json", "summary.md", "results.jsonl"],
    )


def test_shapes_logs_to_mlflow_when_the_config_says_so(capsys, tmp_path, ckpt, mlflow_uri):
    out = tmp_path / "shapes.json"
    rc, _, err = run(
        capsys,
        "evaluate",
        "--checkpoint",
        ckpt,
        "--out",
        out,
        "--images-per-prompt",
        "1",
        "--set",
        "sampler.steps=2",
        "--set",
        "tracking.enabled=true",
        "--set",
        f"tracking.tracking_uri={mlflow_uri}",
        "--set",
        "tracking.experiment=bench",
    )
    assert rc == 0, err
    report = json.loads(out.read_text())
    check_run(
        mlflow_uri,
        "bench",
        "shapes",
        {"overall": report["summary"]["overall"], "reward_mean": report["reward_mean"]},
        {"benchmark": "shapes", "split": "test", "images_per_prompt": "1"},
        ["shapes.json", "shapes.md"],
    )
