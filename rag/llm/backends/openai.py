"""An OpenAI-compatible server (llama.cpp's server, llama-cpp-python's ``llama_cpp.server``, vLLM) over HTTP.

Uses ``httpx`` directly (no ``openai`` package): ``POST {base_url}/completions`` with the rendered prompt (the
Mixtral-Instruct format, or the raw prompt), or ``POST {base_url}/chat/completions`` with
``prompt_format="native"`` (the server applies the model's own chat template), streamed as server-sent events.

* Connection problems raise :class:`rag.errors.ConfigError` naming ``RAG_LLM_BASE_URL``; every request has a
  timeout (``RAG_LLM_TIMEOUT``; connecting at most 10 s), so a server that is down never hangs the caller.
* The context check before a request counts with the Mixtral vocabulary (exact for Chinese-Mixtral served
  remotely) against ``n_ctx`` as configured (the server's real window is not queried); a server that still
  refuses the prompt as too long raises :class:`rag.errors.ContextOverflowError` too.
* Servers add BOS themselves, so the ``<s>`` that starts a rendered prompt is not sent as text.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rag.errors import ConfigError, ContextOverflowError, RagError
from rag.llm.backends.base import Backend, FormattedPrompt, GenerationParams, Piece, PromptFormat
from rag.llm.prompt import BOS, wrap_instruction
from rag.llm.tokenizer import MixtralTokenizer, mixtral_tokenizer

__all__ = ["OpenAIBackend"]

_SETTING = "RAG_LLM_BASE_URL"


class OpenAIBackend(Backend):
    """Generate through an OpenAI-compatible HTTP server."""

    name = "openai"
    ls_provider = "openai"

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        if not config.base_url:
            raise ConfigError("the openai backend needs a server URL: set RAG_LLM_BASE_URL (http://host:port/v1)")
        self.base_url = str(config.base_url).rstrip("/")
        self._client: Any = config.client  # an injected httpx.Client
        self._lock = threading.Lock()
        self._checked = False

    @property
    def context_window(self) -> int:
        return int(self.config.n_ctx)

    @property
    def tokenizer(self) -> MixtralTokenizer:
        return mixtral_tokenizer()  # the server's model counts like Mixtral's vocabulary (Chinese-Mixtral keeps it)

    @property
    def http(self) -> Any:
        """The ``httpx.Client`` (created on first use)."""
        with self._lock:
            if self._client is None:
                import httpx

                headers = {"Authorization": f"Bearer {self.config.api_key}"} if self.config.api_key else {}
                timeout = httpx.Timeout(self.config.timeout, connect=min(10.0, self.config.timeout))
                self._client = httpx.Client(timeout=timeout, headers=headers)
            return self._client

    @property
    def loaded(self) -> bool:
        return self._checked

    def warm_up(self) -> None:
        """Check that the server answers ``GET /models``."""
        if self._checked:
            return
        with self._errors():
            response = self.http.get(f"{self.base_url}/models")
        self._raise_for_status(response)
        self._checked = True

    def format_prompt(self, prompt: str, prompt_format: PromptFormat) -> FormattedPrompt:
        if prompt_format == "native":
            return self.format_native([{"role": "user", "content": prompt}])
        text = wrap_instruction(prompt) if prompt_format == "mixtral" else prompt
        n_tokens = self.tokenizer.count(text) if text.startswith(BOS) else self.tokenizer.count(text) + 1
        return FormattedPrompt(text=text.removeprefix(BOS), n_tokens=n_tokens)

    def format_native(self, messages: list[dict[str, str]]) -> FormattedPrompt:
        # the server renders its own template: count the messages' text as a lower bound
        n_tokens = sum(self.tokenizer.count(m["content"]) for m in messages) + 1
        text = "\n\n".join(m["content"] for m in messages)
        return FormattedPrompt(text=text, n_tokens=n_tokens, messages=messages)

    def generate(
        self, prompt: FormattedPrompt, params: GenerationParams, cancelled: Callable[[], bool]
    ) -> Iterator[Piece]:
        body: dict[str, Any] = {
            "model": self.config.model,
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "stream": True,
            # llama.cpp's server keeps the KV cache of the common prefix (a follow-up reads only its new part);
            # other servers ignore the field
            "cache_prompt": True,
        }
        if params.top_k > 0:
            body["top_k"] = params.top_k
        if params.repeat_penalty != 1.0:
            body["repeat_penalty"] = params.repeat_penalty  # llama.cpp
            body["repetition_penalty"] = params.repeat_penalty  # vLLM
        if params.stop:
            body["stop"] = params.stop
        if params.seed is not None:
            body["seed"] = params.seed
        if params.json_schema is not None:  # llama.cpp's server and vLLM constrain to it
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": str(params.json_schema.get("title") or "output"), "schema": params.json_schema},
            }
        if prompt.messages is not None:
            url, body["messages"] = f"{self.base_url}/chat/completions", prompt.messages
        else:
            url, body["prompt"] = f"{self.base_url}/completions", prompt.text
        finish: str | None = None
        usage: dict[str, Any] = {}
        done = produced = False
        with self._errors(), self.http.stream("POST", url, json=body) as response:
            if response.status_code >= 400:
                response.read()
                self._raise_for_status(response, prompt_tokens=prompt.n_tokens, max_tokens=params.max_tokens)
            try:
                for line in response.iter_lines():
                    if cancelled():
                        finish, done = "cancelled", True
                        break
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        done = True
                        break
                    event = json.loads(data)
                    if "error" in event:
                        raise RagError(f"the LLM server at {self.base_url} failed: {event['error']}")
                    usage = event.get("usage") or usage
                    for choice in event.get("choices") or []:
                        text = choice.get("text")
                        if text is None:
                            text = (choice.get("delta") or {}).get("content") or ""
                        if text:
                            produced = True
                            yield Piece(text)
                        finish = choice.get("finish_reason") or finish
            except _stream_dropped():
                pass  # the server dropped the stream: handled below
        if not done and not finish:
            if not produced:
                # llama-cpp-python's server reports errors raised inside a stream (a prompt too long for its
                # context, say) by closing it: ask again without streaming and one token to get the reason.
                self._probe(url, body, prompt, params)
            raise RagError(
                f"the LLM server at {self.base_url} ended the answer without finishing; see the server's log"
            )
        yield Piece("", finish_reason=finish, info={"prompt_tokens": prompt.n_tokens, **usage})

    def _probe(self, url: str, body: dict[str, Any], prompt: FormattedPrompt, params: GenerationParams) -> None:
        import httpx

        # a fresh connection: the pooled one is the dropped stream's
        with self._errors(), httpx.Client(timeout=self.http.timeout, headers=self.http.headers) as fresh:
            response = fresh.post(url, json={**body, "stream": False, "max_tokens": 1})
        self._raise_for_status(response, prompt_tokens=prompt.n_tokens, max_tokens=params.max_tokens)

    # -- errors
    @contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn httpx's transport errors into messages that say what to do."""
        import httpx

        try:
            yield
        except httpx.TimeoutException as error:
            raise ConfigError(
                f"the LLM server at {self.base_url} ({_SETTING}) did not answer within "
                f"{self.config.timeout:g} s "
                f"({type(error).__name__}). Check that it is running and not overloaded, or raise "
                "RAG_LLM_TIMEOUT."
            ) from error
        except httpx.TransportError as error:
            raise ConfigError(
                f"cannot reach the LLM server at {self.base_url} ({_SETTING}): "
                f"{error or type(error).__name__}. "
                "Start it (e.g. python -m llama_cpp.server --model FILE.gguf) or fix the URL "
                "(http://host:port/v1), "
                "or unset RAG_LLM_BASE_URL to run a local GGUF."
            ) from error

    def _raise_for_status(self, response: Any, *, prompt_tokens: int = 0, max_tokens: int = 0) -> None:
        if response.status_code < 400:
            return
        try:
            detail = response.json()
            message = str((detail.get("error") or {}).get("message") or detail)
            code = str((detail.get("error") or {}).get("code") or "")
        except ValueError:
            message, code = response.text[:500], ""
        lowered = message.lower()
        overflow = "context" in code or "context length" in lowered or "context window" in lowered
        if response.status_code == 400 and overflow:
            raise ContextOverflowError(
                f"the LLM server at {self.base_url} refused the prompt as too long for its context window "
                f"({message}). Shorten the prompt (fewer retrieved chunks: RAG_MAX_CONTEXT_TOKENS), lower "
                "RAG_LLM_MAX_TOKENS, or set RAG_LLM_N_CTX to the server's real window so this is caught "
                "before "
                "sending.",
                prompt_tokens=prompt_tokens,
                max_tokens=max_tokens,
                context_window=self.context_window,
            )
        if response.status_code in (401, 403):
            raise ConfigError(
                f"the LLM server at {self.base_url} refused the request ({response.status_code}: {message}): "
                "set RAG_LLM_API_KEY"
            )
        if response.status_code == 404:
            raise ConfigError(
                f"the LLM server at {self.base_url} has no such endpoint or model ({message}): {_SETTING} "
                "should "
                "end with /v1 and RAG_LLM_MODEL name a model the server serves"
            )
        raise RagError(f"the LLM server at {self.base_url} failed ({response.status_code}): {message}")

    def describe(self) -> str:
        return f"{self.config.model} at {self.base_url}"


def _stream_dropped() -> tuple[type[Exception], ...]:
    """How httpx reports a server that closes a stream it had started (the connection itself worked)."""
    import httpx

    return (httpx.RemoteProtocolError, httpx.ReadError)
