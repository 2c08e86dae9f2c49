"""DPG-Bench (ELLA): 1,065 dense prompts, 2x2 grids of 4 images, VQA questions with a dependency cascade.

Specification: ``design/benchmarks.md`` section 2 (TencentQQGYLab/ELLA @ 3c228f1). Prompts come from
``htgrpo/data/benchmarks/dpg/prompts.jsonl`` (shipped); the question file ``dpg_bench.csv`` is *not* shipped and must be
supplied by the user from the ELLA repository (``dpg_bench/dpg_bench.csv``).

Protocol. Each prompt's 4 images are tiled into one 2Rx2R grid saved as ``<item_id>.png``; scoring cuts it back
into the R x R tiles (top-left, top-right, bottom-left, bottom-right). Every question is asked of every tile; a
question scores 1 iff the answer is exactly ``"yes"``. Then, in CSV order, a question whose parent (any non-zero
id in ``dependency``) currently scores 0 is set to 0 (the cascade works through the live scores). A tile's
score is the mean over the prompt's questions; the prompt's score the mean over its tiles; DPG-Bench = mean
prompt score x 100. A prompt whose questions name a parent that does not exist is skipped, as officially.

Categories (from the ``tuple`` column: L1 = text before the first "-", L2 = text before "("): by default each
question counts with its mean score over the tiles *after* the cascade, so category scores measure the same
thing as the overall. ``official_quirks=True`` reproduces the official script instead:

- category scores use the *raw* answers (before the cascade) of the *last* tile only (its saved copy is
  overwritten in every tile loop), which is why published tables can show an overall below every category;
- the loader skips CSV row 0, so the first prompt loses its first question (proposition 1); if any of its other
  questions depend on it, that prompt fails and is excluded.

Use ``official_quirks=True`` for numbers comparable with papers, and say so next to them.

VQA. Officially mPLUG-large through modelscope (not installable here). Any :class:`VQABackend` works; the
default :class:`TransformersVQA` loads a transformers VQA model from a local directory, e.g.
``Salesforce/blip-vqa-capfilt-large`` (BLIP, generative, VQAv2-trained like mPLUG); its decoded answer is
whitespace-stripped, then compared exactly with "yes". Scores from another VQA model are not the paper's.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from htgrpo.benchmarks.generation import ImageGenerator, check_images
from htgrpo.benchmarks.weights import TOKENIZER_FILES, hf_spec, require, torch_device
from htgrpo.data import BENCHMARK_DATA, SHARED_BENCHMARKS
from htgrpo.errors import BenchmarkDataError

PROJECT_ROOT = Path(__file__).resolve().parents[3]
DATA_DIR = BENCHMARK_DATA / "dpg"
DEFAULT_PROMPTS = DATA_DIR / "prompts.jsonl"
DEFAULT_CSV = SHARED_BENCHMARKS / "dpg" / "dpg_bench.csv"
CSV_COLUMNS = ("item_id", "proposition_id", "dependency", "tuple", "question_natural_language")
PIC_NUM = 4

VQA_SPEC = hf_spec(
    "VQA model (BLIP VQA by default; officially mPLUG-large)",
    "Salesforce/blip-vqa-capfilt-large",
    processor=("preprocessor_config.json", TOKENIZER_FILES),
)


# --- data ------------------------------------------------------------------------------------------------------


def load_prompts(path: str | Path | None = None) -> list[dict[str, str]]:
    """``[{item_id, prompt}, ...]`` from the staged prompts.jsonl (default) or a user path."""
    p = Path(path) if path is not None else DEFAULT_PROMPTS
    if not p.is_file():
        raise BenchmarkDataError(
            f"DPG-Bench prompts {p} do not exist (shipped in htgrpo/data/benchmarks/dpg/)"
        )
    rows = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    for r in rows:
        if not {"item_id", "prompt"} <= r.keys():
            raise BenchmarkDataError(f"{p}: every row needs item_id and prompt")
    return rows


@dataclass(frozen=True)
class Question:
    proposition_id: int
    parents: tuple[int, ...]
    """Parent proposition ids; 0 (no parent) is dropped."""
    category: str
    """The ``tuple`` column, e.g. ``entity - whole (cabbage)``."""
    text: str

    @property
    def l1(self) -> str:
        return self.category.split("-", 1)[0].strip()

    @property
    def l2(self) -> str:
        return self.category.split("(", 1)[0].strip()


def load_questions(
    path: str | Path | None = None, official_quirks: bool = False
) -> dict[str, list[Question]]:
    """item_id -> its questions in CSV order. With ``official_quirks`` the first data row is skipped."""
    p = Path(path) if path is not None else DEFAULT_CSV
    if not p.is_file():
        raise BenchmarkDataError(
            f"DPG-Bench question file {p} does not exist. It is not shipped: copy dpg_bench/dpg_bench.csv from "
            "the ELLA repository (github.com/TencentQQGYLab/ELLA, commit 3c228f1) there, or pass its path "
            "(--dpg-csv); see ../shared/benchmarks/dpg/PROVENANCE.md"
        )
    out: dict[str, list[Question]] = defaultdict(list)
    with p.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise BenchmarkDataError(f"{p}: missing column(s) {', '.join(missing)}; expected {CSV_COLUMNS}")
        for i, row in enumerate(reader):
            if official_quirks and i == 0:
                continue
            try:
                parents = tuple(int(x) for x in str(row["dependency"]).split(",") if x.strip())
                q = Question(
                    int(row["proposition_id"]),
                    tuple(x for x in parents if x != 0),
                    row["tuple"],
                    row["question_natural_language"],
                )
            except ValueError as exc:
                raise BenchmarkDataError(f"{p}: data row {i}: {exc}") from None
            out[str(row["item_id"])].append(q)
    if not out:
        raise BenchmarkDataError(f"{p}: no questions")
    return dict(out)


# --- grids -----------------------------------------------------------------------------------------------------


def make_grid(images: np.ndarray) -> np.ndarray:
    """4 images [4, R, R, 3] -> one [2R, 2R, 3] grid: top-left, top-right, bottom-left, bottom-right."""
    images = np.asarray(images)
    if images.shape[0] != PIC_NUM or images.shape[1] != images.shape[2]:
        raise ValueError(f"a DPG grid needs {PIC_NUM} square images, got {list(images.shape)}")
    top = np.concatenate([images[0], images[1]], axis=1)
    bottom = np.concatenate([images[2], images[3]], axis=1)
    return np.concatenate([top, bottom], axis=0)


def split_grid(grid: np.ndarray, resolution: int, pic_num: int = PIC_NUM) -> list[np.ndarray]:
    """The official crops (PIL boxes (0,0,R,R), (R,0,2R,R), (0,R,R,2R), (R,R,2R,2R)), the first ``pic_num``.

    No resizing: the grid must be exactly 2R x 2R.
    """
    r = resolution
    if grid.shape[:2] != (2 * r, 2 * r):
        raise ValueError(
            f"a DPG grid of tile size {r} must be {2 * r}x{2 * r}, got {grid.shape[1]}x{grid.shape[0]}"
        )
    boxes = [(0, 0), (r, 0), (0, r), (r, r)]
    return [grid[y : y + r, x : x + r] for x, y in boxes[:pic_num]]


def generate_grids(
    out_dir: str | Path, prompts: Sequence[dict[str, str]], generate: ImageGenerator, seed: int = 42
) -> Path:
    """``<out_dir>/<item_id>.png`` = 2x2 grid of 4 images per prompt; existing grids are kept (resume)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for row in prompts:
        path = out / f"{row['item_id']}.png"
        if path.is_file():
            continue
        images = check_images(generate([row["prompt"]] * PIC_NUM, seed), PIC_NUM)
        Image.fromarray(make_grid(images)).save(path)
    return out


