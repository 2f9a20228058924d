"""The chain as LangChain apps use it: async end to end, typed input and output, as a tool of an agent, with a chat
model (ours or any other). The answers are pinned by the scripted backend (real Mixtral tokenizer, real store,
real embedder, real BM25); what SmolLM2 writes differs between CPUs."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import time
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage

from rag.answer.chain import RagChain
from rag.errors import ConfigError
from rag.llm.chat_model import ChatMixtralInstruct
from rag.llm.counting import ModelTokens
from rag.retrieval.retriever import HybridRetriever
from tests.documents import ingest_into_store
from tests.fakes import ScriptedBackend, quote_first_passage, scripted_llm
from tests.test_chain import DOCUMENTS

QUESTION = "How many days per week may employees work remotely?"


@pytest.fixture(scope="module")
def retriever(embedder: Any, tmp_path_factory: pytest.TempPathFactory) -> HybridRetriever:
    store, lexical = ingest_into_store(tmp_path_factory.mktemp("async-store"), DOCUMENTS, embedder)
    return HybridRetriever(store=store, embedder=embedder, lexical=lexical)


def chain_of(retriever: HybridRetriever, llm: Any, tokens: ModelTokens | None = None) -> RagChain:
    return RagChain(
        retriever, tokens or ModelTokens(llm), llm=llm, reader=retriever.reader, document_count=retriever.store.count
    )


def assert_cites_remote_work(result: dict[str, Any]) -> None:
    assert (
        result["answer"].startswith("Employees may work remotely up to three days per week")
        and "[1]" in result["answer"]
    )
    [source] = result["sources"]
    assert source["cited"] and source["n"] == 1 and "three days per week" in source["text"]


async def test_astream_events_give_the_model_tokens_and_the_final_output(retriever: HybridRetriever) -> None:
    chain = chain_of(retriever, scripted_llm()).runnable
    events = [event async for event in chain.astream_events(QUESTION, version="v2")]
    tokens = [event["data"]["chunk"].text for event in events if event["event"] == "on_llm_stream"]
    assert len(tokens) >= 3  # the model's own token events reach the app
    [end] = [event for event in events if event["event"] == "on_chain_end" and event["name"] == "rag_chain"]
    output = end["data"]["output"]
    assert output["answer"] == "".join(tokens)  # every cited number is valid: nothing was filtered out
    assert_cites_remote_work(output)
    streamed = [event["data"]["chunk"] for event in events if event["event"] == "on_chain_stream"
                and event["name"] == "rag_chain"]  # fmt: skip
    assert sum("sources" in chunk for chunk in streamed) == 1 and "sources" in streamed[-1]  # the sources once


async def test_ainvoke_equals_invoke_and_abatch_works(retriever: HybridRetriever) -> None:
    chain = chain_of(retriever, scripted_llm()).runnable
    expected = chain.invoke(QUESTION)
    assert await chain.ainvoke(QUESTION) == expected
    assert_cites_remote_work(expected)
    batched = await chain.abatch([QUESTION, {"question": QUESTION, "chat_history": []}])
    assert batched == [expected, expected]


async def test_concurrent_questions_leave_the_event_loop_free(retriever: HybridRetriever) -> None:
    chain = chain_of(retriever, scripted_llm(delay=0.02)).runnable  # a slow model: 20 ms a piece
    ticks = 0
    done = asyncio.Event()

    async def tick() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0.005)

    ticker = asyncio.create_task(tick())
    started = time.perf_counter()
    first, second = await asyncio.gather(chain.ainvoke(QUESTION), chain.ainvoke(QUESTION))
    elapsed = time.perf_counter() - started
    done.set()
    await ticker
    assert_cites_remote_work(first) and assert_cites_remote_work(second)  # type: ignore[func-returns-value]
    assert elapsed > 0.2  # generation really took time ...
    assert ticks >= 0.5 * elapsed / 0.005  # ... and the loop kept ticking all along (blocked, it would not)


async def test_closing_an_async_stream_stops_generation(retriever: HybridRetriever) -> None:
    backend = ScriptedBackend("word " * 400, delay=0.01, piece_chars=5)
    llm = scripted_llm(max_tokens=900)
    llm.client = backend
    chain = chain_of(retriever, llm).runnable
    async with contextlib.aclosing(chain.astream(QUESTION)) as stream:  # type: ignore[type-var]
        async for chunk in stream:
            if chunk.get("answer"):
                break
    # LangChain's own stream wrappers are closed when they are collected (CPython: at once, unless a reference
    # cycle keeps them a while); ours close what they wrap explicitly
    gc.collect()
    for _ in range(500):  # the worker thread notices at its next piece (a loaded machine: allow 5 s)
        if backend.finishes:
            break
        await asyncio.sleep(0.01)
    assert backend.finishes == ["cancelled"]


def test_input_and_output_are_typed_and_the_chain_is_a_tool(retriever: HybridRetriever) -> None:
    chain = chain_of(retriever, scripted_llm()).runnable
    inputs = chain.get_input_jsonschema()
    assert {"question", "chat_history", "system", "options"} <= set(inputs["properties"])
    assert inputs["required"] == ["question"]
    outputs = chain.get_output_jsonschema()
    assert {"answer", "sources", "standalone_question", "context_tokens"} <= set(outputs["properties"])
    assert "cited" in outputs["$defs"]["RagSource"]["properties"]

    tool = chain.as_tool()  # no arguments needed: the schema says what it takes
    assert set(tool.args) == {"question", "chat_history", "system", "options"}

    class ToolCallingFake(GenericFakeChatModel):
        def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
            return self

    from langchain.agents import create_agent

    agent_model = ToolCallingFake(
        messages=iter(
            [
                AIMessage("", tool_calls=[{"name": tool.name, "args": {"question": QUESTION}, "id": "call-1"}]),
                AIMessage("Three days a week."),
            ]
        )
    )
    agent = create_agent(agent_model, tools=[tool])
    state = agent.invoke({"messages": [HumanMessage("Ask the documents about remote work.")]})
    [result] = [m for m in state["messages"] if isinstance(m, ToolMessage)]
    assert result.name == "rag_chain"
    answer = json.loads(str(result.content))  # the agent reads the answer and its sources
    assert_cites_remote_work(answer)
    assert state["messages"][-1].content == "Three days a week."


def test_per_question_options_and_a_clear_error_for_bad_ones(retriever: HybridRetriever) -> None:
    backend = ScriptedBackend(quote_first_passage)
    llm = scripted_llm()
    llm.client = backend
    chain = chain_of(retriever, llm).runnable
    small = chain.invoke({"question": QUESTION, "options": {"k": 1, "max_context_tokens": 40, "max_tokens": 4}})
    assert 0 < small["context_tokens"] <= 40
    assert len(llm.tokenizer.encode_text(small["answer"])) <= 4  # this answer's own max_tokens
    with pytest.raises(ConfigError, match=r"options \(k: "):
        chain.invoke({"question": QUESTION, "options": {"k": 0}})
    with pytest.raises(ConfigError, match="temprature"):
        chain.invoke({"question": QUESTION, "options": {"temprature": 0.1}})


class _Prompts(BaseCallbackHandler):
    def __init__(self) -> None:
        self.messages: list[list[BaseMessage]] = []

    def on_chat_model_start(self, serialized: Any, messages: list[list[BaseMessage]], **kwargs: Any) -> None:
        self.messages.extend(messages)


async def test_the_chain_speaks_to_chat_models(retriever: HybridRetriever) -> None:
    backend = ScriptedBackend(quote_first_passage)
    chat = ChatMixtralInstruct(client=backend, model="scripted")
    ours = chain_of(retriever, chat)
    result = await ours.runnable.ainvoke(QUESTION)
    assert_cites_remote_work(result)
    [prompt] = backend.prompts  # the same Mixtral-Instruct prompt the LLM path renders
    prepared = ours.prepare(QUESTION)
    assert prompt == prepared.prompt and prepared.prompt_tokens == chat.count_turn_tokens(prepared.messages)

    # any other LangChain chat model: messages in (system instructions and evidence, then the question)
    other = GenericFakeChatModel(messages=iter([AIMessage("Up to three days per week [1]. Also [9].")]))
    seen = _Prompts()
    chain = chain_of(retriever, other, tokens=ModelTokens(None, context_window=4096, max_tokens=256)).runnable
    pieces = [chunk async for chunk in chain.astream(QUESTION, config={"callbacks": [seen]})]
    answer = "".join(chunk.get("answer", "") for chunk in pieces)
    assert answer == "Up to three days per week [1]. Also."  # an invented [9] is removed while streaming
    [messages] = seen.messages
    assert [m.type for m in messages] == ["system", "human"] and "three days per week" in str(messages[0].content)
    assert QUESTION in str(messages[1].content)
    assert [s["n"] for s in pieces[-1]["sources"]] == [1]


async def test_call_settings_override_the_question_options_in_both_apis(retriever: HybridRetriever) -> None:
    backend = ScriptedBackend(quote_first_passage)
    llm = scripted_llm()
    llm.client = backend
    chain = chain_of(retriever, llm)
    prepared = chain.prepare({"question": QUESTION, "options": {"max_tokens": 200}})
    synced = [piece for piece in chain.generate(prepared, max_tokens=4)]
    streamed = [piece async for piece in chain.agenerate(prepared, max_tokens=4)]
    assert synced == streamed  # the same key given twice is this call's, not a TypeError
    answer = "".join(piece.get("answer", "") for piece in streamed)
    assert 0 < len(llm.tokenizer.encode_text(answer)) <= 4
