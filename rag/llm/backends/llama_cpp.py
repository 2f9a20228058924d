"""Local GGUF through llama-cpp-python (the default backend).

* The weights load on :meth:`LlamaCppBackend.warm_up` (or the first generation); the tokenizer and the trained
  context length come from the GGUF's vocabulary alone (``vocab_only=True``: milliseconds, no weights).
* The prompt is fed to llama.cpp as token ids. llama-cpp-python keeps its KV cache between calls and
  re-evaluates only the tokens after the longest common prefix with the previous call (prompt + answer), so a
  follow-up question that extends the conversation does not process the instructions, the retrieved context
  and the earlier turns again. Nothing here resets the model between calls.
* ``n_ctx`` is clamped to the GGUF's trained context (``n_ctx_train``) with a logged warning.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rag.errors import ConfigError, ModelNotFoundError, RagError
from rag.llm.backends.base import Backend, FormattedPrompt, GenerationParams, Piece, PromptFormat, logger
from rag.llm.prompt import wrap_instruction
from rag.llm.refusal import RULED_OUT, FirstStepGate, RefusalGate, first_tokens
from rag.llm.tokenizer import MixtralTokenizer
from rag.models import resolve_gguf

if TYPE_CHECKING:
    import llama_cpp

__all__ = ["LlamaCppBackend", "LlamaTokenizer", "check_gguf", "gguf_context_length", "load_vocab_only"]

_SETTING = "RAG_LLM_MODEL"


def check_gguf(path: Path) -> Path:
    """Raise a clear error unless ``path`` is a readable GGUF file."""
    if not path.is_file():
        raise ModelNotFoundError(f"{_SETTING}={path}: no such file. Give the path of a .gguf file.")
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic != b"GGUF":
        raise ConfigError(
            f"{_SETTING}={path}: not a GGUF file (it starts with {magic!r}, not b'GGUF'). Give a llama.cpp "
            ".gguf "
            "file (e.g. hfl/chinese-mixtral-instruct-gguf/ggml-model-q4_0.gguf); for Hugging Face weights (a "
            "folder) "
            "set RAG_LLM_BACKEND=transformers."
        )
    return path


def load_vocab_only(path: Path) -> llama_cpp.Llama:
    """The GGUF's tokenizer and metadata through llama.cpp, without the weights."""
    import llama_cpp

    check_gguf(path)
    try:
        return llama_cpp.Llama(model_path=str(path), vocab_only=True, n_ctx=64, n_batch=64, verbose=False)
    except (ValueError, RuntimeError) as error:
        raise ConfigError(
            f"{_SETTING}={path}: llama.cpp cannot read this GGUF ({error}). The file may be truncated or "
            "from a "
            "newer llama.cpp: download it again or upgrade llama-cpp-python."
        ) from error


def gguf_context_length(llama: llama_cpp.Llama) -> int:
    """The trained context (``{arch}.context_length`` in the GGUF metadata; also known with ``vocab_only``)."""
    metadata = llama.metadata
    value = metadata.get(f"{metadata.get('general.architecture', 'llama')}.context_length", "0")
    try:
        return int(value)
    except ValueError:
        return 0


class LlamaTokenizer(MixtralTokenizer):
    """llama.cpp's own tokenizer (a loaded or vocabulary-only ``llama_cpp.Llama``)."""

    def __init__(self, llama: llama_cpp.Llama) -> None:
        super().__init__()
        self._llama = llama

    @classmethod
    def from_gguf(cls, path: str | Path) -> LlamaTokenizer:
        """The vocabulary of a GGUF file, read by llama.cpp without its weights (``vocab_only=True``)."""
        return cls(load_vocab_only(Path(path)))

    @property
    def llama(self) -> llama_cpp.Llama:
        """The wrapped model."""
        return self._llama

    @property
    def bos_id(self) -> int:
        return int(self._llama.token_bos())

    @property
    def eos_id(self) -> int:
        return int(self._llama.token_eos())

    @property
    def vocab_size(self) -> int:
        return int(self._llama.n_vocab())

    def encode_text(self, text: str) -> list[int]:
        if not text:
            return []
        # special=False: text like "<unk>" inside a document stays text, as in mistral-common
        with self._lock:
            return list(self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def encode_special(self, text: str, *, add_bos: bool) -> list[int]:
        """The model's own special-token parsing (for prompts rendered with the GGUF's chat template)."""
        with self._lock:
            return list(self._llama.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True))

    def decode(self, ids: Sequence[int]) -> str:
        with self._lock:
            return self._llama.detokenize(list(ids)).decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return f"LlamaTokenizer({getattr(self._llama, 'model_path', '?')})"