# --- VQA -------------------------------------------------------------------------------------------------------


class VQABackend(Protocol):
    """Answers one question per image; images are RGB uint8 [H, W, 3]."""

    def answer(self, images: Sequence[np.ndarray], questions: Sequence[str]) -> list[str]: ...


class TransformersVQA:
    """A transformers VQA model from a local directory (AutoModelForVisualQuestionAnswering).

    Generative models (BLIP) are decoded with ``skip_special_tokens`` and stripped; classification models
    (ViLT) answer with the label of the top logit.
    """

    metric = "dpg"

    def __init__(
        self,
        weights: str | Path | None,
        device: str | None = None,
        batch_size: int = 16,
        max_new_tokens: int = 10,
    ):
        from transformers import AutoImageProcessor, AutoModelForVisualQuestionAnswering, AutoTokenizer

        path = require(self.metric, weights, VQA_SPEC)
        self.device = torch_device(device)
        self.model = AutoModelForVisualQuestionAnswering.from_pretrained(path).to(self.device).eval()
        self.image_processor = AutoImageProcessor.from_pretrained(path)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens

    def answer(self, images: Sequence[np.ndarray], questions: Sequence[str]) -> list[str]:
        import torch

        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images for {len(questions)} questions")
        answers: list[str] = []
        for s in range(0, len(images), self.batch_size):
            pil = [Image.fromarray(np.asarray(im, np.uint8)) for im in images[s : s + self.batch_size]]
            pix = self.image_processor(images=pil, return_tensors="pt")["pixel_values"].to(self.device)
            tok = self.tokenizer(
                list(questions[s : s + self.batch_size]), padding=True, return_tensors="pt"
            ).to(self.device)
            with torch.no_grad():
                if hasattr(self.model, "generate") and self.model.config.model_type != "vilt":
                    out = self.model.generate(
                        pixel_values=pix,
                        input_ids=tok.input_ids,
                        attention_mask=tok.attention_mask,
                        max_new_tokens=self.max_new_tokens,
                    )
                    answers.extend(
                        t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)
                    )
                else:
                    logits = self.model(pixel_values=pix, **tok).logits
                    answers.extend(self.model.config.id2label[int(i)] for i in logits.argmax(-1))
        return answers


