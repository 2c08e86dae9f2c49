"""``htgrpo evaluate --benchmark geneval|dpg|metrics`` and ``htgrpo report``: the command-line drivers.

Weights directories: ``--weights ROOT`` (default ``$HTGRPO_WEIGHTS`` or ``weights/``) with the sub-folders
``mask2former/`` and ``clip/`` (GenEval), ``vqa/`` (DPG-Bench) and one per metric (``clipscore/``,
``pickscore/``, ``aesthetic/``); each can be given directly instead (``--detector-weights``, ``--clip-weights``,
``--vqa-weights``, ``--metric NAME=DIR``). Every directory is checked before anything is generated.

Output directory (``--out DIR``): ``summary.json`` and ``summary.md`` (the paper's table), ``results.jsonl``
(per image or prompt) and ``images/`` (in the benchmark's own layout; generation resumes where it stopped).
With ``--images DIR`` an existing image folder is scored and no checkpoint is needed.
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
        help="prompt file: GenEval metadata JSONL, DPG prompts.jsonl, or one prompt per line (metrics)",
    )
    g.add_argument(
        "--dpg-csv",
        default=None,
        help="DPG-Bench question file (default ../shared/benchmarks/dpg/dpg_bench.csv)",
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
        rows = _limit(geneval.load_prompts(args.prompts), args.limit)
        generate, _ = _generator(args)
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
        prompts = _limit(dpg.load_prompts(args.prompts), args.limit)
        generate, _ = _generator(args)
        if args.images:
            _copy_images(args.images, out / "images")
        vqa = dpg.TransformersVQA(vqa_dir, device=args.device)
        report = dpg.evaluate_dpg(vqa, out, args.dpg_csv, prompts, generate, args.dpg_official_quirks, seed)
    else:
        report = _metrics(args, out, root, seed)
    report.update(name=name, checkpoint=args.checkpoint)
    write_summary(report, out)
    print((out / "summary.md").read_text())
    print(f"summary written to {out / 'summary.json'}")
    return 0


def _read_prompt_list(path: str | Path | None) -> list[str]:
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
            spec = getattr(info.factory, "spec", None)
            if spec is not None:
                require(metric, d, spec)
    image_dir = out / "images"
    prompts = _limit(_read_prompt_list(args.prompts), args.limit)
    n = args.images_per_prompt or 1
    generate, _ = _generator(args)
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
    return {"benchmark": "metrics", "images": len(files), "summary": summary}


def report_command(args: argparse.Namespace) -> int:
    md, png = side_by_side(args.evaluations, args.out)
    print(md.read_text())
    print(f"report written to {md} and {png}")
    return 0
