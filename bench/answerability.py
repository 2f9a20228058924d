"""An answerability question after the evidence: does asking it separate RGB's negatives from answerable sets?

    .venv/bin/python bench/answerability.py ../shared/eval-data --questions 30 \\
        --answers OUT/qwen/zh_refine-rejection OUT/qwen/zh_refine-noise0.4

For each question, RGB's rejection set (5 negatives) and its noise-0.4 set are put into the product's own prompt
(the chain ``rag eval`` answers with, the same settings as ``bench/answers.py``), and a question is appended to the
user's message: does the evidence hold the answer? The model's first token is read, not generated: the
probability of 没有 (no) against 有 (yes), by the product's own check (:mod:`rag.answer.answerability`). The
prompt up to the appended question is the answer's own, so in the product this costs the appended tokens and
two steps with the evidence cached.

With ``--answers`` (the ``rag eval`` records of the same questions without a threshold), each threshold's outcome
follows: at or above it the answer becomes the refusal, below it the recorded answer stands; and with a refusal
floor too (the product's rule, :class:`rag.answer.answerability.Calibration`): the refusal only where the record's
``refusal_probability`` (the refusal sentence at the answer's first step) also reaches the floor. Prints the
score's quartiles per set and both sweeps. ``--scores`` sweeps the scores of an earlier run without probing.
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

QWEN = "Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF"


def records(folder: Path) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("*-answers.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                rows[row["id"]] = row
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path)
    parser.add_argument("--questions", type=int, default=30)
    parser.add_argument("--answers", type=Path, nargs=2, metavar=("REJECTION", "NOISE"))
    parser.add_argument("--output", type=Path, default=Path("answerability.jsonl"), help="Each set's scores.")
    parser.add_argument("--scores", type=Path, help="Scores written by an earlier run: sweep them, probe nothing.")
    parser.add_argument("--thresholds", default="0.3,0.25,0.2,0.18,0.16,0.15,0.14,0.13,0.12,0.1")
    args = parser.parse_args()
    if args.scores:
        scored = [json.loads(line) for line in args.scores.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        scored = probe(args)
    report(scored, args.answers, [float(t) for t in args.thresholds.split(",") if t.strip()])


def probe(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Each question's two sets through the product's prompt and the probe: one row of scores each."""

    from rag.answer.answerability import AnswerabilityCheck, Calibration
    from rag.app.root import Components
    from rag.eval.answers import GivenPassages, passage_documents
    from rag.eval.metrics import load_rgb
    from rag.eval.rgb import RGB_SEED, negative_passages, noise_passages
    from rag.settings import Settings

    settings = Settings(data_dir=Path("/tmp/answerability"), llm_model=QWEN, llm_n_ctx=4096, llm_max_tokens=128,
                        llm_n_threads=2, prompt_tokens_per_s=45, llm_temperature=0.0, llm_seed=0)  # fmt: skip
    components = Components(settings)
    evalset = load_rgb(args.data / "rgb" / "zh_refine.even.jsonl")
    scored: list[dict[str, Any]] = []
    with args.output.open("w", encoding="utf-8") as out:
        for question in evalset.questions[: args.questions]:
            for kind, passages in (
                ("rejection", negative_passages(question, seed=RGB_SEED)),
                ("noise0.4", noise_passages(question, 0.4, seed=RGB_SEED)),
            ):
                chain = components.new_chain(retriever=GivenPassages(documents=passage_documents(passages)))
                prepared = chain.prepare({"question": question.query})
                started = time.perf_counter()
                # the product's own probe, its score only (the threshold is what this sweeps)
                score = AnswerabilityCheck(chain.layout, Calibration(1.0)).score(chain.llm, prepared)
                row = {"id": question.id, "set": kind, "score": score, "seconds": time.perf_counter() - started}
                out.write(json.dumps(row) + "\n")
                out.flush()
                scored.append(row)
                print(f"{question.id:>4} {kind:9} score {score:.3f}", file=sys.stderr, flush=True)
    return scored


def report(scored: list[dict[str, Any]], answers: list[Path] | None, thresholds: list[float]) -> None:
    for kind in ("rejection", "noise0.4"):
        values = sorted(row["score"] for row in scored if row["set"] == kind)
        if len(values) >= 4:
            print(kind, "score quartiles", [round(q, 3) for q in statistics.quantiles(values, n=4)])
    if answers:
        answered = {"rejection": records(answers[0]), "noise0.4": records(answers[1])}
        print("| threshold | refusal floor | rejection | noise 0.4 accuracy | noise 0.4 false refusals |")
        print("|---|---:|---:|---:|---:|")
        floors = (0.0, 0.05, 0.1)
        for threshold, floor in [(None, 0.0), *((t, f) for f in floors for t in thresholds)]:
            figures = {}
            for kind in ("rejection", "noise0.4"):
                rows = [(row, answered[kind][row["id"]]) for row in scored if row["set"] == kind]
                forced = [threshold is not None and row["score"] >= threshold
                          and (a.get("refusal_probability") or 0.0) >= floor for row, a in rows]  # fmt: skip
                refused = [f or bool(a["refused"]) for f, (_, a) in zip(forced, rows, strict=True)]
                correct = [not f and bool(a["correct"]) for f, (_, a) in zip(forced, rows, strict=True)]
                figures[kind] = (sum(refused) / len(rows), sum(correct) / len(rows))
            label = "unset" if threshold is None else f"{threshold:g}"
            print(f"| {label} | {floor:g} | {figures['rejection'][0]:.3f} | {figures['noise0.4'][1]:.3f} | "
                  f"{figures['noise0.4'][0]:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