# --- scoring ---------------------------------------------------------------------------------------------------


def apply_dependencies(questions: Sequence[Question], raw: dict[int, float]) -> dict[int, float]:
    """The cascade: in order, a question with a parent scoring 0 (in the live dict) is set to 0.

    A parent id missing from the prompt's questions raises KeyError, as in the official script.
    """
    scores = dict(raw)
    for q in questions:
        if any(scores[p] == 0 for p in q.parents):
            scores[q.proposition_id] = 0.0
    return scores


@dataclass
class PromptResult:
    item_id: str
    score: float
    """Mean over tiles of the mean question score after the cascade, in [0, 1]."""
    tile_scores: list[float]
    question_scores: dict[int, float]
    """Per question, for the category scores (see the module docstring for the two modes)."""


def score_prompt(
    item_id: str,
    tiles: Sequence[np.ndarray],
    questions: Sequence[Question],
    vqa: VQABackend,
    official_quirks: bool = False,
) -> PromptResult:
    """Ask every question of every tile in one backend call, then apply the rule, the cascade and the means."""
    pairs = [(t, q) for t in range(len(tiles)) for q in questions]
    answers = vqa.answer([tiles[t] for t, _ in pairs], [q.text for _, q in pairs])
    if len(answers) != len(pairs):
        raise ValueError(f"VQA backend returned {len(answers)} answers for {len(pairs)} questions")
    tile_scores: list[float] = []
    after_sum: dict[int, float] = defaultdict(float)
    raw: dict[int, float] = {}
    for t in range(len(tiles)):
        chunk = answers[t * len(questions) : (t + 1) * len(questions)]
        raw = {q.proposition_id: float(a == "yes") for q, a in zip(questions, chunk, strict=True)}
        after = apply_dependencies(questions, raw)
        tile_scores.append(float(np.mean(list(after.values()))))
        for pid, v in after.items():
            after_sum[pid] += v
    # quirk: the raw answers of the last tile only; otherwise each question's mean over tiles after the cascade
    per_question = raw if official_quirks else {pid: v / len(tiles) for pid, v in after_sum.items()}
    return PromptResult(item_id, float(np.mean(tile_scores)), tile_scores, per_question)


