"""Throughput (images/s) of every registered image metric on the CPU, with tiny random models of the real classes.

python benchmarks/metric_throughput.py --out benchmarks/results/metric_throughput

No weights exist here, so each metric runs on a tiny random-initialised model of its real architecture, built by
the test fixtures (``tests/tiny_models.py``, ``tests/tiny_reward_models.py``) and loaded through the metric's real
loading path. The numbers therefore measure each metric's own pipeline (image preprocessing, tokenisation, chat
templates, checkpoint layout, batching, generation loop) plus a small network, not the real models' cost: with
real weights the network dominates (a CLIP ViT-L/H or BLIP ViT-L forward per image, a 7B VLM for the judges, which
need a GPU).
UnifiedReward generates ``--max-new-tokens`` tokens per image (a random judge never stops early).

Timing: images per second of *process CPU time* (``time.process_time``) with one torch thread, the best of
``--repeats`` runs after a warm-up; on an idle core this equals wall time, and unlike wall time it stays meaningful
when other jobs share the machine. Wall-clock images/s are recorded too (``images_per_wall_s`` in the JSON).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from _common import machine, write_results  # noqa: E402
from htgrpo.benchmarks.metrics import AESTHETIC_HEAD, METRICS, linear_mlp_head, load_metric  # noqa: E402
from tiny_models import clip_dir  # noqa: E402
from tiny_reward_models import PIXELS, hps_dir, hpsv3_dir, imagereward_dir, qwen_vl_dir  # noqa: E402


def build(root: Path, max_new_tokens: int) -> dict[str, tuple[Path, dict]]:
    """metric -> (weights directory, load_metric kwargs)."""
    clip = clip_dir(root / "clip", image_size=32)
    aesthetic = root / "aesthetic"
    shutil.copytree(clip, aesthetic)
    head = linear_mlp_head(16)
    torch.save({f"layers.{k}": v for k, v in head.state_dict().items()}, aesthetic / AESTHETIC_HEAD)
    qwen = qwen_vl_dir(root / "qwen25", "qwen2_5_vl")
    small = {"min_pixels": PIXELS, "max_pixels": PIXELS}
    return {
        "clipscore": (clip, {}),
        "pickscore": (clip, {}),
        "aesthetic": (aesthetic, {}),
        "hpsv2.1": (hps_dir(root / "hps")[0], {}),
        "imagereward": (imagereward_dir(root / "imagereward")[0], {}),
        "hpsv3": (hpsv3_dir(root / "hpsv3")[0], small),
        "unifiedreward": (qwen, {"max_new_tokens": max_new_tokens, "resize": 56}),
        "deqa": (qwen, small),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="benchmarks/results/metric_throughput")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--size", type=int, default=64, help="image side in pixels")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--max-new-tokens", type=int, default=8, help="UnifiedReward's generated tokens per image"
    )
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per setting (the best is kept)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.images, args.size, args.size, 3), dtype=np.uint8)
    prompts = [f"a photo of a red cat and a dog {i}" for i in range(args.images)]
    meta = [{} for _ in prompts]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        dirs = build(Path(tmp), args.max_new_tokens)
        for name, (weights, kwargs) in dirs.items():
            for batch in args.batch:
                t0 = time.perf_counter()
                metric = load_metric(name, weights, device="cpu", batch_size=batch, **kwargs)
                load_s = time.perf_counter() - t0
                metric(images[:batch], prompts[:batch], meta[:batch])  # warm-up
                best = best_wall = float("inf")
                for _ in range(args.repeats):
                    t0, c0 = time.perf_counter(), time.process_time()
                    scores = metric(images, prompts, meta)
                    best = min(best, time.process_time() - c0)
                    best_wall = min(best_wall, time.perf_counter() - t0)
                rows.append(
                    {
                        "metric": name,
                        "batch": batch,
                        "images": args.images,
                        "images_per_s": round(args.images / best, 1),
                        "ms_per_image": round(1000 * best / args.images, 2),
                        "images_per_wall_s": round(args.images / best_wall, 1),
                        "load_s": round(load_s, 2),
                        "score_mean": round(float(np.nanmean(scores)), 4),
                        "scale": METRICS[name].scale,
                    }
                )
                print(rows[-1], flush=True)
    data = {"machine": machine(), "settings": vars(args), "rows": rows}
    md = [
        "# Image-metric throughput (CPU, tiny random models)",
        "",
        f"{args.images} images of {args.size}x{args.size}, {args.threads} torch thread(s), best of {args.repeats} "
        "runs after a warm-up, timed in process CPU time (meaningful even when other jobs share the cores; the "
        "JSON also has wall time); UnifiedReward generates "
        f"{args.max_new_tokens} tokens per image. Tiny random models "
        "of each metric's real classes, loaded through its real loading path: the numbers compare the metrics' "
        "own pipelines (preprocessing, tokenisation, chat templates, generation loop), not the real models' cost.",
        "",
        "| metric | batch | images/s (CPU time) | ms/image | load (s, wall) | scale |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        md.append(
            f"| {r['metric']} | {r['batch']} | {r['images_per_s']} | {r['ms_per_image']} | {r['load_s']} | "
            f"{r['scale']} |"
        )
    js, mdp = write_results(args.out, data, "\n".join(md))
    print(f"wrote {js} and {mdp}")


if __name__ == "__main__":
    main()
