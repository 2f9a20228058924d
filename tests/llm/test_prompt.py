"""The Mixtral-Instruct template: rendering rules, and token ids equal to mistral-common's v1 reference."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag.llm.prompt import ChatMessage, render_instruct_prompt, split_special, wrap_instruction
from rag.llm.tokenizer import MixtralTokenizer

CONVERSATIONS: list[list[tuple[str, str]]] = [
    [("user", "你好，世界")],
    [("system", "你是一个乐于助人的助手。请用中文回答。"), ("user", "长城有多长？")],
    [
        ("system", "Answer from the context only.\nCite sources as [1]."),
        ("user", "背景：\n[1] 长城全长约21196千米。\n\n问题：长城有多长？"),
        ("assistant", "长城全长约21196千米 [1]。"),
        ("user", "它始建于什么时候？ And in English, please."),
    ],
    [
        ("user", "a"),
        ("assistant", "b"),
        ("user", "c"),
        ("assistant", "d"),
        ("user", "tabs\tand  double  spaces"),
    ],
    [("user", "HTML from a document: <s>struck</s> text, and a literal <unk> too")],
]


def mistral_reference(conversation: list[tuple[str, str]]) -> list[int]:
    from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    kinds = {"system": SystemMessage, "user": UserMessage, "assistant": AssistantMessage}
    messages = [kinds[role](content=content) for role, content in conversation]
    request = ChatCompletionRequest(messages=messages)
    return list(MistralTokenizer.v1().encode_chat_completion(request).tokens)


def test_rendered_text_follows_the_template() -> None:
    text = render_instruct_prompt([("system", "SYS"), ("user", "q1"), ("assistant", "a1"), ("user", "q2")])
    assert text == "<s>[INST] SYS\n\nq1 [/INST] a1</s>[INST] q2 [/INST]"
    assert (
        render_instruct_prompt([ChatMessage("user", "q"), ChatMessage("assistant", "a")]) == "<s>[INST] q [/INST] a</s>"
    )
    assert wrap_instruction("q") == "<s>[INST] q [/INST]"
    assert wrap_instruction(text) == text


def test_langchain_messages_and_dicts_are_accepted() -> None:
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

    lc = [SystemMessage("S"), HumanMessage("q1"), AIMessage("a1"), HumanMessage("q2")]
    dicts = [{"role": "system", "content": "S"}, {"role": "user", "content": "q1"},
             {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"}]  # fmt: skip
    assert (
        render_instruct_prompt(lc)
        == render_instruct_prompt(dicts)
        == "<s>[INST] S\n\nq1 [/INST] a1</s>[INST] q2 [/INST]"
    )


@pytest.mark.parametrize(
    "conversation",
    [
        [],
        [("system", "only a system message")],
        [("assistant", "starts with the assistant")],
        [("user", "q"), ("user", "twice")],
        [("user", "q"), ("system", "late system")],
        [("wizard", "no such role")],
    ],
)
def test_invalid_conversations_are_refused(conversation: list[tuple[str, str]]) -> None:
    with pytest.raises(ValueError):
        render_instruct_prompt(conversation)


@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_sentencepiece_ids_equal_mistral_common(conversation: list[tuple[str, str]]) -> None:
    ids = MixtralTokenizer().encode_messages(conversation)
    assert ids == mistral_reference(conversation)


def test_literal_special_markers_in_text_stay_text() -> None:
    conversation = CONVERSATIONS[-1]
    rendered = render_instruct_prompt(conversation)
    ids = MixtralTokenizer().encode(rendered)
    assert ids[0] == 1 and ids.count(1) == 1 and 2 not in ids  # one BOS, no EOS from the document's "</s>"
    assert [special for special, _ in split_special(rendered)] == [True, False]


@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_llama_cpp_ids_on_the_tiny_mixtral_gguf_equal_mistral_common(
    conversation: list[tuple[str, str]], tiny_mixtral_gguf: Path
) -> None:
    from rag.llm.adapter import MixtralInstructLLM

    llm = MixtralInstructLLM(model=str(tiny_mixtral_gguf), n_ctx=512, max_tokens=4)
    rendered = render_instruct_prompt(conversation)
    reference = mistral_reference(conversation)
    assert llm.get_token_ids(rendered) == reference  # vocabulary only: weights not loaded
    assert not llm.is_loaded
    # and llama.cpp's own tokenizer on the text with special-token parsing agrees for ordinary conversations
    if "<s>" not in "".join(content for _, content in conversation):
        client = __import__("llama_cpp").Llama(str(tiny_mixtral_gguf), vocab_only=True, verbose=False)
        assert client.tokenize(rendered.encode(), add_bos=False, special=True) == reference


def test_transformers_tokenizer_ids_equal_mistral_common(tiny_mixtral_hf: Path) -> None:
    from rag.llm.adapter import MixtralInstructLLM

    llm = MixtralInstructLLM(model=str(tiny_mixtral_hf), backend="transformers", n_ctx=512, max_tokens=4)
    for conversation in CONVERSATIONS:
        assert llm.get_token_ids(render_instruct_prompt(conversation)) == mistral_reference(conversation)
    assert not llm.is_loaded
