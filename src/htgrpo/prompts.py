"""Prompt sources by name: GenEval-style training prompts, their unseen-object split, and the shipped prompt sets.

Every source yields rows in GenEval's metadata format (``tag``, ``include``, ``exclude``, ``prompt``), written as
JSONL by ``htgrpo prompts --source NAME --out FILE`` and accepted wherever a prompt pool is named
(``rl.prompts``, hence the pipeline's ``prepare_data`` step). Names (``list_sources()``):

=============================  =========================================================================================
``train|val|test|unseen``      the shapes world's splits (``shapes:<split>`` too); need the run's ``world`` config
``geneval``                    the official 553 GenEval prompts (``geneval:test``)
``geneval-train``              GenEval-style training prompts from GenEval's own grammar (below); options n, mix, seed,
                               unseen
``geneval-unseen``             the same grammar over the held-out objects only (the unseen-object split, for evaluation)
``geneval-unseen-test``        Flow-GRPO's unseen-object GenEval test set (256 distinct prompts over its 20 held-out
                               classes)
``t2i-compbench[:CAT[:SPLIT]]``  T2I-CompBench: CAT one of color, shape, texture, spatial, 3d_spatial, non_spatial,
                               numeracy, complex (all 8 when left out); SPLIT val (default; the 300 prompts per
                               category published numbers use), train, val_seen or val_unseen (color/shape/texture)
``drawbench``                  the 200 DrawBench prompts Flow-GRPO reports its preference metrics on
``pickscore-sfw[:SPLIT]``      Flow-GRPO's SFW Pick-a-Pic prompts, SPLIT test (default, 1,024) or train (15,486)
``imagereward``                the ImageReward benchmark's 100 DiffusionDB prompts
``dpg``                        DPG-Bench's 1,065 dense prompts (rows keep their ``item_id``)
=============================  =========================================================================================

Options of the generated sources go after a ``?`` as in a URL query, so one string names the whole pool (e.g. in
``--set rl.prompts=...``): ``geneval-train?n=5000&mix=position=0.7,color_attr=0.3&seed=1&unseen=none``. The CLI's
``--n/--mix/--seed/--unseen-objects`` set the same options.

GenEval grammar (``design/benchmarks.md`` section 1.9, GenEval's ``prompts/create_prompts.py``): the 80 COCO
classes of ``object_names.txt``, its 10 colours, counts two to four, the relations left of / right of / above /
below, "a"/"an" by the first letter and plurals by "+es" after a final "s", else "+s" (hence "skises"); no colour
is ever given to "person". Each task's prompt space is enumerated exactly (e.g. two_object: every ordered pair of
distinct classes), so the generator draws *without replacement* inside a task: prompts repeat only when a task's
share of ``n`` exceeds its space (single_object has 80 prompts, counting 240). Test prompts removed from
``geneval-train``: the official 553 and Flow-GRPO's 256 unseen-object test prompts (compared by prompt text, case
and spacing folded). GenEval's test set holds all 80 single_object prompts, so none is left for training: a mix
giving single_object a positive weight is an error (as in Flow-GRPO, whose weights leave it out).

Task mix: ``mix`` weighs the six tasks (a missing task gets weight 0); the count per task is ``n * w / sum(w)``
rounded by largest remainder, so proportions are exact up to one prompt. Default: Flow-GRPO's resampling weights
(two_object 0.1, counting 0.5, colors 0.1, position 0.7, color_attr 0.3, single_object 0), normalised.

Unseen objects (Flow-GRPO style): ``unseen`` names held-out classes that never appear in ``geneval-train``; the
``geneval-unseen`` split is built from those classes only (every object of a prompt is held out, as in
Flow-GRPO's unseen test). Values: ``flow-grpo`` (default, Flow-GRPO's 20 classes), ``none``, a comma list of
class names, or ``random:K[:SEED]`` (K classes drawn with SEED, default 0).

Seeding: ``seed`` fixes every draw (Python's ``random.Random``), so the same arguments give the same rows. Note for
RL: the trainer draws a step's prompts task-first by ``world.task_weights``, so in training the pool's mix sets
which prompts exist per task, not how often each task is drawn.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from htgrpo.data import BENCHMARK_DATA
from htgrpo.errors import ConfigError, RLError
from htgrpo.eval.relations import RELATIONS
from htgrpo.world import grammar
from htgrpo.world.grammar import NUMBERS, TASKS

if TYPE_CHECKING:
    from htgrpo.config import Config

Metadata = dict[str, Any]

GENEVAL_DIR = BENCHMARK_DATA / "geneval"
GENEVAL_TEST = GENEVAL_DIR / "evaluation_metadata.jsonl"
GENEVAL_OBJECTS = GENEVAL_DIR / "object_names.txt"
FLOW_GRPO_UNSEEN_TEST = BENCHMARK_DATA / "flow_grpo" / "geneval_unseen_objects" / "test_metadata.jsonl"

GENEVAL_COLORS: tuple[str, ...] = (
    "red",
    "orange",
    "yellow",
    "green",
    "blue",
    "purple",
    "pink",
    "brown",
    "black",
    "white",
)
UNCOLORED = "person"
"""GenEval never gives "person" a colour (colors and color_attr prompts)."""

FLOW_GRPO_MIX: dict[str, float] = {
    "single_object": 0.0,
    "two_object": 0.1,
    "counting": 0.5,
    "colors": 0.1,
    "position": 0.7,
    "color_attr": 0.3,
}
"""Flow-GRPO's per-task resampling weights of its GenEval train set (design section 1.9)."""

