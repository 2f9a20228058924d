"""The ``rag mcp`` command: the MCP server over stdio, for an assistant (Claude Desktop, Cursor, ...) that starts it."""

from __future__ import annotations

import contextlib
from pathlib import Path

import click

from rag.cli.common import quiet_third_party, settings_from_flags

__all__ = ["mcp_command"]


@click.command("mcp", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--collection", help="Collection the tools read when none is named (RAG_COLLECTION; default 'docs').")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Store location (RAG_DATA_DIR; default ./data).")
@click.option("--chroma-url", help="Chroma server, e.g. http://127.0.0.1:8001 (RAG_CHROMA_URL).")
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="TOML settings file (RAG_CONFIG).")
@click.option("--no-llm", is_flag=True, help="Load no language model: search and documents only, no `ask` answers.")
@click.option("--llm-model", help="GGUF path, hub 'repo/file.gguf', or the server's model name (RAG_LLM_MODEL).")
@click.option("--llm-base-url", help="An OpenAI-compatible model server instead of a local GGUF (RAG_LLM_BASE_URL).")
@click.option("--llm-n-ctx", type=int, help="Context window in tokens (RAG_LLM_N_CTX; default 32768).")
@click.option("--max-tokens", type=int, help="Most tokens in an answer (RAG_LLM_MAX_TOKENS; default 1024).")
def mcp_command(
    collection: str | None,
    data_dir: Path | None,
    chroma_url: str | None,
    config_file: Path | None,
    no_llm: bool,
    llm_model: str | None,
    llm_base_url: str | None,
    llm_n_ctx: int | None,
    max_tokens: int | None,
) -> None:
    """Serve your documents to an MCP host (Claude Desktop, Cursor, Cherry Studio, ...) over stdio.

    The host starts this command and talks MCP on its stdin and stdout; messages go to stderr. Tools: search,
    ask (answers stream as progress), list_collections, list_documents, read_document; documents are also
    resources (rag://documents/{id}). Give absolute paths: a host starts it in a folder of its own choosing.

    \b
    Examples:
      rag mcp --data-dir ~/rag/data                      # what the host runs
      rag mcp --data-dir ~/rag/data --collection work --no-llm   # search and read only, no model
      rag mcp --config ~/rag/rag.toml --llm-base-url http://127.0.0.1:8080/v1

    \b
    Claude Desktop (claude_desktop_config.json):
      {"mcpServers": {"my-documents": {"command": "/ABS/PATH/.venv/bin/rag",
                                       "args": ["mcp", "--data-dir", "/ABS/PATH/data"]}}}

    Over HTTP instead: `rag serve` answers MCP at http://127.0.0.1:8000/mcp (same API key rule).
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
    )
    import anyio

    from rag.app.application import Application
    from rag.server.mcp import create_mcp_server, local_access

    application = Application.build(settings, use_llm=not no_llm)
    server = create_mcp_server(application.assistant, application.library, access_of=local_access)
    mode = "search only (no language model)" if no_llm else f"model {settings.llm_model}"
    click.echo(f"rag mcp: stdio · collection '{settings.collection}' in {settings.data_dir} · {mode}", err=True)
    if settings.chroma_url is None and not settings.chroma_path.exists():
        click.echo(
            f"rag mcp: nothing is stored in {settings.data_dir.resolve()} yet: ingest documents first "
            f"(`ingest ./docs --data-dir {settings.data_dir}`), or point --data-dir at your data",
            err=True,
        )
    with contextlib.suppress(KeyboardInterrupt):  # the host closing stdin ends it; Ctrl-C too, quietly
        anyio.run(server.run_stdio_async)