def aggregate(results: Sequence[PromptResult], questions: dict[str, list[Question]]) -> dict[str, Any]:
    """DPG-Bench score (mean prompt score x 100) and L1/L2 category scores (question-weighted, x 100)."""
    if not results:
        raise ValueError("no prompt was scored")
    l1: dict[str, list[float]] = defaultdict(list)
    l2: dict[str, list[float]] = defaultdict(list)
    for res in results:
        for q in questions[res.item_id]:
            if q.proposition_id in res.question_scores:
                v = res.question_scores[q.proposition_id]
                l1[q.l1].append(v)
                l2[q.l2].append(v)
    return {
        "overall": 100.0 * float(np.mean([r.score for r in results])),
        "l1": {k: 100.0 * float(np.mean(v)) for k, v in sorted(l1.items())},
        "l2": {k: 100.0 * float(np.mean(v)) for k, v in sorted(l2.items())},
        "n_prompts": len(results),
    }


def score_grids(
    image_dir: str | Path,
    questions: dict[str, list[Question]],
    vqa: VQABackend,
    resolution: int | None = None,
    official_quirks: bool = False,
    pic_num: int = PIC_NUM,
) -> tuple[list[PromptResult], list[dict[str, str]]]:
    """Score every ``<item_id>.<ext>`` grid in a folder; returns (results, failures with their reason).

    ``resolution`` (tile side) defaults to half the grid's width. Files whose stem has no questions, images
    that fail to load or split, and prompts with a dangling dependency are failures, skipped like the
    official script's "Failed filename".
    """
    root = Path(image_dir)
    if not root.is_dir():
        raise BenchmarkDataError(f"DPG-Bench image folder {root} does not exist")
    results, failures = [], []
    for path in sorted(p for p in root.iterdir() if p.is_file()):
        item_id = path.name.split(".")[0]
        try:
            if item_id not in questions:
                raise KeyError(f"no questions for item {item_id!r}")
            with Image.open(path) as im:
                grid = np.asarray(im.convert("RGB"))
            tiles = split_grid(grid, resolution or grid.shape[1] // 2, pic_num)
            results.append(score_prompt(item_id, tiles, questions[item_id], vqa, official_quirks))
        except (KeyError, ValueError, OSError) as exc:
            failures.append({"file": str(path), "reason": f"{type(exc).__name__}: {exc}"})
    return results, failures


def evaluate_dpg(
    vqa: VQABackend,
    out_dir: str | Path,
    csv_path: str | Path | None = None,
    prompts: Sequence[dict[str, str]] | None = None,
    generate: ImageGenerator | None = None,
    official_quirks: bool = False,
    seed: int = 42,
) -> dict[str, Any]:
    """Generate grids (if ``generate``) into ``out_dir/images``, score them, write ``results.jsonl``; the report."""
    questions = load_questions(csv_path, official_quirks)  # first: a missing CSV fails before generating
    out = Path(out_dir)
    if generate is not None:
        generate_grids(out / "images", prompts if prompts is not None else load_prompts(), generate, seed)
    results, failures = score_grids(out / "images", questions, vqa, official_quirks=official_quirks)
    (out / "results.jsonl").write_text(
        "".join(
            json.dumps({"item_id": r.item_id, "score": r.score, "tile_scores": r.tile_scores}) + "\n"
            for r in results
        )
    )
    return {
        "benchmark": "dpg",
        "official_quirks": official_quirks,
        "summary": aggregate(results, questions),
        "failures": failures,
    }
