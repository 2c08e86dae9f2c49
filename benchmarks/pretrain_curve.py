"""Score-versus-time curve of base-model pretraining: evaluate every snapshot on the validation split.

Each snapshot also gets the colour probe of ``binding_probe.py`` (colour given shape at masked object cells of
fresh scenes of the colors and color_attr prompts; chance about 0.11), which shows when colour words are bound and
whether the binding lasts. ``--baseline`` overlays an earlier curve (its JSON) in the plot.

python benchmarks/pretrain_curve.py --snapshots .cache/snapshots --out benchmarks/results/pretrain_curve \
    --baseline benchmarks/results/pretrain_curve_plain.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_results  # noqa: E402
from binding_probe import probe  # noqa: E402
from htgrpo.checkpoint import load_checkpoint  # noqa: E402
from htgrpo.evaluate import evaluate_shapes  # noqa: E402
from htgrpo.world.grammar import TASKS  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--snapshots", default=".cache/snapshots")
    ap.add_argument("--out", default="benchmarks/results/pretrain_curve")
    ap.add_argument("--split", default="val")
    ap.add_argument("--images-per-prompt", type=int, default=4)
    ap.add_argument("--baseline", default=None, help="an earlier curve's JSON, drawn in grey for comparison")
    ap.add_argument("--title", default="", help="a line under the heading, e.g. the recipe")
    args = ap.parse_args()
    baseline = json.loads(Path(args.baseline).read_text()) if args.baseline else None
    torch.set_num_threads(2)
    points = []
    dirs = sorted(p for p in Path(args.snapshots).glob("step-*") if (p / "manifest.json").is_file())
    if not dirs:
        raise SystemExit(f"no snapshots under {args.snapshots}: run `make pretrain` first")
    for d in dirs:
        backbone, cfg = load_checkpoint(d)
        meta = json.loads((d / "config.json").read_text())["extra"]
        report, _, _ = evaluate_shapes(
            backbone, cfg, split=args.split, images_per_prompt=args.images_per_prompt, progress=False
        )
        s = report["summary"]
        colour = probe(str(d), args.split, 4, 0)["tasks"]
        points.append(
            {"minutes": round(meta["minutes"], 2), "step": meta["step"], "overall": s["overall"]}
            | {t: s[t] for t in TASKS if t in s}
            | {f"colour_given_shape_{t}": colour[t]["colour_given_shape"] for t in ("colors", "color_attr")}
        )
        print(json.dumps(points[-1]))
    rows = [
        "| minutes | step | overall | " + " | ".join(TASKS) + " | colour given shape (colors / color_attr) |",
        "|" + "---|" * (len(TASKS) + 4),
    ]
    for p in points:
        rows.append(
            f"| {p['minutes']:.1f} | {p['step']} | {p['overall']:.3f} | "
            + " | ".join(f"{p.get(t, float('nan')):.3f}" for t in TASKS)
            + f" | {p['colour_given_shape_colors']:.3f} / {p['colour_given_shape_color_attr']:.3f} |"
        )
    md = f"# Pretraining: shapes score ({args.split} split, {args.images_per_prompt} images/prompt) vs time\n\n"
    if args.title:
        md += args.title + "\n\n"
    data = {"split": args.split, "title": args.title, "points": points, "machine": machine()}
    if args.baseline:
        data["baseline"] = args.baseline
    write_results(args.out, data, md + "\n".join(rows))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    mins = [p["minutes"] for p in points]
    if baseline is not None:
        ax.plot(
            [p["minutes"] for p in baseline["points"]],
            [p["overall"] for p in baseline["points"]],
            "-s",
            color="0.6",
            lw=2,
            label=f"overall, {Path(args.baseline).stem}",
        )
    ax.plot(mins, [p["overall"] for p in points], "k-o", lw=2, label="overall")
    for t in TASKS:
        ax.plot(mins, [p.get(t, float("nan")) for p in points], "--", lw=1, label=t)
    ax.set_xlabel("pretraining minutes (2 CPU cores)")
    ax.set_ylabel(f"GenEval-rule score ({args.split})")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(Path(args.out).with_suffix(".png"), dpi=120)


if __name__ == "__main__":
    main()
