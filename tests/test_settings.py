"""Settings precedence: defaults < TOML < environment < keyword arguments (CLI flags)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag import ConfigError, Settings


def test_keyword_arguments(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, collection="notes", embedding_model="some/model")
    assert (settings.data_dir, settings.collection, settings.embedding_model) == (
        tmp_path,
        "notes",
        "some/model",
    )
    assert settings.chroma_path == tmp_path / "chroma"


def test_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert Settings().collection == "docs"
    Path("rag.toml").write_text('collection = "from-toml"\nchunk_size = 300\n', encoding="utf-8")
    assert Settings().collection == "from-toml"
    monkeypatch.setenv("RAG_COLLECTION", "from-env")
    settings = Settings()
    assert (settings.collection, settings.chunk_size) == ("from-env", 300)
    assert Settings.load(collection="from-flag", chunk_size=None).collection == "from-flag"


def test_explicit_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "other.toml"
    config.write_text('collection = "other"\n', encoding="utf-8")
    assert Settings.load(config_file=config).collection == "other"
    monkeypatch.setenv("RAG_CONFIG", str(config))
    assert Settings().collection == "other"
    with pytest.raises(ConfigError, match="does not exist"):
        Settings.load(config_file=tmp_path / "missing.toml")


def test_invalid_values_name_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"collection \(RAG_COLLECTION\).*not allowed"):
        Settings.load(collection="a b")
    monkeypatch.setenv("RAG_CHUNK_SIZE", "lots")
    with pytest.raises(ConfigError, match=r"chunk_size \(RAG_CHUNK_SIZE\)"):
        Settings.load()
