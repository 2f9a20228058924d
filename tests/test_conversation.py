"""Follow-ups extend the previous turn's prompt: the evidence already given stays in place, the new question's own
passages come after it (numbered on), no model call comes before the answer (or, with ``follow_up_query="rewrite"``,
the rewrite is asked at the end of the same prompt), and llama.cpp reuses its cache through the chain. The scripted
backend pins the answers; SmolLM2 shows the cache reuse (llama.cpp's own count of cached prompt tokens, whatever it
writes)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler

from rag.answer.chain import RagChain
from rag.answer.context import render_context
from rag.answer.qa_prompt import qa_messages
from rag.llm.adapter import MixtralInstructLLM
from rag.llm.counting import ModelTokens
from rag.llm.prompt import render_instruct_prompt
from rag.retrieval.retriever import HybridRetriever
from tests.documents import ingest_into_store
from tests.fakes import ScriptedBackend, scripted_llm
from tests.test_chain import DOCUMENTS

FIRST = "How many days per week may employees work remotely?"
FOLLOW_UP = "And how long must passwords be?"


@pytest.fixture(scope="module")
def retriever(embedder: Any, tmp_path_factory: pytest.TempPathFactory) -> HybridRetriever:
    store, lexical = ingest_into_store(tmp_path_factory.mktemp("conversation-store"), DOCUMENTS, embedder)
    return HybridRetriever(store=store, embedder=embedder, lexical=lexical)


def quote_passage_with(word: str) -> Any:
    """A faithful model: the sentence of the passage that mentions ``word``, cited with that passage's number."""

    def script(prompt: str) -> str:
        if "Output only the rewritten question" in prompt:
            return "How long must passwords be at least?"
        blocks = re.findall(r"^\[(\d+)\][^\n]*\n(.*?)(?=^\[\d+\]|^## |\Z)", prompt, flags=re.MULTILINE | re.DOTALL)
        for number, body in blocks:
            sentence = next((s for s in re.split(r"(?<=[.!?])\s+", body) if word in s), None)
            if sentence:
                return f"{sentence.strip()} [{number}]"
        return "Not in the documents."

    return script


def chain_of(retriever: HybridRetriever, llm: Any, **options: Any) -> RagChain:
    return RagChain(
        retriever, ModelTokens(llm), llm=llm, reader=retriever.reader, document_count=retriever.store.count, k=2,
        **options,
    )  # fmt: skip


def conversation(chain: RagChain) -> tuple[dict[str, Any], dict[str, Any]]:
    first = chain.runnable.invoke(FIRST)
    history = [("user", FIRST), ("assistant", first["answer"])]
    second = chain.runnable.invoke({"question": FOLLOW_UP, "chat_history": history})
    return first, second


@pytest.mark.parametrize("mode", ["history", "rewrite"])
def test_a_follow_up_extends_the_previous_prompt_and_cites_its_own_new_passage(
    retriever: HybridRetriever, mode: str
) -> None:
    backend = ScriptedBackend(lambda prompt: quote_passage_with("three days" if "remotely?" in prompt[-80:]
                                                                else "14 characters")(prompt))  # fmt: skip
    llm = scripted_llm()
    llm.client = backend
    # a small budget per turn: the first question's evidence cannot already hold the follow-up's
    first, second = conversation(chain_of(retriever, llm, max_context_tokens=60, follow_up_query=mode))
    if mode == "rewrite":
        answer_one, rewrite, answer_two = backend.prompts
    else:
        answer_one, answer_two = backend.prompts  # nothing is generated before the answer
    assert "14 characters" not in answer_one
    assert "three days per week" in first["answer"] and first["sources"][0]["cited"]
    before = answer_one + " " + first["answer"] + "</s>"
    assert answer_two.startswith(before)  # the whole previous turn is the prefix
    if mode == "rewrite":
        assert rewrite.startswith(before)
    new_block = answer_two[len(before) :]
    assert "14 characters" in new_block and "three days per week" not in new_block  # only the new evidence
    numbers = {int(n) for n in re.findall(r"^\[(\d+)\]", answer_one, flags=re.MULTILINE)}
    [cited] = second["sources"]
    assert cited["cited"] and "14 characters" in cited["text"] and cited["n"] > max(numbers)  # numbered on
    assert second["answer"].endswith(f"[{cited['n']}]")
    assert second["standalone_question"] == ("How long must passwords be at least?" if mode == "rewrite" else FOLLOW_UP)