FLOW_GRPO_UNSEEN: tuple[str, ...] = (
    "apple",
    "baseball bat",
    "bed",
    "book",
    "bowl",
    "car",
    "clock",
    "cup",
    "dog",
    "elephant",
    "fire hydrant",
    "frisbee",
    "microwave",
    "skateboard",
    "skis",
    "toilet",
    "toothbrush",
    "traffic light",
    "umbrella",
    "wine glass",
)
"""The 20 COCO classes of Flow-GRPO's unseen-object split (shared/benchmarks/flow_grpo/PROVENANCE.md)."""

DEFAULT_N = 50_000
"""Rows of ``geneval-train`` / ``geneval-unseen`` when ``n`` is not given (Flow-GRPO's train set size)."""

T2I_CATEGORIES = ("color", "shape", "texture", "spatial", "3d_spatial", "non_spatial", "numeracy", "complex")
T2I_SPLITS = ("val", "train", "val_seen", "val_unseen")
SHAPES_SPLITS = ("train", "val", "test", "unseen")
GENERATED = ("geneval-train", "geneval-unseen")
OPTIONS = ("n", "mix", "seed", "unseen")


# --- GenEval data ----------------------------------------------------------------------------------------------


def geneval_objects() -> list[str]:
    """The 80 COCO classes in GenEval's detector order."""
    return [x.strip() for x in GENEVAL_OBJECTS.read_text().splitlines() if x.strip()]


def _read_metadata(path: Path) -> list[Metadata]:
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{n}: not JSON ({exc.msg})") from None
    return rows


def _fold(text: str) -> str:
    return " ".join(text.lower().split())


def _normal(row: Metadata) -> Metadata:
    """Fields in GenEval's order, ``exclude`` always present (the official file has it on counting rows only)."""
    rest = {k: v for k, v in row.items() if k not in ("tag", "include", "exclude", "prompt")}
    return {
        "tag": row["tag"],
        "include": row["include"],
        "exclude": row.get("exclude", []),
        "prompt": row["prompt"],
        **rest,
    }


def geneval_test_rows() -> list[Metadata]:
    """The official 553 GenEval prompts."""
    return [_normal(r) for r in _read_metadata(GENEVAL_TEST)]


def flow_grpo_unseen_test_rows() -> list[Metadata]:
    """Flow-GRPO's unseen-object test prompts, each once (its file repeats every prompt 4 times)."""
    seen: set[str] = set()
    out = []
    for row in _read_metadata(FLOW_GRPO_UNSEEN_TEST):
        if row["prompt"] not in seen:
            seen.add(row["prompt"])
            out.append(_normal(row))
    return out


def test_prompt_texts() -> set[str]:
    """Folded prompt texts of every GenEval test prompt a training set must not contain."""
    return {_fold(r["prompt"]) for r in geneval_test_rows() + flow_grpo_unseen_test_rows()}


