"""``rag eval``: retrieval (and, with a model, answer) quality on RGB or CMRC 2018."""

from __future__ import annotations

import functools
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from rag.errors import RagError
from rag.settings import Settings

__all__ = ["eval_command"]


def _ks(value: str) -> list[int]:
    try:
        ks = sorted({int(part) for part in value.split(",") if part.strip()})
    except ValueError:
        raise click.BadParameter(f"{value!r}: give numbers separated by commas, e.g. 1,5,10") from None
    if not ks or ks[0] < 1:
        raise click.BadParameter("every k must be at least 1")
    return ks


@click.command("eval", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("dataset", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--retrieval-only", is_flag=True, help="Measure retrieval only; no language model is loaded.")
@click.option("--k", "k_list", default="1,5,10", show_default=True, help="Cut-offs for hit@k.")
@click.option(
    "--budgets",
    "budget_list",
    default="2000,4000,8000,16000,32000",
    show_default=True,
    help="Evidence budgets (tokens) for the recall-vs-budget table; empty: skip it.",
)
@click.option(
    "--distractors",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="CRUD news folder: its articles join the passage pool to make retrieval harder.",
)
@click.option("--distractor-limit", type=int, help="At most this many distractor articles.")
@click.option("--questions", "question_limit", type=int, help="Evaluate only the first N questions.")
@click.option("--embedding-model", help="Embedder for the evaluation store (RAG_EMBEDDING_MODEL).")
@click.option("--llm-model", help="Language model for answers (RAG_LLM_MODEL).")
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep the evaluation store here (reused by later runs); default: a temporary folder.",
)
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("eval-results"),
    show_default=True,
    help="Folder for the table (JSON, Markdown) and the PNG plot.",
)
@click.option("--config", "config_file", type=click.Path(path_type=Path), help="TOML settings file (RAG_CONFIG).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as one JSON object.")
def eval_command(
    dataset: Path,
    retrieval_only: bool,
    k_list: str,
    budget_list: str,
    distractors: Path | None,
    distractor_limit: int | None,
    question_limit: int | None,
    embedding_model: str | None,
    llm_model: str | None,
    workdir: Path | None,
    output: Path,
    config_file: Path | None,
    as_json: bool,
) -> None:
    """Evaluate on an RGB (.jsonl) or CMRC 2018 (SQuAD .json) file: a fresh store is built from its passages.

    \b
    Examples:
      rag eval ../shared/eval-data/rgb/zh_refine.even.jsonl --retrieval-only
      rag eval cmrc2018_trial.squad.json --retrieval-only --distractors ../shared/eval-data/crud-news
      rag eval zh_refine.even.jsonl --questions 50 --llm-model ./chinese-mixtral-instruct-q4_0.gguf

    Reports hit@k, precision@5 and MRR@10 for the hybrid retriever and each of its sides; evidence recall per
    budget (questions whose gold passage is inside the assembled context at 2K ... 32K tokens: what a shorter wait
    costs); with a model, RGB's answer accuracy and rejection rate, or CMRC's EM and F1.
    """
    from rag.cli.common import quiet_third_party, settings_from_flags
    from rag.eval.metrics import add_distractors, load_dataset, plot_retrieval_curve

    quiet_third_party()
    ks = _ks(k_list)
    budgets = _ks(budget_list) if budget_list.strip() else []
    settings = settings_from_flags(config_file=config_file, embedding_model=embedding_model, llm_model=llm_model)
    try:
        evalset = load_dataset(dataset)
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    pool = f"{len(evalset.passages)} passages of {dataset.name}"
    if distractors:
        pool += f" + {add_distractors(evalset, distractors, distractor_limit)} distractor articles"
    questions = evalset.questions[:question_limit] if question_limit else evalset.questions

    with tempfile.TemporaryDirectory(prefix="rag-eval-") as scratch:
        root = workdir or Path(scratch)
        try:
            results = _evaluate(evalset, questions, settings, root, ks, retrieval_only, budgets)
        except RagError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(1)
    output.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"dataset": dataset.name, "pool": pool, "questions": len(questions), **results}
    (output / f"{evalset.name}.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2), "utf-8")
    table = _table(summary["retrieval"], ks)
    if summary.get("evidence_recall"):
        table += "\n\n" + _recall_table(summary["evidence_recall"])
    (output / f"{evalset.name}.md").write_text(f"Pool: {pool}; {len(questions)} questions\n\n{table}\n", "utf-8")
    plot_retrieval_curve(summary["retrieval"], ks, output / f"{evalset.name}-retrieval.png", f"{evalset.name}: {pool}")
    if as_json:
        click.echo(json.dumps(summary, ensure_ascii=False))
        return
    click.echo(f"Pool: {pool}; {len(questions)} questions\n\n{table}")
    if "answers" in summary:
        click.echo("\n" + ", ".join(f"{key} {value:.3f}" for key, value in summary["answers"].items()))
    click.echo(f"\nWritten: {output}/{evalset.name}.json, .md and -retrieval.png")


def _table(retrieval: dict[str, dict[str, float]], ks: list[int]) -> str:
    columns = [f"hit@{k}" for k in ks] + ["precision@5", "mrr@10", "ms_per_query"]
    lines = ["| retriever | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for name, metrics in retrieval.items():
        lines.append(f"| {name} | " + " | ".join(f"{metrics[c]:.3f}" for c in columns) + " |")
    return "\n".join(lines)


def _recall_table(recall: dict[int, dict[str, float]]) -> str:
    lines = ["| evidence budget | gold passage inside | all gold passages inside | mean context tokens |",
             "|---:|---:|---:|---:|"]  # fmt: skip
    for budget, figures in recall.items():
        lines.append(f"| {budget:,} | {figures['any_gold']:.3f} | {figures['all_gold']:.3f} | "
                     f"{figures['mean_tokens']:,.0f} |")  # fmt: skip
    return "\n".join(lines)


def _retrieve(retriever: Any, query: str, k: int) -> list[Any]:
    return list(retriever.invoke(query, k=k))


def _evaluate(
    evalset: Any,
    questions: list[Any],
    settings: Settings,
    root: Path,
    ks: list[int],
    retrieval_only: bool,
    budgets: list[int] | None = None,
) -> dict[str, Any]:
    from rag.app.root import Components
    from rag.eval.metrics import (
        cmrc_scores,
        evidence_recall,
        is_rejection,
        retrieval_metrics,
        rgb_correct,
        write_passages,
    )

    folder = root / "passages"
    write_passages(evalset, folder)
    store_settings = settings.model_copy(update={"data_dir": root / "data", "collection": "eval"})
    components = Components(store_settings, use_llm=not retrieval_only)
    report = components.ingest_pipeline().run([folder])
    if report.files_failed:
        raise RagError(f"{len(report.files_failed)} passages could not be ingested: {report.files_failed[0]}")
    retrievers = {mode: components.retriever(mode=mode) for mode in ("hybrid", "bm25", "lexical", "dense")}
    retrieval: dict[str, dict[str, float]] = {}
    for name, retriever in retrievers.items():
        started = time.monotonic()
        metrics = retrieval_metrics(functools.partial(_retrieve, retriever), questions, ks)
        metrics["ms_per_query"] = (time.monotonic() - started) * 1000 / max(len(questions), 1)
        retrieval[name] = metrics
    results: dict[str, Any] = {"retrieval": retrieval, "chunks": report.chunks_total}
    if budgets:
        # the chain's own assembly (neighbours, merging, exact budget), counted with the Mixtral tokenizer
        evidence = components.new_chain(retrieval_only=True, retriever=retrievers["hybrid"])

        def assemble(query: str, budget: int) -> tuple[list[str], int]:
            packed = evidence.prepare(query, max_context_tokens=budget).packed
            return [passage.source for passage in packed.passages], packed.tokens

        results["evidence_recall"] = evidence_recall(assemble, questions, budgets)
    if retrieval_only:
        return results

    chain = components.new_chain(retriever=retrievers["hybrid"]).runnable
    correct = rejected = 0
    exact = f1 = 0.0
    for question in questions:
        answer = str(chain.invoke(question.query)["answer"])
        if evalset.kind == "rgb":
            correct += rgb_correct(answer, question.answers)
            rejected += is_rejection(answer)
        else:
            em, f = cmrc_scores(answer, question.answers[0])
            exact, f1 = exact + em, f1 + f
            correct += any(ref in answer for ref in question.answers[0])
    n = max(len(questions), 1)
    answers = {"accuracy": correct / n}
    if evalset.kind == "rgb":
        answers["rejection_rate"] = rejected / n
    else:
        answers.update({"exact_match": exact / n, "f1": f1 / n})
    results["answers"] = answers
    return results
