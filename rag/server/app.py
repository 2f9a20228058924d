"""`rag serve`: an OpenAI-compatible HTTP API over the composition root, with the sources real clients show.

>>> app = create_app(Components(Settings.load()))      # a FastAPI app; `rag serve` runs it with uvicorn

Endpoints: ``GET /v1/models`` (``rag-COLLECTION`` per collection, plus the bare model), ``POST /v1/chat/completions``
(streamed or not; sources in ``message.sources`` and ``url_citation`` annotations, in the first chunk of a stream),
``POST /v1/chunks`` (retrieval only), ``POST /v1/embeddings``, ``GET|DELETE /v1/documents[/{id}]``,
``POST /v1/ingest`` + ``GET /v1/ingest/{job}``, ``GET /health``. Responses are the ``openai`` package's types;
errors use OpenAI's envelope (:mod:`rag.server.errors`). Every endpoint but ``/health`` takes the caller's
:class:`~rag.app.access.Grant` from one dependency (:func:`request_grant`); a collection the grant cannot read is
answered as if it did not exist (404), a write it may not make is a 403. Answers come from the answer service every
surface uses (:class:`rag.app.assistant.Assistant`: admitted before retrieval, a full queue is a 503); this module
only maps its events to OpenAI's wire format. A client that disconnects cancels its generation.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import re
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rag.app.access import AccessPolicy, Grant
from rag.app.library import document_id
from rag.app.pages import FoundChunk, view_path
from rag.errors import DocumentNotFoundError
from rag.server.access import caller_grant, signed_url
from rag.server.errors import ApiError, install_error_handlers, stream_error_event
from rag.server.jobs import IngestJobs
from rag.server.protocol import ChatCompletionRequest, ChatMessageIn, ChunksRequest, EmbeddingsRequest

if TYPE_CHECKING:
    from rag.app.assistant import AnswerEvent, AskOptions, Assistant
    from rag.app.library import DocumentLibrary
    from rag.app.root import Components
    from rag.server.mcp import GuardedMcpEndpoint

__all__ = ["ServeOptions", "create_app"]

logger = logging.getLogger("rag.server")

COLLECTION_PREFIX = "rag-"
#: A passage view runs no script but its own scroll and loads nothing (its text is escaped besides).
_PASSAGE_CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
#: The page views a signed link (``?access=``, :meth:`AccessPolicy.sign_link`) opens without the key.
_PAGE_VIEW = re.compile(r"/v1/documents/[^/]+/(?:pages|passages)/[^/]+")
#: The headers the official OpenAI clients send, allowed by CORS when origins are configured.
_CLIENT_HEADERS = [
    "Authorization", "Content-Type", "OpenAI-Organization", "OpenAI-Project", "x-stainless-arch",
    "x-stainless-async", "x-stainless-lang", "x-stainless-os", "x-stainless-package-version",
    "x-stainless-retry-count", "x-stainless-runtime", "x-stainless-runtime-version", "x-stainless-timeout",
    "x-stainless-read-timeout", "x-stainless-helper-method",
]  # fmt: skip


@dataclass(frozen=True)
class ServeOptions:
    """What the server needs besides the components: its keys, slots and limits (from :class:`Settings`)."""

    access: AccessPolicy | None = None
    """The keys and what each may read and write; None: the composition root's (the settings' ``api_key`` and
    ``api_keys_file``)."""
    slots: int = 1
    queue: int = 16
    max_body_bytes: int = 4 * 2**20
    max_upload_bytes: int = 50 * 2**20
    cors_origins: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    """Where the server listens: on loopback, MCP requests must also name a loopback Host (DNS rebinding)."""
    warm_up: bool = True
    """Load the model when the server starts (``/health`` says 503 until it has)."""
    watch_folders: tuple[str, ...] = ()
    """Folders kept in sync with the default collection while the server runs (``rag serve --watch DIR``)."""

    @classmethod
    def from_components(
        cls, components: Components, *, warm_up: bool = True, watch_folders: Sequence[str] = ()
    ) -> ServeOptions:
        from rag.app.admission import default_slots

        settings = components.settings
        return cls(
            access=components.access_policy(),
            slots=default_slots(settings),
            queue=settings.serve_queue,
            max_body_bytes=int(settings.serve_max_body_mb * 2**20),
            max_upload_bytes=int(settings.ui_max_upload_mb * 2**20),
            cors_origins=tuple(settings.serve_cors_origins),
            host=settings.serve_host,
            warm_up=warm_up,
            watch_folders=tuple(watch_folders),
        )


def bare_model_id(components: Components) -> str:
    """The id of the model without retrieval: the model file's (or server model's) name."""
    name = components.settings.llm_model.rstrip("/").split("/")[-1]
    return name.removesuffix(".gguf") or "model"


class _BodyLimit:
    """Answers 413 to a body over the limit (by Content-Length, or counted as it arrives), before any handler."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, upload_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.upload_bytes = upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.upload_bytes if scope["path"].startswith("/v1/ingest") else self.max_bytes
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await self._refuse(send, limit)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise ApiError(413, _too_large(limit), code="request_too_large")
            return message

        await self.app(scope, counted, send)

    @staticmethod
    async def _refuse(send: Send, limit: int) -> None:
        import json

        from rag.server.errors import error_body

        body = json.dumps(error_body(413, _too_large(limit), code="request_too_large")).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _too_large(limit: int) -> str:
    return f"the request body is larger than {limit / 2**20:.1f} MB: send less (or raise RAG_SERVE_MAX_BODY_MB)"