# --- options ---------------------------------------------------------------------------------------------------


def parse_mix(mix: str | Mapping[str, float] | None) -> dict[str, float]:
    """``"position=0.7,color_attr=0.3"`` (or a mapping) -> weights of all six tasks; None -> Flow-GRPO's."""
    if mix is None or (isinstance(mix, str) and mix.strip() in ("", "flow-grpo", "flow_grpo")):
        return dict(FLOW_GRPO_MIX)
    if isinstance(mix, str) and mix.strip() == "uniform":
        return dict.fromkeys(TASKS, 1.0)
    if isinstance(mix, str):
        items = []
        for part in mix.split(","):
            key, sep, value = part.partition("=")
            if not sep:
                raise ConfigError(f"mix: {part!r} is not TASK=WEIGHT (e.g. position=0.7,color_attr=0.3)")
            items.append((key.strip(), value.strip()))
    else:
        items = list(mix.items())
    out = dict.fromkeys(TASKS, 0.0)
    for key, value in items:
        if key not in TASKS:
            raise ConfigError(f"mix: unknown task {key!r}; expected one of {', '.join(TASKS)}")
        try:
            w = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"mix: weight of {key} must be a number, got {value!r}") from None
        if not (w >= 0 and w < float("inf")):
            raise ConfigError(f"mix: weight of {key} must be finite and >= 0, got {value!r}")
        out[key] = w
    if sum(out.values()) <= 0:
        raise ConfigError("mix: at least one task needs a positive weight")
    return out


def parse_unseen(unseen: str | Sequence[str] | None, objects: Sequence[str] | None = None) -> tuple[str, ...]:
    """Held-out classes: ``flow-grpo`` (default), ``none``, ``a,b,c`` or ``random:K[:SEED]`` (see module doc)."""
    objects = list(objects) if objects is not None else geneval_objects()
    if unseen is None:
        return FLOW_GRPO_UNSEEN
    if isinstance(unseen, str):
        text = unseen.strip()
        if text in ("flow-grpo", "flow_grpo"):
            return FLOW_GRPO_UNSEEN
        if text in ("none", ""):
            return ()
        if text.startswith("random:"):
            parts = text.split(":")
            try:
                k = int(parts[1])
                seed = int(parts[2]) if len(parts) > 2 else 0
            except (IndexError, ValueError):
                raise ConfigError(
                    f"unseen: {unseen!r} is not random:K[:SEED] with integers K and SEED"
                ) from None
            if not 0 <= k < len(objects) - 1 or len(parts) > 3:
                raise ConfigError(
                    f"unseen: {unseen!r}: K must lie in 0..{len(objects) - 2} (two classes must stay seen)"
                )
            return tuple(sorted(random.Random(seed).sample(objects, k), key=objects.index))
        names = [x.strip() for x in text.split(",") if x.strip()]
    else:
        names = list(unseen)
    unknown = [x for x in names if x not in objects]
    if unknown:
        raise ConfigError(
            f"unseen: {', '.join(map(repr, unknown))} not among GenEval's 80 COCO classes (object_names.txt)"
        )
    return tuple(dict.fromkeys(names))


# --- the grammar's prompt spaces -------------------------------------------------------------------------------


def _pair(i: int, items: Sequence[str]) -> tuple[str, str]:
    """The i-th ordered pair of distinct items (row-major over a, then b != a)."""
    m = len(items) - 1
    a, b = divmod(i, m)
    return items[a], items[b + (b >= a)]


@dataclass(frozen=True)
class TaskSpace:
    """All prompts of one GenEval task over a class list, addressable by index (nothing is materialised)."""

    task: str
    size: int
    decode: Callable[[int], Metadata]


