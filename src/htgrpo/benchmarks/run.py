"""``htgrpo evaluate --benchmark geneval|dpg|metrics`` and ``htgrpo report``: the command-line drivers.

Weights directories: ``--weights ROOT`` (default ``$HTGRPO_WEIGHTS`` or ``weights/``) with the sub-folders
``mask2former/`` and ``clip/`` (GenEval), ``vqa/`` (DPG-Bench) and one per metric (``clipscore/``,
``pickscore/``, ``aesthetic/``); each can be given directly instead (``--detector-weights``, ``--clip-weights``,
``--vqa-weights``, ``--metric NAME=DIR``). Every directory is checked before anything is generated.

Output directory (``--out DIR``): ``summary.json`` and ``summary.md`` (the paper's table), ``results.jsonl``
(per image or prompt) and ``images/`` (in the benchmark's own layout; generation resumes where it stopped).
With ``--images DIR`` an existing image folder is scored and no checkpoint is needed. ``--prompts`` takes a file or a
prompt-source name of :mod:`htgrpo.prompts` (``geneval-unseen-test``, ``t2i-compbench:color``, ``drawbench``, ...).

MLflow: when tracking is on, every benchmark (shapes too) logs one run ``evaluate-<benchmark>-<name>`` (tags
``htgrpo.kind=evaluate``, ``benchmark``, ``checkpoint_uri``) with the run's params (benchmark, checkpoint, images,
prompts, seed, images per prompt, metrics, weights directories and the sampler settings), every finite number of
the summary as a metric (unprefixed, as the pipeline's evaluation runs: ``overall``, ``single_object``,
``clipscore/mean``, ``l1/entity``, ...) and the summary JSON / Markdown (and ``results.jsonl``) as artifacts.
Tracking is on with ``--track`` or ``--tracking-uri URI`` (default store: the config's ``tracking.tracking_uri``,
``sqlite:///mlflow.db``, artifacts in ``mlruns/`` beside it), or when the run's config (``--config`` or the
checkpoint's) has ``tracking.enabled``; ``--no-track`` switches it off whatever the config says. An unreachable
server never fails the evaluation: the tracker warns and writes the records under ``mlflow-offline/``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from htgrpo.benchmarks import dpg, geneval
from htgrpo.benchmarks.generation import ImageGenerator, check_images
from htgrpo.benchmarks.metrics import METRICS, evaluate_metrics, load_metric
from htgrpo.benchmarks.report import side_by_side, write_summary
from htgrpo.benchmarks.weights import require
from htgrpo.data import BENCHMARK_DATA
from htgrpo.errors import BenchmarkDataError, HtgrpoError

BENCHMARKS = ("shapes", "geneval", "dpg", "metrics")
DEFAULT_METRIC_PROMPTS = BENCHMARK_DATA / "flow_grpo" / "drawbench" / "test_unique.txt"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The real-benchmark options of ``htgrpo evaluate`` (the shapes options stay as they are)."""
    g = p.add_argument_group("geneval / dpg / metrics")
    g.add_argument(
        "--weights",
        default=None,
        help="root of the local weights directories (default $HTGRPO_WEIGHTS or weights/)",
    )
    g.add_argument(
        "--detector-weights", default=None, help="GenEval: Mask2Former directory (default ROOT/mask2former)"
    )
    g.add_argument(
        "--clip-weights", default=None, help="GenEval: CLIP colour classifier directory (default ROOT/clip)"
    )
    g.add_argument("--vqa-weights", default=None, help="DPG-Bench: VQA model directory (default ROOT/vqa)")
    g.add_argument(
        "--metric",
        action="append",
        default=[],
        metavar="NAME[=DIR]",
        help=f"metric to compute (repeatable): {', '.join(m for m in METRICS if m != 'geneval')}",
    )
    g.add_argument(
        "--prompts",
        default=None,
        help="prompt file (GenEval metadata JSONL, DPG prompts.jsonl, or one prompt per line for metrics) or a "
        "prompt source name (htgrpo prompts --list), e.g. geneval-unseen-test, t2i-compbench:color, drawbench",
    )
    g.add_argument(
        "--dpg-csv",
        default=None,
        help="DPG-Bench question file (default ../shared/benchmarks/dpg/dpg_bench.csv beside the checkout)",
    )
    g.add_argument(
        "--dpg-official-quirks",
        action="store_true",
        help="DPG-Bench: reproduce the official category-score and first-row quirks",
    )
    g.add_argument("--images", default=None, help="score this existing image folder instead of generating")
    g.add_argument("--limit", type=int, default=None, help="only the first N prompts (smoke runs)")
    g.add_argument(
        "--name", default=None, help="model name in the tables (default: the checkpoint's folder name)"
    )
    g.add_argument(
        "--device", default=None, help="torch device of the scoring models (default cuda if available)"
    )
    t = p.add_argument_group("MLflow tracking (every benchmark)")
    t.add_argument(
        "--track",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="log params, summary metrics and the summary files to MLflow (default: the config's "
        "tracking.enabled; --no-track: never)",
    )
    t.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow store, e.g. sqlite:///mlflow.db or http://HOST:5000 (implies --track unless --no-track)",
    )
    t.add_argument("--experiment", default=None, help="MLflow experiment (default: the config's, htgrpo)")


