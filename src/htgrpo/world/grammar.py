"""GenEval's prompt grammar over the shapes world, GenEval-format metadata, and the data splits.

Metadata rows have GenEval's fields: ``tag``, ``include``, ``exclude`` and ``prompt``. The grammar follows
``prompts/create_prompts.py``: "a"/"an" by the first letter, plurals by appending "es" after a final "s" and
"s" otherwise, and the six task templates.

Splits. Every task's whole prompt space is enumerated. Colour-shape pairs in ``unseen_pairs`` never occur in the
train, validation or test prompts (nor in the colours the renderer picks for training scenes); the ``unseen``
split holds the colour prompts built from them, reported separately. The other prompts are shuffled and split
per task into test, validation and train, so test prompts are new while their colour-shape pairs are seen in
training. Two tasks have prompt spaces too small to hold any prompt out (single_object has one prompt per shape,
counting one per shape and number): their test prompts are also training prompts, and that is stated wherever
results are written.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from htgrpo.errors import ConfigError
from htgrpo.eval.relations import RELATIONS
from htgrpo.world.palette import COLOR_NAMES, SHAPES

if TYPE_CHECKING:
    from htgrpo.config import WorldConfig

TASKS: tuple[str, ...] = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
NUMBERS = {2: "two", 3: "three", 4: "four"}
SHARED_PROMPT_TASKS = ("single_object", "counting")
"""Tasks whose test prompts are necessarily also training prompts (their prompt space is tiny)."""

Metadata = dict[str, Any]


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def plural(word: str) -> str:
    return word + ("es" if word.endswith("s") else "s")


def single_object(shape: str) -> Metadata:
    return {
        "tag": "single_object",
        "include": [{"class": shape, "count": 1}],
        "exclude": [],
        "prompt": f"a photo of {article(shape)} {shape}",
    }


def two_object(a: str, b: str) -> Metadata:
    return {
        "tag": "two_object",
        "include": [{"class": a, "count": 1}, {"class": b, "count": 1}],
        "exclude": [],
        "prompt": f"a photo of {article(a)} {a} and {article(b)} {b}",
    }


def counting(shape: str, n: int) -> Metadata:
    return {
        "tag": "counting",
        "include": [{"class": shape, "count": n}],
        "exclude": [{"class": shape, "count": n + 1}],
        "prompt": f"a photo of {NUMBERS[n]} {plural(shape)}",
    }


def colors(shape: str, color: str) -> Metadata:
    return {
        "tag": "colors",
        "include": [{"class": shape, "count": 1, "color": color}],
        "exclude": [],
        "prompt": f"a photo of {article(color)} {color} {shape}",
    }


def position(a: str, rel: str, b: str) -> Metadata:
    """'a photo of a A rel a B': include[0] is B, include[1] is A placed `rel` group 0 (GenEval's layout)."""
    return {
        "tag": "position",
        "include": [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [rel, 0]}],
        "exclude": [],
        "prompt": f"a photo of {article(a)} {a} {rel} {article(b)} {b}",
    }


def color_attr(a: str, c1: str, b: str, c2: str) -> Metadata:
    return {
        "tag": "color_attr",
        "include": [{"class": a, "count": 1, "color": c1}, {"class": b, "count": 1, "color": c2}],
        "exclude": [],
        "prompt": f"a photo of {article(c1)} {c1} {a} and {article(c2)} {c2} {b}",
    }


def prompt_space(
    task: str, shapes: Sequence[str] = SHAPES, colours: Sequence[str] = COLOR_NAMES
) -> list[Metadata]:
    """Every prompt of one task, in a fixed order."""
    if task == "single_object":
        return [single_object(s) for s in shapes]
    if task == "two_object":
        return [two_object(a, b) for a, b in itertools.permutations(shapes, 2)]
    if task == "counting":
        return [counting(s, n) for s in shapes for n in NUMBERS]
    if task == "colors":
        return [colors(s, c) for s in shapes for c in colours]
    if task == "position":
        return [position(a, r, b) for a, b in itertools.permutations(shapes, 2) for r in RELATIONS]
    if task == "color_attr":
        return [
            color_attr(a, c1, b, c2)
            for a, b in itertools.permutations(shapes, 2)
            for c1, c2 in itertools.permutations(colours, 2)
        ]
    raise ValueError(f"unknown GenEval task {task!r}; expected one of {', '.join(TASKS)}")


