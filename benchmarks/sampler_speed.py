"""Sampler throughput on the CPU: images/s and the share of time spent outside the network forward.

python benchmarks/sampler_speed.py --checkpoint checkpoints/base --out benchmarks/results/sampler
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_results  # noqa: E402
from htgrpo.checkpoint import load_checkpoint  # noqa: E402
from htgrpo.sampling import sample  # noqa: E402
from htgrpo.world.dataset import splits_for  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--checkpoint", default="checkpoints/base")
    ap.add_argument("--out", default="benchmarks/results/sampler")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    backbone, cfg = load_checkpoint(args.checkpoint)
    prompts = [r["prompt"] for r in splits_for(cfg.world).test]
    prompts = (prompts * (args.images // len(prompts) + 1))[: args.images]
    rows = []
    for kind in ("maskgit", "emerge"):
        for batch in (32, 128):
            for cfg_scale in (0.0, cfg.sampler.cfg_scale):
                sc = cfg.sampler.model_copy(
                    update={"kind": kind, "batch_size": batch, "cfg_scale": cfg_scale}
                )
                sample(backbone, prompts[:batch], sc, torch.Generator().manual_seed(0))  # warm-up
                res = sample(backbone, prompts, sc, torch.Generator().manual_seed(1))
                rows.append(
                    {
                        "sampler": kind,
                        "batch": batch,
                        "steps": sc.steps,
                        "cfg_scale": cfg_scale,
                        "images": len(prompts),
                        "images_per_s": round(len(prompts) / res.total_seconds, 1),
                        "outside_forward_share": round(1 - res.model_seconds / res.total_seconds, 4),
                        "forward_passes_per_image": res.forward_passes,
                    }
                )
                print(rows[-1])
    md = ["# Sampler throughput (CPU)", "", f"checkpoint `{args.checkpoint}`, {args.threads} threads", ""]
    md.append("| sampler | batch | steps | CFG | images/s | outside forward | forwards/image |")
    md.append("|---|---|---|---|---|---|---|")
    for r in rows:
        md.append(
            f"| {r['sampler']} | {r['batch']} | {r['steps']} | {r['cfg_scale']} | {r['images_per_s']} | "
            f"{100 * r['outside_forward_share']:.1f} % | {r['forward_passes_per_image']} |"
        )
    write_results(args.out, {"rows": rows, "machine": machine()}, "\n".join(md))


if __name__ == "__main__":
    main()
