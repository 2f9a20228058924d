"""The ``rag`` command group: ``rag ingest``, ``rag ask``, ``rag eval``, ``rag ui``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from rag.cli.common import quiet_third_party, settings_from_flags, show_watch_runs
from rag.cli.eval import eval_command
from rag.cli.ingest import ingest_command
from rag.cli.mcp import mcp_command
from rag.cli.serve import serve_command
from rag.errors import ConfigError, RagError

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="chinese-mixtral-rag")
def cli() -> None:
    """Question answering over your own documents with Chinese-Mixtral-Instruct.

    \b
    Examples:
      rag ingest ./docs
      rag ingest ./docs --collection work --json
      rag ask "年假有几天？"
      rag ui                                   # the browser UI on http://127.0.0.1:7860
      rag mcp --data-dir ~/rag/data            # your documents as tools of an MCP assistant (stdio)
    """


cli.add_command(ingest_command)
cli.add_command(eval_command)
cli.add_command(serve_command)
cli.add_command(mcp_command)


def _source_line(source: dict[str, Any]) -> str:
    where = source.get("file_name") or source.get("source") or "?"
    if source.get("page") is not None:
        where += f", p. {source['page']}"
    if source.get("heading"):
        where += f" — {source['heading']}"
    if "ocr_confidence" in source:
        where += " (read by OCR, low confidence)" if source.get("low_confidence") else " (read by OCR)"
    mark = "" if source.get("cited", True) else " (not cited)"
    return f"[{source['n']}] {where}{mark}"


@cli.command("ask", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("question")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (answer, sources, context_tokens).")
@click.option("--no-llm", is_flag=True, help="Print the assembled context and its sources; load no language model.")
@click.option("--k", "k", type=click.IntRange(min=1), default=5, show_default=True, help="Top hits to expand first.")
@click.option(
    "--max-context-tokens",
    type=click.IntRange(min=256),
    help="Evidence budget (RAG_MAX_CONTEXT_TOKENS; default: the window less the prompt and the answer).",
)
@click.option("--collection", help="Collection to read (RAG_COLLECTION; default 'docs').")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Store location (RAG_DATA_DIR; default ./data).")
@click.option("--chroma-url", help="Chroma server, e.g. http://127.0.0.1:8000 (RAG_CHROMA_URL).")
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="TOML settings file (RAG_CONFIG).")
@click.option("--llm-model", help="GGUF path, hub 'repo/file.gguf', or the server's model name (RAG_LLM_MODEL).")
@click.option("--llm-base-url", help="An OpenAI-compatible server instead of a local GGUF (RAG_LLM_BASE_URL).")
@click.option("--llm-n-ctx", type=int, help="Context window in tokens (RAG_LLM_N_CTX; default 32768).")
@click.option("--max-tokens", type=int, help="Most tokens in the answer (RAG_LLM_MAX_TOKENS; default 1024).")
@click.option("--seed", type=int, help="Sampling seed (RAG_LLM_SEED).")
@click.option(
    "--prompt-format",
    type=click.Choice(["auto", "mixtral", "native"]),
    help="auto (default): the Mixtral-Instruct template for Mixtral models, the GGUF's own chat template for "
    "others (RAG_LLM_PROMPT_FORMAT).",
)
def ask_command(
    question: str,
    as_json: bool,
    no_llm: bool,
    k: int,
    max_context_tokens: int | None,
    collection: str | None,
    data_dir: Path | None,
    chroma_url: str | None,
    config_file: Path | None,
    llm_model: str | None,
    llm_base_url: str | None,
    llm_n_ctx: int | None,
    max_tokens: int | None,
    seed: int | None,
    prompt_format: str | None,
) -> None:
    """Answer QUESTION from the ingested documents, streaming the answer, then its sources.

    \b
    Examples:
      rag ask "年假有几天？"
      rag ask "What is the remote work policy?" --json
      rag ask "保修期多久？" --no-llm          # the evidence the model would read
      rag ask "..." --llm-base-url http://127.0.0.1:8080/v1 --llm-model chinese-mixtral

    Exit status: 0 answered, 1 nothing ingested yet or a model/store problem, 2 usage error.
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
        llm_seed=seed,
        max_context_tokens=max_context_tokens,
        llm_prompt_format=prompt_format,
    )

    from rag.app.application import Application
    from rag.app.assistant import AskOptions

    options = AskOptions(k=k, retrieval_only=no_llm)
    try:
        assistant = Application.build(settings).assistant
        result: dict[str, Any] = {}
        reading_shown = False
        for event in assistant.ask(question, options=options):
            if event.kind == "reading" and not as_json and sys.stderr.isatty():
                stats = event.stats
                left = f", about {stats.read_left_s:.0f} s left" if stats.read_left_s is not None else ""
                click.echo(f"\rreading the prompt: {stats.read_tokens:,} of {stats.to_read_tokens:,} tokens{left}  ",
                           nl=False, err=True)  # fmt: skip
                reading_shown = True
            elif event.kind == "delta" and not as_json:
                if reading_shown:
                    click.echo("\r" + " " * 72 + "\r", nl=False, err=True)
                    reading_shown = False
                click.echo(event.text, nl=False)
                sys.stdout.flush()
            elif event.kind == "done":
                result = {
                    "answer": event.text,
                    "sources": event.sources,
                    "context": event.context,
                    "standalone_question": event.standalone_question,
                    "stats": event.stats,
                    "notes": event.notes,
                }
    except ConfigError as error:
        raise click.UsageError(str(error)) from None
    except RagError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)
    stats = result["stats"]
    if no_llm:
        if as_json:
            payload = {
                "question": question.strip(),
                "context": result["context"],
                "context_tokens": stats.context_tokens,
                "budget": stats.budget,
                "prompt_tokens": stats.prompt_tokens,
                "sources": result["sources"],
                "stats": stats.to_dict(),
                "notes": result["notes"],
            }
            click.echo(json.dumps(payload, ensure_ascii=False))
        else:
            click.echo(result["context"])
            click.echo(
                f"\n{stats.context_tokens} context tokens of a budget of {stats.budget}; "
                f"{len(result['sources'])} passages; retrieval {stats.retrieval_ms:.0f} ms.",
                err=True,
            )
            click.echo("\nSources:")
            for source in result["sources"]:
                click.echo(_source_line(source))
        return
    if as_json:
        payload = {
            "answer": result["answer"],
            "sources": result["sources"],
            "context_tokens": stats.context_tokens,
            "standalone_question": result["standalone_question"],
            "stats": stats.to_dict(),
            "notes": result["notes"],
        }
        click.echo(json.dumps(payload, ensure_ascii=False))
        return
    click.echo()
    sources = result["sources"]
    if sources:
        cited = any(source.get("cited") for source in sources)
        attributed = any(source.get("attributed") for source in sources)
        heading = "Sources (matched by the answer's words):" if attributed else "Sources:"
        click.echo(f"\n{heading}" if cited else "\nTop passages (none cited):")
        for source in sources:
            click.echo(_source_line(source))
    click.echo(f"\n{_figures_line(stats)}", err=True)


