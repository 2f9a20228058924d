"""Checking the ``[n]`` citation markers of an answer against the passages the model was shown.

Pure functions (and one small streaming filter). A marker is ``[1]``, ``【1】``, ``[1,2]``, ``[1, 2]``, ``[1、2]``,
``[1-3]`` (a range) or a run of them (``[1][2]``); each is rewritten in the canonical form ``[1][2]``. Numbers that
point at no passage of the context are dropped, and a marker left empty disappears (with the space before it).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CitationCheck",
    "CitationStreamFilter",
    "attribute_answer",
    "check_citations",
    "select_sources",
]

_NUM_LIST = r"\d{1,4}(?:\s*(?:[,，、;；]|[-–~～])\s*\d{1,4})*"
_MARKER = re.compile(rf"[ \t]?(?:\[\s*(?P<a>{_NUM_LIST})\s*\]|【\s*(?P<b>{_NUM_LIST})\s*】)")
#: The longest marker worth holding back while streaming (``[12, 13, 14-16]``...).
_MAX_MARKER = 40
#: What a marker still being written may hold: numbers, separators and brackets.
_MARKER_CHARS = re.compile(r"[\d\s,，、;；\-–~～\[\]【】]*")
#: The widest range ``[a-b]`` that is expanded (a wider one is not a citation).
_MAX_RANGE = 20


@dataclass(frozen=True)
class CitationCheck:
    """An answer with its markers checked."""

    text: str
    """The answer with only valid markers, in the canonical form ``[1][2]``."""
    cited: list[int] = field(default_factory=list)
    """Valid passage numbers, in order of first citation."""
    invalid: list[int] = field(default_factory=list)
    """Numbers that pointed at no passage (removed)."""


def _numbers(group: str) -> list[int]:
    numbers: list[int] = []
    for part in re.split(r"\s*[,，、;；]\s*", group.strip()):
        bounds = re.split(r"\s*[-–~～]\s*", part)
        if len(bounds) == 2 and bounds[0] and bounds[1]:
            low, high = int(bounds[0]), int(bounds[1])
            if low <= high and high - low <= _MAX_RANGE:
                numbers.extend(range(low, high + 1))
            else:
                numbers.extend([low, high])
        elif part:
            numbers.append(int(part))
    return numbers


def check_citations(answer: str, valid: Collection[int]) -> CitationCheck:
    """Keep the markers of ``answer`` that point at a passage numbered in ``valid``; remove the others.

    Removing a marker can join the text around it into a new one (``[6[80]]`` less ``[80]`` is ``[6]``), so the
    check runs again until a pass removes nothing: no marker the passages do not back survives."""
    invalid: list[int] = []
    while True:
        checked = _check_once(answer, valid)
        invalid.extend(n for n in checked.invalid if n not in invalid)
        if not checked.invalid:
            return CitationCheck(text=checked.text, cited=checked.cited, invalid=invalid)
        answer = checked.text


def _check_once(answer: str, valid: Collection[int]) -> CitationCheck:
    cited: list[int] = []
    invalid: list[int] = []

    def replace(match: re.Match[str]) -> str:
        lead = match.group(0)[0] if match.group(0)[0] in " \t" else ""
        kept: list[int] = []
        for number in _numbers(match.group("a") or match.group("b")):
            if number in valid:
                if number not in kept:
                    kept.append(number)
                if number not in cited:
                    cited.append(number)
            elif number not in invalid:
                invalid.append(number)
        return lead + "".join(f"[{n}]" for n in kept) if kept else ""

    text = _MARKER.sub(replace, answer)
    return CitationCheck(text=text, cited=cited, invalid=invalid)


class CitationStreamFilter:
    """:func:`check_citations` over a stream of pieces: ``feed`` returns what is safe to show now.

    Text that may be the start of a marker (from a space, ``[`` or ``【`` on) is held back until it is closed or
    clearly is not a marker; the concatenation of everything returned equals ``check_citations(whole).text``.
    """

    def __init__(self, valid: Collection[int]) -> None:
        self.valid = set(valid)
        self._pending = ""

    def _split(self) -> tuple[str, str]:
        """(text that is final, text to hold back)."""
        text = self._pending
        hold_from = len(text)
        # the earliest opening bracket near the end that is not closed yet, with only marker characters after it
        # (brackets too: ``[6[80]`` may still become ``[6[80]]``, which is no marker at all once ``[80]`` goes)
        for opener, closer in (("[", "]"), ("【", "】")):
            start = max(0, len(text) - _MAX_MARKER)
            for position in (i for i in range(start, len(text)) if text[i] == opener):
                tail = text[position:]
                if tail.count(opener) > tail.count(closer) and _MARKER_CHARS.fullmatch(tail):
                    hold_from = min(hold_from, position)
                    break
        if hold_from > 0 and text[hold_from - 1 : hold_from] in (" ", "\t"):
            hold_from -= 1  # the space before a marker goes with it when the marker is dropped
        elif hold_from == len(text) and text.endswith((" ", "\t")):
            hold_from -= 1
        return text[:hold_from], text[hold_from:]

    def feed(self, piece: str) -> str:
        self._pending += piece
        ready, held = self._split()
        self._pending = held
        return check_citations(ready, self.valid).text if ready else ""

    def flush(self) -> str:
        rest, self._pending = self._pending, ""
        return check_citations(rest, self.valid).text


def select_sources(
    passages: Sequence[Mapping[str, Any]], cited: Sequence[int], *, top_uncited: int = 3
) -> list[dict[str, Any]]:
    """The sources to show: the cited passages (``"cited": True``, in passage order); with none cited, the
    ``top_uncited`` best-scored passages (``"cited": False``).

    Each passage is a mapping with at least ``n`` and ``score``; the result holds copies with ``cited`` set.
    """
    by_number = {int(p["n"]): p for p in passages}
    chosen = sorted({n for n in cited if n in by_number})
    if chosen:
        return [{**by_number[n], "cited": True} for n in chosen]
    best = sorted(passages, key=lambda p: (-float(p.get("score") or 0.0), int(p["n"])))[:top_uncited]
    return [{**p, "cited": False} for p in sorted(best, key=lambda p: int(p["n"]))]


#: Sentence ends at which an answer is split to attribute each sentence on its own.
_SENTENCE = re.compile(r"(?<=[。！？!?；;\n])|(?<=\.)\s")
#: Words of an answer's lead-in ("根据文档片段，...", "According to the passages, ..."), not of its content.
_LEAD_IN = frozenset(
    "根据 依据 按照 文档 片段 文档片段 提供 所 资料 信息 内容 显示 可知 和 及 according to the provided passage "
    "passages document documents based on".split()
)
#: A sentence's opening "according to ..." clause: it says where the model thinks the answer is, not the answer.
_LEAD_IN_CLAUSE = re.compile(
    r"^(?:根据|依据|按照|据|从)[^，,。]{0,40}[，,]|^(?:according to|based on)[^,]{0,80},", re.IGNORECASE
)
#: The share of a sentence's own words (those the question does not already say) a passage must hold to be named.
_ATTRIBUTION_COVER = 0.7


def attribute_answer(answer: str, question: str, passages: Sequence[Mapping[str, Any]]) -> list[int]:
    """The passages an answer that cites none rests on, found by its words: for each sentence, the best-ranked
    passage holding at least 70 % of the sentence's own words (by characters; words the question already says and
    function words do not count), in order of first use.

    A small model often answers right and cites nothing (Qwen2.5-1.5B on RGB's zh_refine: 1 correct answer in 9
    named a passage). Asking for markers after the question made it cite, but also stop refusing when no passage
    answers (docs/benchmarks.md); matching the answer's words to the passages names the source without changing
    what the model is asked. The caller marks these sources as attributed, not cited by the model.
    """
    from rag.retrieval.terms import STOPWORDS, tokenize

    asked = set(tokenize(question))
    bodies = [(int(p["n"]), set(tokenize(str(p.get("text") or "")))) for p in passages]
    found: list[int] = []
    for sentence in _SENTENCE.split(_MARKER.sub("", answer)):
        sentence = _LEAD_IN_CLAUSE.sub("", sentence.strip())  # "根据熊猫咖啡机说明书，" names no content
        words = {w for w in tokenize(sentence) if w not in asked and w not in STOPWORDS and w not in _LEAD_IN}
        weight = sum(len(w) for w in words)
        if weight < 2:
            continue
        cover = [(sum(len(w) for w in words & body), n) for n, body in bodies]
        best = max((c for c, _ in cover), default=0)
        if best >= _ATTRIBUTION_COVER * weight:
            number = next(n for c, n in cover if c == best)  # the best-ranked of equals: passages come in rank order
            if number not in found:
                found.append(number)
    return found
