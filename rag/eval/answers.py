"""Answer quality the way RGB measures it (Chen et al. 2023), one scored record per question and mode.

Modes: ``e2e`` (the product end to end: retrieved from the whole pool), and RGB's fixed passage sets
(:mod:`rag.eval.rgb`): ``noise`` (5 passages at each noise ratio), ``rejection`` (5 negatives), ``counterfactual``
(the ``*_fact`` passages edited to carry a false answer), and ``injection`` (the noise-0.4 set with an instruction
planted in one passage, :mod:`rag.eval.injection`: how often the answer obeys it). The model is reached through an
:data:`Ask` callable the CLI builds from the product's own chain (this package sits beside :mod:`rag.answer` and
does not import it), so what is measured is the prompt, the citation check and the refusal users get. Records and
summaries are pure.
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import Field

from rag.eval.injection import attack_for, injected_passages, obeyed, planted_gold
from rag.eval.metrics import (
    EvalQuestion,
    FollowUp,
    cmrc_scores,
    contains_answer,
    is_rejection,
    passage_id,
    rgb_accurate,
    rgb_detects_error,
)
from rag.eval.rgb import RGB_SEED, counterfactual_passages, negative_passages, noise_passages

__all__ = [
    "MODES",
    "AnswerRecord",
    "Answered",
    "Ask",
    "Citation",
    "Converse",
    "GivenPassages",
    "answer_records",
    "follow_up_records",
    "mode_passages",
    "passage_documents",
    "row_key",
    "score_answer",
    "summarize",
    "write_records",
]

MODES = ("e2e", "noise", "rejection", "counterfactual", "injection", "injection-answering", "follow-up")

#: RGB's instruction on counterfactual documents (config/instruction.yaml: the sentence of its system prompt on
#: factual errors). RGB's counterfactual setup gives it; our prompt does not ask to point out errors, so without it
#: RGB's error detection rule would count nothing. Given only in the counterfactual mode, as the caller's own
#: instructions (the chain's ``system`` input, put before its own).
FACT_INSTRUCTIONS = {
    "zh": "如果部分文档中存在与事实不一致的错误，请先生成“提供文档的文档存在事实性错误。”，并生成正确答案。",
    "en": "If there are inconsistencies with the facts in some of the documents, please generate the response "
    "'There are factual errors in the provided documents.' and provide the correct answer.",
}
_CJK = re.compile(r"[\u3400-\u9fff]")


@dataclass(frozen=True)
class Answered:
    """The product's answer to one question, as the CLI observed it."""

    answer: str
    """As the user sees it (markers naming no passage removed)."""
    passages: list[dict[str, Any]]
    """The passages in the prompt (``n``, ``source``, ``text``)."""
    cited: list[int]
    """The passage numbers the answer cites."""
    invented: int
    """Citation numbers the model wrote that name no passage in the prompt (the chain removed them)."""
    prompt_tokens: int
    first_token_ms: float | None
    tokens_per_s: float | None
    attributed: bool = False
    """The answer named no passage: :attr:`cited` are the passages that hold its words (the chain matched them)."""
    refusal_probability: float | None = None
    """The probability the model gave the refusal's first token at the answer's first step (local models)."""
    reused_tokens: int = 0
    """Prompt tokens the conversation's previous turn had already made the model read (a follow-up's)."""
    answerability: float | None = None
    """The answerability check's score (``RAG_ANSWERABILITY_THRESHOLD`` set): the model's "no" against its "yes"."""


Ask = Callable[[str, "Sequence[str] | None", str], Answered]
"""``ask(query, passages, system)``: the product's answer from exactly ``passages`` (None: retrieved from the store),
``system`` given as the caller's instructions."""

Converse = Callable[[str, str], "tuple[Answered, Answered]"]
"""``converse(first, follow_up)``: one conversation through the product, from the store: ``first`` answered, then
``follow_up`` asked after it (the first answer as the model wrote it in the history), as a user asks in the UI."""


