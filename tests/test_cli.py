"""The `htgrpo` command line, in-process through `main([...])` and once through a real process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from htgrpo.backbones.tiny import TinyBackbone
from htgrpo.checkpoint import save_checkpoint
from htgrpo.cli import main
from htgrpo.config import load_config
from htgrpo.tokenizers.kmeans import PatchKMeansTokenizer
from htgrpo.world.dataset import splits_for
from htgrpo.world.grammar import TASKS, read_jsonl

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
SMALL = [
    "backbone.d_model=32",
    "backbone.n_layers=2",
    "backbone.n_heads=2",
    "backbone.mlp_hidden_size=64",
    "tokenizer.codebook_size=64",
]


@pytest.fixture(autouse=True)
def in_repo(monkeypatch):
    """Run from the repository root (the default --config is relative) with one torch thread for the tiny model."""
    before = torch.get_num_threads()
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("HTGRPO_THREADS", "1")
    yield
    torch.set_num_threads(before)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A randomly initialised tiny checkpoint (d_model 32, 2 layers, 64 random codes)."""
    cfg = load_config(TINY, SMALL)
    torch.manual_seed(0)
    tok = PatchKMeansTokenizer(torch.rand(64, 192, generator=torch.Generator().manual_seed(0)))
    bb = TinyBackbone(cfg.backbone, tok, cfg.world.grid).eval()
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", bb, cfg)


# --- config ---------------------------------------------------------------------------------------------------


def test_config_prints_the_resolved_config_with_overrides(capsys):
    rc, out, err = run(capsys, "config", "--config", str(TINY), "--set", "sampler.steps=3")
    assert rc == 0, err
    printed = yaml.safe_load(out)
    assert printed["sampler"]["steps"] == 3
    assert printed["backbone"]["d_model"] == 192  # the rest comes from the file
    assert set(printed) == {
        "backbone",
        "tokenizer",
        "world",
        "sampler",
        "pretrain",
        "eval",
        "storage",
        "tracking",
        "pipeline",
        "rl",
    }


def test_config_uses_the_default_config_file(capsys):
    rc, out, _ = run(capsys, "config")
    assert rc == 0
    assert yaml.safe_load(out) == json.loads(json.dumps(load_config(TINY).model_dump(mode="json")))


def test_config_unknown_key_is_exit_2_without_traceback(capsys):
    rc, out, err = run(capsys, "config", "--set", "sampler.stepz=3")
    assert rc == 2
    assert out == ""
    assert err.startswith("error: ")
    assert "sampler.stepz" in err and "unknown key" in err
    assert "Traceback" not in err


def test_config_bad_value_and_missing_file(capsys, tmp_path):
    rc, _, err = run(capsys, "config", "--set", "sampler.steps=-1")
    assert rc == 2 and "sampler.steps" in err and "-1" in err
    missing = tmp_path / "none.yaml"
    rc, _, err = run(capsys, "config", "--config", str(missing))
    assert rc == 2 and str(missing) in err
    rc, _, err = run(capsys, "config", "--set", "sampler.steps")
    assert rc == 2 and "KEY=VALUE" in err


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["evaluate", "--checkpoint", "x"])  # --out is required
    assert info.value.code == 2
    assert "--out" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2


# --- world -------------------------------------------------------------------------------------------------


def test_world_writes_a_split_as_jsonl(capsys, tmp_path):
    out_path = tmp_path / "sub" / "test.jsonl"
    rc, out, err = run(capsys, "world", "--split", "test", "--out", str(out_path))
    assert rc == 0, err
    rows = read_jsonl(out_path)
    expected = splits_for(load_config(TINY).world).test
    assert rows == expected
    assert {r["tag"] for r in rows} == set(TASKS)
    assert f"wrote {len(rows)} GenEval metadata rows of the test split" in out


def test_world_rejects_an_unknown_split(capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["world", "--split", "holdout", "--out", str(tmp_path / "x.jsonl")])
    assert info.value.code == 2
    assert not (tmp_path / "x.jsonl").exists()


# --- evaluate / sample ------------------------------------------------------------------------------------


def test_evaluate_missing_checkpoint_names_the_path(capsys, tmp_path):
    missing = tmp_path / "missing_dir"
    rc, out, err = run(capsys, "evaluate", "--checkpoint", str(missing), "--out", str(tmp_path / "r.json"))
    assert rc == 2
    assert err.startswith("error: ") and str(missing) in err
    assert "Traceback" not in err
    assert not (tmp_path / "r.json").exists()


def test_evaluate_incomplete_checkpoint(capsys, tmp_path, tiny_ckpt):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_ckpt, broken)
    (broken / "manifest.json").unlink()
    rc, _, err = run(capsys, "evaluate", "--checkpoint", str(broken), "--out", str(tmp_path / "r.json"))
    assert rc == 2 and "incomplete" in err and str(broken) in err


def test_evaluate_unknown_benchmark(capsys, tmp_path, tiny_ckpt):
    rc, _, err = run(
        capsys,
        "evaluate",
        "--benchmark",
        "nope",
        "--checkpoint",
        str(tiny_ckpt),
        "--out",
        str(tmp_path / "r.json"),
    )
    assert rc == 2 and "'nope'" in err