def test_without_reuse_the_follow_up_starts_afresh(retriever: HybridRetriever) -> None:
    backend = ScriptedBackend(quote_passage_with("days"))
    llm = scripted_llm()
    llm.client = backend
    # (with the rewrite, whose question retrieves other evidence: a fresh prompt with the same evidence would
    # start like the first one anyway, the prompt's stable order puts the history after the evidence)
    conversation(chain_of(retriever, llm, reuse_conversation=False, follow_up_query="rewrite"))
    answer_one, _, answer_two = backend.prompts
    assert not answer_two.startswith(answer_one)


def tight_chain(retriever: HybridRetriever, room: int, answer: str | None = None) -> tuple[RagChain, int]:
    """A chain whose window leaves ``room`` tokens beside the first question's prompt without evidence and a
    64-token answer, and that window (``answer``: what the model writes, else a quote). Relative to the prompt, so
    the instructions' wording does not decide the test."""
    script = quote_passage_with("days") if answer is None else (lambda prompt: answer)
    overhead = ModelTokens(scripted_llm()).count_prompt(render_instruct_prompt(qa_messages(FIRST, "")))
    window = overhead + 64 + room
    small = scripted_llm(max_tokens=64)
    small.client = ScriptedBackend(script, context_window=window)
    return chain_of(retriever, small), window


def test_a_follow_up_without_room_drops_the_first_evidence_from_its_end(retriever: HybridRetriever) -> None:
    chain, window = tight_chain(retriever, 142)  # two or three short passages, and no room for more after them
    first_prepared = chain.prepare(FIRST)
    first = chain.runnable.invoke(FIRST)
    given = first_prepared.packed.passages
    assert not any("14 characters" in p.text for p in given[:1])  # the follow-up's best passage was not first
    prepared = chain.prepare({"question": FOLLOW_UP, "chat_history": [("user", FIRST), ("assistant", first["answer"])]})
    assert prepared.follows_up and not any("starts afresh" in note for note in prepared.notes)
    assert prepared.prompt_tokens + 64 <= window
    kept = prepared.first_block
    assert kept is not None and kept < len(given)  # the least relevant of the first evidence went...
    assert prepared.packed.passages[:kept] == given[:kept]  # ...from its end: the rest is as it was
    whole = render_context(given)
    cut = first_prepared.prompt.index(whole) + len(render_context(given[:kept]))
    assert prepared.prompt.startswith(first_prepared.prompt[:cut])  # a prefix of the cached prompt
    assert first["answer"] in prepared.prompt[cut:]  # the turns after the cut are read again
    own = [p for p in prepared.packed.passages[kept:] if "14 characters" in p.text]
    assert own and own[0].n > max(p.n for p in given)  # numbered after every number given, dropped ones included
    assert 0 < prepared.reused_tokens < first_prepared.prompt_tokens
    assert prepared.numbered >= max(p.n for p in given)  # the next turn numbers after the dropped ones too


def test_a_follow_up_starts_afresh_when_even_no_earlier_evidence_leaves_room(retriever: HybridRetriever) -> None:
    long_answer = "Employees may work remotely up to three days per week, as the handbook says. " * 6
    chain, window = tight_chain(retriever, 82, answer=long_answer)
    first = chain.runnable.invoke(FIRST)
    prepared = chain.prepare({"question": FOLLOW_UP, "chat_history": [("user", FIRST), ("assistant", first["answer"])]})
    assert not prepared.follows_up and any("starts afresh" in note for note in prepared.notes)  # the window was full
    assert prepared.prompt_tokens + 64 <= window
    assert any("14 characters" in passage.text for passage in prepared.packed.passages)  # its own best passage


