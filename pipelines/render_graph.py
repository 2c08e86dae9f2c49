"""Draw the compiled pipeline's task graph (pipelines/htgrpo.yaml) as docs/pipeline.png.

Usage: python pipelines/render_graph.py [pipelines/htgrpo.yaml] [docs/pipeline.png]
"""

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402

KIND_COLOURS = {"rollout": "#f4b183", "score": "#ffd966", "train": "#9dc3e6", "evaluate": "#a9d18e"}


def _colour(name: str) -> str:
    for key, colour in KIND_COLOURS.items():
        if key in name:
            return colour
    return "#d9d9d9"


def render(pipeline_yaml: Path, out: Path) -> Path:
    spec = next(yaml.safe_load_all(pipeline_yaml.read_text()))
    tasks = spec["root"]["dag"]["tasks"]
    deps = {name: t.get("dependentTasks", []) for name, t in tasks.items()}
    depth: dict[str, int] = {}

    def level(name: str) -> int:
        if name not in depth:
            depth[name] = 1 + max((level(d) for d in deps[name]), default=-1)
        return depth[name]

    for name in tasks:
        level(name)

    def ancestors(name: str) -> set[str]:
        out: set[str] = set()
        for d in deps[name]:
            out |= {d} | ancestors(d)
        return out

    # transitive reduction: draw d -> name only when no other dependency of name already comes after d
    deps = {n: [d for d in ds if not any(d in ancestors(o) for o in ds if o != d)] for n, ds in deps.items()}
    label, name_colour = {}, {}
    for name, t in tasks.items():
        shown = t.get("taskInfo", {}).get("name", name)
        if "parameterIterator" in t:
            shown = f"{shown}\n(ParallelFor: rollout x shards)"
            name_colour[name] = KIND_COLOURS["rollout"]
        label[name] = shown
    rows: dict[int, list[str]] = {}
    for name, d in sorted(depth.items(), key=lambda kv: (kv[1], kv[0])):
        rows.setdefault(d, []).append(name)
    pos = {}
    for d, names in rows.items():
        for i, name in enumerate(names):
            pos[name] = (i - (len(names) - 1) / 2, -d)
    fig, ax = plt.subplots(figsize=(9, 0.75 * len(rows) + 1))
    for name, ds in deps.items():
        for d in ds:
            (x0, y0), (x1, y1) = pos[d], pos[name]
            ax.annotate(
                "", (x1, y1 + 0.22), (x0, y0 - 0.22), arrowprops={"arrowstyle": "->", "color": "#555"}
            )
    for name, (x, y) in pos.items():
        ax.text(x, y, label[name], ha="center", va="center", fontsize=8,
                bbox={"boxstyle": "round,pad=0.35", "fc": name_colour.get(name, _colour(name)), "ec": "#444"})  # fmt: skip
    ax.set_xlim(-2.2, 2.2)
    ax.set_ylim(-max(rows) - 0.7, 0.7)
    ax.axis("off")
    ax.set_title(f"{spec['pipelineInfo']['name']}: {pipeline_yaml}", fontsize=9)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


if __name__ == "__main__":
    args = sys.argv[1:]
    src = Path(args[0]) if args else Path("pipelines/htgrpo.yaml")
    dst = Path(args[1]) if len(args) > 1 else Path("docs/pipeline.png")
    print(render(src, dst))