class LlamaCppBackend(Backend):
    """Generate with a local GGUF through ``llama_cpp.Llama`` (or an injected one)."""

    name = "llama_cpp"
    ls_provider = "llamacpp"

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self._client: llama_cpp.Llama | None = config.client
        self._vocab: llama_cpp.Llama | None = None
        self._path: Path | None = None
        self._tokenizer: LlamaTokenizer | None = None
        self._load_lock = threading.Lock()
        self._generate_lock = threading.Lock()
        self._warned_clamp = False

    # -- model files and vocabulary
    @property
    def model_path(self) -> Path:
        """The GGUF file (resolved on first use: local path, bundled package, hub cache or download)."""
        if self._path is None:
            if self._client is not None:
                self._path = Path(self._client.model_path)
            else:
                name = self.config.model
                if name.startswith(("/", "./", "../", "~")) and not Path(name).expanduser().is_file():
                    raise ModelNotFoundError(
                        f"{_SETTING}={name}: no such file. Give the path of an existing .gguf file, or a hub "
                        "repository and file such as hfl/chinese-mixtral-instruct-gguf/ggml-model-q4_0.gguf."
                    )
                self._path = check_gguf(resolve_gguf(name, setting=_SETTING))
        return self._path

    def _vocab_llama(self) -> llama_cpp.Llama:
        if self._client is not None:
            return self._client
        with self._load_lock:
            if self._vocab is None:
                self._vocab = load_vocab_only(self.model_path)
            return self._vocab

    @property
    def n_ctx_train(self) -> int:
        """Context length the model was trained with (GGUF metadata), 0 when unknown."""
        return gguf_context_length(self._vocab_llama())

    @property
    def context_window(self) -> int:
        if self._client is not None:
            return int(self._client.n_ctx())
        wanted = int(self.config.n_ctx)
        trained = self.n_ctx_train
        if trained and wanted > trained:
            if not self._warned_clamp:
                self._warned_clamp = True
                logger.warning(
                    "n_ctx=%d (RAG_LLM_N_CTX) exceeds the trained context of %s (%d tokens): using %d",
                    wanted,
                    self.model_path.name,
                    trained,
                    trained,
                )
            return trained
        return wanted

    @property
    def tokenizer(self) -> LlamaTokenizer:
        llama = self._client if self._client is not None else self._vocab_llama()
        if self._tokenizer is None or self._tokenizer.llama is not llama:
            self._tokenizer = LlamaTokenizer(llama)
        return self._tokenizer

    @property
    def client(self) -> llama_cpp.Llama:
        """The loaded ``llama_cpp.Llama`` (loads it)."""
        self.warm_up()
        assert self._client is not None
        return self._client

    @property
    def loaded(self) -> bool:
        return self._client is not None

    def warm_up(self) -> None:
        if self._client is not None:
            return
        import llama_cpp

        n_ctx = self.context_window  # reads the vocabulary first: clear errors before a long load
        path = self.model_path
        with self._load_lock:
            if self._client is not None:
                return
            kwargs: dict[str, Any] = {
                "model_path": str(path),
                "n_ctx": n_ctx,
                "n_batch": min(self.config.n_batch, n_ctx),
                "n_gpu_layers": self.config.n_gpu_layers,
                "verbose": self.config.verbose,
            }
            if self.config.n_threads:
                kwargs["n_threads"] = self.config.n_threads
                kwargs["n_threads_batch"] = self.config.n_threads
            logger.info("loading %s (n_ctx=%d)", path, n_ctx)
            try:
                self._client = llama_cpp.Llama(**kwargs)
            except (ValueError, RuntimeError) as error:
                raise ConfigError(
                    f"{_SETTING}={path}: llama.cpp could not load the model ({error}). Check free memory (a "
                    "32K "
                    "context needs several GB besides the weights: lower RAG_LLM_N_CTX), or pick a smaller "
                    "quantisation."
                ) from error
            self._vocab = None  # the loaded model's own vocabulary takes over

    # -- prompts
    def format_prompt(self, prompt: str, prompt_format: PromptFormat) -> FormattedPrompt:
        tokenizer = self.tokenizer
        assert isinstance(tokenizer, LlamaTokenizer)
        if prompt_format == "mixtral":
            text = wrap_instruction(prompt)
            ids = tokenizer.encode(text)
            return FormattedPrompt(text=text, n_tokens=len(ids), ids=ids)
        if prompt_format == "native":
            return self.format_native([{"role": "user", "content": prompt}])
        ids = tokenizer.encode_special(prompt, add_bos=False)
        add_bos = tokenizer.llama.metadata.get("tokenizer.ggml.add_bos_token", "true") == "true"
        if add_bos and (not ids or ids[0] != tokenizer.bos_id):
            ids.insert(0, tokenizer.bos_id)
        return FormattedPrompt(text=prompt, n_tokens=len(ids), ids=ids)

    def format_native(self, messages: list[dict[str, str]]) -> FormattedPrompt:
        tokenizer = self.tokenizer
        assert isinstance(tokenizer, LlamaTokenizer)
        template = tokenizer.llama.metadata.get("tokenizer.chat_template")
        if not template:
            logger.warning("%s has no chat template: using the Mixtral-Instruct format", self.model_path.name)
            return super().format_native(messages)
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        llama = tokenizer.llama
        bos = llama.detokenize([llama.token_bos()], special=True).decode("utf-8", errors="ignore")
        eos = llama.detokenize([llama.token_eos()], special=True).decode("utf-8", errors="ignore")
        formatted = Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos)(messages=messages)  # type: ignore[arg-type]
        ids = tokenizer.encode_special(formatted.prompt, add_bos=not formatted.added_special)
        stop = [formatted.stop] if isinstance(formatted.stop, str) else list(formatted.stop or [])
        return FormattedPrompt(text=formatted.prompt, n_tokens=len(ids), ids=ids, extra_stop=stop)

    # -- generation
    def generate(
        self, prompt: FormattedPrompt, params: GenerationParams, cancelled: Callable[[], bool]
    ) -> Iterator[Piece]:
        import llama_cpp

        assert prompt.ids is not None
        client = self.client
        with self._generate_lock:  # one llama.cpp context: one generation at a time
            previous = client._input_ids[: client.n_tokens].tolist()
            cached = llama_cpp.Llama.longest_token_prefix(previous, prompt.ids)
            gate = self._refusal_gate(prompt, params.refusal) if params.refusal is not None else None
            stream: Any = client.create_completion(
                prompt.ids,  # token ids: no re-tokenization, no extra BOS, KV-cache prefix reuse
                max_tokens=params.max_tokens,
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=params.top_k,
                repeat_penalty=params.repeat_penalty,
                stop=[*params.stop, *prompt.extra_stop],
                seed=params.seed,
                grammar=_grammar(params.json_schema),
                logits_processor=llama_cpp.LogitsProcessorList([_processor(gate)]) if gate is not None else None,
                stream=True,
            )
            finish: str | None = None
            try:
                for chunk in stream:
                    if cancelled():
                        finish = "cancelled"
                        break
                    choice = chunk["choices"][0]
                    if choice["text"]:
                        yield Piece(choice["text"])
                    finish = choice.get("finish_reason") or finish
            finally:
                stream.close()
            yield Piece(
                "",
                finish_reason=finish,
                info={
                    "prompt_tokens": len(prompt.ids),
                    "cached_prompt_tokens": min(cached, len(prompt.ids) - 1),
                    "context_window": client.n_ctx(),
                    **(gate.info() if gate is not None else {}),
                },
            )  # fmt: skip

    def _refusal_gate(self, prompt: FormattedPrompt, refusal: RefusalGate) -> FirstStepGate:
        tokenizer = self.tokenizer
        assert isinstance(tokenizer, LlamaTokenizer)
        tokens = first_tokens(
            prompt.text,
            refusal.text,
            lambda text: tokenizer.encode_special(text, add_bos=False),
            lambda token: bytes(tokenizer.llama.detokenize([token])),
        )
        return FirstStepGate(tokens, refusal.threshold)

    def auto_prompt_format(self) -> PromptFormat:
        """``mixtral`` for Mixtral models (by name: nothing is read); else ``native`` when the GGUF's own chat
        template is not the ``[INST]`` one (SmolLM2's ChatML, say). Reads only the vocabulary, never the weights."""
        if "mixtral" in _model_name(self.config.model).lower():
            return "mixtral"
        try:
            template = str(self.tokenizer.llama.metadata.get("tokenizer.chat_template") or "")
        except RagError:  # the model cannot be read yet: generation will say why
            return "mixtral"
        return "native" if template and "[INST]" not in template else "mixtral"

    def describe(self) -> str:
        return str(self._path or self.config.model)


def _model_name(model: str) -> str:
    """What names the model: a local file's own name (its folders may be anything, a cache folder called
    ``chinese-mixtral-rag`` say), else the whole hub name (``hfl/chinese-mixtral-instruct-gguf/...gguf``)."""
    local = Path(model).expanduser()
    return local.name if local.exists() else model


def _grammar(schema: dict[str, Any] | None) -> Any:
    """llama.cpp's grammar that only lets the model write JSON of ``schema`` (None: no constraint)."""
    if schema is None:
        return None
    import json

    from llama_cpp import LlamaGrammar

    return LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)


def _processor(gate: FirstStepGate) -> Callable[[Any, Any], Any]:
    """``gate`` as a llama.cpp logits processor (it runs first in the sampler chain: the raw logits)."""

    def process(input_ids: Any, scores: Any) -> Any:
        token = gate.decide(scores)
        if token is None:
            return scores
        forced = np.full_like(scores, RULED_OUT)
        forced[token] = scores[token]
        return forced

    return process
