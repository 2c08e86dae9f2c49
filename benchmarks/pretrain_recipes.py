"""Pretraining recipes side by side: each checkpoint scored on the test split (GenEval rules, 4 images per prompt,
the checkpoint's own sampler), with the recipe read from its saved config and the colour probe of
``binding_probe.py`` (colour given shape on the validation split's colour prompts; chance about 0.11).

    python benchmarks/pretrain_recipes.py --run plain=.cache/old-base --run fill=checkpoints/base \\
        --out benchmarks/results/pretrain_recipes [--reuse benchmarks/results/pretrain_recipes.json]

Scoring is seeded, so ``--reuse`` takes a run's row from an earlier results file when its checkpoint path
matches (under the label given now), instead of sampling it again.
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

RECIPE_KEYS = ("steps", "fill_steps", "fill_decay_steps", "fill_final_share", "fill_final_tasks")


def score(label: str, checkpoint: str, split: str) -> dict:
    from htgrpo.checkpoint import load_checkpoint
    from htgrpo.evaluate import evaluate_shapes
    from htgrpo.pretrain import scene_world

    backbone, cfg = load_checkpoint(checkpoint)
    saved = json.loads((Path(checkpoint) / "config.json").read_text())
    report, _, _ = evaluate_shapes(backbone, cfg, split=split, progress=False)
    colour = probe(checkpoint, "val", 4, 0)["tasks"]
    pretrain = cfg.pretrain.model_dump()
    return {
        "label": label,
        "checkpoint": checkpoint,
        "recipe": {k: pretrain[k] for k in RECIPE_KEYS},
        "task_weights": dict(scene_world(cfg).task_weights),
        "trained": saved.get("extra", {}),
        "summary": report["summary"],
        "colour_given_shape": {t: colour[t]["colour_given_shape"] for t in ("colors", "color_attr")},
        "prompts_with_reward_spread": report["prompts_with_reward_spread"],
    }


def weights_label(weights: dict[str, float] | None) -> str:
    """The training task weights other than the default 1 ("–" when every task is drawn equally often)."""
    if not weights or len(set(weights.values())) == 1:
        return "–"
    return ", ".join(f"{task} {w:g}" for task, w in weights.items() if w != 1)


def render(data: dict) -> list[str]:
    tasks = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
    lines = [
        f"# Pretraining recipes ({data['split']} split, 4 images per prompt)",
        "",
        "Fill mode: every object cell masked, the background visible, the loss on the object cells. `fill` is "
        "steps of fill mode only, `hand-over` the steps over which its share falls to `kept`, the share kept "
        "for the rest of the run (for the scenes of `kept for`; all tasks when empty). `task weights` are the "
        "relative frequencies of the tasks among the pretraining scenes other than the default 1 "
        "(`pretrain.task_weights`, else `world.task_weights`; – when all tasks are drawn equally often). "
        "Colour given shape is the probe on the validation split's colour prompts (chance about 0.11).",
        "",
        "| recipe | steps | fill | hand-over | kept | kept for | task weights | minutes | overall | "
        + " | ".join(tasks)
        + " | colour given shape (colors / color_attr) |",
        "|" + "---|" * (10 + len(tasks)),
    ]
    for r in data["results"]:
        rc, s = r["recipe"], r["summary"]
        minutes = r["trained"].get("seconds")
        lines.append(
            f"| {r['label']} | {r['trained'].get('step') or '–'} | {rc['fill_steps']} | "
            f"{rc['fill_decay_steps']} | {rc['fill_final_share']} | {', '.join(rc['fill_final_tasks']) or '–'} | "
            f"{weights_label(r.get('task_weights'))} | "
            f"{'–' if minutes is None else f'{minutes / 60:.1f}'} | {s['overall']:.3f} | "
            + " | ".join(f"{s[t]:.3f}" for t in tasks)
            + f" | {r['colour_given_shape']['colors']:.3f} / {r['colour_given_shape']['color_attr']:.3f} |"
        )
    lines += ["", f"Machine: {data['machine']}."]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", action="append", required=True, metavar="LABEL=CHECKPOINT")
    ap.add_argument(
        "--minutes",
        action="append",
        default=[],
        metavar="LABEL=MINUTES",
        help="the pretraining time of a run whose checkpoint records only its last stage",
    )
    ap.add_argument(
        "--reuse", help="an earlier results JSON whose rows are kept for the same checkpoint path"
    )
    ap.add_argument("--split", default="test")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/pretrain_recipes")
    args = ap.parse_args()
    runs = []
    for item in args.run:
        label, sep, path = item.partition("=")
        if not sep or not label or not path:
            raise SystemExit(f"--run {item!r}: expected LABEL=CHECKPOINT")
        if not (Path(path) / "manifest.json").is_file():
            raise SystemExit(f"--run {item!r}: {path} is not a checkpoint (no manifest.json)")
        runs.append((label, path))
    minutes = {}
    for item in args.minutes:
        label, _, value = item.partition("=")
        try:
            minutes[label] = float(value)
        except ValueError:
            raise SystemExit(f"--minutes {item!r}: expected LABEL=MINUTES") from None
    earlier = {}
    if args.reuse:
        try:
            previous = json.loads(Path(args.reuse).read_text())
        except (OSError, ValueError) as err:
            raise SystemExit(f"--reuse {args.reuse}: cannot read it ({err})") from None
        if previous.get("split") == args.split:
            earlier = {r["checkpoint"]: r for r in previous.get("results", [])}
    torch.set_num_threads(args.threads)
    results = []
    for label, path in runs:
        row = earlier.get(path)
        results.append(row | {"label": label} if row else score(label, path, args.split))
        if label in minutes:
            # the checkpoint's own step and time are its last stage's: show the total time, not that step
            results[-1]["trained"] |= {"seconds": minutes[label] * 60, "step": None}
        print(json.dumps({k: results[-1][k] for k in ("label", "summary")}), flush=True)
    data = {"split": args.split, "results": results, "machine": machine()}
    lines = render(data)
    write_results(args.out, data, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
