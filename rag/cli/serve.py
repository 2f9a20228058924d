"""The ``rag serve`` command: only builds the app from the settings and runs it with uvicorn."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import click

from rag.cli.common import quiet_third_party, settings_from_flags, show_watch_runs
from rag.errors import ConfigError, RagError

__all__ = ["is_loopback", "serve_command"]


def is_loopback(host: str) -> bool:
    """Whether ``host`` only reaches this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@click.command("serve", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--host", help="Address to bind (RAG_SERVE_HOST; default 127.0.0.1: this machine only).")
@click.option("--port", type=click.IntRange(1, 65535), help="Port (RAG_SERVE_PORT; default 8000).")
@click.option(
    "--api-key-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="File whose first line is the key clients must send (or RAG_API_KEY).",
)
@click.option(
    "--api-keys-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="TOML file of API keys, each scoped to collections (RAG_API_KEYS_FILE); read again when it changes.",
)
@click.option("--cors-origin", "cors_origins", multiple=True, help="A browser origin allowed to call; repeatable.")
@click.option("--slots", type=click.IntRange(min=1), help="Answers at once (RAG_SERVE_SLOTS; 1 in process).")
@click.option("--queue", type=click.IntRange(min=0), help="Requests waiting for a slot before 503 (RAG_SERVE_QUEUE).")
@click.option("--no-llm", is_flag=True, help="Load no language model: /v1/chunks and /v1/embeddings only.")
@click.option(
    "--watch",
    "watch_folders",
    multiple=True,
    type=click.Path(exists=True, path_type=Path),
    help="A folder kept in sync with the collection while serving (RAG_WATCH_RESCAN_S); repeatable.",
)
@click.option("--collection", help="Collection that uploads go to by default (RAG_COLLECTION; default 'docs').")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Store location (RAG_DATA_DIR; default ./data).")
@click.option("--chroma-url", help="Chroma server, e.g. http://127.0.0.1:8001 (RAG_CHROMA_URL).")
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="TOML settings file (RAG_CONFIG).")
@click.option("--llm-model", help="GGUF path, hub 'repo/file.gguf', or the server's model name (RAG_LLM_MODEL).")
@click.option("--llm-base-url", help="An OpenAI-compatible model server instead of a local GGUF (RAG_LLM_BASE_URL).")
@click.option("--llm-n-ctx", type=int, help="Context window in tokens (RAG_LLM_N_CTX; default 32768).")
@click.option("--max-tokens", type=int, help="Most tokens in an answer (RAG_LLM_MAX_TOKENS; default 1024).")
def serve_command(
    host: str | None,
    port: int | None,
    api_key_file: Path | None,
    api_keys_file: Path | None,
    cors_origins: tuple[str, ...],
    slots: int | None,
    queue: int | None,
    no_llm: bool,
    watch_folders: tuple[Path, ...],
    collection: str | None,
    data_dir: Path | None,
    chroma_url: str | None,
    config_file: Path | None,
    llm_model: str | None,
    llm_base_url: str | None,
    llm_n_ctx: int | None,
    max_tokens: int | None,
) -> None:
    """Serve an OpenAI-compatible API: chat completions with sources, retrieval, embeddings, documents, ingest.

    \b
    Examples:
      rag serve                                   # http://127.0.0.1:8000/v1, model ids from GET /v1/models
      rag serve --llm-model HuggingFaceTB/SmolLM2-135M-Instruct --llm-n-ctx 8192   # the bundled small model
      RAG_API_KEY=s3cret rag serve --host 0.0.0.0 # on the network: a key is required
      rag serve --host 0.0.0.0 --api-keys-file keys.toml   # keys that each see only their collections
      rag serve --llm-base-url http://gpu-box:8080/v1 --chroma-url http://db:8001 --slots 8
      rag serve --watch ./docs                    # and keep ./docs in sync with the collection

    \b
    From Python:
      from openai import OpenAI
      client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="none")
      reply = client.chat.completions.create(model="rag-docs", messages=[{"role": "user", "content": "年假有几天？"}])
      print(reply.choices[0].message.content, reply.choices[0].message.model_extra["sources"])

    Keys in --api-keys-file each read only their collections (others answer 404) and upload or delete only with
    write = true (else 403); the file is read again when it changes. RAG_API_KEY may be given too: it keeps every
    collection. Without any API key it binds only to loopback. Stop it with Ctrl-C or SIGTERM: running answers are
    cancelled and it exits within a few seconds.
    """
    quiet_third_party()
    settings = settings_from_flags(
        config_file=config_file,
        collection=collection,
        data_dir=data_dir,
        chroma_url=chroma_url,
        llm_model=llm_model,
        llm_base_url=llm_base_url,
        llm_n_ctx=llm_n_ctx,
        llm_max_tokens=max_tokens,
        serve_host=host,
        serve_port=port,
        api_key_file=api_key_file,
        api_keys_file=api_keys_file,
        serve_cors_origins=list(cors_origins) or None,
        serve_slots=slots,
        serve_queue=queue,
    )
    import uvicorn

    from rag.app.root import Components
    from rag.server.app import ServeOptions, create_app

    components = Components(settings, use_llm=not no_llm)
    try:
        access = components.access_policy()  # a bad key file or keys file stops it here, named
    except RagError as error:
        raise click.UsageError(str(error)) from None
    if not access.requires_key and not is_loopback(settings.serve_host):
        raise click.UsageError(
            f"refusing to serve on {settings.serve_host} without an API key: anyone on the network could read "
            "your documents. Set RAG_API_KEY (or --api-key-file, or --api-keys-file), or bind 127.0.0.1."
        )
    options = ServeOptions.from_components(components, watch_folders=[str(folder) for folder in watch_folders])
    if watch_folders:
        show_watch_runs()
    try:
        app = create_app(components, options)
    except ConfigError as error:
        raise click.UsageError(str(error)) from None
    where = f"http://{settings.serve_host}:{settings.serve_port}/v1"
    mode = "retrieval only (no language model)" if no_llm else f"model {settings.llm_model}"
    keys = f"keys required ({', '.join(access.holders())})" if access.requires_key else "no key (loopback only)"
    click.echo(f"rag serve: {where} · {mode} · {keys}", err=True)
    uvicorn.run(
        app,
        host=settings.serve_host,
        port=settings.serve_port,
        log_level="warning",
        timeout_graceful_shutdown=3,
        server_header=False,
    )