def _root(args) -> Path:
    return Path(args.weights or os.environ.get("HTGRPO_WEIGHTS", "weights"))


def _generator(args) -> tuple[ImageGenerator | None, Any]:
    if args.images:
        return None, None
    if not args.checkpoint:
        raise HtgrpoError(
            f"--benchmark {args.benchmark} needs --checkpoint (to generate) or --images (to score)"
        )
    from htgrpo.benchmarks.generation import backbone_generator
    from htgrpo.checkpoint import load_checkpoint
    from htgrpo.cli import _checkpoint_config

    cfg = _checkpoint_config(args.checkpoint, args.config, args.overrides)
    backbone, _ = load_checkpoint(args.checkpoint, cfg)
    return backbone_generator(backbone, cfg.sampler), cfg


def _copy_images(src: str | Path, dst: Path) -> None:
    src = Path(src)
    if not src.is_dir():
        raise BenchmarkDataError(f"image folder {src} does not exist")
    if dst.resolve() != src.resolve():
        shutil.copytree(src, dst, dirs_exist_ok=True)


def _limit(rows, n):
    return rows[:n] if n is not None else rows


def evaluate_command(args: argparse.Namespace) -> int:
    if args.benchmark not in BENCHMARKS:
        raise HtgrpoError(f"unknown benchmark {args.benchmark!r}; expected one of {', '.join(BENCHMARKS)}")
    out = Path(args.out)
    root = _root(args)
    source = args.checkpoint or args.images
    name = args.name or (Path(source).name if source else "model")
    seed = 42 if args.seed is None else args.seed
    if args.benchmark == "geneval":
        det = args.detector_weights or root / "mask2former"
        clip = args.clip_weights or root / "clip"
        require("geneval", det, geneval.DETECTOR_SPEC)
        require("geneval", clip, geneval.CLIP_COLOR_SPEC)
        rows = _limit(_geneval_rows(args.prompts), args.limit)
        generate, cfg = _generator(args)
        if args.images:
            _copy_images(args.images, out / "images")
        scorer = geneval.load_scorer(det, clip, device=args.device)
        n = args.images_per_prompt or geneval.N_SAMPLES
        report = geneval.evaluate_geneval(scorer, out, rows, generate, n_samples=n, seed=seed)
        report["images_per_prompt"] = n
    elif args.benchmark == "dpg":
        vqa_dir = args.vqa_weights or root / "vqa"
        require("dpg", vqa_dir, dpg.VQA_SPEC)
        dpg.load_questions(args.dpg_csv)  # a missing question file fails before any generation
        prompts = _limit(_dpg_rows(args.prompts), args.limit)
        generate, cfg = _generator(args)
        if args.images:
            _copy_images(args.images, out / "images")
        vqa = dpg.TransformersVQA(vqa_dir, device=args.device)
        report = dpg.evaluate_dpg(vqa, out, args.dpg_csv, prompts, generate, args.dpg_official_quirks, seed)
    else:
        report, cfg = _metrics(args, out, root, seed)
    report.update(name=name, checkpoint=args.checkpoint)
    write_summary(report, out)
    print((out / "summary.md").read_text())
    print(f"summary written to {out / 'summary.json'}")
    files = [out / "summary.json", out / "summary.md", out / "results.jsonl"]
    track_evaluation(args, report, files, cfg, out)
    return 0