def task_space(task: str, objects: Sequence[str]) -> TaskSpace:
    objs = list(objects)
    colorable = [o for o in objs if o != UNCOLORED]
    cols = GENEVAL_COLORS
    nums = sorted(NUMBERS)
    n_obj, n_col = len(objs), len(colorable)
    if task == "single_object":
        return TaskSpace(task, n_obj, lambda i: grammar.single_object(objs[i]))
    if task == "two_object":
        return TaskSpace(task, n_obj * (n_obj - 1), lambda i: grammar.two_object(*_pair(i, objs)))
    if task == "counting":
        return TaskSpace(
            task, n_obj * len(nums), lambda i: grammar.counting(objs[i // len(nums)], nums[i % len(nums)])
        )
    if task == "colors":
        return TaskSpace(
            task, n_col * len(cols), lambda i: grammar.colors(colorable[i // len(cols)], cols[i % len(cols)])
        )
    if task == "position":
        r = len(RELATIONS)

        def position(i: int) -> Metadata:
            a, b = _pair(i // r, objs)
            return grammar.position(a, RELATIONS[i % r], b)

        return TaskSpace(task, n_obj * (n_obj - 1) * r, position)
    if task == "color_attr":
        cc = len(cols) * (len(cols) - 1)

        def color_attr(i: int) -> Metadata:
            a, b = _pair(i // cc, colorable)
            c1, c2 = _pair(i % cc, cols)
            return grammar.color_attr(a, c1, b, c2)

        return TaskSpace(task, max(n_col * (n_col - 1), 0) * cc, color_attr)
    raise ConfigError(f"unknown GenEval task {task!r}; expected one of {', '.join(TASKS)}")


def task_counts(n: int, mix: Mapping[str, float]) -> dict[str, int]:
    """Rows per task: ``n * w / sum(w)`` rounded by largest remainder (ties in task order)."""
    total = sum(mix.values())
    exact = {t: n * mix.get(t, 0.0) / total for t in TASKS}
    counts = {t: int(v) for t, v in exact.items()}
    rest = n - sum(counts.values())
    for t in sorted(TASKS, key=lambda t: (-(exact[t] - counts[t]), TASKS.index(t)))[:rest]:
        counts[t] += 1
    return counts


def _draw(space: TaskSpace, k: int, banned: set[str], rng: random.Random) -> list[Metadata]:
    """k prompts of a task, without replacement while the space lasts, none of whose text is banned."""
    if k == 0:
        return []
    margin = min(space.size, k + len(banned))
    if margin < space.size:  # a large space: a sample with room for the banned prompts is enough
        rows = [space.decode(i) for i in rng.sample(range(space.size), margin)]
        rows = [r for r in rows if _fold(r["prompt"]) not in banned]
        if len(rows) >= k:
            return rows[:k]
    allowed = [r for r in map(space.decode, range(space.size)) if _fold(r["prompt"]) not in banned]
    if not allowed:
        raise ConfigError(
            f"mix: every {space.task} prompt over these classes is a GenEval test prompt, and test prompts are "
            f"removed from training prompts (GenEval's {space.task} prompts cover all its classes); give "
            f"{space.task} weight 0"
        )
    out: list[Metadata] = []
    while len(out) + len(allowed) <= k:  # whole passes, each in a fresh order
        out.extend(rng.sample(allowed, len(allowed)))
    out.extend(rng.sample(allowed, k - len(out)))
    return out


def generate_geneval(
    n: int,
    objects: Sequence[str],
    mix: str | Mapping[str, float] | None = None,
    seed: int = 0,
    exclude: set[str] | None = None,
) -> list[Metadata]:
    """``n`` GenEval-grammar prompts over ``objects`` with the task mix; folded prompt texts in ``exclude`` are
    never produced. Rows of all tasks are shuffled together."""
    if n < 1:
        raise ConfigError(f"n: the number of prompts must be at least 1, got {n}")
    weights = parse_mix(mix)
    counts = task_counts(n, weights)
    banned = exclude or set()
    rng = random.Random(seed)
    rows: list[Metadata] = []
    for task in TASKS:
        space = task_space(task, objects)
        if counts[task] and space.size == 0:
            raise ConfigError(
                f"mix: task {task} has weight {weights[task]} but no prompt exists over the "
                f"{len(objects)} classes given ({', '.join(objects)})"
            )
        rows.extend(_draw(space, counts[task], banned, rng))
    rng.shuffle(rows)
    return rows


def geneval_train_prompts(
    n: int = DEFAULT_N,
    mix: str | Mapping[str, float] | None = None,
    seed: int = 0,
    unseen: str | Sequence[str] | None = None,
) -> list[Metadata]:
    """GenEval-style training prompts: GenEval's grammar over the 80 classes minus the held-out ones, every
    GenEval test prompt removed (module docstring)."""
    objects = geneval_objects()
    held = set(parse_unseen(unseen, objects))
    return generate_geneval(n, [o for o in objects if o not in held], mix, seed, test_prompt_texts())


def geneval_unseen_prompts(
    n: int = DEFAULT_N,
    mix: str | Mapping[str, float] | None = None,
    seed: int = 0,
    unseen: str | Sequence[str] | None = None,
) -> list[Metadata]:
    """The unseen-object split: the grammar over the held-out classes only. It is an evaluation split, so GenEval's
    test prompts are not removed from it (its single_object prompts are GenEval's own, as in Flow-GRPO's)."""
    held = parse_unseen(unseen)
    if not held:
        raise ConfigError("geneval-unseen: no held-out classes (unseen=none); name some with unseen=...")
    return generate_geneval(n, held, mix, seed)


# --- sources by name -------------------------------------------------------------------------------------------


def _text_rows(path: Path, tag: str) -> list[Metadata]:
    lines = [x.strip() for x in path.read_text(encoding="utf-8").splitlines()]
    return [{"tag": tag, "include": [], "exclude": [], "prompt": x} for x in lines if x]


def _t2i(category: str | None, split: str | None) -> list[Metadata]:
    split = split or "val"
    if split not in T2I_SPLITS:
        raise ConfigError(f"t2i-compbench: unknown split {split!r}; expected one of {', '.join(T2I_SPLITS)}")
    cats = [category] if category else list(T2I_CATEGORIES)
    rows = []
    for cat in cats:
        if cat not in T2I_CATEGORIES:
            raise ConfigError(
                f"t2i-compbench: unknown category {cat!r}; expected one of {', '.join(T2I_CATEGORIES)}"
            )
        path = BENCHMARK_DATA / "t2i_compbench" / f"{cat}_{split}.txt"
        if not path.is_file():
            raise ConfigError(
                f"t2i-compbench: category {cat} has no {split} split (only color/shape/texture do)"
            )
        rows.extend(_text_rows(path, f"t2i-compbench/{cat}"))
    return rows


def _dpg() -> list[Metadata]:
    rows = []
    for line in (BENCHMARK_DATA / "dpg" / "prompts.jsonl").read_text(encoding="utf-8").splitlines():
        if line.strip():
            r = json.loads(line)
            rows.append(
                {"tag": "dpg", "include": [], "exclude": [], "prompt": r["prompt"], "item_id": r["item_id"]}
            )
    return rows


def _imagereward() -> list[Metadata]:
    data = json.loads((BENCHMARK_DATA / "imagereward" / "benchmark-prompts.json").read_text(encoding="utf-8"))
    return [
        {"tag": "imagereward", "include": [], "exclude": [], "prompt": r["prompt"], "id": r["id"]}
        for r in data
    ]


def list_sources() -> list[str]:
    """Every source name, with its variants spelled out."""
    t2i = ["t2i-compbench"] + [f"t2i-compbench:{c}" for c in T2I_CATEGORIES]
    return (
        [*SHAPES_SPLITS, "geneval", *GENERATED, "geneval-unseen-test"]
        + t2i
        + ["drawbench", "pickscore-sfw", "pickscore-sfw:train", "imagereward", "dpg"]
    )


_BASES = (
    "shapes",
    "geneval",
    "geneval-train",
    "geneval-unseen",
    "geneval-unseen-test",
    "t2i-compbench",
    "drawbench",
    "pickscore-sfw",
    "imagereward",
    "dpg",
)


@dataclass(frozen=True)
class SourceSpec:
    """A parsed source string: base name, ``:``-separated parts and ``?`` options."""

    base: str
    parts: tuple[str, ...]
    options: dict[str, str]


def parse_source(source: str) -> SourceSpec:
    text = source.strip()
    head, _, query = text.partition("?")
    base, *parts = head.split(":")
    if base in SHAPES_SPLITS and not parts:
        base, parts = "shapes", [base]
    if base not in _BASES:
        raise ConfigError(f"unknown prompt source {source!r}; known sources: {', '.join(list_sources())}")
    try:
        options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)))
    except ValueError:
        raise ConfigError(
            f"prompt source {source!r}: options after '?' must be KEY=VALUE joined by '&'"
        ) from None
    bad = [k for k in options if k not in OPTIONS]
    if bad:
        raise ConfigError(
            f"prompt source {source!r}: unknown option(s) {', '.join(bad)}; expected {', '.join(OPTIONS)}"
        )
    if options and base not in GENERATED:
        raise ConfigError(
            f"prompt source {source!r}: options ({', '.join(options)}) apply only to {' and '.join(GENERATED)}"
        )
    return SourceSpec(base, tuple(parts), options)


def is_named_source(source: str) -> bool:
    """Whether ``source`` names a source (rather than a file); a malformed name still counts (and fails later)."""
    head = source.strip().partition("?")[0]
    return head.split(":")[0] in _BASES or head in SHAPES_SPLITS


def load_source(
    source: str,
    *,
    n: int | None = None,
    mix: str | Mapping[str, float] | None = None,
    seed: int | None = None,
    unseen: str | Sequence[str] | None = None,
    world=None,
) -> list[Metadata]:
    """The rows of a named source (module docstring). Keyword options override the ``?`` options of the name;
    ``world`` (a WorldConfig) is needed for the shapes splits."""
    spec = parse_source(source)
    given = {"n": n, "mix": mix, "seed": seed, "unseen": unseen}
    if spec.base not in GENERATED:
        extra = [k for k, v in given.items() if v is not None]
        if extra:
            raise ConfigError(
                f"prompt source {source!r}: {', '.join(extra)} apply only to {' and '.join(GENERATED)}"
            )
    parts = spec.parts

    def no_parts(allowed: int = 0) -> None:
        if len(parts) > allowed:
            raise ConfigError(f"prompt source {source!r}: unexpected ':{':'.join(parts[allowed:])}'")

    if spec.base == "shapes":
        no_parts(1)
        split = parts[0] if parts else "train"
        if split not in SHAPES_SPLITS:
            raise ConfigError(f"shapes: unknown split {split!r}; expected one of {', '.join(SHAPES_SPLITS)}")
        if world is None:
            from htgrpo.config import WorldConfig

            world = WorldConfig()
        return grammar.splits_for(world).get(split)
    if spec.base == "geneval":
        no_parts(1)
        if parts and parts[0] != "test":
            raise ConfigError(
                f"geneval: only the test split ships ({source!r}); training prompts: geneval-train"
            )
        return geneval_test_rows()
    if spec.base in GENERATED:
        no_parts()
        opts = spec.options
        n_value = n if n is not None else opts.get("n")
        try:
            n_int = int(n_value) if n_value is not None else DEFAULT_N
            seed_int = int(seed if seed is not None else opts.get("seed", 0))
        except ValueError:
            raise ConfigError(f"prompt source {source!r}: n and seed must be integers") from None
        fn = geneval_train_prompts if spec.base == "geneval-train" else geneval_unseen_prompts
        return fn(
            n_int,
            mix if mix is not None else opts.get("mix"),
            seed_int,
            unseen if unseen is not None else opts.get("unseen"),
        )
    if spec.base == "geneval-unseen-test":
        no_parts()
        return flow_grpo_unseen_test_rows()
    if spec.base == "t2i-compbench":
        no_parts(2)
        return _t2i(parts[0] if parts else None, parts[1] if len(parts) > 1 else None)
    if spec.base == "drawbench":
        no_parts()
        return _text_rows(BENCHMARK_DATA / "flow_grpo" / "drawbench" / "test_unique.txt", "drawbench")
    if spec.base == "pickscore-sfw":
        no_parts(1)
        split = parts[0] if parts else "test"
        if split not in ("train", "test"):
            raise ConfigError(f"pickscore-sfw: unknown split {split!r}; expected train or test")
        return _text_rows(BENCHMARK_DATA / "flow_grpo" / "pickscore_sfw" / f"{split}.txt", "pickscore-sfw")
    if spec.base == "imagereward":
        no_parts()
        return _imagereward()
    no_parts()
    return _dpg()


def tag_counts(rows: Sequence[Metadata]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        out[r["tag"]] = out.get(r["tag"], 0) + 1
    return out


def write_jsonl(rows: Sequence[Metadata], path: str | Path) -> Path:
    """One JSON object per line (GenEval's metadata format)."""
    return grammar.write_jsonl(rows, path)


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def source_slug(source: str) -> str:
    """A file-name-safe form of a source string (for logs and dataset names)."""
    return _SAFE.sub("_", source).strip("_") or "prompts"


def load_prompt_pool(cfg: Config) -> list[Metadata]:
    """``rl.prompts``: a split of the shapes world, a named prompt source (``htgrpo.prompts``, e.g.
    ``geneval-train?n=5000``), or a GenEval-format JSONL file."""
    source = cfg.rl.prompts
    if source in ("train", "val", "test", "unseen"):
        rows = grammar.splits_for(cfg.world).get(source)
    elif is_named_source(source) and not Path(source).is_file():
        try:
            rows = load_source(source, world=cfg.world)
        except ConfigError as exc:
            raise ConfigError(f"rl.prompts: {exc}") from None
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(
                f"rl.prompts: {source!r} is neither a split (train, val, test, unseen), a prompt source "
                f"({', '.join(list_sources())}) nor a file"
            )
        try:
            rows = grammar.read_jsonl(path)
        except ConfigError as exc:
            raise ConfigError(f"rl.prompts: {exc}") from None
    return check_prompt_pool(rows, source)


def check_prompt_pool(rows: Sequence[Metadata], source: str) -> list[Metadata]:
    rows = list(rows)
    if not rows:
        raise RLError(f"the prompt set {source!r} is empty: RL needs at least one prompt")
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or "prompt" not in r or r.get("tag") not in TASKS:
            raise RLError(
                f"prompt set {source!r}, row {i}: needs GenEval metadata with a 'prompt' and a 'tag' in "
                f"{', '.join(TASKS)} (got {r!r:.120})"
            )
    return rows


def check_shapes_pool(rows: Sequence[Metadata], source: str) -> None:
    """Every ``include`` / ``exclude`` object of every row names one of the shapes world's shapes and, where it has
    a colour, one of its palette's colours; otherwise an ``RLError`` names the row, the field and the value.

    Only for the shapes world (``backbone.kind: tiny``): its detector knows nothing else, so such a row would
    train silently with reward 0. Real backbones take COCO classes, which this check would refuse.
    """
    from htgrpo.world.palette import COLOR_NAMES, SHAPES

    for i, row in enumerate(rows):
        where = f"prompt set {source!r}, row {i} ({str(row.get('prompt'))!r:.80})"
        for field in ("include", "exclude"):
            items = row.get(field) or []
            if not isinstance(items, list):
                raise RLError(f"{where}: {field} must be a list of objects, got {items!r:.60}")
            for item in items:
                if not isinstance(item, dict):
                    raise RLError(f"{where}: {field} entries must be objects, got {item!r:.60}")
                cls = item.get("class")
                if cls not in SHAPES:
                    raise RLError(
                        f"{where}: {field} class {cls!r} is not a shape of the shapes world "
                        f"({', '.join(SHAPES)}), so its detector never finds one (backbone.kind is tiny)"
                    )
                color = item.get("color")
                if color is not None and color not in COLOR_NAMES:
                    raise RLError(
                        f"{where}: {field} colour {color!r} of the {cls} is not in the shapes world's palette "
                        f"({', '.join(COLOR_NAMES)}), so its detector never finds one (backbone.kind is tiny)"
                    )


__all__ = [
    "check_prompt_pool",
    "check_shapes_pool",
    "load_prompt_pool",
    "DEFAULT_N",
    "FLOW_GRPO_MIX",
    "FLOW_GRPO_UNSEEN",
    "generate_geneval",
    "geneval_objects",
    "geneval_test_rows",
    "geneval_train_prompts",
    "geneval_unseen_prompts",
    "is_named_source",
    "list_sources",
    "load_source",
    "parse_mix",
    "parse_source",
    "parse_unseen",
    "tag_counts",
    "task_counts",
    "task_space",
    "test_prompt_texts",
    "write_jsonl",
]
