"""Which HT-GRPO partition rule puts the layout (object cells) into the structure set S, on one base checkpoint.

Rolls out G images for each of P training prompts (tasks evenly) with the RL rollout sampler, finds the object
cells of each decoded image (the shapes world's exact detector), and reports for every partition rule of
``htgrpo.rl.hierarchy``: the share of S that is object cells (against the base rate of object cells), the share of
object cells that land in S, and |S| per image. The trajectory estimator's structure part (the early sampler steps
it replays in the structure stage) is reported too.

    python benchmarks/partition_rules.py --init checkpoints/base --out benchmarks/results/partition_rules
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, write_results  # noqa: E402


def measure(init: str, config: str, prompts: int, group: int, rho: float, seed: int) -> dict[str, Any]:
    import torch
    import yaml

    from htgrpo.checkpoint import load_checkpoint
    from htgrpo.config import Config
    from htgrpo.rl.estimators.htgrpo import structure_steps
    from htgrpo.rl.hierarchy import EXACT_RULES, PARTITION_RULES, partition_order, partition_tokens
    from htgrpo.rl.structure_scores import group_disagreement, oracle_object_cells, prompt_pmi
    from htgrpo.rl.trainer import GRPOTrainer

    backbone, saved = load_checkpoint(init)
    data = saved.model_dump(mode="json")
    data["rl"] = {
        **(yaml.safe_load(Path(config).read_text()) or {}).get("rl", {}),
        "prompts_per_step": prompts,
        "group_size": group,
        "rho": rho,
        "seed": seed,
    }
    data["rl"].pop("task_weights", None)
    cfg = Config.model_validate(data)
    trainer = GRPOTrainer(cfg, backbone, progress=False)
    batch = trainer.rollout()
    res = batch.sample
    layout = backbone.layout
    objects = oracle_object_cells(batch.images, layout.grid_h, layout.grid_w) > 0
    groups = [i // group for i in range(len(batch.texts))]
    scores = {
        "oracle": objects.float(),
        "prompt_pmi": prompt_pmi(backbone, batch.texts, res.codes),
        "group_disagreement": group_disagreement(res.codes, groups),
    }
    rows = []
    for rule in PARTITION_RULES:
        order = partition_order(
            rule,
            commit_step=res.commit_step,
            entropy_commit=res.entropy_commit,
            entropy0=res.entropy0,
            structure_score=scores.get(rule),
        )
        exact = scores[rule] > 0 if rule in EXACT_RULES else None
        s = partition_tokens(order, rho, exact).structure
        rows.append(_row(rule, s, objects))
    split = structure_steps(res.commit_step, cfg.rl.rollout_sampler_config(cfg.sampler).steps, rho)
    rows.append(_row(f"trajectory structure steps 1..{split}", res.commit_step <= split, objects))
    base_rate = float(objects.float().mean())
    return {
        "rows": rows,
        "object_cell_base_rate": round(base_rate, 4),
        "images": len(batch.texts),
        "tokens_per_image": int(res.codes.shape[1]),
        "torch_threads": torch.get_num_threads(),
    }


def _row(rule: str, s, objects) -> dict[str, Any]:
    in_s = float((s & objects).sum())
    return {
        "rule": rule,
        "object_share_of_S": round(in_s / max(float(s.sum()), 1.0), 4),
        "objects_in_S": round(in_s / max(float(objects.sum()), 1.0), 4),
        "S_per_image": round(float(s.float().sum(1).mean()), 2),
    }


def markdown(data: dict[str, Any]) -> str:
    s = data["settings"]
    lines = [
        "# Partition rules: how much of the structure set S is layout",
        "",
        f"Base `{s['init']}`, {data['images']} rollout images ({s['prompts']} training prompts x G = {s['group']}, "
        f"tasks evenly), rho {s['rho']}, {data['tokens_per_image']} tokens per image. Object cells are the cells "
        f"holding object pixels in the decoded image; their base rate is **{data['object_cell_base_rate']:.3f}**. "
        "A rule finds the layout when the share of S that is object cells is well above the base rate.",
        "",
        "| rule | object share of S | share of object cells in S | size of S per image |",
        "|---|---|---|---|",
    ]
    for r in data["rows"]:
        lines.append(
            f"| {r['rule']} | {r['object_share_of_S']:.3f} | {r['objects_in_S']:.3f} | {r['S_per_image']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--init", default="checkpoints/base")
    ap.add_argument("--config", default="configs/tiny.yaml", help="its rl section sets the rollout sampler")
    ap.add_argument("--out", default="benchmarks/results/partition_rules")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--rho", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    data = measure(args.init, args.config, args.prompts, args.group, args.rho, args.seed)
    data["settings"] = {k: getattr(args, k) for k in ("init", "prompts", "group", "rho", "seed")}
    data["machine"] = machine()
    write_results(args.out, data, markdown(data))
    print(markdown(data))


if __name__ == "__main__":
    main()
