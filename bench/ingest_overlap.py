"""Where an ingest's time goes besides the encoder, and what the loader's read-ahead changes.

Runs our ingest of the same news slice with each read-ahead (chunks the loader thread prepares beside the encoder)
and, after each, the raw encode of the same chunks by the same model (bench/ingest.py's ``raw_encode``), in one
process. Each ingest is timed call by call: the wait before the first encode, the gaps between encodes (the
encoder waiting for files or for the GIL), after the last (the final write). ``--encoder-threads`` sets torch's
(and OpenVINO's) threads, to see what happens when the encoder leaves a CPU idle (as on a machine with more CPUs
than its threads).

    HF_HUB_OFFLINE=1 .venv/bin/python bench/ingest_overlap.py --embedding-model \\
        "sentence-transformers/all-MiniLM-L6-v2#openvino" --read-ahead 64,1024 --repeat 4 [--encoder-threads 1]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.ingest import cpu_seconds, news_sources, raw_encode, split_articles, stored_chunks


def limit_threads(threads: int) -> None:
    """torch's threads, and OpenVINO's for every model compiled from now on."""
    import torch

    torch.set_num_threads(threads)
    try:
        import openvino
    except ImportError:
        return
    compile_model = openvino.Core.compile_model

    def compile_with_threads(self: Any, model: Any, device: Any = None, config: Any = None) -> Any:
        return compile_model(self, model, device, {**(config or {}), "INFERENCE_NUM_THREADS": threads})

    openvino.Core.compile_model = compile_with_threads  # type: ignore[method-assign]


def ingest_once(model: str, folder: Path, cache: Path, read_ahead: int) -> tuple[dict[str, Any], list[str]]:
    """One timed ingest into a new store, and what the embedder read for each of its chunks."""
    from rag import Settings
    from rag.app.root import build_ingest_pipeline
    from rag.retrieval.embedders.factory import make_embedder

    embedder = make_embedder(model, cache_dir=cache)
    embedder.warm_up()
    embedder.embed_array(["预热"])
    calls: list[tuple[float, float]] = []
    encode = embedder.embed_array

    def timed(texts: list[str], *, query: bool = False) -> Any:
        started = time.perf_counter()
        vectors = encode(texts, query=query)
        calls.append((started, time.perf_counter()))
        return vectors

    embedder.embed_array = timed  # type: ignore[method-assign]
    work = Path(tempfile.mkdtemp(prefix="overlap-"))
    settings = Settings(data_dir=work / "data", collection="bench", embedding_model=model, embedding_batch_size=32)
    pipeline = build_ingest_pipeline(settings, embedder=embedder)
    pipeline.read_ahead_chunks = read_ahead
    gc.collect()  # a full collection walks the loaded model's objects (0.3 s): not inside either timer
    cpu, started = cpu_seconds(), time.perf_counter()
    report = pipeline.run([str(folder)])
    ended = time.perf_counter()
    gaps = [calls[i + 1][0] - calls[i][1] for i in range(len(calls) - 1)]
    timings = {
        "seconds": round(ended - started, 3),
        "cpu_seconds": round(cpu_seconds() - cpu, 3),
        "chunks": report.chunks_added,
        "encode_seconds": round(sum(b - a for a, b in calls), 3),
        "before_first_encode": round(calls[0][0] - started, 3),
        "gaps": round(sum(gaps), 3),
        "after_last_encode": round(ended - calls[-1][1], 3),
    }
    return timings, stored_chunks(settings.data_dir, settings.collection)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "eval-data")
    parser.add_argument("--limit-articles", type=int, default=300)
    parser.add_argument("--embedding-model", default="sentence-transformers/all-MiniLM-L6-v2#openvino")
    parser.add_argument("--read-ahead", default="64,1024", help="comma-separated chunk counts to compare")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--encoder-threads", type=int, default=0, help="0: the backends' default (every core)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.encoder_threads:
        limit_threads(args.encoder_threads)
    scratch = Path(tempfile.mkdtemp(prefix="overlap-bench-"))
    folder, cache = scratch / "news", scratch / "cache"
    split_articles(news_sources(args.data, 1), folder, args.limit_articles)
    windows = [int(n) for n in args.read_ahead.split(",")]
    runs: dict[str, list[dict[str, Any]]] = {f"read-ahead {n}": [] for n in windows}
    for repeat in range(args.repeat):
        # the order flips every repeat: the second ingest of a pair ran faster in either order (by up to 0.9 s)
        for n in windows if repeat % 2 == 0 else windows[::-1]:
            result, texts = ingest_once(args.embedding_model, folder, cache, n)
            gc.collect()
            measured = raw_encode(args.embedding_model, texts, cache)  # the export the ingest made
            result["raw"] = {"seconds": round(measured.seconds, 3), "cpu_seconds": round(measured.cpu_seconds, 3)}
            runs[f"read-ahead {n}"].append(result)
            ratio = measured.seconds / result["seconds"]
            print(f"[{repeat}] read-ahead {n}: {result} | raw/ingest {ratio:.3f}", flush=True)
    print(f"\n{args.embedding_model}, {result['chunks']} chunks, encoder threads {args.encoder_threads or 'default'}; "
          f"medians of {args.repeat}")  # fmt: skip
    print("| read-ahead (chunks) | ingest s | raw encode s | **raw / ingest** | before first s | gaps s "
          "| after last s |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n in windows:
        own = runs[f"read-ahead {n}"]
        raws = [row["raw"] for row in own]  # the raw encode that ran right after each ingest
        ratios = [r["seconds"] / o["seconds"] for o, r in zip(own, raws, strict=True)]

        def median(key: str, rows: list[dict[str, Any]] = own) -> float:
            return statistics.median(row[key] for row in rows)

        cells = [f"{median('seconds'):.2f}", f"{median('seconds', raws):.2f}", f"**{statistics.median(ratios):.3f}**"]
        cells += [f"{median(key):.2f}" for key in ("before_first_encode", "gaps", "after_last_encode")]
        print(f"| {n} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
