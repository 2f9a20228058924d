"""MixtralInstructLLM on real llama.cpp: the tiny Mixtral GGUF and SmolLM2-135M-Instruct."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import PromptTemplate

from rag.errors import ConfigError, ContextOverflowError, ModelNotFoundError
from rag.llm.adapter import MixtralInstructLLM
from rag.llm.backends.llama_cpp import LlamaTokenizer
from rag.llm.factory import infer_backend
from rag.llm.prompt import render_instruct_prompt
from rag.llm.tokenizer import MixtralTokenizer
from rag.settings import Settings
from tests.llm.test_prompt import CONVERSATIONS, mistral_reference

QUESTION = "What is the capital of France? Answer in one word."


# -- construction, resolution and failures
def test_construction_is_instant_and_loads_nothing(tmp_path: Path) -> None:
    started = time.perf_counter()
    llm = MixtralInstructLLM(model=str(tmp_path / "missing.gguf"), max_tokens=5, temperature=0.1)
    assert time.perf_counter() - started < 0.5
    assert not llm.is_loaded
    assert llm.max_tokens == 5 and llm.temperature == 0.1
    with pytest.raises(ModelNotFoundError, match="RAG_LLM_MODEL"):
        llm.invoke("hello")


def test_a_file_that_is_not_a_gguf_is_a_clear_error(tmp_path: Path) -> None:
    fake = tmp_path / "model.gguf"
    fake.write_text("this is not a model")
    llm = MixtralInstructLLM(model=str(fake))
    with pytest.raises(ConfigError, match="not a GGUF file"):
        llm.invoke("hello")
    with pytest.raises(ConfigError, match="not a GGUF file"):
        LlamaTokenizer.from_gguf(fake)


def test_a_hub_name_offline_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    llm = MixtralInstructLLM()  # the default: Chinese-Mixtral-Instruct Q4_0 on the hub
    with pytest.raises(ModelNotFoundError, match="hfl/chinese-mixtral-instruct-gguf"):
        llm.warm_up()


def test_backend_inference(tmp_path: Path, tiny_mixtral_hf: Path) -> None:
    assert infer_backend("x/y/model.gguf") == "llama_cpp"
    assert infer_backend("anything", base_url="http://127.0.0.1:1/v1") == "openai"
    assert infer_backend(str(tiny_mixtral_hf)) == "transformers"
    assert infer_backend("hfl/chinese-mixtral-instruct") == "transformers"
    assert infer_backend("HuggingFaceTB/SmolLM2-135M-Instruct") == "llama_cpp"  # a bundled GGUF
    assert infer_backend("Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF") == "llama_cpp"  # a split bundled GGUF, by repository
    assert infer_backend("m.gguf", backend="transformers") == "transformers"
    with pytest.raises(ConfigError, match="RAG_LLM_BACKEND"):
        infer_backend("m.gguf", backend="onnx")


def test_from_settings(smollm2_gguf: Path) -> None:
    settings = Settings(
        llm_model=str(smollm2_gguf), llm_n_ctx=1024, llm_max_tokens=7, llm_temperature=0.0, llm_seed=3,
        llm_top_p=0.5, llm_repeat_penalty=1.0, llm_n_threads=2,
    )  # fmt: skip
    llm = MixtralInstructLLM.from_settings(settings, prompt_format="native")
    assert (llm.model, llm.n_ctx, llm.max_tokens, llm.seed, llm.top_p) == (str(smollm2_gguf), 1024, 7, 3, 0.5)
    assert llm.backend_name == "llama_cpp" and llm.prompt_format == "native"
    assert llm.context_window == 1024 and not llm.is_loaded
    remote = MixtralInstructLLM.from_settings(Settings(llm_base_url="http://127.0.0.1:9/v1", llm_timeout=3))
    assert remote.backend_name == "openai" and remote.timeout == 3


def test_stop_in_constructor_and_call_is_a_value_error(smollm2_gguf: Path) -> None:
    llm = MixtralInstructLLM(model=str(smollm2_gguf), stop=["\n"], n_ctx=512)
    with pytest.raises(ValueError, match="stop"):
        llm.invoke("hello", stop=["."])
    assert not llm.is_loaded


def test_langchain_metadata(smollm2_gguf: Path) -> None:
    llm = MixtralInstructLLM(model=str(smollm2_gguf), temperature=0.3, max_tokens=9)
    assert llm._llm_type == "chinese-mixtral-instruct"
    assert llm._identifying_params["model"] == str(smollm2_gguf)
    assert llm._identifying_params["backend"] == "llama_cpp"
    params = llm._get_ls_params(stop=["x"])
    assert params["ls_provider"] == "llamacpp" and params["ls_model_name"] == str(smollm2_gguf)
    assert params["ls_temperature"] == 0.3 and params["ls_max_tokens"] == 9 and params["ls_stop"] == ["x"]
    assert not llm.is_loaded


# -- the tiny Mixtral GGUF: real MoE code path, real vocabulary
def test_tiny_mixtral_loads_generates_and_tokenizes_like_mistral_common(
    tiny_mixtral_gguf: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="rag.llm.adapter"):
        llm = MixtralInstructLLM(model=str(tiny_mixtral_gguf), max_tokens=6, temperature=0.0, n_threads=2)
        assert llm.context_window == 4096  # n_ctx 32768 clamped to the GGUF's trained context
    assert "exceeds the trained context" in caplog.text and "RAG_LLM_N_CTX" in caplog.text
    text = llm.invoke(CONVERSATIONS[2][-1][1])
    assert isinstance(text, str)
    client = llm.backend_instance.client  # type: ignore[attr-defined]
    assert client.n_ctx() == 4096
    assert client._model.n_ctx_train() == 4096
    metadata = client.metadata
    assert metadata["llama.expert_count"] == "8" and metadata["llama.expert_used_count"] == "2"
    for conversation in CONVERSATIONS:
        rendered = render_instruct_prompt(conversation)
        prepared = llm.backend_instance.format_prompt(rendered, "mixtral")
        assert prepared.ids == mistral_reference(conversation)
        assert llm.get_num_tokens(rendered) == len(mistral_reference(conversation))
    # a loaded model counts with llama.cpp's own tokenizer; the weight-free MixtralTokenizer agrees
    long_text = "长城是古代中国为抵御外族入侵而修建的军事工程。The Great Wall, 21,196 km. " * 50
    assert llm.get_num_tokens(long_text) == MixtralTokenizer().count(long_text)
    assert llm.get_num_tokens(long_text) == len(client.tokenize(long_text.encode(), add_bos=False))


def test_context_overflow_is_refused_before_any_work(tiny_mixtral_gguf: Path) -> None:
    llm = MixtralInstructLLM(model=str(tiny_mixtral_gguf), n_ctx=256, max_tokens=64)
    prompt = "字" * 200  # about 200 tokens + template: fits 256 alone, not with 64 answer tokens
    n_tokens = llm.count_prompt_tokens(prompt)
    assert 200 < n_tokens <= 256 - 32
    with pytest.raises(ContextOverflowError, match="context window of 256") as caught:
        llm.invoke(prompt)
    assert caught.value.prompt_tokens == n_tokens and caught.value.max_tokens == 64
    assert "RAG_LLM_MAX_TOKENS" in str(caught.value)
    assert not llm.is_loaded  # counted with the vocabulary only: no weights loaded, no prompt evaluated
    assert isinstance(llm.invoke(prompt, max_tokens=8), str)  # per-call max_tokens that fits: works


def test_an_injected_client_is_used_as_is(tiny_mixtral_gguf: Path) -> None:
    import llama_cpp

    client = llama_cpp.Llama(str(tiny_mixtral_gguf), n_ctx=512, verbose=False)
    llm = MixtralInstructLLM(client=client, max_tokens=4, model="tiny")
    assert llm.backend_name == "llama_cpp" and llm.is_loaded and llm.context_window == client.n_ctx() == 512
    assert isinstance(llm.invoke("你好"), str)
    assert llm.backend_instance.client is client  # type: ignore[attr-defined]


# -- SmolLM2: real text through every LangChain entry point
class _Prompts(BaseCallbackHandler):
    def __init__(self) -> None:
        self.prompts: list[str] = []

    def on_llm_start(self, serialized: Any, prompts: list[str], **kwargs: Any) -> None:
        self.prompts.extend(prompts)


class _Tokens(BaseCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []

    def on_llm_new_token(self, token: Any, **kwargs: Any) -> None:
        self.tokens.append(str(token))


def test_invoke_and_stream_give_the_same_real_text(smollm2_llm: MixtralInstructLLM) -> None:
    handler = _Tokens()
    answer = smollm2_llm.invoke(QUESTION, config={"callbacks": [handler]})
    assert answer.strip() and "<|im_" not in answer  # what it writes differs between CPUs: only its shape counts
    assert "".join(handler.tokens) == answer and len(handler.tokens) > 1
    chunks = list(smollm2_llm.stream(QUESTION))
    # not `"".join(chunks) == answer`: the second run reads a cached prompt, whose last token is evaluated in
    # another batch shape, and greedy decoding may then take another path on some CPUs
    assert len(chunks) > 1 and "".join(chunks).strip()


def test_generation_info_and_stop(smollm2_llm: MixtralInstructLLM) -> None:
    result = smollm2_llm.generate([QUESTION])
    info = result.generations[0][0].generation_info or {}
    assert info["finish_reason"] in {"stop", "length"} and info["prompt_tokens"] > 10
    full = smollm2_llm.invoke("Count from 1 to 5 separated by commas.", max_tokens=16)
    assert len(full.strip()) >= 4, full
    middle = len(full) // 2
    stop = full[middle : middle + 2]  # a stop string taken from what this build writes (it differs between CPUs)
    cut = smollm2_llm.invoke("Count from 1 to 5 separated by commas.", max_tokens=16, stop=[stop])
    # not `cut == full[:full.index(stop)]`: a second greedy run over a cached prompt may differ from the first
    # (fewer tokens evaluated in another batch shape, other float sums), so only the stop itself is asserted
    assert stop not in cut


def test_batch(smollm2_llm: MixtralInstructLLM) -> None:
    prompts = _Prompts()
    questions: list[Any] = [QUESTION, "What is the capital of Germany? Answer in one word."]
    answers = smollm2_llm.batch(questions, config={"callbacks": [prompts]})
    assert len(answers) == 2 and all(isinstance(a, str) and a.strip() for a in answers)
    assert sorted(prompts.prompts) == sorted(questions)  # each prompt went to the model as it was


def test_lcel_chain(smollm2_llm: MixtralInstructLLM) -> None:
    chain = PromptTemplate.from_template("What is the capital of {country}? Answer in one word.") | smollm2_llm
    prompts = _Prompts()
    answer = (chain | StrOutputParser()).invoke({"country": "Italy"}, config={"callbacks": [prompts]})
    assert answer.strip() and prompts.prompts == ["What is the capital of Italy? Answer in one word."]


async def test_ainvoke_and_astream_do_not_block_the_event_loop(smollm2_llm: MixtralInstructLLM) -> None:
    ticks = 0
    running = True

    async def ticker() -> None:
        nonlocal ticks
        while running:
            ticks += 1
            await asyncio.sleep(0.005)

    task = asyncio.create_task(ticker())
    answer = await smollm2_llm.ainvoke(QUESTION, max_tokens=32)
    during_invoke = ticks
    chunks = [chunk async for chunk in smollm2_llm.astream(QUESTION, max_tokens=32)]
    running = False
    await task
    assert answer.strip() and "".join(chunks).strip() and len(chunks) > 1
    # generation takes a few hundred ms; a blocked loop would tick once or twice
    assert during_invoke > 10 and ticks - during_invoke > 10


async def test_astream_can_be_abandoned(smollm2_llm: MixtralInstructLLM) -> None:
    stream = smollm2_llm.astream("Write a long story about a dragon.", max_tokens=64)
    first = await stream.__anext__()
    await stream.aclose()  # type: ignore[attr-defined]  # the worker thread stops at the next token
    assert isinstance(first, str)
    assert (await smollm2_llm.ainvoke(QUESTION)).strip()  # the model is free again


def test_follow_up_reuses_the_prompt_cache(smollm2_gguf: Path) -> None:
    import llama_cpp

    llm = MixtralInstructLLM(model=str(smollm2_gguf), n_ctx=2048, max_tokens=8, temperature=0.0, n_threads=2)
    context = " ".join(f"Fact {i}: the number {i} is written {i * 7}." for i in range(45))
    first_turn = [("system", "Answer from the facts."), ("user", context + "\nWhat is fact 3?")]
    first = llm.generate([render_instruct_prompt(first_turn)])
    answer = first.generations[0][0].text
    client = llm.backend_instance.client  # type: ignore[attr-defined]

    def evaluated() -> int:
        return int(llama_cpp.llama_perf_context(client._ctx.ctx).n_p_eval)

    follow_up = render_instruct_prompt([*first_turn, ("assistant", answer or "?"), ("user", "And fact 4?")])
    before = evaluated()
    second = llm.generate([follow_up])
    processed = evaluated() - before  # prompt tokens llama.cpp really evaluated for the follow-up
    n_follow_up = llm.count_prompt_tokens(follow_up)
    info = second.generations[0][0].generation_info or {}
    n_first = (first.generations[0][0].generation_info or {})["prompt_tokens"]
    assert n_first > 400
    assert info["cached_prompt_tokens"] >= n_first - 1
    assert processed <= n_follow_up - n_first + 16  # only the new tokens (answer + question), not the prefix
