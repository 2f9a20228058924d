"""Model resolution: local paths, bundled packages, the hub cache, and clear errors offline."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag import ModelNotFoundError
from rag.models import bundled_model_path, resolve_gguf, resolve_snapshot


def test_bundled_models_are_found_without_importing_their_packages() -> None:
    embedder = resolve_snapshot("sentence-transformers/all-MiniLM-L6-v2", setting="RAG_EMBEDDING_MODEL")
    assert (embedder / "config.json").is_file()
    gguf = resolve_gguf("HuggingFaceTB/SmolLM2-135M-Instruct", setting="RAG_LLM_MODEL")
    assert gguf.suffix == ".gguf" and gguf.stat().st_size > 50_000_000
    assert bundled_model_path("no/such-model") is None


def test_local_paths_win(tmp_path: Path) -> None:
    folder = tmp_path / "my-embedder"
    folder.mkdir()
    assert resolve_snapshot(str(folder), setting="RAG_EMBEDDING_MODEL") == folder
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    assert resolve_gguf(str(model), setting="RAG_LLM_MODEL") == model


@pytest.mark.parametrize("name", ["/abs/missing.gguf", "./missing.gguf", "missing.gguf", "~/missing-folder"])
def test_missing_local_paths_name_the_setting(name: str) -> None:
    resolve = resolve_gguf if name.endswith(".gguf") else resolve_snapshot
    with pytest.raises(ModelNotFoundError, match="no such"):
        resolve(name, setting="RAG_X")


def test_offline_hub_names_say_what_to_do(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match=r"RAG_EMBEDDING_MODEL.*cannot be downloaded"):
        resolve_snapshot("BAAI/bge-m3", setting="RAG_EMBEDDING_MODEL")
    with pytest.raises(ModelNotFoundError, match=r"RAG_LLM_MODEL.*set RAG_LLM_MODEL to a local path"):
        resolve_gguf("hfl/chinese-mixtral-instruct-gguf/ggml-model-q4_0.gguf", setting="RAG_LLM_MODEL")