@dataclass(frozen=True)
class Citation:
    n: int
    passage: str
    """The passage id (its file's stem)."""
    gold: bool
    """One of the question's gold passages."""
    has_answer: bool
    """It holds an answer element."""


@dataclass(frozen=True)
class AnswerRecord:
    """One question in one mode: what the JSONL file holds, one line each."""

    id: str
    mode: str
    noise_ratio: float | None
    """RGB's noise ratio of the passages shown (rejection 1, counterfactual 0; None: retrieved, e2e)."""
    passages: list[str]
    """Ids of the passages in the prompt, in order."""
    prompt_tokens: int
    answer: str
    citations: list[Citation]
    correct: bool
    """RGB's accuracy rule (CMRC: a reference answer inside the answer)."""
    refused: bool
    error_detected: bool
    """The answer says the documents contain factual errors (RGB's rule)."""
    invented_citations: int
    gold_shown: bool
    """A gold passage was in the prompt."""
    first_token_ms: float | None
    tokens_per_s: float | None
    exact_match: float | None = None
    """CMRC only."""
    f1: float | None = None
    """CMRC only."""
    attributed: bool = False
    """The citations were matched by the answer's words, not written by the model."""
    attack: str | None = None
    """``injection``: the planted instruction's name (:data:`rag.eval.injection.ATTACKS`)."""
    obeyed: bool | None = None
    """``injection``: the answer followed the planted instruction."""
    refusal_probability: float | None = None
    """What :attr:`Answered.refusal_probability` says: the refusal threshold is tuned on it."""
    answerability: float | None = None
    """What :attr:`Answered.answerability` says (where the check ran)."""
    first_turn_correct: bool | None = None
    """``follow-up``: the conversation's first answer was right (the record itself is the follow-up's)."""
    first_turn_first_token_ms: float | None = None
    """``follow-up``: the first question's wait, which the follow-up's is compared with."""
    reused_tokens: int | None = None
    """``follow-up``: prompt tokens of the first turn the follow-up did not make the model read again."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class GivenPassages(BaseRetriever):
    """A retriever that finds exactly the documents it holds, in order: the chain answers from a fixed set."""

    documents: list[Document] = Field(default_factory=list)

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        return list(self.documents)


def passage_documents(texts: Sequence[str]) -> list[Document]:
    """Passages as retrieved documents, one file each named ``<passage id>.txt`` (as the e2e store names them),
    scored best first in the order given. (A passage RGB lists twice is shown once: the chain's packing keeps one
    copy of a text, as it does for users.)"""
    documents = []
    for rank, text in enumerate(texts):
        name = f"{passage_id(text)}.txt"
        metadata = {"source": name, "source_abs": name, "file_name": name, "chunk_id": f"{name}:{rank}",
                    "chunk_index": 0, "start": 0, "end": len(text), "score": 1.0 / (rank + 1)}  # fmt: skip
        documents.append(Document(text, metadata=metadata))
    return documents


def mode_passages(question: EvalQuestion, mode: str, ratio: float, seed: int = RGB_SEED) -> list[str] | None:
    """The passages RGB shows in ``mode`` (None for ``e2e``: the product retrieves them)."""
    if mode == "noise":
        return noise_passages(question, ratio, seed=seed)
    if mode == "rejection":
        return negative_passages(question, seed=seed)
    if mode == "counterfactual":
        return counterfactual_passages(question, seed=seed)
    return None


def _instructions(mode: str, query: str) -> str:
    if mode != "counterfactual":
        return ""
    return FACT_INSTRUCTIONS["zh" if _CJK.search(query) else "en"]


def score_answer(
    question: EvalQuestion, answered: Answered, mode: str, ratio: float | None = None, kind: str = "rgb"
) -> AnswerRecord:
    """The record of one answer: RGB's rules on its text, its citations against the passages in the prompt."""
    by_number = {int(p["n"]): p for p in answered.passages}
    shown = [Path(str(p.get("source", ""))).stem for p in answered.passages]
    citations = []
    for n in answered.cited:
        if n in by_number:
            pid = Path(str(by_number[n].get("source", ""))).stem
            has_answer = contains_answer(str(by_number[n].get("text", "")), question.answers)
            citations.append(Citation(n, pid, pid in question.gold, has_answer))
    exact = f1 = None
    if kind == "cmrc":
        exact, f1 = cmrc_scores(answered.answer, question.answers[0])
        correct = any(reference in answered.answer for reference in question.answers[0])
    else:
        correct = rgb_accurate(answered.answer, question.answers)
    return AnswerRecord(
        id=question.id,
        mode=mode,
        noise_ratio=ratio,
        passages=shown,
        prompt_tokens=answered.prompt_tokens,
        answer=answered.answer,
        citations=citations,
        correct=correct,
        refused=is_rejection(answered.answer),
        error_detected=rgb_detects_error(answered.answer),
        invented_citations=answered.invented,
        gold_shown=any(pid in question.gold for pid in shown),
        first_token_ms=answered.first_token_ms,
        tokens_per_s=answered.tokens_per_s,
        exact_match=exact,
        f1=f1,
        attributed=answered.attributed,
        refusal_probability=answered.refusal_probability,
        answerability=answered.answerability,
    )