# --- prompts ---------------------------------------------------------------------------------------------------


def _source_rows(arg: str | None) -> list[dict[str, Any]] | None:
    """The rows of a named prompt source, or None when ``arg`` is a path (or not given)."""
    if not arg or Path(arg).exists():
        return None
    from htgrpo import prompts

    if not prompts.is_named_source(arg):
        return None
    return prompts.load_source(arg)


def _geneval_rows(arg: str | None) -> list[dict[str, Any]]:
    rows = _source_rows(arg)
    if rows is None:
        return geneval.load_prompts(arg)
    if any(r["tag"] not in geneval.TASKS for r in rows):
        raise HtgrpoError(f"--prompts {arg}: not a GenEval prompt set (its rows have no GenEval tags)")
    return rows


def _dpg_rows(arg: str | None) -> list[dict[str, Any]]:
    rows = _source_rows(arg)
    if rows is None:
        return dpg.load_prompts(arg)
    if any("item_id" not in r for r in rows):
        raise HtgrpoError(f"--prompts {arg}: DPG-Bench needs rows with an item_id (the dpg source)")
    return [{"item_id": r["item_id"], "prompt": r["prompt"]} for r in rows]


# --- MLflow ----------------------------------------------------------------------------------------------------


def tracking_settings(args: argparse.Namespace, cfg=None):
    """The TrackingConfig an evaluation logs with, or None when tracking is off (module docstring)."""
    from htgrpo.config import TrackingConfig, load_config

    if getattr(args, "track", None) is False:
        return None
    if cfg is None and getattr(args, "config", None):
        cfg = load_config(args.config, args.overrides)
    base = cfg.tracking if cfg is not None else TrackingConfig()
    update: dict[str, Any] = {}
    if getattr(args, "track", None) or getattr(args, "tracking_uri", None):
        update["enabled"] = True
    if getattr(args, "tracking_uri", None):
        update["tracking_uri"] = args.tracking_uri
    if getattr(args, "experiment", None):
        update["experiment"] = args.experiment
    settings = base.model_copy(update=update)
    return settings if settings.enabled else None


def evaluation_params(args: argparse.Namespace, report: dict[str, Any], cfg=None) -> dict[str, Any]:
    params: dict[str, Any] = {
        "benchmark": report.get("benchmark", args.benchmark),
        "name": report.get("name") or args.name,
        "checkpoint": args.checkpoint,
        "images": getattr(args, "images", None),
        "prompts": getattr(args, "prompts", None),
        "split": report.get("split"),
        "limit": getattr(args, "limit", None),
        "seed": args.seed,
        "images_per_prompt": report.get("images_per_prompt", args.images_per_prompt),
        "metrics": ",".join(getattr(args, "metric", None) or []) or None,
        "weights": getattr(args, "weights", None),
        "detector_weights": getattr(args, "detector_weights", None),
        "clip_weights": getattr(args, "clip_weights", None),
        "vqa_weights": getattr(args, "vqa_weights", None),
        "dpg_csv": getattr(args, "dpg_csv", None),
        "dpg_official_quirks": getattr(args, "dpg_official_quirks", None),
        "device": getattr(args, "device", None),
        "config": getattr(args, "config", None),
        "overrides": list(getattr(args, "overrides", None) or []) or None,
    }
    params = {k: str(v) if isinstance(v, Path) else v for k, v in params.items() if v is not None}
    if cfg is not None:
        params["backbone.kind"] = cfg.backbone.kind
        params["sampler"] = cfg.sampler.model_dump()
    return params


def evaluation_metrics(report: dict[str, Any]) -> dict[str, Any]:
    """The summary's numbers (nested keys joined by ``/``) plus the report's top-level counts."""
    out: dict[str, Any] = dict(report.get("summary") or {})
    for key in ("images", "prompts", "reward_mean", "valid_images", "seconds", "images_per_second"):
        if isinstance(report.get(key), int | float):
            out.setdefault(key, report[key])
    return out