def colour_pairs(meta: Metadata) -> set[tuple[str, str]]:
    """The (colour, shape) pairs a prompt names."""
    return {(inc["color"], inc["class"]) for inc in meta["include"] if "color" in inc}


def choose_unseen_pairs(
    n: int, seed: int, shapes: Sequence[str] = SHAPES, colours: Sequence[str] = COLOR_NAMES
) -> list[tuple[str, str]]:
    """Hold out `n` colour-shape pairs, spread so that no shape and no colour is held out twice while possible."""
    rng = random.Random(seed)
    shape_order = list(shapes)
    colour_order = list(colours)
    rng.shuffle(shape_order)
    rng.shuffle(colour_order)
    return [(colour_order[i % len(colour_order)], shape_order[i % len(shape_order)]) for i in range(n)]


@dataclass(frozen=True)
class Splits:
    """Prompt metadata per split, each a list of GenEval rows."""

    train: list[Metadata]
    val: list[Metadata]
    test: list[Metadata]
    unseen: list[Metadata]
    unseen_pairs: list[tuple[str, str]]

    def get(self, name: str) -> list[Metadata]:
        if name not in ("train", "val", "test", "unseen"):
            raise ValueError(f"unknown split {name!r}; expected train, val, test or unseen")
        return getattr(self, name)


def make_splits(
    *,
    seed: int,
    test_per_task: dict[str, int],
    val_per_task: dict[str, int],
    unseen_pairs: int,
    unseen_color_attr: int,
    shapes: Sequence[str] = SHAPES,
    colours: Sequence[str] = COLOR_NAMES,
) -> Splits:
    """Deterministic train/val/test/unseen splits (see the module docstring)."""
    held = choose_unseen_pairs(unseen_pairs, seed, shapes, colours)
    held_set = set(held)
    rng = random.Random(seed + 1)
    train: list[Metadata] = []
    val: list[Metadata] = []
    test: list[Metadata] = []
    unseen: list[Metadata] = []
    for task in TASKS:
        space = prompt_space(task, shapes, colours)
        seen = [m for m in space if not (colour_pairs(m) & held_set)]
        novel = [m for m in space if colour_pairs(m) & held_set]
        if task == "colors":
            unseen.extend(novel)
        elif task == "color_attr" and novel:
            unseen.extend(rng.sample(novel, min(unseen_color_attr, len(novel))))
        rng.shuffle(seen)
        n_test = test_per_task.get(task, 0)
        n_val = val_per_task.get(task, 0)
        if task in SHARED_PROMPT_TASKS:
            # `seen` is shuffled, so a partial test set still mixes shapes and numbers
            test.extend(seen[:n_test])
            val.extend(seen[-n_val:] if n_val else [])
            train.extend(seen)
            continue
        if n_test + n_val >= len(seen):
            raise ValueError(
                f"task {task}: {n_test} test + {n_val} validation prompts leave none of its {len(seen)} for training"
            )
        test.extend(seen[:n_test])
        val.extend(seen[n_test : n_test + n_val])
        train.extend(seen[n_test + n_val :])
    return Splits(train=train, val=val, test=test, unseen=unseen, unseen_pairs=held)


def by_task(rows: Iterable[Metadata]) -> dict[str, list[Metadata]]:
    out: dict[str, list[Metadata]] = {t: [] for t in TASKS}
    for row in rows:
        out[row["tag"]].append(row)
    return out


def write_jsonl(rows: Iterable[Metadata], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    return path


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    return "null" if value is None else "number"


def read_jsonl(path: str | Path) -> list[Metadata]:
    """Read GenEval metadata rows; a line that is not JSON, or not a JSON object, is a ``ConfigError`` naming the
    file and the line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); a prompt file is JSONL") from None
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise ConfigError(
                f"{path}:{lineno}: a GenEval row must be a JSON object, got a JSON {_json_kind(row)} "
                f"({line.strip():.60})"
            )
        missing = [k for k in ("tag", "include", "prompt") if k not in row]
        if missing:
            raise ConfigError(f"{path}:{lineno}: GenEval row lacks {', '.join(missing)}")
        row.setdefault("exclude", [])
        rows.append(row)
    return rows


def splits_for(world: WorldConfig) -> Splits:
    """The splits of the world that `world` configures."""
    return make_splits(
        seed=world.seed,
        test_per_task=world.test_per_task,
        val_per_task=world.val_per_task,
        unseen_pairs=world.unseen_pairs,
        unseen_color_attr=world.unseen_color_attr,
    )
