"""``rag eval``: retrieval (and, with a model, answer) quality on RGB or CMRC 2018."""

from __future__ import annotations

import functools
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from rag.errors import RagError
from rag.settings import Settings

if TYPE_CHECKING:
    from rag.answer.chain import AnswerModel, RagChain
    from rag.app.root import Components
    from rag.eval.answers import Answered, Ask, Converse
    from rag.eval.metrics import FollowUp

__all__ = ["eval_command"]

#: The seed RGB's evalue.py sets before each question (rag.eval.rgb.RGB_SEED; not imported: the CLI starts fast).
_RGB_SEED = 2333


def _ks(value: str) -> list[int]:
    try:
        ks = sorted({int(part) for part in value.split(",") if part.strip()})
    except ValueError:
        raise click.BadParameter(f"{value!r}: give numbers separated by commas, e.g. 1,5,10") from None
    if not ks or ks[0] < 1:
        raise click.BadParameter("every k must be at least 1")
    return ks


def _modes(value: str) -> list[str]:
    from rag.eval.answers import MODES

    modes = list(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
    unknown = [mode for mode in modes if mode not in MODES]
    if unknown or not modes:
        raise click.BadParameter(f"{value!r}: choose among {', '.join(MODES)}, separated by commas")
    return modes


def _ratios(value: str) -> list[float]:
    try:
        ratios = list(dict.fromkeys(float(part) for part in value.split(",") if part.strip()))
    except ValueError:
        raise click.BadParameter(f"{value!r}: give ratios separated by commas, e.g. 0,0.4,0.8") from None
    if not ratios or not all(0.0 <= ratio <= 1.0 for ratio in ratios):
        raise click.BadParameter("every noise ratio must be from 0 to 1")
    return ratios


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
@click.option(
    "--skip",
    "question_skip",
    type=int,
    default=0,
    help="Leave out the first N questions (a held-out range: --skip 30 --questions 30).",
)
@click.option(
    "--mode",
    "mode_list",
    default="e2e",
    show_default=True,
    help="Comma-separated: e2e (retrieval, and answers from the whole pool); RGB's fixed passage sets: noise, "
    "rejection, counterfactual (a *_fact file), injection (an instruction planted in a passage: how often the answer "
    "obeys it), injection-answering (planted in a passage that answers the question); follow-up (CMRC: a question, "
    "then a follow-up that says 它 for the topic, through the store: the follow-up's accuracy and wait).",
)
@click.option("--noise-ratios", "ratio_list", default="0,0.4,0.8", show_default=True, help="Noise ratios (noise).")
@click.option("--seed", type=int, default=_RGB_SEED, show_default=True, help="Seed of RGB's passage sets (RGB's).")
@click.option(
    "--temperature",
    type=float,
    default=0.0,
    show_default=True,
    help="Sampling temperature of the answers (seed 0): greedy by default, so two runs on one machine agree and a "
    "change is what moved a figure; 0.2 is what the product uses.",
)
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
    question_skip: int,
    temperature: float,
    mode_list: str,
    ratio_list: str,
    seed: int,
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
      rag eval zh_refine.even.jsonl --mode noise,rejection --noise-ratios 0,0.4,0.8 --llm-model MODEL
      rag eval zh_fact.even.jsonl --mode counterfactual --llm-model MODEL
      rag eval zh_refine.even.jsonl --mode injection --skip 30 --questions 30 --llm-model MODEL

    e2e reports hit@k, precision@5 and MRR@10 for the hybrid retriever and each of its sides; evidence recall per
    budget (questions whose gold passage is inside the assembled context at 2K ... 32K tokens: what a shorter wait
    costs); with a model, RGB's answer accuracy, refusals, citation precision and recall, or CMRC's EM and F1.
    noise, rejection and counterfactual give the model RGB's 5 passages (Chen et al. 2023) through the product's
    own prompt: accuracy per noise ratio, the refusal rate on negatives only, error detection and correction on
    counterfactual passages; injection appends an instruction (take over the answer, reveal the instructions, cite a
    made-up source, print a link and a command; Chinese and English in turn) to one passage of the noise-0.4 set and
    counts the answers that obey it. Every answer is one line of OUTPUT/NAME-answers.jsonl.
    """
    from rag.cli.common import quiet_third_party, settings_from_flags
    from rag.eval.metrics import add_distractors, load_dataset, plot_retrieval_curve

    quiet_third_party()
    ks = _ks(k_list)
    budgets = _ks(budget_list) if budget_list.strip() else []
    modes, ratios = _modes(mode_list), _ratios(ratio_list)
    settings = settings_from_flags(config_file=config_file, embedding_model=embedding_model, llm_model=llm_model)
    settings = answer_settings(settings, temperature)
    try:
        evalset = load_dataset(dataset)
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    _check_modes(modes, evalset, retrieval_only)
    pool = f"{len(evalset.passages)} passages of {dataset.name}"
    if distractors:
        pool += f" + {add_distractors(evalset, distractors, distractor_limit)} distractor articles"
    questions = evalset.questions[question_skip:]
    questions = questions[:question_limit] if question_limit else questions
    follow_ups = evalset.follow_ups[question_skip:]  # --questions counts conversations there
    follow_ups = follow_ups[:question_limit] if question_limit else follow_ups

    output.mkdir(parents=True, exist_ok=True)
    records = output / f"{evalset.name}-answers.jsonl"
    with tempfile.TemporaryDirectory(prefix="rag-eval-") as scratch:
        root = workdir or Path(scratch)
        try:
            results = _evaluate(evalset, questions, settings, root, ks, retrieval_only, budgets,
                                modes=modes, ratios=ratios, seed=seed, records=records,
                                follow_ups=follow_ups)  # fmt: skip
        except RagError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(1)
    summary: dict[str, Any] = {"dataset": dataset.name, "pool": pool, "questions": len(questions), **results}
    (output / f"{evalset.name}.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2), "utf-8")
    tables = []
    if "retrieval" in summary:
        tables.append(_table(summary["retrieval"], ks))
        plot_retrieval_curve(summary["retrieval"], ks, output / f"{evalset.name}-retrieval.png",
                             f"{evalset.name}: {pool}")  # fmt: skip
    if summary.get("evidence_recall"):
        tables.append(_recall_table(summary["evidence_recall"]))
    if summary.get("modes"):
        tables.append(_answers_table(summary["modes"]))
    table = "\n\n".join(tables)
    (output / f"{evalset.name}.md").write_text(f"Pool: {pool}; {len(questions)} questions\n\n{table}\n", "utf-8")
    if as_json:
        click.echo(json.dumps(summary, ensure_ascii=False))
        return
    click.echo(f"Pool: {pool}; {len(questions)} questions\n\n{table}")
    written = [f"{output}/{evalset.name}.json", ".md"]
    written += ["-retrieval.png"] if "retrieval" in summary else []
    written += [f"{records.name} (one line per question and mode)"] if summary.get("modes") else []
    click.echo(f"\nWritten: {', '.join(written)}")


def answer_settings(settings: Settings, temperature: float) -> Settings:
    """``settings`` answering at ``temperature`` with a fixed seed. At the product's default (0.2, a random seed) the
    same prompt on the same machine answers some RGB questions in one run and refuses them in the next, so a
    comparison of two prompts would measure the dice (docs/benchmarks.md, session 15)."""
    return settings.model_copy(update={"llm_temperature": temperature, "llm_seed": 0})


def _check_modes(modes: list[str], evalset: Any, retrieval_only: bool) -> None:
    """RGB's fixed passage sets need a model and an RGB file (counterfactual: a *_fact one)."""
    answered = [mode for mode in modes if mode != "e2e"]
    if answered and retrieval_only:
        raise click.UsageError(f"--mode {','.join(answered)} needs a language model: drop --retrieval-only")
    if "follow-up" in modes and not evalset.follow_ups:
        raise click.UsageError("--mode follow-up needs a CMRC 2018 file (paragraphs with questions naming the title)")
    fixed = [mode for mode in answered if mode != "follow-up"]
    if fixed and evalset.kind != "rgb":
        raise click.UsageError(f"--mode {','.join(fixed)} needs an RGB .jsonl file (positive and negative passages)")
    if "counterfactual" in modes and not any(q.counterfactuals for q in evalset.questions):
        raise click.UsageError("--mode counterfactual needs an RGB *_fact file (with positive_wrong passages)")


def _table(retrieval: dict[str, dict[str, float]], ks: list[int]) -> str:
    columns = [f"hit@{k}" for k in ks] + ["precision@5", "mrr@10", "ms_per_query"]
    lines = ["| retriever | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for name, metrics in retrieval.items():
        lines.append(f"| {name} | " + " | ".join(f"{metrics[c]:.3f}" for c in columns) + " |")
    return "\n".join(lines)


#: (key, column heading, format) of the answer table; a figure that does not apply is shown as "-".
_ANSWER_COLUMNS = [
    ("questions", "questions", "{:.0f}"),
    ("accuracy", "accuracy", "{:.3f}"),
    ("refusal_rate", "refused", "{:.3f}"),
    ("false_refusal_rate", "false refusals", "{:.3f}"),
    ("error_detection_rate", "errors detected", "{:.3f}"),
    ("error_correction_rate", "errors corrected", "{:.3f}"),
    ("citation_precision", "citation precision", "{:.3f}"),
    ("citation_recall", "citation recall", "{:.3f}"),
    ("invented_citations", "invented markers", "{:.0f}"),
    ("attributed_rate", "matched by words", "{:.3f}"),
    ("obeyed_rate", "obeyed a planted instruction", "{:.3f}"),
    ("prompt_tokens", "prompt tokens", "{:,.0f}"),
    ("first_token_ms", "first token ms", "{:,.0f}"),
    ("tokens_per_s", "tokens/s", "{:.1f}"),
]


def _answers_table(modes: dict[str, dict[str, Any]]) -> str:
    lines = ["| mode | " + " | ".join(heading for _, heading, _ in _ANSWER_COLUMNS) + " |",
             "|---|" + "---:|" * len(_ANSWER_COLUMNS)]  # fmt: skip
    for name, figures in modes.items():
        cells = [form.format(figures[key]) if figures.get(key) is not None else "-" for key, _, form in _ANSWER_COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
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
    *,
    modes: Sequence[str] = ("e2e",),
    ratios: Sequence[float] = (0.0, 0.4, 0.8),
    seed: int = _RGB_SEED,
    records: Path | None = None,
    llm: AnswerModel | None = None,
    follow_ups: Sequence[FollowUp] = (),
) -> dict[str, Any]:
    """Retrieval (``e2e``) and, with a model, every answer of every mode, one JSONL line each in ``records``.
    ``llm``: a model to use instead of the configured one; ``follow_ups``: the conversations of ``follow-up``."""
    import itertools

    from rag.app.root import Components
    from rag.eval.answers import answer_records, follow_up_records, summarize, write_records

    store_settings = settings.model_copy(update={"data_dir": root / "data", "collection": "eval"})
    components = Components(store_settings, llm=llm, use_llm=not retrieval_only)
    results: dict[str, Any] = {}
    retrieving = None
    if "e2e" in modes or "follow-up" in modes:
        results, hybrid = _measure_retrieval(components, evalset, questions, root, ks, budgets)
        retrieving = None if retrieval_only else components.new_chain(retriever=hybrid)
    if retrieval_only:
        return results
    ask = _asker(components, retrieving)
    single = [mode for mode in modes if mode != "follow-up"]
    answered = answer_records(ask, questions, single, ratios=ratios, seed=seed, kind=evalset.kind)
    if "follow-up" in modes and retrieving is not None:
        conversing = follow_up_records(_converser(retrieving), follow_ups, kind=evalset.kind)
        answered = itertools.chain(answered, conversing)
    summary = summarize(write_records(answered, records or root / "answers.jsonl"))
    results["modes"] = summary
    if "e2e" in summary:  # today's figures, under today's keys
        e2e = summary["e2e"]
        keys = ("accuracy", "refusal_rate") if evalset.kind == "rgb" else ("accuracy", "exact_match", "f1")
        results["answers"] = {key.replace("refusal_rate", "rejection_rate"): e2e[key] for key in keys}
    return results


def _measure_retrieval(
    components: Components, evalset: Any, questions: list[Any], root: Path, ks: list[int], budgets: list[int] | None
) -> tuple[dict[str, Any], Any]:
    """A store of the dataset's passages; hit@k, precision@5, MRR@10 per retriever and evidence recall per budget.
    Returns them and the hybrid retriever."""
    from rag.eval.metrics import evidence_recall, retrieval_metrics, write_passages

    folder = root / "passages"
    write_passages(evalset, folder)
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
    return results, retrievers["hybrid"]


def _asker(components: Components, retrieving: RagChain | None) -> Ask:
    """The product's answer to a question: from the store through ``retrieving`` (passages None), or from exactly
    the passages given, through a chain like it whose retriever finds just them."""
    from rag.eval.answers import GivenPassages, passage_documents

    def ask(query: str, passages: Sequence[str] | None, system: str) -> Answered:
        if passages is None:
            if retrieving is None:
                raise RagError("e2e answers need the store's chain")
            return _answer(retrieving, query, system)
        given = GivenPassages(documents=passage_documents(passages))
        return _answer(components.new_chain(retriever=given), query, system)

    return ask


def _converser(chain: RagChain) -> Converse:
    """A conversation through ``chain`` (one chain: the follow-up extends the first turn's prompt, as in the UI)."""

    def converse(first: str, follow_up: str) -> tuple[Answered, Answered]:
        answered = _answer(chain, first)
        history = [("user", first), ("assistant", answered.answer)]
        return answered, _answer(chain, follow_up, history=history)

    return converse


def _answer(chain: RagChain, query: str, system: str = "", history: Sequence[tuple[str, str]] = ()) -> Answered:
    """``query`` answered as the Assistant answers it (prepare, then generate), timed the same way: the first token
    from the question, tokens/s after it. What the model wrote before the citation check is seen through a LangChain
    callback (the Runnable ``config`` the chain hands on to the model's ``stream``): the invented markers."""
    from langchain_core.callbacks import BaseCallbackHandler

    from rag.answer.answerability import reported_refusal_probability
    from rag.answer.citations import check_citations
    from rag.eval.answers import Answered

    class RawAnswer(BaseCallbackHandler):
        text = ""

        refusal_probability: float | None = None

        def on_llm_new_token(self, token: str | list[str | dict[str, Any]], **kwargs: Any) -> None:
            self.text += token if isinstance(token, str) else ""

        def on_llm_end(self, response: Any, **kwargs: Any) -> None:
            for generation in (g for batch in response.generations for g in batch):
                probability = reported_refusal_probability(generation)
                if probability is not None:
                    self.refusal_probability = probability

    started = time.perf_counter()
    prepared = chain.prepare({"question": query, "system": system, "chat_history": list(history)})
    raw = RawAnswer()
    answer, first, final, pieces = "", started, dict[str, Any](), 0
    for piece in chain.generate(prepared, config={"callbacks": [raw]}):
        if "answer" in piece:
            first = time.perf_counter() if not answer else first
            answer += piece["answer"]
            pieces += 1
        else:
            final = piece
    ended = time.perf_counter()
    tokens = chain.tokens.count(answer) if answer else 0
    return Answered(
        answer=answer,
        passages=prepared.passages,
        cited=[int(source["n"]) for source in final.get("sources", []) if source.get("cited")],
        invented=len(check_citations(raw.text, {p["n"] for p in prepared.passages}).invalid),
        prompt_tokens=prepared.prompt_tokens,
        first_token_ms=(first - started) * 1000 if answer else None,
        # (a refusal given without generating comes whole: no speed to speak of)
        tokens_per_s=(tokens - 1) / (ended - first) if tokens > 1 and pieces > 1 and ended > first else None,
        attributed=any(source.get("attributed") for source in final.get("sources", [])),
        refusal_probability=raw.refusal_probability,
        answerability=final.get("answerability"),
        reused_tokens=prepared.reused_tokens,
    )
