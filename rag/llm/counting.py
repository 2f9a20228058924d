"""What a prompt builder must know of the model that reads its prompt: exact token counts, the context window, the
tokens reserved for the answer and the prompt format. One object, built by the composition root and handed to the
chain, so tokens are counted in one way wherever a prompt is sized.

Lazy: nothing is read until a count is asked for (then the model's vocabulary, never its weights).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rag.llm.tokenizer import MixtralTokenizer, mixtral_tokenizer

if TYPE_CHECKING:
    from collections.abc import Sequence

    from rag.llm.backends.base import PromptFormat
    from rag.llm.core import MixtralModelCore
    from rag.llm.prompt import ChatMessage

__all__ = ["ModelTokens"]

#: Chinese, English, digits, punctuation and an emoji: equal ids on this text mean the Mixtral vocabulary.
_PROBE = "长江全长约6300公里。The Yangtze is 6,300 km long; 黄河 5464 km!"


class ModelTokens:
    """Token counts and limits of ``llm`` (:class:`rag.llm.adapter.MixtralInstructLLM` or
    :class:`rag.llm.chat_model.ChatMixtralInstruct`); without one (no model, or another LangChain chat model), of
    Chinese-Mixtral-Instruct (the Mixtral vocabulary, exact without any weights) with the configured
    ``context_window`` and ``max_tokens``."""

    def __init__(
        self, llm: MixtralModelCore | None = None, *, context_window: int = 32768, max_tokens: int = 1024
    ) -> None:
        self.llm = llm
        self._context_window = context_window
        self._max_tokens = max_tokens
        self._counts_like_mixtral: bool | None = None

    @property
    def context_window(self) -> int:
        """The model's window (``n_ctx`` clamped to its trained context); without a model, the configured one."""
        return self.llm.context_window if self.llm is not None else self._context_window

    @property
    def max_tokens(self) -> int:
        """Tokens reserved for the answer."""
        return self.llm.max_tokens if self.llm is not None else self._max_tokens

    @property
    def prompt_format(self) -> PromptFormat:
        """How prompts are wrapped for the model (``mixtral`` without one)."""
        return self.llm.effective_prompt_format if self.llm is not None else "mixtral"

    def _tokenizer(self) -> MixtralTokenizer:
        return self.llm.tokenizer if self.llm is not None else mixtral_tokenizer()

    def count(self, text: str) -> int:
        """Exact tokens of a piece of text (no BOS/EOS), as it would appear inside a prompt."""
        return len(self._tokenizer().encode_text(text))

    def count_prompt(self, prompt: str) -> int:
        """Tokens the model reads for a whole prompt, after its prompt format is applied (BOS included)."""
        if self.llm is not None:
            return self.llm.count_prompt_tokens(prompt)
        return self._tokenizer().count(prompt)

    def count_messages(self, messages: Sequence[ChatMessage]) -> int:
        """Tokens a chat model reads for ``messages`` (its own template where it has one, BOS included)."""
        count_turns = getattr(self.llm, "count_turn_tokens", None)
        if count_turns is not None:
            return int(count_turns(messages))
        from rag.llm.prompt import render_instruct_prompt

        return self.count_prompt(render_instruct_prompt(messages))

    @property
    def counts_like_mixtral(self) -> bool:
        """Whether the model's tokenizer is the Mixtral vocabulary (Chinese-Mixtral keeps it), so the token counts
        kept with chunks at ingest hold for it. Decided once, on a probe text, without trusting the model's name."""
        if self._counts_like_mixtral is None:
            if self.llm is None:
                self._counts_like_mixtral = True
            else:
                try:
                    same = self._tokenizer().encode_text(_PROBE) == mixtral_tokenizer().encode_text(_PROBE)
                except Exception:  # the model cannot be read yet: count everything, decide on the next question
                    return False
                self._counts_like_mixtral = same
        return self._counts_like_mixtral