def _figures_line(stats: Any) -> str:
    parts = [f"retrieval {stats.retrieval_ms:.0f} ms", f"{stats.context_tokens} context tokens"]
    if stats.rewrite_ms:
        parts.append(f"rewrite {stats.rewrite_ms:.0f} ms")
    if stats.first_token_ms is not None:
        parts.append(f"first token {stats.first_token_ms / 1000:.2f} s")
    if stats.tokens_per_s is not None:
        parts.append(f"{stats.tokens_per_s:.1f} tokens/s")
    return " · ".join(parts)


@cli.command("ui", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--host", help="Address to bind (RAG_UI_HOST; default 127.0.0.1: this machine only).")
@click.option("--port", type=click.IntRange(1, 65535), help="Port (RAG_UI_PORT; default 7860).")
@click.option("--auth", help="USER:PASSWORD the page asks for (RAG_UI_AUTH; default: no login).")
@click.option(
    "--max-upload-mb", type=click.FloatRange(min=0, min_open=True), help="Largest upload (RAG_UI_MAX_UPLOAD_MB; 50)."
)
@click.option(
    "--folder-root",
    "folder_roots",
    multiple=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="A server folder (and its subfolders) users may re-ingest, besides the collection's own; repeatable.",
)
@click.option(
    "--watch",
    "watch_folders",
    multiple=True,
    type=click.Path(exists=True, path_type=Path),
    help="A folder kept in sync with the collection while the UI runs (also a folder root); repeatable.",
)
@click.option("--no-llm", is_flag=True, help="Load no language model: retrieval-only mode for everyone.")
@click.option("--collection", help="Collection selected at start (RAG_COLLECTION; default 'docs').")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Store and uploads location (RAG_DATA_DIR; ./data).")
@click.option("--chroma-url", help="Chroma server, e.g. http://127.0.0.1:8000 (RAG_CHROMA_URL).")
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="TOML settings file (RAG_CONFIG).")
@click.option(
    "--embedding-model", help="Embedder for new collections (RAG_EMBEDDING_MODEL); existing ones keep theirs."
)
@click.option("--llm-model", help="GGUF path, hub 'repo/file.gguf', or the server's model name (RAG_LLM_MODEL).")
@click.option("--llm-base-url", help="An OpenAI-compatible server instead of a local GGUF (RAG_LLM_BASE_URL).")
@click.option("--llm-n-ctx", type=int, help="Context window in tokens (RAG_LLM_N_CTX; default 32768).")
@click.option("--max-tokens", type=int, help="Most tokens in an answer (RAG_LLM_MAX_TOKENS; default 1024).")
def ui_command(
    host: str | None,
    port: int | None,
    auth: str | None,
    max_upload_mb: float | None,
    folder_roots: tuple[Path, ...],
    watch_folders: tuple[Path, ...],
    no_llm: bool,
    collection: str | None,
    data_dir: Path | None,
    chroma_url: str | None,
    config_file: Path | None,
    embedding_model: str | None,
    llm_model: str | None,
    llm_base_url: str | None,
    llm_n_ctx: int | None,
    max_tokens: int | None,
) -> None:
    """Start the browser UI: chat with sources and figures, upload and manage documents, per-session settings.

    \b
    Examples:
      rag ui                                           # http://127.0.0.1:7860
      rag ui --llm-model HuggingFaceTB/SmolLM2-135M-Instruct --llm-n-ctx 8192   # bundled small model, offline
      rag ui --no-llm                                  # retrieval only: no model is loaded
      rag ui --host 0.0.0.0 --auth alice:s3cret        # reachable from the network: set a password
      RAG_UI_AUTH=alice:s3cret rag ui --folder-root ~/Documents
      rag ui --watch ~/Documents                       # and keep it in sync with the collection

    It binds 127.0.0.1 unless --host says otherwise. Uploads are stored under DATA_DIR/uploads/COLLECTION.
    """
    quiet_third_party()
    settings = settings_from_flags(
        config_file=config_file,
        collection=collection,
        data_dir=data_dir,
        chroma_url=chroma_url,
        embedding_model=embedding_model,
        llm_model=llm_model,
        llm_base_url=llm_base_url,
        llm_n_ctx=llm_n_ctx,
        llm_max_tokens=max_tokens,
        ui_host=host,
        ui_port=port,
        ui_auth=auth,
        ui_max_upload_mb=max_upload_mb,
    )
    import os

    # Gradio keeps incoming uploads in its temp dir until we copy them: keep that under the data dir too (hidden,
    # so re-ingesting the uploads folder never reads it). Read when gradio is imported, hence before the import.
    incoming = (settings.data_dir / "uploads" / ".incoming").resolve()
    os.environ.setdefault("GRADIO_TEMP_DIR", str(incoming))
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

    from ui.app import build_ui, create_handlers, launch

    handlers = create_handlers(settings, use_llm=not no_llm, folder_roots=(*folder_roots, *watch_folders))
    where = f"http://{settings.ui_host}:{settings.ui_port}"
    mode = "retrieval only (no language model)" if no_llm else f"model {settings.llm_model}"
    click.echo(f"rag ui: {where}  ·  collection '{settings.collection}' in {settings.data_dir}  ·  {mode}", err=True)
    watcher = None
    if watch_folders:  # the UI's own library: its runs and the page's uploads never write at once
        show_watch_runs()
        try:
            watcher = handlers.library.watch(None, [str(folder) for folder in watch_folders])
        except ConfigError as error:
            raise click.UsageError(str(error)) from None
        watcher.start()
    try:
        launch(build_ui(handlers), settings, quiet=True)
    finally:
        if watcher is not None:  # a sync in progress gets a few seconds; an interrupted one is completed next time
            watcher.stop(5.0)


def main() -> None:
    cli(prog_name="rag")