async def request_grant(request: Request) -> Grant:
    """What the request's key may do (the one dependency every guarded endpoint has); 401 without a known key."""
    policy: AccessPolicy = request.app.state.access_policy
    try:
        return caller_grant(policy, request.headers.get("authorization"))
    except ApiError:
        token = request.query_params.get("access")
        if token and request.method == "GET" and _PAGE_VIEW.fullmatch(request.url.path):
            grant = policy.grant_for_link(token, request.url.path)  # a page view's link, opened by a browser
            if grant is not None:
                return grant
        raise


#: A guarded endpoint's argument: the caller's grant. What it cannot read does not exist for it (404).
Granted = Annotated[Grant, Depends(request_grant)]


class _Health:
    """Whether the model answers yet: loaded in a thread when the server starts."""

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.error: str | None = None


def create_app(components: Components, options: ServeOptions | None = None) -> FastAPI:
    """The FastAPI app of `rag serve` over ``components`` (the composition root)."""
    from rag.app.application import Application

    options = options or ServeOptions.from_components(components)
    application = Application.over(components, slots=options.slots, queue=options.queue)
    library, assistant = application.library, application.assistant
    jobs = IngestJobs(library)
    health = _Health()
    # built now, so a folder that does not exist stops the server before it serves; its runs share the library's
    # write lock with upload jobs
    watcher = library.watch(None, options.watch_folders) if options.watch_folders else None

    policy = options.access or application.access_policy
    mcp = _mcp_endpoint(assistant, library, options, policy)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if components.use_llm and options.warm_up:
            threading.Thread(target=_warm_up, args=(components, health), name="warm-up", daemon=True).start()
        else:
            health.ready.set()
        if watcher is not None:
            watcher.start()
        try:
            async with mcp.lifespan():
                yield
        finally:
            if watcher is not None:
                # a sync in progress gets a few seconds to end; past them the process exits under it, which is
                # safe (each file it writes is complete or not begun) and the next start completes it
                await asyncio.to_thread(watcher.stop, 5.0)

    app = FastAPI(
        title="chinese-mixtral-rag",
        summary="OpenAI-compatible question answering over your own documents, with sources.",
        lifespan=lifespan,
    )
    app.state.access_policy = policy
    install_error_handlers(app)
    app.router.routes.append(Route("/mcp", endpoint=mcp))  # MCP over streamable HTTP, the same key rule
    app.add_middleware(_BodyLimit, max_bytes=options.max_body_bytes, upload_bytes=options.max_upload_bytes)
    if options.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(options.cors_origins),
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=_CLIENT_HEADERS,
        )

    def collection_of(model: str, grant: Grant) -> str | None:
        """The collection a model id names; None for the bare model; 404 for anything else, and for a collection
        the grant cannot read (as if it did not exist)."""
        if model == bare_model_id(components):
            return None
        if model.startswith(COLLECTION_PREFIX):
            name = model[len(COLLECTION_PREFIX) :]
            exists = name in {info.name for info in library.collections()}  # asked either way: the same work
            if exists and grant.can_read(name):
                return name
        raise model_not_found(model, grant)

    def model_not_found(model: str, grant: Grant) -> ApiError:
        known = ", ".join(item["id"] for item in _models(components, library, grant))
        return ApiError(404, f"the model '{model}' does not exist: use one of {known}", code="model_not_found",
                        param="model")  # fmt: skip

    def signed_link(base_url: str, path: str, grant: Grant) -> str:
        """``path`` as a URL a browser opens without the key (a page view's link, signed for ``grant``)."""
        return signed_url(app.state.access_policy, grant, base_url, path)

    def may_write(grant: Grant, collection: str) -> None:
        if not grant.can_write(collection):
            raise ApiError(
                403,
                f"the key of '{grant.holder}' may read {COLLECTION_PREFIX}{collection} but not change it: uploads and "
                "deletes need a key with write = true",
                code="permission_denied",
            )

    # -- health and models -------------------------------------------------------------------------------
    @app.get("/health")
    async def health_check() -> JSONResponse:
        if health.error is not None:
            return JSONResponse({"status": "error", "error": health.error}, status_code=503)
        if not health.ready.is_set():
            return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "5"})
        admission = assistant.admission
        return JSONResponse({"status": "ok", "running": admission.running, "waiting": admission.waiting})

    @app.get("/v1/models")
    async def list_models(grant: Granted) -> dict[str, Any]:
        return {"object": "list", "data": await asyncio.to_thread(_models, components, library, grant)}

    # -- answers -----------------------------------------------------------------------------------------
    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request, grant: Granted) -> Any:
        collection = await asyncio.to_thread(collection_of, body.model, grant)
        system, history, question = _conversation(body.messages)
        extra = body.rag
        use_retrieval = collection is not None and (extra is None or extra.retrieval)
        if not components.use_llm:
            raise ApiError(503, "this server runs without a language model (--no-llm): use /v1/chunks",
                           code="model_unavailable")  # fmt: skip
        events = assistant.astream(question, history, _ask_options(body, collection, use_retrieval), system=system)
        try:
            # the slot, then retrieval and the prompt: a full queue or a bad request is an HTTP error, sent before
            # the first byte of a stream
            first = await anext(events)
        except BaseException:
            await events.aclose()
            raise
        answer = _Answer(body, first, retrieval=use_retrieval, link=lambda base, path: signed_link(base, path, grant))
        include_sources = extra is None or extra.include_sources
        base = str(request.base_url).rstrip("/")
        if body.stream:
            return StreamingResponse(
                _stream(answer, events, include_sources=include_sources, base_url=base),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        return await _until_disconnected(request, _complete(answer, events, include_sources, base))

    @app.post("/v1/chunks")
    async def chunks(body: ChunksRequest, request: Request, grant: Granted) -> dict[str, Any]:
        collection = await asyncio.to_thread(collection_of, body.model, grant)
        if collection is None:
            raise ApiError(400, "retrieval needs a collection: use a rag-... model id", code="invalid_value",
                           param="model")  # fmt: skip
        retriever = components.retriever(collection)
        filters: dict[str, Any] = {"sources": body.sources} if body.sources else {}
        found = await retriever.ainvoke(body.query, k=body.k, **filters)
        base = str(request.base_url).rstrip("/")
        data = []
        for chunk in map(FoundChunk.from_document, found):
            data.append(
                {
                    "object": "chunk",
                    "id": chunk.id,
                    "document_id": chunk.document_id,
                    "file_name": chunk.file_name,
                    "source": chunk.source,
                    "page": chunk.page,
                    "heading": chunk.heading,
                    "score": chunk.score,
                    "text": chunk.text,
                    "page_image_url": signed_link(base, chunk.view_path, grant),
                }
            )
        return {"object": "list", "model": body.model, "data": data}

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingsRequest, grant: Granted) -> dict[str, Any]:
        from openai.types import CreateEmbeddingResponse, Embedding
        from openai.types.create_embedding_response import Usage

        collection = await asyncio.to_thread(collection_of, body.model, grant)
        texts = body.texts()
        if not texts or any(not isinstance(text, str) for text in texts):
            raise ApiError(400, "input must be a text or a list of texts", code="invalid_value", param="input")
        store = components.store(collection)
        embedder = components.embedder(collection, store)
        if body.input_type == "query":
            vectors = [await asyncio.to_thread(embedder.embed_query, text) for text in texts]
        else:
            vectors = await asyncio.to_thread(embedder.embed_documents, texts)
        tokens = sum(await asyncio.to_thread(embedder.count_tokens, texts))
        # model_construct: the openai type declares the float list only, its client also asks for base64
        data = [
            Embedding.model_construct(index=i, object="embedding", embedding=_encoded(vector, body.encoding_format))
            for i, vector in enumerate(vectors)
        ]
        response = CreateEmbeddingResponse(
            data=data, model=body.model, object="list", usage=Usage(prompt_tokens=tokens, total_tokens=tokens)
        )
        return response.model_dump(mode="json")

    # -- documents and ingest ----------------------------------------------------------------------------
    def find_document(doc_id: str, collection: str | None, grant: Grant) -> tuple[str, str]:
        names = [info.name for info in library.collections() if collection in (None, info.name)]
        with contextlib.suppress(DocumentNotFoundError):
            return library.find_document(doc_id, grant.readable(names))
        raise ApiError(404, f"no document '{doc_id}': list them with GET /v1/documents", code="document_not_found")

    def collection_param(model: str | None, grant: Grant) -> str | None:
        if model is None:
            return None
        name = collection_of(model, grant)
        if name is None:
            raise ApiError(400, "documents belong to a collection: use a rag-... model id", param="model")
        return name

    @app.get("/v1/documents")
    async def list_documents(grant: Granted, model: str | None = None) -> dict[str, Any]:
        def listing() -> list[dict[str, Any]]:
            wanted = collection_param(model, grant)
            return [
                {
                    "object": "document",
                    "id": document_id(document.path),
                    "model": COLLECTION_PREFIX + info.name,
                    "file_name": document.file_name,
                    "chunks": document.chunks,
                    "complete": document.complete,
                    "uploaded": document.uploaded,
                }
                for info in library.collections()
                if (wanted is None or info.name == wanted) and grant.can_read(info.name)
                for document in library.documents(info.name)
            ]

        return {"object": "list", "data": await asyncio.to_thread(listing)}

    @app.get("/v1/documents/{doc_id}")
    async def get_document(doc_id: str, grant: Granted, model: str | None = None) -> dict[str, Any]:
        def read() -> dict[str, Any]:
            collection, path = find_document(doc_id, collection_param(model, grant), grant)
            parts = components.lexical_index(collection).chunks_of_files([path])
            return {
                "object": "document",
                "id": doc_id,
                "model": COLLECTION_PREFIX + collection,
                "file_name": os.path.basename(path),
                "chunks": [
                    {"index": part.chunk_index, "page": part.page, "heading": part.heading, "text": part.text}
                    for part in parts
                ],
            }

        return await asyncio.to_thread(read)

    @app.get("/v1/documents/{doc_id}/pages/{page}", response_class=Response)
    async def document_page(doc_id: str, page: str, grant: Granted, highlight: str = "") -> Response:
        """Page ``page`` of a PDF or image document as a PNG, the chunks ``highlight`` (ids, comma-separated)
        marked on it."""
        number = _page_number(page)
        chunk_ids = [part.strip() for part in highlight.split(",") if part.strip()]

        def render() -> Any:
            names = [info.name for info in library.collections()]
            return application.page_views.page_image(doc_id, number, chunk_ids, grant.readable(names))

        image = await asyncio.to_thread(render)
        return Response(
            image.png,
            media_type="image/png",
            headers={"Cache-Control": "private, max-age=600", "X-Page": str(image.page), "X-Pages": str(image.pages)},
        )

    @app.get("/v1/documents/{doc_id}/passages/{chunk_id}", response_class=HTMLResponse)
    async def document_passage(doc_id: str, chunk_id: str, grant: Granted) -> HTMLResponse:
        """A passage of a document without pages in its surrounding text: an HTML page, scrolled to it."""

        def view() -> Any:
            names = [info.name for info in library.collections()]
            return application.page_views.passage_html(doc_id, chunk_id, grant.readable(names))

        passage = await asyncio.to_thread(view)
        return HTMLResponse(
            _passage_page(passage.file_name, passage.html),
            headers={"Content-Security-Policy": _PASSAGE_CSP, "Cache-Control": "private, max-age=600"},
        )

    @app.delete("/v1/documents/{doc_id}")
    async def delete_document(doc_id: str, grant: Granted, model: str | None = None) -> dict[str, Any]:
        def delete() -> dict[str, Any]:
            collection, path = find_document(doc_id, collection_param(model, grant), grant)
            may_write(grant, collection)
            removed = library.delete_document(collection, path)
            return {"object": "document.deleted", "id": doc_id, "deleted": True, "chunks_removed": removed}

        return await asyncio.to_thread(delete)

    @app.post("/v1/ingest", status_code=202)
    async def ingest(
        files: Annotated[list[UploadFile], File()], model: Annotated[str, Form()], grant: Granted
    ) -> dict[str, Any]:
        collection = await asyncio.to_thread(collection_param, model, grant) if model != "new" else None
        name = collection or components.settings.collection
        if not grant.can_read(name):  # "new": the default collection, out of this key's sight
            raise await asyncio.to_thread(model_not_found, model, grant)
        may_write(grant, name)
        with tempfile.TemporaryDirectory(prefix="rag-upload-") as folder:
            saved: list[tuple[str, str]] = []
            for index, upload in enumerate(files):
                target = Path(folder) / f"{index}-{uuid.uuid4().hex[:8]}"
                with target.open("wb") as out:
                    while chunk := await upload.read(2**20):
                        out.write(chunk)
                saved.append((upload.filename or target.name, str(target)))
            result = await asyncio.to_thread(library.save_uploads, name, saved)
        job = jobs.start(name, result)
        return job.to_dict()

    @app.get("/v1/ingest/{job_id}")
    async def ingest_status(job_id: str, grant: Granted) -> dict[str, Any]:
        job = jobs.get(job_id)
        if job is None or not grant.can_read(job.collection):
            raise ApiError(404, f"no ingest job '{job_id}'", code="job_not_found")
        return job.to_dict()

    return app