class _CachedTokens(BaseCallbackHandler):
    def __init__(self) -> None:
        self.runs: list[tuple[int, int]] = []

    def on_llm_end(self, response: Any, **kwargs: Any) -> None:
        info = response.generations[0][0].generation_info or {}
        self.runs.append((int(info.get("prompt_tokens", 0)), int(info.get("cached_prompt_tokens", 0))))


def test_llama_cpp_reuses_its_cache_through_the_chain(retriever: HybridRetriever, smollm2_gguf: Any) -> None:
    llm = MixtralInstructLLM(model=str(smollm2_gguf), prompt_format="native", n_ctx=4096, max_tokens=16,
                             temperature=0.0, seed=0, n_threads=2)  # fmt: skip
    for mode in ("history", "rewrite"):
        seen = _CachedTokens()
        chain = chain_of(retriever, llm, follow_up_query=mode)
        first = chain.runnable.invoke(FIRST, config={"callbacks": [seen]})
        history = [("user", FIRST), ("assistant", first["answer"])]
        chain.runnable.invoke({"question": FOLLOW_UP, "chat_history": history}, config={"callbacks": [seen]})
        if mode == "rewrite":
            (first_prompt, _), (_, rewrite_cached), (follow_prompt, follow_cached) = seen.runs
            assert rewrite_cached >= 0.9 * first_prompt  # the rewrite did not evict the conversation
        else:
            (first_prompt, _), (follow_prompt, follow_cached) = seen.runs  # no model call before the answer
        assert follow_cached >= 0.9 * first_prompt and follow_prompt > first_prompt  # only the new part was read


def test_the_evidence_budget_is_what_the_model_reads_within_the_wait(retriever: HybridRetriever, tmp_path: Any) -> None:
    from rag.llm.speed import PromptSpeed

    slow = PromptSpeed("model|machine", fixed=100.0)  # 100 prompt tokens/s: 3 s reads 300 tokens
    llm = scripted_llm()
    chain = chain_of(retriever, llm, prompt_speed=slow, max_wait_s=3.0)
    prepared = chain.prepare(FIRST)
    assert prepared.budget == 256  # never less than a useful minimum of evidence
    [note] = prepared.notes
    assert note.startswith("256 of ") and "limited by the 3 s wait" in note and "100 prompt tokens/s" in note
    fast = chain_of(retriever, llm, prompt_speed=PromptSpeed("m|g", fixed=50_000.0), max_wait_s=3.0).prepare(FIRST)
    assert not fast.notes and fast.budget > 256  # a GPU reads the whole window within the wait

    measured = PromptSpeed("model|machine", path=tmp_path / "prompt-speed.json")
    assert measured.tokens_per_s() is None  # unknown until the first real prompt: no limit yet
    measured.observe(100, 0.1)  # too short a prompt to measure reading speed
    assert measured.tokens_per_s() is None
    measured.observe(2000, 4.0)
    measured.observe(3000, 5.0)  # smoothed: (500 + 600) / 2
    again = PromptSpeed("model|machine", path=tmp_path / "prompt-speed.json")
    assert again.tokens_per_s() == 550.0  # kept per model and machine in the data dir
    (tmp_path / "prompt-speed.json").write_text("{not json", encoding="utf-8")
    assert PromptSpeed("model|machine", path=tmp_path / "prompt-speed.json").tokens_per_s() is None


def test_a_relevance_floor_keeps_noise_out_of_the_budget(retriever: HybridRetriever) -> None:
    llm = scripted_llm()
    everything = chain_of(retriever, llm).prepare(FIRST)
    floored = chain_of(retriever, llm, relevance_floor=0.99).prepare(FIRST)
    files = {p.file_name for p in everything.packed.passages}
    assert len(files) == len(DOCUMENTS)  # without a floor, the small corpus fills the budget
    assert {p.file_name for p in floored.packed.passages} == {"handbook.md"}  # the top hits (k=2) and nothing far below
    assert floored.packed.tokens < everything.packed.tokens


