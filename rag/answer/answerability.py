"""Does the evidence hold the answer? Asked of the model before it answers, read from its first token.

A small model given passages on the question's topic that do not hold its answer answers from them anyway (RGB's
negative rejection: Qwen2.5-Coder-1.5B refused 9 of 30 such sets). Asked the question outright, after the
evidence and the question ("上面的文档片段里有没有这个问题的答案？"), it tells the two kinds of sets apart better than
its answer does: the stage reads the probability of its "no" against its "yes" (one step, nothing generated; the
prompt up to the appended question is the answer's own, so with llama.cpp's cache it costs the appended tokens and
two steps) and, at or above the threshold, the answer is the refusal sentence without asking for it. Measured and
tuned on RGB's dev slices (``bench/answerability.py``, ``docs/benchmarks.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rag.answer.layout import PromptLayout, langchain_messages
from rag.answer.prepared import PreparedQuestion
from rag.answer.qa_prompt import INSUFFICIENT_EN, INSUFFICIENT_ZH, is_chinese
from rag.llm.prompt import ChatMessage
from rag.llm.refusal import RefusalGate

__all__ = [
    "REFUSAL_FLOORS",
    "AnswerabilityCheck",
    "Calibration",
    "Judgement",
    "calibration_for",
    "probe_messages",
    "reported_refusal_probability",
]

#: The question appended to the user's message, and the model's two replies, by the question's language.
PROBES = {
    True: ("先不要回答。只判断：上面的文档片段里有没有这个问题的答案？有就回答“有”，没有就回答“没有”。", "有", "没有"),
    False: (
        "Do not answer yet. Only judge: do the passages above hold the answer to this question? Reply Yes if they "
        "do, No if they do not.",
        "Yes",
        "No",
    ),
}


@dataclass(frozen=True)
class Calibration:
    """When a model's answer is the refusal: measured per model (``bench/answerability.py``)."""

    threshold: float
    """Refuse where the probe's score (the model's "no" against its "yes") reaches this share..."""
    refusal_floor: float = 0.0
    """...and the model's own answer starts with the refusal sentence at least this probability (its first step,
    read only where the score reached the threshold). On RGB's dev sets the two together keep the questions whose
    answer is there: a probe that leans to "no" where the model is sure of its answer is overruled."""


#: The refusal floor a set threshold is combined with, measured per model (``bench/answerability.py`` on RGB's
#: zh_refine dev slice, ``docs/benchmarks.md``), by a part of the model's file or repository name, lower case. A
#: score is a model's own: one model's says nothing of another's. The demo model's measured point is threshold 0.14
#: with floor 0.1; not on by default: it lifts rejection from 0.300 to 0.733 but refuses three answerable questions
#: of thirty end to end (false refusals 0.033 -> 0.133), the costlier mistake for a person asking their documents.
REFUSAL_FLOORS: dict[str, float] = {"qwen2.5-coder-1.5b-instruct": 0.1}


def calibration_for(threshold: float | None, model_name: str) -> Calibration | None:
    """What a chain uses: None (not asked) without a ``threshold`` or at 0; else ``threshold`` with the refusal
    floor measured for ``model_name`` (0 for a model not measured)."""
    if not threshold:
        return None
    name = model_name.lower()
    return Calibration(threshold, next((floor for part, floor in REFUSAL_FLOORS.items() if part in name), 0.0))


@dataclass(frozen=True)
class Judgement:
    """The check's outcome for one question."""

    score: float | None
    """P(no) / (P(no) + P(yes)) at the probe's first step (None: the model reports no probabilities)."""
    refuse: bool = False


def probe_messages(prepared: PreparedQuestion) -> list[ChatMessage]:
    """The question's own prompt with the answerability question at the end of its last message."""
    probe = PROBES[is_chinese(prepared.question)][0]
    messages = list(prepared.messages)
    last = messages[-1]
    messages[-1] = ChatMessage(last.role, f"{last.content}\n\n{probe}")
    return messages


@dataclass
class AnswerabilityCheck:
    """The stage: asks, reads the first steps, says whether the answer is the refusal."""

    layout: PromptLayout
    calibration: Calibration

    def judge(self, model: Any, answer_input: Any, prepared: PreparedQuestion) -> Judgement:
        """``answer_input``: what the model is given to answer (the prompt, or the messages of a chat model)."""
        score = self.score(model, prepared)
        if score is None or score < self.calibration.threshold:
            return Judgement(score)
        if self.calibration.refusal_floor <= 0.0:
            return Judgement(score, refuse=True)
        refusal = INSUFFICIENT_ZH if is_chinese(prepared.question) else INSUFFICIENT_EN
        probability = self._first_step(model, answer_input, refusal)  # the answer's own prompt: cached
        return Judgement(score, probability is not None and probability >= self.calibration.refusal_floor)

    def score(self, model: Any, prepared: PreparedQuestion) -> float | None:
        """P(no) / (P(no) + P(yes)) at the probe's first step; None when the model reports no probability (a model
        that is not this project's)."""
        _, yes, no = PROBES[is_chinese(prepared.question)]
        messages = probe_messages(prepared)
        model_input: Any = langchain_messages(messages) if self.layout.chat else self.layout.render(messages)[0]
        p_no = self._first_step(model, model_input, no)
        if p_no is None:  # a backend that reports no probability (a model server): not asked again
            return None
        p_yes = self._first_step(model, model_input, yes) or 0.0
        return p_no / (p_no + p_yes) if p_no + p_yes > 0 else 0.5

    @staticmethod
    def _first_step(model: Any, model_input: Any, reply: str) -> float | None:
        # one step: the prompts after the first share it up to the question, so llama.cpp reads their ends only
        result = model.generate([model_input], max_tokens=1, refusal=RefusalGate(reply, None))
        return reported_refusal_probability(result.generations[0][0])


def reported_refusal_probability(generation: Any) -> float | None:
    """The first-step probability a LangChain generation of this project's models reports (an LLM's in its
    ``generation_info``, a chat model's in its message's ``response_metadata``); None where there is none."""
    message = getattr(generation, "message", None)
    info = generation.generation_info or getattr(message, "response_metadata", None) or {}
    probability = info.get("refusal_probability")
    return None if probability is None else float(probability)