def _page_number(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ApiError(400, f"page: '{text}' is not a page number (1, 2, ...)", code="invalid_value", param="page")
    return int(text)


def _passage_page(file_name: str, fragment: str) -> str:
    """A passage view as a page a browser opens: the fragment (escaped text), scrolled to the passage."""
    import html

    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(file_name)}</title></head>'
        f'<body style="max-width: 48em; margin: 2em auto; font-family: sans-serif">'
        f"<h3>{html.escape(file_name)}</h3>{fragment}"
        "<script>document.getElementById('rag-passage')?.scrollIntoView({block: 'center'})</script></body></html>"
    )


def _mcp_endpoint(
    assistant: Assistant, library: DocumentLibrary, options: ServeOptions, policy: AccessPolicy
) -> GuardedMcpEndpoint:
    """The MCP server over the same answer service (one admission for both APIs) and library, at ``/mcp``."""
    from rag.server.mcp import GuardedMcpEndpoint, create_mcp_server, signed_page_links

    server = create_mcp_server(assistant, library, page_link=signed_page_links(policy))
    return GuardedMcpEndpoint(server, policy=policy, host=options.host)


# -- answering ------------------------------------------------------------------------------------------------
def _warm_up(components: Components, health: _Health) -> None:
    try:
        model = components.llm()
        if model is not None and hasattr(model, "warm_up"):
            model.warm_up()
        health.ready.set()
    except Exception as error:  # reported by /health; answers will say it too
        logger.error("the model failed to load: %s", error)
        health.error = str(error)


