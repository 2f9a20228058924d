"""A scripted language model for fast, machine-independent tests of our own logic (chain, assistant, CLI, UI).

llama.cpp's greedy output differs between instruction sets (AVX2, AVX-512, VNNI, BF16), so a test that asserts
what SmolLM2 writes or cites passes on one CPU and fails on the next. Tests whose subject is the chain's logic
(citations checked, sources selected, streaming, stop) pin the answer with :class:`ScriptedBackend` instead;
SmolLM2 and the tiny Mixtral stay where the model path itself is the subject, asserting on structure.

>>> llm = scripted_llm(quote_first_passage)     # a MixtralInstructLLM; the real Mixtral tokenizer counts
>>> llm.invoke("...[1] Employees may work remotely...")   # 'Employees may work remotely ... [1]'
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from typing import Any

from rag.llm.adapter import MixtralInstructLLM
from rag.llm.backends.base import (
    Backend,
    BackendConfig,
    FormattedPrompt,
    GenerationParams,
    Piece,
    PromptFormat,
    StopTrimmer,
)
from rag.llm.prompt import wrap_instruction
from rag.llm.tokenizer import MixtralTokenizer

__all__ = ["ScriptedBackend", "quote_first_passage", "scripted_llm"]

Script = Callable[[str], str]


def quote_first_passage(prompt: str) -> str:
    """The first sentence of passage ``[1]`` of the evidence, cited: what a faithful model would write."""
    match = re.search(r"^\[1\][^\n]*\n(.*?)(?=^\[\d+\]|^## |\Z)", prompt, flags=re.MULTILINE | re.DOTALL)
    lines = [line.strip() for line in (match.group(1) if match else "").splitlines()]
    body = next((line for line in lines if line and not line.startswith("#")), "")
    if not body:
        return "Not in the documents."
    sentence = re.split(r"(?<=[.!?。！？])\s*", body, maxsplit=1)[0]
    return f"{sentence} [1]"


class ScriptedBackend(Backend):
    """Writes ``script(prompt)`` (or a fixed text) in pieces of a few characters, like a streaming model.

    It honours ``max_tokens`` (counted with the Mixtral tokenizer), stop strings and cancellation, and records
    every prompt it was given in :attr:`prompts`. ``delay``: seconds between pieces (a slow model).
    """

    name = "scripted"
    ls_provider = "scripted"

    def __init__(
        self,
        script: Script | str = quote_first_passage,
        *,
        context_window: int = 4096,
        piece_chars: int = 4,
        delay: float = 0.0,
    ) -> None:
        super().__init__(BackendConfig(model="scripted", n_ctx=context_window))
        fixed = script if isinstance(script, str) else ""
        self.script: Script = script if callable(script) else (lambda _prompt: fixed)
        self.piece_chars = piece_chars
        self.delay = delay
        self.prompts: list[str] = []
        self.finishes: list[str] = []
        """How each generation ended (``stop``, ``length``, ``cancelled``), in order."""
        self._tokenizer = MixtralTokenizer()

    @property
    def context_window(self) -> int:
        return self.config.n_ctx

    @property
    def tokenizer(self) -> MixtralTokenizer:
        return self._tokenizer

    @property
    def loaded(self) -> bool:
        return True

    def warm_up(self) -> None:
        return None

    def format_prompt(self, prompt: str, prompt_format: PromptFormat) -> FormattedPrompt:
        text = prompt if prompt_format == "raw" else wrap_instruction(prompt)
        return FormattedPrompt(text=text, n_tokens=self._tokenizer.count(text))

    def generate(
        self, prompt: FormattedPrompt, params: GenerationParams, cancelled: Callable[[], bool]
    ) -> Iterator[Piece]:
        self.prompts.append(prompt.text)
        answer = self.script(prompt.text)
        trimmer = StopTrimmer(params.stop)
        written, finish = 0, "stop"
        for start in range(0, len(answer), self.piece_chars):
            if cancelled():
                finish = "cancelled"
                break
            piece = answer[start : start + self.piece_chars]
            tokens = len(self._tokenizer.encode_text(piece))
            if written + tokens > params.max_tokens:
                finish = "length"
                break
            written += tokens
            shown = trimmer.feed(piece)
            if shown:
                yield Piece(shown)
            if trimmer.stopped:
                break
            if self.delay:
                time.sleep(self.delay)
        rest = trimmer.flush()
        if rest:
            yield Piece(rest)
        self.finishes.append(finish)
        yield Piece("", finish_reason=finish, info={"prompt_tokens": prompt.n_tokens})


def scripted_llm(script: Script | str = quote_first_passage, **fields: Any) -> MixtralInstructLLM:
    """A :class:`MixtralInstructLLM` on a :class:`ScriptedBackend` (``fields``: the adapter's, e.g. max_tokens;
    ``context_window``, ``delay``: the backend's)."""
    backend_fields = {key: fields.pop(key) for key in ("context_window", "delay", "piece_chars") if key in fields}
    return MixtralInstructLLM(client=ScriptedBackend(script, **backend_fields), model="scripted", **fields)
