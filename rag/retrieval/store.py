"""The vector store: Chroma, embedded under the data dir or a Chroma server, always with our own embeddings.

The store is its own manifest: every chunk's metadata names its file (``source_abs``), the file's content hash,
the chunking signature and how many chunks that version of the file has. A file version is *complete* when all its
chunks are present, so an interrupted write (even ``kill -9``) is detected and redone on the next run, with no
side file to fall out of step, and it works the same against a shared Chroma server.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlparse

from rag.chunks import ChunkRow, ContextChunk
from rag.errors import (
    ConfigError,
    DiskFullError,
    ModelMismatchError,
    RagError,
    StoreDamagedError,
    StoreError,
    disk_full_reason,
    is_damaged_database,
)

if TYPE_CHECKING:
    from chromadb.api import ClientAPI
    from chromadb.api.models.Collection import Collection

__all__ = ["ChunkStore", "FileVersion", "connect_chroma"]

_PAGE = 5000
# chromadb builds its per-path client system lazily: two threads opening a path at once can see it half-built
# ("'RustBindingsAPI' object has no attribute 'bindings'"), so clients are made one at a time.
_CONNECT_LOCK = threading.Lock()


def connect_chroma(*, path: str | os.PathLike[str] | None = None, url: str | None = None) -> ClientAPI:
    """An embedded Chroma under ``path``, or a Chroma server at ``url`` (``http(s)://host:port``)."""
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    import chromadb
    from chromadb.config import Settings as ChromaSettings

    chroma_settings = ChromaSettings(anonymized_telemetry=False)
    with _CONNECT_LOCK:
        return _connect(chromadb, chroma_settings, path=path, url=url)


def _connect(chromadb: Any, chroma_settings: Any, *, path: str | os.PathLike[str] | None, url: str | None) -> ClientAPI:
    if url:
        parsed = urlparse(url)
        if parsed.scheme not in {"http", "https"} or not parsed.hostname:
            raise ConfigError(f"RAG_CHROMA_URL={url!r} is not a server address: use http://host:port")
        try:
            return chromadb.HttpClient(
                host=parsed.hostname,
                port=parsed.port or (443 if parsed.scheme == "https" else 8000),
                ssl=parsed.scheme == "https",
                settings=chroma_settings,
            )
        except Exception as error:
            raise StoreError(
                f"cannot reach the Chroma server at {url} ({error}). Start it (chroma run --path DIR "
                "--host 127.0.0.1 --port 8000) or unset RAG_CHROMA_URL to use the embedded store."
            ) from error
    if path is None:
        raise ConfigError("an embedded store needs a data dir (RAG_DATA_DIR)")
    try:
        with _translated(os.fspath(path)):
            os.makedirs(path, exist_ok=True)
            try:
                return chromadb.PersistentClient(path=os.fspath(path), settings=chroma_settings)
            except Exception:
                _forget_system(os.fspath(path))
                raise
    except RagError:
        raise
    except Exception as error:
        raise StoreError(
            f"cannot open the store at {path} ({error}). Check RAG_DATA_DIR and its permissions."
        ) from error


def _forget_system(path: str) -> None:
    """chromadb keeps the client system of a path that failed to open, half-built: the next open in this process
    (a UI's next request) would fail with "'RustBindingsAPI' object has no attribute 'bindings'" instead of
    saying what is wrong. Dropped, the next open tries again and fails (or succeeds) for the real reason."""
    from chromadb.api.shared_system_client import SharedSystemClient

    systems = getattr(SharedSystemClient, "_identifier_to_system", None)
    if isinstance(systems, dict):
        systems.pop(path, None)


@contextlib.contextmanager
def _translated(where: str) -> Iterator[None]:
    """A damaged database file or a full disk under ``where`` (the embedded store's folder, or the server's
    address) becomes an error that names it and says what to do; anything else passes unchanged."""
    try:
        yield
    except RagError:
        raise
    except Exception as error:
        server = where.startswith(("http://", "https://"))
        if is_damaged_database(error):
            if server:
                raise StoreDamagedError(
                    f"the Chroma server at {where} reports a damaged database ({error}). Rebuild the server's "
                    "store (stop it, move its --path folder aside, start it again), then run `ingest PATH` again "
                    "for the folders of each collection"
                ) from error
            data_dir = os.path.dirname(where.rstrip(os.sep)) or "."
            raise StoreDamagedError(
                f"the store at {where} is damaged ({error}). Rebuild it from your documents: move it aside "
                f"(mv {where} {where}.damaged), then run `ingest PATH` again for the folders of each collection "
                f"(files uploaded in the UI are kept in {os.path.join(data_dir, 'uploads')}: "
                f"`ingest {os.path.join(data_dir, 'uploads', 'COLLECTION')} --collection COLLECTION`)"
            ) from error
        reason = None if server else disk_full_reason(error, where)
        if reason is not None:
            raise DiskFullError(
                f"the disk is full ({reason}): writing the store at {where} failed ({type(error).__name__}: "
                f"{error}). Nothing already stored is lost (each file keeps its previous version). Free space on "
                f"the disk that holds {where} (or raise the limit), then run the same ingest again to complete "
                "the store"
            ) from error
        raise


_Result = TypeVar("_Result")


def _guarded(method: Callable[..., _Result]) -> Callable[..., _Result]:
    """:func:`_translated` around a :class:`ChunkStore` method."""

    @functools.wraps(method)
    def guarded(self: ChunkStore, *args: Any, **kwargs: Any) -> _Result:
        with _translated(self.location):
            return method(self, *args, **kwargs)

    return guarded


def _positioned(rows: list[ChunkRow]) -> list[ContextChunk]:
    return [ContextChunk.from_store(chunk_id, text, meta) for chunk_id, text, meta in rows]


def _rows(page: Any) -> list[ChunkRow]:
    """(id, text, metadata) of a Chroma ``get`` result that included documents and metadatas."""
    return [
        (chunk_id, text or "", dict(meta or {}))
        for chunk_id, text, meta in zip(page["ids"], page["documents"] or [], page["metadatas"] or [], strict=True)
    ]


@dataclass
class FileVersion:
    """One version of one file as found in the store."""

    file_hash: str
    signature: str
    chunk_count: int
    ids: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return len(self.ids) == self.chunk_count


class ChunkStore:
    """One Chroma collection of chunks, guarded against mixing embedding models."""

    def __init__(self, client: ClientAPI, collection: str) -> None:
        self.client = client
        self.collection_name = collection
        self._collection: Collection | None = None

    @functools.cached_property
    def location(self) -> str:
        """The embedded store's folder, or the server's address: what a message about the store names."""
        try:
            settings = self.client.get_settings()
        except Exception:
            return "the Chroma store"
        if settings.is_persistent and settings.persist_directory:
            return os.path.abspath(settings.persist_directory)
        return f"http://{settings.chroma_server_host}:{settings.chroma_server_http_port}"

    # -- the collection ------------------------------------------------------------------------------------
    @_guarded
    def _existing(self) -> Collection | None:
        if self._collection is None:
            try:
                self._collection = self.client.get_collection(self.collection_name)
            except Exception as error:  # chromadb raises NotFoundError (1.x) or ValueError (older) for a missing one
                if is_damaged_database(error):
                    raise  # not missing: damaged (the guard says so and how to rebuild)
                return None
        return self._collection

    def exists(self) -> bool:
        return self._existing() is not None

    @property
    def metadata(self) -> dict[str, Any]:
        collection = self._existing()
        with _translated(self.location):
            return dict(collection.metadata or {}) if collection is not None else {}

    @_guarded
    def open_for_writing(self, *, embedding_model: str, signature: str, ocr: bool | None = None) -> None:
        """Create the collection, or check that it was built with the same embedding model. The chunking
        signature (and whether OCR read scans, when ``ocr`` is given) are recorded in its metadata."""
        collection = self._existing()
        recorded: dict[str, Any] = {"embedding_model": embedding_model, "chunk_signature": signature}
        if ocr is not None:
            recorded["ocr"] = ocr
        if collection is None:
            self._collection = self.client.get_or_create_collection(
                self.collection_name,
                configuration={"hnsw": {"space": "cosine"}},
                metadata=recorded,
                embedding_function=None,
            )
            return
        stored_model = (collection.metadata or {}).get("embedding_model")
        if stored_model and stored_model != embedding_model:
            raise ModelMismatchError(
                f"collection '{self.collection_name}' holds vectors of the embedding model '{stored_model}', "
                f"not '{embedding_model}'; mixing them would break retrieval. Re-run with --reset to rebuild it "
                f"with '{embedding_model}', use another --collection, or set RAG_EMBEDDING_MODEL={stored_model}."
            )
        current = collection.metadata or {}
        if any(current.get(key) != value for key, value in recorded.items()):
            collection.modify(metadata={**current, **recorded})

    @_guarded
    def reset(self) -> None:
        """Delete the collection and everything in it."""
        if self._existing() is not None:
            self.client.delete_collection(self.collection_name)
        self._collection = None

    @_guarded
    def count(self) -> int:
        collection = self._existing()
        return collection.count() if collection is not None else 0

    # -- what is stored ------------------------------------------------------------------------------------
    @_guarded
    def file_versions(self) -> dict[str, list[FileVersion]]:
        """Every file in the store with its versions (normally one; more after an interrupted update)."""
        collection = self._existing()
        found: dict[str, dict[tuple[str, str], FileVersion]] = defaultdict(dict)
        if collection is None:
            return {}
        offset = 0
        while True:
            page = collection.get(include=["metadatas"], limit=_PAGE, offset=offset)
            ids, metadatas = page["ids"], page["metadatas"] or []
            for chunk_id, meta in zip(ids, metadatas, strict=True):
                key = (str(meta.get("file_hash", "")), str(meta.get("signature", "")))
                version = found[str(meta.get("source_abs", ""))].get(key)
                if version is None:
                    count = meta.get("chunk_count", 0)
                    version = FileVersion(key[0], key[1], count if isinstance(count, int) else 0)
                    found[str(meta.get("source_abs", ""))][key] = version
                version.ids.append(chunk_id)
            if len(ids) < _PAGE:
                break
            offset += _PAGE
        return {source: list(versions.values()) for source, versions in found.items()}

    @_guarded
    def embeddings_by_content(self, content_hashes: Sequence[str]) -> dict[str, list[float]]:
        """Stored vectors of chunks whose text hash is among ``content_hashes`` (reused instead of re-embedding)."""
        collection = self._existing()
        if collection is None or not content_hashes:
            return {}
        found: dict[str, list[float]] = {}
        unique = sorted(set(content_hashes))
        for first in range(0, len(unique), 500):
            where: Any = {"content_hash": {"$in": unique[first : first + 500]}}
            page = collection.get(where=where, include=["embeddings", "metadatas"])
            embeddings = page["embeddings"]
            if embeddings is None:
                continue
            for meta, vector in zip(page["metadatas"] or [], embeddings, strict=True):
                found[str(meta["content_hash"])] = list(vector)
        return found

    @_guarded
    def all_ids(self) -> set[str]:
        collection = self._existing()
        if collection is None:
            return set()
        ids: set[str] = set()
        offset = 0
        while True:
            page = collection.get(include=[], limit=_PAGE, offset=offset)
            ids.update(page["ids"])
            if len(page["ids"]) < _PAGE:
                return ids
            offset += _PAGE

    @_guarded
    def nearest(self, vector: Sequence[float], k: int) -> list[tuple[str, float]]:
        """The ``k`` chunks closest to ``vector``: (chunk id, cosine similarity)."""
        collection = self._existing()
        if collection is None:
            return []
        query: Any = [list(vector)]
        result = collection.query(query_embeddings=query, n_results=k, include=["distances"])
        distances = (result["distances"] or [[]])[0]
        return [(chunk_id, 1.0 - float(d)) for chunk_id, d in zip(result["ids"][0], distances, strict=True)]

    @_guarded
    def chunks_where(self, where: dict[str, Any]) -> list[ChunkRow]:
        """(id, text, metadata) of the chunks matching a Chroma ``where`` filter on metadata."""
        collection = self._existing()
        if collection is None:
            return []
        condition: Any = where
        return _rows(collection.get(where=condition, include=["documents", "metadatas"]))

    @_guarded
    def chunks(self, ids: Sequence[str]) -> dict[str, tuple[str, dict[str, Any]]]:
        """Text and metadata of the chunks ``ids`` that exist."""
        collection = self._existing()
        if collection is None or not ids:
            return {}
        rows = _rows(collection.get(ids=list(ids), include=["documents", "metadatas"]))
        return {chunk_id: (text, meta) for chunk_id, text, meta in rows}

    def chunks_by_index(self, wanted: Mapping[str, Iterable[int]]) -> list[ContextChunk]:
        """The chunks ``{source_abs: chunk indices}`` that exist, in one query."""
        clauses: list[dict[str, Any]] = []
        for source, indices in wanted.items():
            numbers = sorted({int(i) for i in indices if int(i) >= 0})
            if numbers:
                clauses.append({"$and": [{"source_abs": source}, {"chunk_index": {"$in": numbers}}]})
        if not clauses:
            return []
        return _positioned(self.chunks_where(clauses[0] if len(clauses) == 1 else {"$or": clauses}))

    def sources(self) -> list[str]:
        """Every file that has chunks (a scan of the collection's metadata: the local index answers faster)."""
        return list(self.file_versions())

    def chunks_of_files(self, sources: Iterable[str]) -> list[ContextChunk]:
        """Every chunk of the files ``sources`` (``source_abs``), in one query."""
        names = sorted(set(sources))
        if not names:
            return []
        where: dict[str, Any] = {"source_abs": names[0]} if len(names) == 1 else {"source_abs": {"$in": names}}
        return _positioned(self.chunks_where(where))

    # -- writing -------------------------------------------------------------------------------------------
    def _writable(self) -> Collection:
        collection = self._existing()
        if collection is None:
            raise StoreError(f"collection '{self.collection_name}' does not exist yet: run ingest PATH first")
        return collection

    @_guarded
    def upsert(
        self,
        ids: list[str],
        embeddings: Any,
        documents: list[str],
        metadatas: list[dict[str, Any]],
    ) -> None:
        collection = self._writable()
        step = max(1, min(self.client.get_max_batch_size(), 1000))
        for first in range(0, len(ids), step):
            last = first + step
            collection.upsert(
                ids=ids[first:last],
                embeddings=embeddings[first:last],
                documents=documents[first:last],
                metadatas=metadatas[first:last],  # type: ignore[arg-type]
            )

    @_guarded
    def delete(self, ids: Iterable[str]) -> None:
        ids = list(ids)
        if not ids:
            return
        collection = self._writable()
        step = max(1, min(self.client.get_max_batch_size(), 1000))
        for first in range(0, len(ids), step):
            collection.delete(ids=ids[first : first + step])