def _models(components: Components, library: Any, grant: Grant) -> list[dict[str, Any]]:
    """A model id per collection the grant reads, and the bare model (it reads no documents: every key has it)."""
    from openai.types import Model

    created = int(time.time())
    models = [
        Model(id=COLLECTION_PREFIX + name, created=created, object="model", owned_by="chinese-mixtral-rag")
        for name in grant.readable(info.name for info in library.collections())
    ]
    models.append(Model(id=bare_model_id(components), created=created, object="model", owned_by="chinese-mixtral-rag"))
    return [model.model_dump(mode="json", exclude_none=True) for model in models]


def _conversation(messages: list[ChatMessageIn]) -> tuple[str, list[tuple[str, str]], str]:
    """(system text, earlier turns, the question): system and developer messages are honoured, never dropped."""
    system = "\n\n".join(m.text for m in messages if m.role in ("system", "developer") and m.text.strip())
    turns: list[tuple[str, str]] = [(m.role, m.text) for m in messages if m.role in ("user", "assistant")]
    if not turns or turns[-1][0] != "user" or not turns[-1][1].strip():
        raise ApiError(400, "the last message must be a user message with the question", code="invalid_value",
                       param="messages")  # fmt: skip
    return system, turns[:-1], turns[-1][1]


def _ask_options(body: ChatCompletionRequest, collection: str | None, use_retrieval: bool) -> AskOptions:
    from rag.app.assistant import AskOptions

    extra = body.rag
    return AskOptions(
        collection=collection,
        k=extra.k if extra else None,
        sources=tuple(extra.sources or ()) if extra else (),
        max_context_tokens=extra.max_context_tokens if extra else None,
        temperature=body.temperature,
        top_p=body.top_p,
        max_tokens=body.answer_tokens,
        seed=body.seed,
        stop=tuple(body.stop_strings or ()),
        use_documents=use_retrieval,
    )


