"""Which pretraining objective teaches the tiny backbone to bind colour words: short runs from scratch.

The shipped base ignores colour words (``binding_probe.py``: colour given shape at chance). Each variant here
trains a fresh backbone (configs/tiny.yaml, the cached training scenes of the base's tokenizer, batch 128) for
``--steps`` steps and probes it every ``--every`` steps on fresh scenes of the colour prompts (colors and color_attr)
of the validation split (new prompts) and of the train split: object cells masked, background visible, and the
probability of the true colour among the codes of the true shape (chance 1/9, less where pairs are held out).

Variants (the masked-diffusion loss with 1/t weighting unless said):

* ``plain``: the pretraining objective as it is.
* ``object-weight``: the same masks, the loss on object cells weighted 10x.
* ``colour-tasks``: the plain objective on colors and color_attr scenes only.
* ``fill-only``: every object cell masked and the rest visible (the probe's state), loss on object cells, weight 1.
* ``fill-half``: half of each batch as ``fill-only``, marked by ``<|mask|>`` in place of ``<bos>`` in the prompt so
  that it cannot teach the generation task that masked cells are objects; the other half plain. Probed in both
  modes: does binding learned in fill mode carry over to the generation prompt?

    python benchmarks/colour_binding.py --steps 300 --out benchmarks/results/colour_binding
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_results  # noqa: E402

VARIANTS = ("plain", "object-weight", "colour-tasks", "fill-only", "fill-half")
ROOT = Path(__file__).resolve().parents[1]


def _setup(checkpoint: str):
    import torch

    from htgrpo.checkpoint import load_checkpoint
    from htgrpo.world.dataset import build_dataset, render_rows, splits_for
    from htgrpo.world.detect import ShapeDetector
    from htgrpo.world.palette import CELL_PX

    base, cfg = load_checkpoint(checkpoint)
    tok = base.image_tokenizer
    splits = splits_for(cfg.world)
    # the code of every colour-shape pair, read from rendered colour prompts of every split
    rows = [r for n in ("train", "val", "test", "unseen") for r in splits.get(n) if r["tag"] == "colors"]
    images = render_rows(rows * 3, np.random.default_rng(5), cfg.world.grid, background=cfg.world.background)
    codes = tok.encode(images)
    code_pair: dict[int, tuple[str, str]] = {}
    for i, res in enumerate(ShapeDetector().detect_many(images)):
        for det in res.detections:
            cell = (int(det.box[1]) // CELL_PX) * cfg.world.grid + int(det.box[0]) // CELL_PX
            code_pair[int(codes[i, cell])] = (det.cls, (rows * 3)[i]["include"][0]["color"])
    is_object = torch.zeros(tok.codebook_size, dtype=torch.bool)
    is_object[list(code_pair)] = True
    dataset = build_dataset(cfg.world, tok, seed=cfg.pretrain.seed, progress=False)
    return cfg, tok, splits, code_pair, is_object, dataset


def run_variant(variant: str, checkpoint: str, steps: int, every: int, seed: int) -> dict:
    import torch
    import torch.nn.functional as F

    from htgrpo.backbones.base import MASK_CODE, PromptBatch
    from htgrpo.backbones.tiny import TinyBackbone
    from htgrpo.pretrain import PromptTable
    from htgrpo.rl.adamw import AdamW
    from htgrpo.world.dataset import render_rows
    from htgrpo.world.palette import COLOR_NAMES

    torch.set_num_threads(1)
    cfg, tok, splits, code_pair, is_object, ds = _setup(checkpoint)
    codes, prompt_index = ds.codes, ds.prompt_index
    if variant == "colour-tasks":
        keep = torch.tensor([ds.prompts[int(i)]["tag"] in ("colors", "color_attr") for i in prompt_index])
        codes, prompt_index = codes[keep], prompt_index[keep]
    pair_code = {v: k for k, v in code_pair.items()}
    probes = {}
    for split, n in (("val", 4), ("train", 1)):
        prows = [r for r in splits.get(split) if r["tag"] in ("colors", "color_attr")][:200] * n
        pimg = render_rows(prows, np.random.default_rng(7), cfg.world.grid, background=cfg.world.background)
        pc = tok.encode(pimg)
        probes[split] = (prows, pc, is_object[pc])

    torch.manual_seed(seed)
    model = TinyBackbone(cfg.backbone, tok, cfg.world.grid)
    bos, mark = model.text.special("<bos>"), model.text.special("<|mask|>")

    def fill_mode(prompt: PromptBatch, rows: torch.Tensor) -> PromptBatch:
        ids = prompt.input_ids.clone()
        sub = ids[rows]
        sub[sub == bos] = mark
        ids[rows] = sub
        return PromptBatch(ids, prompt.attention_mask)

    def probe(mode: str) -> dict[str, float]:
        model.eval()
        out: dict[str, float] = {}
        with torch.no_grad():
            for split, (prows, pc, pobj) in probes.items():
                prompt = model.encode_prompts([r["prompt"] for r in prows])
                if mode == "fill":
                    prompt = fill_mode(prompt, torch.ones(len(prows), dtype=torch.bool))
                state = torch.where(pobj, torch.full_like(pc, MASK_CODE), pc)
                probs = model.logits(prompt, state).softmax(-1)
                vals = []
                for i in range(len(prows)):
                    for cell in pobj[i].nonzero().flatten().tolist():
                        true = int(pc[i, cell])
                        shape = code_pair[true][0]
                        same = [pair_code[(shape, c)] for c in COLOR_NAMES if (shape, c) in pair_code]
                        vals.append(
                            float(probs[i, cell, true]) / max(float(probs[i, cell, same].sum()), 1e-9)
                        )
                out[split] = round(float(np.mean(vals)), 4)
        model.train()
        return out

    table = PromptTable(model, ds.prompts)
    p = cfg.pretrain
    decay = [q for name, q in model.named_parameters() if q.ndim >= 2 and "norm" not in name]
    rest = [q for name, q in model.named_parameters() if not (q.ndim >= 2 and "norm" not in name)]
    opt = AdamW(
        [{"params": decay, "weight_decay": p.weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=p.lr,
        betas=(0.9, 0.98),
    )
    gen = torch.Generator().manual_seed(seed)
    curve = []
    start = time.perf_counter()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = p.lr * min(1.0, (step + 1) / p.warmup_steps)
        idx = torch.randint(len(codes), (p.batch_size,), generator=gen)
        x0 = codes[idx]
        prompt = table.batch(prompt_index[idx], torch.rand(p.batch_size, generator=gen) < p.cond_dropout)
        b, n = x0.shape
        obj = is_object[x0]
        t = torch.rand(b, 1, generator=gen).clamp_min(1.0 / n)
        mask = torch.rand(b, n, generator=gen) < t
        weight = 1.0 / t.expand(b, n)
        fill = torch.zeros(b, dtype=torch.bool)
        if variant == "fill-only":
            fill = obj.any(1)
        elif variant == "fill-half":
            fill = obj.any(1) & (torch.rand(b, generator=gen) < 0.5)
        mask = torch.where(fill[:, None], obj, mask)
        weight = torch.where(fill[:, None], torch.ones_like(weight), weight)
        if variant == "object-weight":
            weight = weight * (1 + 9 * obj)
        none = ~mask.any(1)
        if none.any():
            mask[none, torch.randint(n, (int(none.sum()),), generator=gen)] = True
        if variant == "fill-half":
            prompt = fill_mode(prompt, fill)
        xt = torch.where(mask, torch.full_like(x0, MASK_CODE), x0)
        logits = model.logits(prompt, xt)
        ce = F.cross_entropy(logits.reshape(b * n, -1).float(), x0.reshape(-1), reduction="none").view(b, n)
        loss = (ce * mask * weight).sum() / (b * n)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip)
        opt.step()
        if (step + 1) % every == 0:
            point = {"step": step + 1, "minutes": round((time.perf_counter() - start) / 60, 2)}
            point["generation"] = probe("generation")
            if variant.startswith("fill"):
                point["fill"] = probe("fill")
            curve.append(point)
            print(variant, point, flush=True)
    return {"variant": variant, "curve": curve}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--checkpoint", default="checkpoints/base", help="its tokenizer and cached scenes are used"
    )
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--workers", type=int, default=2, help="variants trained side by side, one thread each")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/colour_binding")
    ap.add_argument(
        "--render", default=None, metavar="JSON", help="only rewrite the table from a results JSON"
    )
    args = ap.parse_args()
    variants = args.variants.split(",")
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"--variants: unknown {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    if args.render:
        data = json.loads(Path(args.render).read_text())
    else:
        with ProcessPoolExecutor(args.workers) as pool:
            futures = [
                pool.submit(run_variant, v, args.checkpoint, args.steps, args.every, args.seed)
                for v in variants
            ]
            results = [f.result() for f in futures]
        data = {"steps": args.steps, "seed": args.seed, "workers": args.workers, "results": results}
        data["machine"] = machine()
    lines = render(data)
    write_results(args.out, data, "\n".join(lines))
    print("\n".join(lines))


def render(data: dict) -> list[str]:
    def cell(point: dict, mode: str, split: str) -> str:
        value = point.get(mode, {}).get(split)
        return "–" if value is None else f"{value:.3f}"

    lines = [
        f"# Colour binding: pretraining objectives from scratch, {data['steps']} steps each",
        "",
        "Colour given shape at masked object cells (background visible) on fresh scenes of the colour prompts; "
        "`val` prompts are new, `train` prompts were trained on. Chance is about 0.11. Generation mode is the "
        "ordinary prompt; fill mode the prompt marked for the fill objective (fill-half only marks it).",
        "",
        "| variant | step | val (generation) | train (generation) | val (fill mode) | train (fill mode) |",
        "|---|---|---|---|---|---|",
    ]
    for r in data["results"]:
        for pt in r["curve"]:
            lines.append(
                f"| {r['variant']} | {pt['step']} | {cell(pt, 'generation', 'val')} | "
                f"{cell(pt, 'generation', 'train')} | {cell(pt, 'fill', 'val')} | {cell(pt, 'fill', 'train')} |"
            )
    lines += [
        "",
        f"Machine: {data['machine']}; one thread per variant, {data.get('workers', 2)} side by side.",
    ]
    return lines


if __name__ == "__main__":
    main()
