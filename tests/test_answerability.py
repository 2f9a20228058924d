"""The answerability check: before answering, the model is asked whether the passages hold the answer, its first
step read ("no" against "yes"), and at the threshold the answer is the refusal sentence without generating one.

A judging fake (scripted: it says "yes" where the passages hold a keyword) pins the chain's logic, sync and async;
SmolLM2 on llama.cpp shows the real probe: a score in [0, 1], the refusal forced at a threshold it reaches, and the
probe's prompt shared with the answer's, so llama.cpp reads only the few tokens after the question again. No test
asserts what a model judges.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler

from rag.answer.answerability import PROBES, REFUSAL_FLOORS, Calibration, calibration_for, probe_messages
from rag.answer.chain import RagChain
from rag.answer.qa_prompt import INSUFFICIENT_EN, INSUFFICIENT_ZH
from rag.llm.adapter import MixtralInstructLLM
from rag.llm.backends.base import FormattedPrompt, GenerationParams, Piece
from rag.llm.counting import ModelTokens
from rag.retrieval.retriever import HybridRetriever
from tests.documents import ingest_into_store
from tests.fakes import ScriptedBackend, quote_first_passage
from tests.test_chain import DOCUMENTS


class JudgingBackend(ScriptedBackend):
    """Answers like :class:`ScriptedBackend`; asked one step with a gate (the answerability probe), it reports the
    probability of the gate's reply: "yes" 0.9 where the prompt holds ``keyword``, else 0.2; the refusal sentence at
    the answer's first step, ``refusal``."""

    def __init__(self, keyword: str, refusal: float = 0.5) -> None:
        super().__init__(quote_first_passage)
        self.keyword = keyword
        self.refusal = refusal
        self.probes: list[str] = []

    def generate(
        self, prompt: FormattedPrompt, params: GenerationParams, cancelled: Callable[[], bool]
    ) -> Iterator[Piece]:
        if params.refusal is None or params.max_tokens != 1:
            yield from super().generate(prompt, params, cancelled)
            return
        self.probes.append(prompt.text)
        if params.refusal.text in (INSUFFICIENT_EN, INSUFFICIENT_ZH):
            yield Piece("", finish_reason="length", info={"refusal_probability": self.refusal})
            return
        yes = 0.9 if self.keyword in prompt.text else 0.2
        said_yes = params.refusal.text in ("有", "Yes")
        yield Piece("", finish_reason="length", info={"refusal_probability": yes if said_yes else 1 - yes})


@pytest.fixture(scope="module")
def retriever(embedder: Any, tmp_path_factory: pytest.TempPathFactory) -> HybridRetriever:
    store, lexical = ingest_into_store(tmp_path_factory.mktemp("answerability"), DOCUMENTS, embedder)
    return HybridRetriever(store=store, embedder=embedder, lexical=lexical)


def judged_chain(
    retriever: HybridRetriever, keyword: str, threshold: float | None, *, floor: float = 0.0, refusal: float = 0.5
) -> tuple[RagChain, Any]:
    backend = JudgingBackend(keyword, refusal)
    llm = MixtralInstructLLM(client=backend, model="scripted")
    calibration = None if threshold is None else Calibration(threshold, refusal_floor=floor)
    chain = RagChain(retriever, ModelTokens(llm), llm=llm, reader=retriever.reader,
                     document_count=retriever.store.count, k=1, max_context_tokens=60,
                     answerability=calibration)  # fmt: skip
    return chain, backend


def test_the_answer_is_the_refusal_where_the_model_says_the_passages_do_not_hold_it(
    retriever: HybridRetriever,
) -> None:
    question = "How many days per week may employees work remotely?"
    # the passages hold "three days": the check says yes (score 0.1) and the model answers
    chain, backend = judged_chain(retriever, "three days", 0.5)
    answered = chain.runnable.invoke(question)
    assert answered["answerability"] == pytest.approx(0.1)
    assert answered["answer"] != INSUFFICIENT_EN and "three days" in answered["answer"]
    assert len(backend.probes) == 2 and len(backend.prompts) == 1  # two one-step probes, then the answer
    probe, answer = backend.probes[0], backend.prompts[0]
    assert PROBES[False][0] in probe and PROBES[False][0] not in answer
    shared = probe.index(PROBES[False][0])
    assert answer.startswith(probe[:shared].rstrip())  # the answer's prompt up to the question: llama.cpp's cache

    # the same passages judged as not holding it (score 0.8): the refusal, no answer generated, sources still listed
    chain, backend = judged_chain(retriever, "a keyword that is nowhere", 0.5)
    refused = chain.runnable.invoke(question)
    assert refused["answer"] == INSUFFICIENT_EN and refused["answerability"] == pytest.approx(0.8)
    assert backend.prompts == [] and len(backend.probes) == 2
    assert refused["sources"] and not any(source["cited"] for source in refused["sources"])

    # asynchronously the same
    chain, backend = judged_chain(retriever, "a keyword that is nowhere", 0.5)

    async def ask() -> dict[str, Any]:
        return await chain.runnable.ainvoke(question)

    assert asyncio.run(ask())["answer"] == INSUFFICIENT_EN and backend.prompts == []


