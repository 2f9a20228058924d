"""Full-precision Hugging Face weights through transformers (for GPU users: ``hfl/chinese-mixtral-instruct``).

The tokenizer and the config (``max_position_embeddings``) load without the weights; ``warm_up`` loads the
model (``dtype="auto"``, on ``device`` or CUDA when available). Generation runs ``model.generate`` in a thread
with a ``TextIteratorStreamer``; stop strings end the stream and the generation.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from rag.errors import ConfigError
from rag.llm.backends.base import (
    Backend,
    FormattedPrompt,
    GenerationParams,
    Piece,
    PromptFormat,
    StopTrimmer,
    logger,
)
from rag.llm.prompt import wrap_instruction
from rag.llm.refusal import RULED_OUT, FirstStepGate, RefusalGate, first_tokens
from rag.llm.tokenizer import MixtralTokenizer
from rag.models import resolve_snapshot

__all__ = ["TransformersBackend"]

_SETTING = "RAG_LLM_MODEL"


class HFTokenizer(MixtralTokenizer):
    """A transformers tokenizer (no weights) reading rendered Mixtral prompts."""

    def __init__(self, tokenizer: Any) -> None:
        super().__init__()
        self._hf = tokenizer

    @property
    def hf_tokenizer(self) -> Any:
        """The wrapped transformers tokenizer."""
        return self._hf

    @property
    def bos_id(self) -> int:
        return int(self._hf.bos_token_id)

    @property
    def eos_id(self) -> int:
        return int(self._hf.eos_token_id)

    @property
    def vocab_size(self) -> int:
        return len(self._hf)

    def encode_text(self, text: str) -> list[int]:
        if not text:
            return []
        # split_special_tokens: "<s>" or "<unk>" inside a document stays text, as in mistral-common
        return list(self._hf.encode(text, add_special_tokens=False, split_special_tokens=True))

    def decode(self, ids: Sequence[int]) -> str:
        return str(self._hf.decode(list(ids), skip_special_tokens=True))

    def __repr__(self) -> str:
        return f"HFTokenizer({getattr(self._hf, 'name_or_path', '?')})"


class TransformersBackend(Backend):
    """Generate with ``AutoModelForCausalLM`` (e.g. ``MixtralForCausalLM``)."""

    name = "transformers"
    ls_provider = "huggingface"

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self._folder: Path | None = None
        self._hf_config: Any = None
        self._tokenizer: HFTokenizer | None = None
        self._model: Any = config.client
        self._lock = threading.Lock()
        self._generate_lock = threading.Lock()
        self._warned_clamp = False

    @property
    def folder(self) -> Path:
        """The model folder (local, bundled, hub cache or download)."""
        if self._folder is None:
            self._folder = resolve_snapshot(self.config.model, setting=_SETTING)
        return self._folder

    @property
    def hf_config(self) -> Any:
        """The model's ``config.json`` (no weights)."""
        if self._hf_config is None:
            from transformers import AutoConfig

            try:
                self._hf_config = AutoConfig.from_pretrained(self.folder)
            except (OSError, ValueError) as error:
                raise ConfigError(
                    f"{_SETTING}={self.config.model}: {self.folder} is not a transformers model folder "
                    f"({error}). "
                    "Give a folder with config.json and weights, or a .gguf file for the llama_cpp backend."
                ) from error
        return self._hf_config

    @property
    def context_window(self) -> int:
        wanted = int(self.config.n_ctx)
        trained = int(getattr(self.hf_config, "max_position_embeddings", 0) or 0)
        if trained and wanted > trained:
            if not self._warned_clamp:
                self._warned_clamp = True
                logger.warning(
                    "n_ctx=%d (RAG_LLM_N_CTX) exceeds max_position_embeddings=%d of %s: using %d",
                    wanted,
                    trained,
                    self.config.model,
                    trained,
                )
            return trained
        return wanted

    @property
    def tokenizer(self) -> MixtralTokenizer:
        with self._lock:
            if self._tokenizer is None:
                from transformers import AutoTokenizer

                self._tokenizer = HFTokenizer(AutoTokenizer.from_pretrained(self.folder))
            return self._tokenizer

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def model(self) -> Any:
        """The loaded ``PreTrainedModel`` (loads it)."""
        self.warm_up()
        return self._model

    def warm_up(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoModelForCausalLM

        self.hf_config  # noqa: B018 - a clear error before the long load
        with self._lock:
            if self._model is not None:
                return
            device = self.config.device or ("cuda" if torch.cuda.is_available() else "cpu")
            logger.info("loading %s on %s", self.folder, device)
            model: Any = AutoModelForCausalLM.from_pretrained(self.folder, dtype="auto")
            self._model = model.to(device).eval()

    def format_prompt(self, prompt: str, prompt_format: PromptFormat) -> FormattedPrompt:
        tokenizer = self.tokenizer
        assert isinstance(tokenizer, HFTokenizer)
        hf = tokenizer.hf_tokenizer
        if prompt_format == "native" and getattr(hf, "chat_template", None):
            return self.format_native([{"role": "user", "content": prompt}])
        if prompt_format == "raw":
            text, ids = prompt, list(hf.encode(prompt))
        else:
            text = wrap_instruction(prompt)
            ids = tokenizer.encode(text)
        return FormattedPrompt(text=text, n_tokens=len(ids), ids=ids)

    def format_native(self, messages: list[dict[str, str]]) -> FormattedPrompt:
        tokenizer = self.tokenizer
        assert isinstance(tokenizer, HFTokenizer)
        hf = tokenizer.hf_tokenizer
        if not getattr(hf, "chat_template", None):
            return super().format_native(messages)
        text = hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = list(hf.encode(text, add_special_tokens=False))
        return FormattedPrompt(text=text, n_tokens=len(ids), ids=ids)

    def generate(
        self, prompt: FormattedPrompt, params: GenerationParams, cancelled: Callable[[], bool]
    ) -> Iterator[Piece]:
        if params.json_schema is not None:
            raise ConfigError(
                "structured output needs a backend that can constrain generation: llama.cpp (a GGUF) or an "
                "OpenAI-compatible server; the transformers backend cannot"
            )
        import torch
        from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        assert prompt.ids is not None
        model = self.model
        tokenizer = self.tokenizer
        assert isinstance(tokenizer, HFTokenizer)
        stop_now = threading.Event()

        class _Cancel(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                flag = stop_now.is_set() or cancelled()
                return torch.full((input_ids.shape[0],), flag, dtype=torch.bool, device=input_ids.device)

        streamer = TextIteratorStreamer(
            tokenizer.hf_tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=self.config.timeout
        )
        sampling = params.temperature > 0
        kwargs: dict[str, Any] = {
            "input_ids": torch.tensor([prompt.ids], device=model.device),
            "attention_mask": torch.ones((1, len(prompt.ids)), dtype=torch.long, device=model.device),
            "max_new_tokens": params.max_tokens,
            "do_sample": sampling,
            "repetition_penalty": params.repeat_penalty,
            "streamer": streamer,
            "stopping_criteria": StoppingCriteriaList([_Cancel()]),
            "pad_token_id": tokenizer.eos_id,
        }
        if sampling:
            kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k or None)
        gate = self._refusal_gate(prompt, params.refusal) if params.refusal is not None else None
        if gate is not None:
            kwargs["logits_processor"] = LogitsProcessorList([_processor(gate)])
        errors: list[BaseException] = []

        def run() -> None:
            try:
                with torch.inference_mode():
                    model.generate(**kwargs)
            except BaseException as error:  # surfaced in the caller's thread
                errors.append(error)
                streamer.end()

        trimmer = StopTrimmer(params.stop)
        n_pieces = 0
        with self._generate_lock:
            if params.seed is not None:
                torch.manual_seed(params.seed)
            worker = threading.Thread(target=run, name="rag-transformers-generate", daemon=True)
            worker.start()
            try:
                for text in streamer:
                    out = trimmer.feed(text)
                    if out:
                        n_pieces += 1
                        yield Piece(out)
                    if trimmer.stopped or cancelled():
                        break
                tail = trimmer.flush()
                if tail:
                    yield Piece(tail)
            finally:
                stop_now.set()  # the worker ends at its next step (the streamer's queue is unbounded)
                worker.join()
        if errors:
            raise errors[0]
        finish = "stop" if trimmer.stopped else ("cancelled" if cancelled() else None)
        info = {"prompt_tokens": len(prompt.ids), **(gate.info() if gate is not None else {})}
        yield Piece("", finish_reason=finish, info=info)

    def _refusal_gate(self, prompt: FormattedPrompt, refusal: RefusalGate) -> FirstStepGate:
        tokenizer = self.tokenizer
        assert isinstance(tokenizer, HFTokenizer)
        hf = tokenizer.hf_tokenizer
        tokens = first_tokens(
            prompt.text,
            refusal.text,
            lambda text: list(hf.encode(text, add_special_tokens=False)),
            # a byte-fallback piece of a character decodes to U+FFFD, which starts no refusal: never a first token
            lambda token: str(hf.decode([token])).encode("utf-8"),
        )
        return FirstStepGate(tokens, refusal.threshold)


def _processor(gate: FirstStepGate) -> Any:
    """``gate`` as a transformers logits processor: after generate's own processors (the repetition penalty), before
    its warpers (temperature, top-p) when sampling, as llama.cpp's runs before its sampler's; one sequence."""
    import torch
    from transformers import LogitsProcessor

    class Gate(LogitsProcessor):
        def __call__(self, input_ids: Any, scores: Any) -> Any:
            token = gate.decide(scores[0].float().cpu().numpy())
            if token is None:
                return scores
            forced = torch.full_like(scores, RULED_OUT)
            forced[:, token] = scores[:, token]
            return forced

    return Gate()