class _Answer:
    """One answer's identity and what is known of it: the same ``id`` in every chunk."""

    def __init__(
        self,
        body: ChatCompletionRequest,
        first: AnswerEvent,
        *,
        retrieval: bool,
        link: Callable[[str, str], str] = lambda base, path: base + path,
    ) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.link = link
        """(base URL, path) -> the page view's URL a browser opens (signed for the caller when keys are on)."""
        self.model = body.model
        self.created = int(time.time())
        self.body = body
        self.first = first
        """The answer service's ``passages`` event: what the model was given."""
        self.retrieval = retrieval
        self.text = ""
        self.final: AnswerEvent | None = None
        """The ``done`` event, once the answer has ended."""

    def sources(self, base_url: str, *, final: bool) -> list[dict[str, Any]]:
        """All passages given to the model (a stream's first chunk), or those the answer rests on (final)."""
        if not self.retrieval:
            return []
        chosen = [dict(source) for source in (self.final if final and self.final else self.first).sources]
        for source in chosen:
            source["url"] = f"{base_url}/v1/documents/{source['document_id']}"
            path = view_path(
                source["document_id"], str(source.get("file_name") or ""), source.get("page"),
                list(source.get("chunk_ids") or [source.get("chunk_id") or ""]),
            )  # fmt: skip
            source["page_image_url"] = self.link(base_url, path)
        return chosen

    def annotations(self, sources: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``url_citation`` entries (Open WebUI turns them into source cards): one per source, at its ``[n]``."""
        found = []
        for source in sources:
            marker = f"[{source['n']}]"
            start = self.text.find(marker)
            found.append(
                {
                    "type": "url_citation",
                    "url_citation": {
                        "url": source.get("page_image_url") or source["url"],
                        "title": source.get("file_name") or source.get("source") or "",
                        "start_index": max(start, 0),
                        "end_index": max(start, 0) + (len(marker) if start >= 0 else 0),
                    },
                }
            )
        return found

    def completion_usage(self) -> dict[str, int]:
        """Tokens as the answer service counted them (the backend's own count where it reports one)."""
        stats = (self.final or self.first).stats
        prompt, completion = stats.prompt_tokens, stats.answer_tokens
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def finish_reason(self, completion_tokens: int) -> str:
        limit = self.body.answer_tokens
        return "length" if limit is not None and completion_tokens >= limit else "stop"


async def _consume(answer: _Answer, events: AsyncIterator[AnswerEvent]) -> AsyncIterator[str]:
    """The answer's text pieces; the final event is kept on ``answer``."""
    async for event in events:
        if event.kind == "delta":
            answer.text += event.text
            yield event.text
        elif event.kind == "done":
            answer.final = event


async def _complete(
    answer: _Answer, events: AsyncGenerator[AnswerEvent, None], include_sources: bool, base_url: str
) -> dict[str, Any]:
    from openai.types.chat import ChatCompletion

    async with contextlib.aclosing(events):  # cancelled (client gone): the service frees its slot
        async for _ in _consume(answer, events):
            pass
    usage = answer.completion_usage()
    message: dict[str, Any] = {"role": "assistant", "content": answer.text}
    if include_sources and answer.retrieval:
        sources = answer.sources(base_url, final=True)
        message["sources"] = sources
        message["annotations"] = answer.annotations(sources)
    completion = ChatCompletion.model_validate(
        {
            "id": answer.id,
            "object": "chat.completion",
            "created": answer.created,
            "model": answer.model,
            "choices": [
                {"index": 0, "message": message, "finish_reason": answer.finish_reason(usage["completion_tokens"])}
            ],
            "usage": usage,
        }
    )
    return completion.model_dump(mode="json", exclude_none=True)


def _chunk(answer: _Answer, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
    import json

    from openai.types.chat import ChatCompletionChunk

    chunk = ChatCompletionChunk.model_validate(
        {
            "id": answer.id,
            "object": "chat.completion.chunk",
            "created": answer.created,
            "model": answer.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra,
        }
    )
    return f"data: {json.dumps(chunk.model_dump(mode='json', exclude_none=True), ensure_ascii=False)}\n\n"


async def _stream(
    answer: _Answer, events: AsyncGenerator[AnswerEvent, None], *, include_sources: bool, base_url: str
) -> AsyncIterator[str]:
    """Server-sent events: a first chunk with the role and the sources (once), the text, the finish reason, the
    usage when asked for, then ``[DONE]``; a failure sends one error event and ends the stream."""
    import json

    from openai.types.chat import ChatCompletionChunk

    try:
        first: dict[str, Any] = {"role": "assistant", "content": ""}
        if include_sources and answer.retrieval:
            sources = answer.sources(base_url, final=False)
            first["sources"] = sources
            first["annotations"] = answer.annotations(sources)
        yield _chunk(answer, first)
        async for text in _consume(answer, events):
            yield _chunk(answer, {"content": text})
        usage = answer.completion_usage()
        final = answer.final.sources if answer.final is not None else []
        cited = [source["n"] for source in final if source.get("cited")]
        extra: dict[str, Any] = {"cited": cited} if include_sources and answer.retrieval else {}
        yield _chunk(answer, {}, answer.finish_reason(usage["completion_tokens"]), **extra)
        options = answer.body.stream_options
        if options is not None and options.include_usage:
            chunk = ChatCompletionChunk.model_validate(
                {"id": answer.id, "object": "chat.completion.chunk", "created": answer.created,
                 "model": answer.model, "choices": [], "usage": usage}
            )  # fmt: skip
            yield f"data: {json.dumps(chunk.model_dump(mode='json', exclude_none=True))}\n\n"
        yield "data: [DONE]\n\n"
    except Exception as error:  # the stream has started: an error event (ours, or a generic one), then the end
        yield stream_error_event(error)
    finally:  # done, failed or the client gone: the service frees its slot
        await events.aclose()


async def _until_disconnected(request: Request, work: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    """``work``, cancelled when the client goes away (its generation stops at the next token)."""
    task = asyncio.ensure_future(work)
    while not task.done():
        done, _ = await asyncio.wait({task}, timeout=0.5)
        if not done and await request.is_disconnected():
            task.cancel()
            raise ApiError(499, "the client disconnected")
    return task.result()


def _encoded(vector: Any, encoding: str) -> list[float] | str:
    import numpy as np

    values = np.asarray(vector, dtype=np.float32)
    if encoding == "base64":
        return base64.b64encode(values.tobytes()).decode("ascii")
    return [float(value) for value in values]