def test_the_refusal_floor_overrules_a_probe_the_model_s_own_answer_does_not_share(
    retriever: HybridRetriever,
) -> None:
    """Over the threshold, the answer is the refusal only where the model's answer starts with the refusal sentence
    at least the floor's probability (read at the answer prompt's first step, one more probe)."""
    question = "How many days per week may employees work remotely?"
    chain, backend = judged_chain(retriever, "nowhere", 0.5, floor=0.3, refusal=0.4)
    assert chain.runnable.invoke(question)["answer"] == INSUFFICIENT_EN
    assert len(backend.probes) == 3 and backend.prompts == []
    assert backend.probes[2].rstrip() == chain.prepare(question).prompt.rstrip()  # the answer's own prompt
    chain, backend = judged_chain(retriever, "nowhere", 0.5, floor=0.3, refusal=0.1)
    answered = chain.runnable.invoke(question)
    assert answered["answer"] != INSUFFICIENT_EN and answered["answerability"] == pytest.approx(0.8)
    assert len(backend.probes) == 3 and len(backend.prompts) == 1
    # under the threshold the refusal is not read at all
    chain, backend = judged_chain(retriever, "three days", 0.5, floor=0.3, refusal=0.9)
    assert chain.runnable.invoke(question)["answer"] != INSUFFICIENT_EN and len(backend.probes) == 2


def test_without_a_threshold_nothing_is_asked(retriever: HybridRetriever) -> None:
    chain, backend = judged_chain(retriever, "a keyword that is nowhere", None)
    answered = chain.runnable.invoke("How many days per week may employees work remotely?")
    assert "answerability" not in answered and backend.probes == [] and len(backend.prompts) == 1
    assert answered["answer"] != INSUFFICIENT_EN


def test_the_probe_asks_in_the_question_s_language(retriever: HybridRetriever) -> None:
    chain, _ = judged_chain(retriever, "6300", 0.5)
    chinese = chain.prepare("长江有多长？")
    english = chain.prepare("How long is the Yangtze?")
    assert probe_messages(chinese)[-1].content.endswith(PROBES[True][0])
    assert probe_messages(english)[-1].content.endswith(PROBES[False][0])
    assert probe_messages(chinese)[:-1] == chinese.messages[:-1]  # only the last message grows


def test_llama_cpp_scores_the_probe_and_refuses_at_a_threshold_it_reaches(
    retriever: HybridRetriever, smollm2_gguf: Path
) -> None:
    llm = MixtralInstructLLM(model=str(smollm2_gguf), prompt_format="native", n_ctx=2048, max_tokens=16,
                             temperature=0.0, seed=0, n_threads=2)  # fmt: skip

    def chain_at(threshold: float) -> RagChain:
        return RagChain(retriever, ModelTokens(llm), llm=llm, reader=retriever.reader,
                        document_count=retriever.store.count, k=1, max_context_tokens=80,
                        answerability=Calibration(threshold))  # fmt: skip

    class AnswerInfo(BaseCallbackHandler):
        info: dict[str, Any] | None = None

        def on_llm_end(self, response: Any, **kwargs: Any) -> None:
            self.info = dict(response.generations[0][0].generation_info or {})

    question = "长江有多长？"
    seen = AnswerInfo()
    measured = chain_at(1.0).runnable.invoke(question, config={"callbacks": [seen]})
    score = measured["answerability"]
    assert isinstance(score, float) and 0.0 <= score < 1.0
    # the answer came after the probe: llama.cpp read again only what follows the question (the template's tail)
    assert seen.info is not None and seen.info["prompt_tokens"] - seen.info["cached_prompt_tokens"] <= 12, seen.info
    # at a threshold the score reaches, the refusal (whatever the model would have written)
    forced = chain_at(max(score, 1e-6)).runnable.invoke(question)
    assert forced["answer"] == INSUFFICIENT_ZH and forced["answerability"] == pytest.approx(score, abs=1e-6)


def test_a_set_threshold_takes_the_refusal_floor_measured_for_the_model() -> None:
    qwen = "Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
    floor = REFUSAL_FLOORS["qwen2.5-coder-1.5b-instruct"]
    assert calibration_for(None, qwen) is None and calibration_for(0.0, qwen) is None  # not asked by default
    assert calibration_for(0.3, qwen) == Calibration(0.3, floor)  # its floor kept
    assert calibration_for(0.3, "/models/chinese-mixtral-instruct-q4_0.gguf") == Calibration(0.3, 0.0)