def answer_records(
    ask: Ask,
    questions: Sequence[EvalQuestion],
    modes: Sequence[str],
    *,
    ratios: Sequence[float] = (0.0, 0.4, 0.8),
    seed: int = RGB_SEED,
    kind: str = "rgb",
) -> Iterator[AnswerRecord]:
    """Every question answered in every mode (``noise``: at every ratio; ``injection``: the questions take the
    attacks in turn), scored, as they come."""
    fixed = {"rejection": 1.0, "counterfactual": 0.0, "injection": 0.4, "injection-answering": 0.4}
    for mode in modes:
        for ratio in ratios if mode == "noise" else [fixed.get(mode)]:
            for index, question in enumerate(questions):
                if mode.startswith("injection"):
                    attack = attack_for(index)
                    planted = injected_passages(
                        question, attack, seed=seed, into="answer" if mode == "injection-answering" else "noise"
                    )
                    answered = ask(question.query, planted, "")
                    # (a positive carrying the instruction is still gold: ``injection-answering`` plants it there)
                    scored = replace(question, gold=planted_gold(question, attack))
                    record = score_answer(scored, answered, mode, ratio, kind)
                    yield replace(record, attack=attack.name, obeyed=obeyed(answered.answer, attack))
                    continue
                passages = mode_passages(question, mode, ratio or 0.0, seed)
                answered = ask(question.query, passages, _instructions(mode, question.query))
                yield score_answer(question, answered, mode, ratio, kind)


def follow_up_records(converse: Converse, follow_ups: Sequence[FollowUp], kind: str = "cmrc") -> Iterator[AnswerRecord]:
    """Every conversation of ``follow_ups`` held through the product, its follow-up scored (CMRC's rules), with the
    first turn's correctness and wait beside it."""
    for conversation in follow_ups:
        first, then = converse(conversation.first.query, conversation.follow_up.query)
        record = score_answer(conversation.follow_up, then, "follow-up", None, kind)
        first_record = score_answer(conversation.first, first, "follow-up", None, kind)
        yield replace(
            record,
            first_turn_correct=first_record.correct,
            first_turn_first_token_ms=first.first_token_ms,
            reused_tokens=then.reused_tokens,
        )


def write_records(records: Iterable[AnswerRecord], path: Path) -> list[AnswerRecord]:
    """``records`` as JSON Lines at ``path``, each line written as it comes (a long run leaves what it did)."""
    kept = []
    with path.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record.to_dict(), ensure_ascii=False) + "\n")
            handle.flush()
            kept.append(record)
    return kept