def track_evaluation(
    args: argparse.Namespace,
    report: dict[str, Any],
    files: list[Path],
    cfg=None,
    local_dir: str | Path = ".",
) -> str | None:
    """Log one evaluation to MLflow when tracking is on; returns the run id (None when off)."""
    settings = tracking_settings(args, cfg)
    if settings is None:
        return None
    from htgrpo.tracking import Tracker

    bench = report.get("benchmark", args.benchmark)
    name = report.get("name") or args.name or "model"
    tracker = Tracker(settings, local_dir)
    tags = {"htgrpo.kind": "evaluate", "benchmark": bench}
    if args.checkpoint:
        tags["checkpoint_uri"] = str(args.checkpoint)
    run_id = tracker.start_run(f"evaluate-{bench}-{name}", tags=tags)
    tracker.log_params(run_id, evaluation_params(args, report, cfg))
    tracker.log_metrics(run_id, evaluation_metrics(report), step=0)
    tracker.log_artifacts(run_id, [f for f in files if Path(f).is_file()])
    tracker.end_run(run_id)
    where = "offline (see mlflow-offline/)" if tracker.offline else settings.tracking_uri
    print(f"logged to MLflow run {run_id} ({where}, experiment {settings.experiment})")
    return run_id


def _read_prompt_list(path: str | Path | None) -> list[str]:
    rows = _source_rows(str(path) if path else None)
    if rows is not None:
        return [r["prompt"] for r in rows]
    p = Path(path) if path else DEFAULT_METRIC_PROMPTS
    if not p.is_file():
        raise BenchmarkDataError(f"prompt file {p} does not exist")
    if p.suffix == ".jsonl":
        return [json.loads(x)["prompt"] for x in p.read_text().splitlines() if x.strip()]
    return [x.strip() for x in p.read_text().splitlines() if x.strip()]


def _metrics(args, out: Path, root: Path, seed: int) -> dict[str, Any]:
    if not args.metric:
        raise HtgrpoError(
            f"--benchmark metrics needs at least one --metric NAME[=DIR] ({', '.join(METRICS)})"
        )
    specs = []
    for item in args.metric:
        metric, _, d = item.partition("=")
        specs.append((metric, Path(d) if d else root / metric))
    for metric, d in specs:
        if metric == "geneval":
            raise HtgrpoError("the geneval reward needs GenEval metadata: use --benchmark geneval")
        info = METRICS.get(metric)
        if info is not None:
            spec = getattr(info.resolve(), "spec", None)
            if spec is not None:
                require(metric, d, spec)
    image_dir = out / "images"
    prompts = _limit(_read_prompt_list(args.prompts), args.limit)
    n = args.images_per_prompt or 1
    generate, cfg = _generator(args)
    if args.images:
        _copy_images(args.images, image_dir)
    elif generate is not None:
        image_dir.mkdir(parents=True, exist_ok=True)
        for i, prompt in enumerate(prompts):
            if all((image_dir / f"{i:05d}_{k}.png").is_file() for k in range(n)):
                continue
            imgs = check_images(generate([prompt] * n, seed), n)
            for k, im in enumerate(imgs):
                Image.fromarray(im).save(image_dir / f"{i:05d}_{k}.png")
    files = sorted(image_dir.glob("*.png"))
    if not files:
        raise BenchmarkDataError(f"{image_dir} holds no PNG images")
    # <prompt index>_<k>.png names the prompt; any other name is scored against an empty prompt
    texts = []
    for f in files:
        head = f.stem.split("_")[0]
        texts.append(prompts[int(head)] if head.isdigit() and int(head) < len(prompts) else "")
    images = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    if len({im.shape for im in images}) > 1:
        raise BenchmarkDataError(f"{image_dir}: images of different sizes; metrics take one size per run")
    fns = {m: load_metric(m, d, device=args.device) for m, d in specs}
    result = evaluate_metrics(fns, np.stack(images), texts)
    (out / "results.jsonl").write_text(
        "".join(
            json.dumps({"file": str(f), "prompt": t, **{m: result[m]["scores"][i] for m in fns}}) + "\n"
            for i, (f, t) in enumerate(zip(files, texts, strict=True))
        )
    )
    summary = {m: {k: v for k, v in r.items() if k != "scores"} for m, r in result.items()}
    return {"benchmark": "metrics", "images": len(files), "summary": summary}, cfg


def report_command(args: argparse.Namespace) -> int:
    md, png = side_by_side(args.evaluations, args.out)
    print(md.read_text())
    print(f"report written to {md} and {png}")
    return 0
