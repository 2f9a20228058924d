"""The ``rag`` command group: ``rag ingest``, ``rag ask``, ``rag eval``; ``ui`` and ``serve`` join it later."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from ingest.cli import ingest_command, quiet_third_party, settings_from_flags
from rag.errors import ConfigError, RagError
from rag.eval_cli import eval_command

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
    """


cli.add_command(ingest_command)
cli.add_command(eval_command)


def _source_line(source: dict[str, Any]) -> str:
    where = source.get("file_name") or source.get("source") or "?"
    if source.get("page") is not None:
        where += f", p. {source['page']}"
    if source.get("heading"):
        where += f" — {source['heading']}"
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
    )

    from rag.chain import build_rag

    try:
        rag = build_rag(settings, use_llm=not no_llm, k=k, prompt_format=prompt_format)
        if no_llm:
            prepared = rag.prepare(question)
            if as_json:
                payload = {
                    "question": prepared.question,
                    "context": prepared.packed.text,
                    "context_tokens": prepared.packed.tokens,
                    "budget": prepared.budget,
                    "prompt_tokens": prepared.prompt_tokens,
                    "sources": prepared.passages,
                }
                click.echo(json.dumps(payload, ensure_ascii=False))
            else:
                click.echo(prepared.packed.text)
                click.echo(
                    f"\n{prepared.packed.tokens} context tokens of a budget of {prepared.budget}; "
                    f"{len(prepared.packed.passages)} passages.",
                    err=True,
                )
                click.echo("\nSources:")
                for source in prepared.passages:
                    click.echo(_source_line(source))
            return
        chain = rag.runnable
        if as_json:
            click.echo(json.dumps(chain.invoke(question), ensure_ascii=False))
            return
        result: dict[str, Any] = {}
        for chunk in chain.stream(question):
            if "answer" in chunk:
                click.echo(chunk["answer"], nl=False)
                sys.stdout.flush()
            result.update({key: value for key, value in chunk.items() if key != "answer"})
        click.echo()
        sources = result.get("sources") or []
        if sources:
            cited = any(source.get("cited") for source in sources)
            click.echo("\nSources:" if cited else "\nTop passages (none cited):")
            for source in sources:
                click.echo(_source_line(source))
    except ConfigError as error:
        raise click.UsageError(str(error)) from None
    except RagError as error:
        click.echo(f"error: {error}", err=True)
        sys.exit(1)


def main() -> None:
    cli(prog_name="rag")
