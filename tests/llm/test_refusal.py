"""The refusal decided at the first token (rag.llm.refusal): the pure rule, and what real llama.cpp reports and forces.

No assertion here depends on what a model writes: the probability is checked as a probability, and forcing is
checked through the backend's own report of what it did (a perturbed run samples other tokens after it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rag.answer.qa_prompt import INSUFFICIENT_EN, INSUFFICIENT_ZH
from rag.llm.adapter import MixtralInstructLLM
from rag.llm.backends.llama_cpp import LlamaTokenizer, _processor
from rag.llm.refusal import FirstStepGate, RefusalGate, first_tokens, refusal_probability


def test_refusal_probability_is_the_softmax_share_of_its_tokens() -> None:
    logits = np.log(np.array([0.1, 0.2, 0.3, 0.4], dtype=np.float32))
    assert refusal_probability(logits, [3]) == pytest.approx(0.4)
    assert refusal_probability(logits, [1, 3]) == pytest.approx(0.6)
    assert refusal_probability(logits, []) == 0.0
    # large logits do not overflow
    assert refusal_probability(np.array([1000.0, 1000.0]), [0]) == pytest.approx(0.5)


def test_first_tokens_are_where_the_refusal_departs_from_the_prompt() -> None:
    vocabulary = {"a": 1, "b": 2, " ": 3, "N": 4, "o": 5}

    spelled = {token: character.encode() for character, token in vocabulary.items()}

    def encode(text: str) -> list[int]:
        return [vocabulary[c] for c in text]

    assert first_tokens("ab", "No", encode, spelled.__getitem__) == [4]  # a lone space is not the refusal's start
    merged = {**spelled, 3: b" N"}  # a tokenizer that joins the space to the word (SentencePiece's "▁N")
    assert first_tokens("ab", "No", encode, merged.__getitem__) == [4, 3]
    assert first_tokens("ab", "", encode, spelled.__getitem__) == []


def test_the_gate_acts_on_the_first_step_only() -> None:
    logits = np.log(np.array([0.5, 0.3, 0.2], dtype=np.float32))
    measuring = FirstStepGate([2], threshold=None)
    assert measuring.decide(logits) is None
    assert measuring.info() == {"refusal_probability": pytest.approx(0.2), "refusal_forced": False}

    forcing = FirstStepGate([1, 2], threshold=0.45)
    assert forcing.decide(logits) == 1  # the likelier of the refusal's first tokens
    assert forcing.decide(logits) is None  # the rest of the answer is the model's
    assert forcing.info()["refusal_forced"] is True

    below = FirstStepGate([2], threshold=0.25)
    assert below.decide(logits) is None and below.info()["refusal_forced"] is False
    assert FirstStepGate([], threshold=0.0).decide(logits) is None  # no token starts the refusal: nothing to do


def test_llama_cpp_processor_leaves_only_the_forced_token() -> None:
    logits = np.log(np.array([0.5, 0.3, 0.2], dtype=np.float32))
    process = _processor(FirstStepGate([1, 2], threshold=0.45))
    first = process(None, logits.copy())
    assert int(np.argmax(first)) == 1 and first[1] == logits[1]
    assert np.isfinite(first).all() and first[0] < -1e29 and first[2] < -1e29  # finite: still a distribution
    assert np.array_equal(process(None, logits.copy()), logits)


@pytest.mark.parametrize("refusal", [INSUFFICIENT_EN, INSUFFICIENT_ZH])
def test_first_tokens_decode_to_the_start_of_the_refusal(smollm2_gguf: Path, refusal: str) -> None:
    tokenizer = LlamaTokenizer.from_gguf(smollm2_gguf)
    prompt = "<|im_start|>assistant\n"
    tokens = first_tokens(
        prompt,
        refusal,
        lambda text: tokenizer.encode_special(text, add_bos=False),
        lambda token: bytes(tokenizer.llama.detokenize([token])),
    )
    assert tokens
    for token in tokens:
        piece = tokenizer.llama.detokenize([token]).strip()  # bytes: a CJK character may span several tokens
        assert piece and refusal.encode().startswith(piece)


def _info(llm: MixtralInstructLLM, prompt: str, gate: RefusalGate) -> dict[str, object]:
    generation = llm.generate([prompt], refusal=gate, max_tokens=4).generations[0][0]
    return dict(generation.generation_info or {})


def test_llama_cpp_reports_the_probability_and_forces_at_the_threshold(smollm2_llm: MixtralInstructLLM) -> None:
    prompt = f'Passages:\n[1] Paris is in France.\n\nIf the passages do not answer, reply "{INSUFFICIENT_EN}"\n\n'
    prompt += "Question: How tall is Mount Everest?"
    measured = _info(smollm2_llm, prompt, RefusalGate(INSUFFICIENT_EN, None))
    probability = measured["refusal_probability"]
    assert isinstance(probability, float) and 0.0 <= probability <= 1.0
    assert measured["refusal_forced"] is False

    forced = _info(smollm2_llm, prompt, RefusalGate(INSUFFICIENT_EN, 0.0))
    assert forced["refusal_forced"] is True
    assert 0.0 <= float(forced["refusal_probability"]) <= 1.0  # type: ignore[arg-type]
    never = _info(smollm2_llm, prompt, RefusalGate(INSUFFICIENT_EN, 1.0))
    assert never["refusal_forced"] is (probability >= 1.0)

    plain = smollm2_llm.generate([prompt], max_tokens=4).generations[0][0]
    assert "refusal_probability" not in (plain.generation_info or {})  # nothing asked, nothing measured


def test_the_mixtral_vocabulary_gets_a_gate_too(tiny_mixtral_gguf: Path) -> None:
    llm = MixtralInstructLLM(model=str(tiny_mixtral_gguf), n_ctx=512, max_tokens=2, temperature=0.0, seed=0)
    info = _info(llm, "How tall is Mount Everest?", RefusalGate(INSUFFICIENT_ZH, 0.0))
    assert info["refusal_forced"] is True
    assert 0.0 <= float(info["refusal_probability"]) <= 1.0  # type: ignore[arg-type]


def test_the_transformers_backend_gates_too(tiny_mixtral_hf: Path) -> None:
    llm = MixtralInstructLLM(model=str(tiny_mixtral_hf), backend="transformers", max_tokens=2, temperature=0.0)
    forced = _info(llm, "How tall is Mount Everest?", RefusalGate(INSUFFICIENT_EN, 0.0))
    assert forced["refusal_forced"] is True and 0.0 <= float(forced["refusal_probability"]) <= 1.0  # type: ignore[arg-type]
    measured = _info(llm, "How tall is Mount Everest?", RefusalGate(INSUFFICIENT_EN, None))
    assert measured["refusal_forced"] is False