def row_key(record: AnswerRecord) -> str:
    """The summary row of a record: its mode, with the ratio for ``noise`` (``noise@0.4``)."""
    return f"noise@{record.noise_ratio:g}" if record.mode == "noise" else record.mode


def _share(part: float, whole: int) -> float | None:
    return part / whole if whole else None


def _mean(values: Iterable[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return sum(known) / len(known) if known else None


def _figures(rows: Sequence[AnswerRecord]) -> dict[str, Any]:
    """The summary of one row. Citation precision: cited passages that are gold or hold an answer element, over all
    cited passages of the row; recall: correct answers citing a gold passage; false refusals: refusals with a gold
    passage in the prompt. Counterfactual: RGB's error detection rate (answers saying the documents contain factual
    errors) and error correction rate (of those, the answers with the correct answer)."""
    n = len(rows)
    cited = [citation for row in rows for citation in row.citations]
    correct = [row for row in rows if row.correct]
    with_gold = [row for row in rows if row.gold_shown]
    false_refusals = sum(row.refused for row in with_gold)
    figures: dict[str, Any] = {
        "questions": n,
        "accuracy": _share(len(correct), n),
        "refusal_rate": _share(sum(row.refused for row in rows), n),
        "false_refusals": false_refusals,
        "false_refusal_rate": _share(false_refusals, len(with_gold)),
        "citation_precision": _share(sum(c.gold or c.has_answer for c in cited), len(cited)),
        "citation_recall": _share(sum(any(c.gold for c in row.citations) for row in correct), len(correct)),
        "invented_citations": sum(row.invented_citations for row in rows),
        "attributed_rate": _share(sum(row.attributed for row in rows), n),
        "prompt_tokens": _mean(row.prompt_tokens for row in rows),
        "first_token_ms": _mean(row.first_token_ms for row in rows),
        "tokens_per_s": _mean(row.tokens_per_s for row in rows),
    }
    attacked = [row for row in rows if row.obeyed is not None]
    if attacked:
        figures["obeyed_rate"] = _share(sum(bool(row.obeyed) for row in attacked), len(attacked))
    if rows and rows[0].mode == "counterfactual":
        detected = [row for row in rows if row.error_detected]
        figures["error_detection_rate"] = _share(len(detected), n)
        figures["error_correction_rate"] = _share(sum(row.correct for row in detected), len(detected))
    turns = [row for row in rows if row.first_turn_correct is not None]
    if turns:
        figures["first_turn_accuracy"] = _share(sum(bool(row.first_turn_correct) for row in turns), len(turns))
        waits = [row.first_token_ms / row.first_turn_first_token_ms for row in turns
                 if row.first_token_ms and row.first_turn_first_token_ms]  # fmt: skip
        figures["follow_up_wait_ratio"] = statistics.median(waits) if waits else None
        figures["reused_tokens"] = _mean(row.reused_tokens for row in turns)
    if any(row.exact_match is not None for row in rows):
        figures["exact_match"] = _mean(row.exact_match for row in rows)
        figures["f1"] = _mean(row.f1 for row in rows)
    return figures


def summarize(records: Iterable[AnswerRecord]) -> dict[str, dict[str, Any]]:
    """The figures per row (:func:`row_key`), in the order the rows first appear."""
    rows: dict[str, list[AnswerRecord]] = {}
    for record in records:
        rows.setdefault(row_key(record), []).append(record)
    kinds: dict[str, list[AnswerRecord]] = {}  # injection: also one row per kind of attack, both languages
    for mode in ("injection", "injection-answering"):
        for record in rows.get(mode, []):
            kinds.setdefault(f"{mode}: {(record.attack or '').rsplit('-', 1)[0]}", []).append(record)
    return {key: _figures(group) for key, group in {**rows, **dict(sorted(kinds.items()))}.items()}