def test_evaluate_tiny_checkpoint_writes_a_report(capsys, tmp_path, tiny_ckpt):
    report_path = tmp_path / "reports" / "tiny.json"
    rc, out, err = run(
        capsys,
        "evaluate",
        "--checkpoint",
        str(tiny_ckpt),
        "--out",
        str(report_path),
        "--split",
        "val",
        "--images-per-prompt",
        "1",
        "--seed",
        "3",
        "--set",
        "sampler.steps=2",
        "--grid",
    )
    assert rc == 0, err
    report = json.loads(report_path.read_text())
    val = splits_for(load_config(TINY).world).val
    assert report["split"] == "val"
    assert report["prompts"] == len(val) and report["images"] == len(val)
    assert report["sampler"]["steps"] == 2
    assert report["checkpoint"] == str(tiny_ckpt)
    # an untrained model with random codes draws no valid scene
    assert report["summary"]["overall"] == 0.0
    assert report_path.with_suffix(".md").is_file()
    assert report_path.with_suffix(".png").is_file()
    assert "| tiny |" in out and f"report written to {report_path}" in out


def test_sample_writes_a_png(capsys, tmp_path, tiny_ckpt):
    png = tmp_path / "grid.png"
    rc, out, err = run(
        capsys,
        "sample",
        "--checkpoint",
        str(tiny_ckpt),
        "--prompt",
        "a photo of a red circle",
        "--n",
        "2",
        "--out",
        str(png),
        "--set",
        "sampler.steps=2",
        "--score",
    )
    assert rc == 0, err
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {png}" in out


def test_sample_unknown_word_is_exit_2(capsys, tmp_path, tiny_ckpt):
    rc, _, err = run(
        capsys,
        "sample",
        "--checkpoint",
        str(tiny_ckpt),
        "--prompt",
        "a photo of a zebra",
        "--out",
        str(tmp_path / "g.png"),
    )
    assert rc == 2 and "zebra" in err and "Traceback" not in err
    assert not (tmp_path / "g.png").exists()


def test_sample_n_must_be_positive(capsys, tmp_path, tiny_ckpt):
    rc, _, err = run(
        capsys, "sample", "--checkpoint", str(tiny_ckpt), "--prompt", "a photo of a ring", "--n", "0"
    )
    assert rc == 2 and "--n" in err


def test_checkpoint_config_override_error_names_config_json(capsys, tmp_path, tiny_ckpt):
    rc, _, err = run(
        capsys,
        "sample",
        "--checkpoint",
        str(tiny_ckpt),
        "--prompt",
        "a photo of a ring",
        "--out",
        str(tmp_path / "g.png"),
        "--set",
        "sampler.stepz=2",
    )
    assert rc == 2
    assert f"{tiny_ckpt}/config.json" in err and "sampler.stepz" in err


# --- train: bad input is one line ------------------------------------------------------------------------------

SCHEMES = "supported: a plain path, file://DIR or s3://BUCKET/PREFIX"
GOOD_ROW = {
    "tag": "colors",
    "include": [{"class": "circle", "count": 1, "color": "red"}],
    "prompt": "a photo of a red circle",
}


def _pool(tmp_path: Path, text: str) -> str:
    path = tmp_path / "pool.jsonl"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("bad_json", "error: rl.prompts: {pool}:2: not valid JSON (Expecting property name"),
        ("not_object", "error: rl.prompts: {pool}:2: a GenEval row must be a JSON object, got a JSON array"),
        ("ftp_out", f"error: --out: storage URI 'ftp://x/y': unsupported scheme ftp://; {SCHEMES}"),
        ("gs_out", f"error: --out: storage URI 'gs://b/p': unsupported scheme gs://; {SCHEMES}"),
        (
            "s3_dotdot",
            "error: --out: storage URI 's3://bucket/prefix/../..': an S3 key must not contain a '..'",
        ),
        (
            "gs_store",
            "storage: uri: 'gs://b/p' has an unsupported scheme gs://; use a plain path, file://DIR",
        ),
        (
            "shapes_class",
            "error: prompt set '{pool}', row 1 ('a photo of a red circle'): include class 'circel'",
        ),
    ],
)
def test_train_bad_input_is_one_line(capsys, tmp_path, tiny_ckpt, case, expected):
    good = json.dumps(GOOD_ROW)
    out, sets, pool = str(tmp_path / "run"), [*SMALL, "rl.steps=1"], ""
    if case == "bad_json":
        pool = _pool(tmp_path, f"{good}\n{{not json\n")
    elif case == "not_object":
        pool = _pool(tmp_path, f"{good}\n[1, 2]\n")
    elif case == "shapes_class":
        bad = json.dumps({**GOOD_ROW, "include": [{"class": "circel", "count": 1, "color": "red"}]})
        pool = _pool(tmp_path, f"{good}\n{bad}\n")
    elif case == "gs_store":
        sets.append("storage.uri=gs://b/p")
    else:
        out = {"ftp_out": "ftp://x/y", "gs_out": "gs://b/p", "s3_dotdot": "s3://bucket/prefix/../.."}[case]
    if pool:
        sets.append(f"rl.prompts={pool}")
    argv = ["train", "--config", str(TINY), "--init", str(tiny_ckpt), "--out", out]
    rc, _, err = run(capsys, *argv, *[x for item in sets for x in ("--set", item)])
    assert rc == 2 and err.count("\n") == 1, err
    assert expected.format(pool=pool) in err and err.startswith("error: ")
    assert not (tmp_path / "run").exists()


# --- the installed entry point ------------------------------------------------------------------------------


def _entry_point() -> list[str]:
    script = ROOT / ".venv" / "bin" / "htgrpo"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "htgrpo.cli"]


def test_entry_point_runs_in_a_real_process():
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    cmd = _entry_point()
    proc = subprocess.run([*cmd, "--help"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for command in ("pretrain", "evaluate", "sample", "world", "config"):
        assert command in proc.stdout
    # the exit status of an error reaches the shell, with no traceback
    proc = subprocess.run(
        [*cmd, "config", "--set", "sampler.stepz=3"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "sampler.stepz" in proc.stderr and "Traceback" not in proc.stderr