def test_a_follow_up_knows_how_much_of_its_prompt_is_already_read(retriever: HybridRetriever) -> None:
    llm = scripted_llm()
    chain = chain_of(retriever, llm, max_context_tokens=60)
    first_prepared = chain.prepare(FIRST)
    first = chain.runnable.invoke(FIRST)
    follow = chain.prepare({"question": FOLLOW_UP, "chat_history": [("user", FIRST), ("assistant", first["answer"])]})
    assert follow.follows_up
    assert follow.reused_tokens == first_prepared.prompt_tokens + llm.tokenizer.count(first["answer"])
    assert 0 < follow.prompt_tokens - follow.reused_tokens < follow.prompt_tokens // 2  # only the new part is read


#: Office rules besides the handbook: a corpus with more than a follow-up's best passages left to read.
OFFICE_RULES = {
    f"rules-{n}.md": f"# {topic}\n\n{rule}\n"
    for n, (topic, rule) in enumerate([
        ("Parking", "Visitors park in the north lot and register their car plate at the front desk."),
        ("Kitchen", "The kitchen fridge is emptied every Friday afternoon; label your food with your name."),
        ("Printing", "Colour printing needs a cost centre code entered at the printer's touch screen."),
        ("Travel", "Train travel above four hours may be booked in first class with a manager's approval."),
        ("Meeting rooms", "Meeting rooms are booked in the calendar and released after ten minutes unused."),
        ("Bicycles", "Bicycles go in the basement racks; the door code changes on the first of each month."),
        ("Laptops", "Laptops are replaced every four years; the old one is wiped by the IT service desk."),
        ("Badges", "A lost badge is blocked by calling security; the replacement costs nothing the first time."),
    ])
}  # fmt: skip


@pytest.fixture(scope="module")
def office(embedder: Any, tmp_path_factory: pytest.TempPathFactory) -> HybridRetriever:
    store, lexical = ingest_into_store(tmp_path_factory.mktemp("office"), {**DOCUMENTS, **OFFICE_RULES}, embedder)
    return HybridRetriever(store=store, embedder=embedder, lexical=lexical)


def test_a_follow_up_reads_what_is_new_to_it_not_another_wait(
    office: HybridRetriever, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first turn the wait cut short leaves room in the window; the follow-up still reads only its best passages
    that are new (or a share of a fresh turn's evidence): not a whole wait of new evidence again."""
    from rag.llm.speed import PromptSpeed

    llm = scripted_llm()
    slow = PromptSpeed("model|machine", fixed=100.0)  # 3 s: 300 tokens; a fresh turn gets the 256 minimum

    def follow_up(chain: RagChain) -> tuple[Any, Any]:
        first_prepared = chain.prepare(FIRST)
        first = chain.runnable.invoke(FIRST)
        history = [("user", FIRST), ("assistant", first["answer"])]
        return first_prepared, chain.prepare({"question": FOLLOW_UP, "chat_history": history})

    first, follow = follow_up(chain_of(office, llm, prompt_speed=slow, max_wait_s=3.0))
    assert follow.follows_up and first.budget == 256
    new = follow.packed.passages[len(first.packed.passages) :]
    assert any("14 characters" in p.text for p in new)  # its own best passage is there
    share = int(0.25 * 300)  # the follow-up share of what a fresh turn reads within the wait
    # its two best new passages (two queries: the follow-up, and it after the first question), at most the two
    # largest chunks there are, and their headings
    count = ModelTokens(llm).count
    largest = sorted((count(text) for text in [*DOCUMENTS.values(), *OFFICE_RULES.values()]), reverse=True)[:2]
    assert 0 < follow.packed.tokens - first.packed.tokens <= max(share, sum(largest) + 32) + 16 * len(new)

    # the same conversation with the follow-up's new evidence uncapped (as before): a whole wait of it
    monkeypatch.setattr(RagChain, "_new_evidence_cap", lambda *args: None)
    _, uncapped = follow_up(chain_of(office, llm, prompt_speed=slow, max_wait_s=3.0))
    assert uncapped.follows_up
    assert uncapped.prompt_tokens - uncapped.reused_tokens > follow.prompt_tokens - follow.reused_tokens
