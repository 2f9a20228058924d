"""Evaluation datasets (RGB, CMRC 2018) and retrieval metrics.

The datasets are read from a path the user gives (they are never bundled). A store is built from each
dataset's passage pool through the real ingest pipeline: one ``.txt`` file per passage, named by the passage id,
so a retrieved chunk is relevant when its file is one of the question's gold passages.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_core.documents import Document

__all__ = [
    "EvalQuestion",
    "EvalSet",
    "load_dataset",
    "passage_id",
    "retrieval_metrics",
    "write_passages",
]


@dataclass(frozen=True)
class EvalQuestion:
    id: str
    query: str
    answers: list[Any]
    """RGB: every element must appear in the answer (an element that is a list: any of its alternatives)."""
    gold: frozenset[str]
    """Ids of the passages that support the answer."""


@dataclass
class EvalSet:
    name: str
    kind: str
    """'rgb' or 'cmrc'."""
    passages: dict[str, str] = field(default_factory=dict)
    questions: list[EvalQuestion] = field(default_factory=list)


def passage_id(text: str) -> str:
    return hashlib.sha1(text.strip().encode("utf-8")).hexdigest()[:16]


def _flatten(items: Iterable[Any]) -> list[str]:
    flat: list[str] = []
    for item in items:
        if isinstance(item, list):
            flat.extend(_flatten(item))
        elif isinstance(item, str) and item.strip():
            flat.append(item)
    return flat


def load_rgb(path: Path) -> EvalSet:
    """RGB JSON Lines: ``*_refine``, ``*_int`` (nested positives) and ``*_fact`` (counterfactual positives)."""
    evalset = EvalSet(path.stem, "rgb")
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{line_number}: not JSON ({error})") from None
            positives = _flatten(record.get("positive", []))
            pool = positives + _flatten(record.get("negative", [])) + _flatten(record.get("positive_wrong", []))
            for text in pool:
                evalset.passages.setdefault(passage_id(text), text)
            evalset.questions.append(
                EvalQuestion(
                    str(record["id"]),
                    record["query"],
                    list(record.get("answer", [])),
                    frozenset(passage_id(text) for text in positives),
                )
            )
    return evalset


def load_cmrc(path: Path) -> EvalSet:
    """CMRC 2018 in SQuAD format: one gold paragraph per question."""
    data = json.loads(path.read_text(encoding="utf-8"))
    evalset = EvalSet(path.stem, "cmrc")
    for article in data["data"]:
        for paragraph in article["paragraphs"]:
            pid = passage_id(paragraph["context"])
            evalset.passages[pid] = paragraph["context"]
            for qa in paragraph["qas"]:
                answers = list(dict.fromkeys(a["text"] for a in qa["answers"]))
                evalset.questions.append(EvalQuestion(qa["id"], qa["question"], [answers], frozenset({pid})))
    return evalset


def load_dataset(path: str | Path) -> EvalSet:
    """RGB (``.jsonl``) or CMRC 2018 (SQuAD ``.json``), by content."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset {path} does not exist: give the path to an RGB .jsonl or a CMRC .json file")
    if path.suffix == ".jsonl":
        return load_rgb(path)
    return load_cmrc(path)


def add_distractors(evalset: EvalSet, folder: Path, limit: int | None = None) -> int:
    """Add CRUD-RAG news articles (one per line in each ``.txt``) to the pool; returns how many."""
    added = 0
    for file in sorted(folder.glob("*.txt")):
        with file.open(encoding="utf-8") as handle:
            for line in handle:
                if limit is not None and added >= limit:
                    return added
                if line.strip():
                    evalset.passages.setdefault(passage_id(line), line.strip())
                    added += 1
    return added


def write_passages(evalset: EvalSet, folder: Path) -> None:
    """One UTF-8 text file per passage, named ``<passage id>.txt`` (existing files are kept: reruns are cheap)."""
    folder.mkdir(parents=True, exist_ok=True)
    for pid, text in evalset.passages.items():
        target = folder / f"{pid}.txt"
        if not target.exists():
            target.write_text(text, encoding="utf-8")


def retrieval_metrics(
    retrieve: Callable[[str, int], Sequence[Document]],
    questions: Sequence[EvalQuestion],
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """hit@k for each k, precision@5 and MRR@10 (passage level: chunks of one passage count once)."""
    depth = max([*ks, 10])
    hits = dict.fromkeys(ks, 0.0)
    precision5 = reciprocal = 0.0
    for question in questions:
        ranked: list[str] = []
        for document in retrieve(question.query, depth * 2):
            pid = Path(str(document.metadata.get("source", ""))).stem
            if pid not in ranked:
                ranked.append(pid)
        ranked = ranked[:depth]
        relevant = [pid in question.gold for pid in ranked]
        for k in ks:
            hits[k] += any(relevant[:k])
        precision5 += sum(relevant[:5]) / 5
        first = next((rank for rank, ok in enumerate(relevant[:10], start=1) if ok), None)
        reciprocal += 1 / first if first else 0.0
    n = max(len(questions), 1)
    metrics = {f"hit@{k}": hits[k] / n for k in ks}
    metrics["precision@5"] = precision5 / n
    metrics["mrr@10"] = reciprocal / n
    return metrics
