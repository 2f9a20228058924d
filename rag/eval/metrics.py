"""Evaluation datasets (RGB, CMRC 2018) and retrieval metrics.

The datasets are read from a path the user gives (they are never bundled). A store is built from each
dataset's passage pool through the real ingest pipeline: one ``.txt`` file per passage, named by the passage id,
so a retrieved chunk is relevant when its file is one of the question's gold passages.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_core.documents import Document

__all__ = [
    "RGB_REJECTIONS",
    "EvalQuestion",
    "EvalSet",
    "FollowUp",
    "cmrc_scores",
    "contains_answer",
    "evidence_recall",
    "is_rejection",
    "load_dataset",
    "passage_id",
    "plot_retrieval_curve",
    "retrieval_metrics",
    "rgb_accurate",
    "rgb_correct",
    "rgb_detects_error",
    "rgb_rejects",
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
    positives: tuple[tuple[str, ...], ...] = ()
    """RGB: the passages that contain the answer, as they are listed: one group per answer element in ``*_int``
    files, else one group."""
    negatives: tuple[str, ...] = ()
    """RGB: same-topic passages without the answer, as they are listed."""
    counterfactuals: tuple[str, ...] = ()
    """RGB ``*_fact``: ``positive_wrong``, the positives edited to carry a false answer (one per positive)."""
    grouped: bool = False
    """RGB ``*_int``: the positives are grouped per answer element."""


@dataclass(frozen=True)
class FollowUp:
    """A two-turn conversation made from CMRC 2018 (every paragraph is about its article's title): turn 1 asks a
    question of a paragraph; turn 2 is a later question of the same paragraph that names the title, with the title
    replaced by 它 ("it"), so the follow-up alone does not say what it is about."""

    first: EvalQuestion
    follow_up: EvalQuestion
    """Its query is the pronoun version; answers and gold are the original question's."""
    original: str
    """The later question as CMRC asks it (what a perfect rewrite of the follow-up would be)."""


@dataclass
class EvalSet:
    name: str
    kind: str
    """'rgb' or 'cmrc'."""
    passages: dict[str, str] = field(default_factory=dict)
    questions: list[EvalQuestion] = field(default_factory=list)
    follow_ups: list[FollowUp] = field(default_factory=list)
    """CMRC: the pronoun follow-ups (:class:`FollowUp`), one per paragraph that has one."""


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


def _groups(positive: list[Any]) -> tuple[tuple[str, ...], ...]:
    """RGB's positives as groups: one per answer element where they are a list of lists (``*_int``), else one."""
    if any(isinstance(item, list) for item in positive):
        return tuple(tuple(_flatten(item if isinstance(item, list) else [item])) for item in positive)
    return (tuple(_flatten(positive)),) if positive else ()


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
            negatives = _flatten(record.get("negative", []))
            counterfactuals = _flatten(record.get("positive_wrong", []))
            for text in positives + negatives + counterfactuals:
                evalset.passages.setdefault(passage_id(text), text)
            answer = record.get("answer", [])  # a bare string in *_fact files: one element (RGB's checkanswer)
            evalset.questions.append(
                EvalQuestion(
                    str(record["id"]),
                    record["query"],
                    answer if isinstance(answer, list) else [answer],
                    frozenset(passage_id(text) for text in positives),
                    positives=_groups(record.get("positive", [])),
                    negatives=tuple(negatives),
                    counterfactuals=tuple(counterfactuals),
                    grouped=any(isinstance(item, list) for item in record.get("positive", [])),
                )
            )
    return evalset


def load_cmrc(path: Path) -> EvalSet:
    """CMRC 2018 in SQuAD format: one gold paragraph per question."""
    data = json.loads(path.read_text(encoding="utf-8"))
    evalset = EvalSet(path.stem, "cmrc")
    for article in data["data"]:
        title = str(article.get("title") or "").strip()
        for paragraph in article["paragraphs"]:
            pid = passage_id(paragraph["context"])
            evalset.passages[pid] = paragraph["context"]
            asked = []
            for qa in paragraph["qas"]:
                answers = list(dict.fromkeys(a["text"] for a in qa["answers"]))
                asked.append(EvalQuestion(qa["id"], qa["question"], [answers], frozenset({pid})))
            evalset.questions.extend(asked)
            answerable = [question for question in asked if question.answers[0]]
            later = next((q for q in answerable[1:] if len(title) >= 2 and title in q.query), None)
            if later is not None:
                pronoun = EvalQuestion(later.id, later.query.replace(title, "它"), later.answers, later.gold)
                evalset.follow_ups.append(FollowUp(answerable[0], pronoun, later.query))
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


def evidence_recall(
    assemble: Callable[[str, int], tuple[Sequence[str], int]],
    questions: Sequence[EvalQuestion],
    budgets: Sequence[int],
) -> dict[int, dict[str, float]]:
    """Per evidence budget: the share of questions with a gold passage (``any_gold``) and with all of them
    (``all_gold``) inside the assembled context, and its mean size in tokens. ``assemble(query, budget)`` returns
    the sources of the context's passages and its tokens."""
    results: dict[int, dict[str, float]] = {}
    for budget in budgets:
        any_gold = all_gold = tokens = 0.0
        for question in questions:
            sources, used = assemble(question.query, budget)
            inside = {Path(source).stem for source in sources}
            any_gold += bool(question.gold & inside)
            all_gold += question.gold <= inside
            tokens += used
        n = max(len(questions), 1)
        results[budget] = {"any_gold": any_gold / n, "all_gold": all_gold / n, "mean_tokens": tokens / n}
    return results


# -- answer metrics ----------------------------------------------------------------------------------------------
#: RGB's own rejection rule (evalue.py): an output containing one of these is a rejection, never a correct answer.
RGB_REJECTIONS = ("信息不足", "insufficient information")
#: Refusals counted in the refusal rate: RGB's markers, the refusal RGB's instruction asks for ("文档信息不足，因此我
#: 无法基于提供的文档回答该问题。", "I can not answer the question because of the insufficient information in
#: documents.") and our own refusal sentences (rag.answer.qa_prompt.INSUFFICIENT_ZH / INSUFFICIENT_EN).
_REJECTIONS = (
    *RGB_REJECTIONS,
    "无法回答",
    "无法基于提供的文档",
    "not in the documents",
    "can not answer",
    "cannot answer",
)
#: RGB's error detection rule (evalue.py's factlabel): the output says the documents contain factual errors.
_FACT_ERRORS = ("事实性错误", "factual errors")
_SPACE = re.compile(r"\s+")
_PUNCTUATION = re.compile(r"[\s\u3000-\u303f\uff00-\uffef!-/:-@\[-`{-~，。、；：？！“”‘’（）《》【】…—·]")


def _compact(text: str) -> str:
    return _SPACE.sub("", text.lower())


def _found(markers: Sequence[str], answer: str) -> bool:
    text = _compact(answer)
    return any(_compact(marker) in text for marker in markers)


def rgb_correct(answer: str, expected: Sequence[Any]) -> bool:
    """RGB's rule: every expected element occurs in the answer (a list element: any alternative), case and spaces
    ignored."""
    text = answer.lower().replace(" ", "")
    for element in expected:
        alternatives = element if isinstance(element, list) else [element]
        if not any(str(option).lower().replace(" ", "") in text for option in alternatives):
            return False
    return True


def rgb_rejects(answer: str) -> bool:
    """RGB's rejection rule: the answer contains "信息不足" or "insufficient information"."""
    return _found(RGB_REJECTIONS, answer)


def rgb_accurate(answer: str, expected: Sequence[Any]) -> bool:
    """RGB's accuracy: not a rejection (:func:`rgb_rejects`) and every expected element found (:func:`rgb_correct`)."""
    return bool(expected) and not rgb_rejects(answer) and rgb_correct(answer, expected)


def is_rejection(answer: str) -> bool:
    """A refusal: RGB's markers, the refusal RGB's instruction asks for, or our own refusal sentence."""
    return _found(_REJECTIONS, answer)


def rgb_detects_error(answer: str) -> bool:
    """RGB's error detection: the answer says the documents contain "事实性错误" / "factual errors"."""
    return _found(_FACT_ERRORS, answer)


def contains_answer(text: str, expected: Sequence[Any]) -> bool:
    """Whether ``text`` (a passage) holds one of the expected elements (any alternative), case and spaces ignored."""
    compact = text.lower().replace(" ", "")
    options = [option for element in expected for option in (element if isinstance(element, list) else [element])]
    return any(str(option).lower().replace(" ", "") in compact for option in options if str(option).strip())


def _normalise(text: str) -> str:
    return _PUNCTUATION.sub("", text.lower())


def _longest_common_substring(a: str, b: str) -> int:
    best = 0
    previous = [0] * (len(b) + 1)
    for char_a in a:
        current = [0] * (len(b) + 1)
        for j, char_b in enumerate(b, start=1):
            if char_a == char_b:
                current[j] = previous[j - 1] + 1
                best = max(best, current[j])
        previous = current
    return best


def cmrc_scores(answer: str, references: Sequence[str]) -> tuple[float, float]:
    """CMRC 2018's EM and character F1 (longest common substring, punctuation removed), best over references."""
    prediction = _normalise(answer)
    exact = f1 = 0.0
    for reference in references:
        gold = _normalise(reference)
        if not gold:
            continue
        exact = max(exact, float(prediction == gold))
        common = _longest_common_substring(prediction, gold)
        if common:
            precision, recall = common / len(prediction), common / len(gold)
            f1 = max(f1, 2 * precision * recall / (precision + recall))
    return exact, f1


def plot_retrieval_curve(results: dict[str, dict[str, float]], ks: Sequence[int], path: Path, title: str) -> None:
    """A PNG of hit@k against k, one line per retriever."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4), dpi=120)
    for name, metrics in results.items():
        axes.plot(list(ks), [metrics[f"hit@{k}"] for k in ks], marker="o", label=name)
    axes.set_xlabel("k")
    axes.set_ylabel("hit@k")
    axes.set_ylim(0, 1.02)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
