"""The refusal threshold, swept on recorded answers: what each ``RAG_REFUSAL_THRESHOLD`` would give.

    .venv/bin/python bench/refusal_threshold.py OUTPUT/qwen/zh_refine-rejection OUTPUT/qwen/zh_refine-noise0.4 \\
        [OUTPUT/qwen/zh_refine-e2e ...] [--thresholds 0.05,0.1,0.2]

Reads the ``*-answers.jsonl`` of ``rag eval`` runs made without a threshold (each record keeps
``refusal_probability``: the probability the model gave the refusal sentence's first token at the answer's first
step). A threshold forces the refusal exactly where that probability reaches it and changes nothing elsewhere (the
first step is the same prompt and the same logits), so every threshold's outcome follows from one run: a record
at or above it becomes a refusal, one below it keeps its answer. Per run and threshold: the refusal rate (negatives
only: the rejection rate RGB reports), accuracy, and false refusals (refusals with a gold passage in the prompt).
That forced refusals read as refusals is checked by one run with the chosen threshold (``docs/benchmarks.md``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def records(folder: Path) -> list[dict[str, Any]]:
    rows = []
    for path in sorted(folder.glob("*-answers.jsonl")):
        rows.extend(json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    return rows


def outcome(rows: list[dict[str, Any]], threshold: float | None) -> dict[str, float]:
    """Accuracy, refusal rate and false-refusal rate if the refusal were forced at ``threshold`` (None: as run)."""

    def forced(row: dict[str, Any]) -> bool:
        probability = row.get("refusal_probability")
        return threshold is not None and probability is not None and probability >= threshold

    refused = [bool(row["refused"]) or forced(row) for row in rows]
    correct = [bool(row["correct"]) and not forced(row) for row in rows]
    with_gold = [i for i, row in enumerate(rows) if row.get("gold_shown")]
    return {
        "accuracy": sum(correct) / len(rows),
        "refused": sum(refused) / len(rows),
        "false_refusals": sum(refused[i] for i in with_gold) / len(with_gold) if with_gold else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="Folders holding a run's *-answers.jsonl.")
    parser.add_argument("--thresholds", default="0.05,0.1,0.15,0.2,0.25,0.3,0.4,0.5", help="Comma-separated.")
    args = parser.parse_args()
    thresholds: list[float | None] = [None, *(float(t) for t in args.thresholds.split(",") if t.strip())]
    print("| run | threshold | accuracy | refused | false refusals |")
    print("|---|---:|---:|---:|---:|")
    for folder in args.runs:
        rows = records(folder)
        missing = sum(row.get("refusal_probability") is None for row in rows)
        if missing:
            print(f"<!-- {folder.name}: {missing} of {len(rows)} records without a refusal probability -->")
        for threshold in thresholds:
            figures = outcome(rows, threshold)
            label = "none (the model's choice)" if threshold is None else f"{threshold:g}"
            print(f"| {folder.name} ({len(rows)}) | {label} | {figures['accuracy']:.3f} | {figures['refused']:.3f} | "
                  f"{figures['false_refusals']:.3f} |")  # fmt: skip
        probabilities = sorted(row["refusal_probability"] for row in rows if row.get("refusal_probability") is not None)
        if probabilities:
            quartiles = [probabilities[int(q * (len(probabilities) - 1))] for q in (0.25, 0.5, 0.75)]
            print(f"<!-- {folder.name}: refusal probability quartiles {', '.join(f'{q:.3f}' for q in quartiles)} -->")


if __name__ == "__main__":
    main()
