"""The MCP server: a person's documents as tools and resources of any MCP host (Claude Desktop, Cursor, Cherry
Studio, Open WebUI, ...), over the same answer service and document library as every other surface.

>>> application = Application.build(Settings.load())
>>> server = create_mcp_server(application.assistant, application.library)
>>> await server.run_stdio_async()                              # `rag mcp`
>>> GuardedMcpEndpoint(server, policy=application.access_policy)  # `rag serve`: streamable HTTP at /mcp

Tools (typed input and output schemas; results as ``structuredContent``): ``search`` (passages, retrieval only),
``ask`` (an answer with its sources; answer pieces as progress notifications when the client sent a progress
token; cancelling the request stops the generation and frees its slot), ``list_collections``, ``list_documents``,
``read_document`` (stored text, whole or a page range). Documents are also resources, ``rag://documents/{id}``.
Documents are addressed by id only: nothing a client sends is a path, and text comes from the store, never from a
file. Errors are tool errors (``isError``) carrying the product's message.

Inside ``rag serve`` (streamable HTTP at ``/mcp``) every passage of ``search`` and every source of ``ask`` carries
``page_image_url``, the same link ``/v1/chunks`` and the chat sources give: the cited page as a PNG with the passage
highlighted (or, for a file without pages, the passage in its text), absolute to the server the request came to and
signed for the caller's key, so a browser opens it. Over stdio there is no HTTP server to open it from: the field
is null there.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Annotated, Any, Literal

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp_types import ListResourcesResult, PaginatedRequestParams, Resource, ToolAnnotations
from pydantic import BaseModel, Field
from starlette.types import Receive, Scope, Send

from rag.app.access import AccessPolicy, Grant
from rag.app.pages import FoundChunk, view_path
from rag.errors import RagError
from rag.server.access import LOCAL, signed_url

if TYPE_CHECKING:
    from mcp.server.context import ServerRequestContext

    from rag.app.assistant import AnswerEvent, Assistant
    from rag.app.library import DocumentInfo, DocumentLibrary

__all__ = [
    "ACCESS_SCOPE_KEY",
    "DOCUMENT_URI",
    "GuardedMcpEndpoint",
    "access_from_request",
    "create_mcp_server",
    "local_access",
    "no_page_links",
    "signed_page_links",
]

DOCUMENT_URI = "rag://documents/{document_id}"
#: Where the HTTP guard leaves the caller's :class:`Grant` in the ASGI scope, for the tools to read.
ACCESS_SCOPE_KEY = "rag.access"
#: Most characters ``read_document`` returns by default (an assistant's context is finite).
DEFAULT_MAX_CHARS = 40_000

INSTRUCTIONS = """Private documents of the user (Chinese and English), searchable and answerable with sources.
Use `search` to find passages (cite their file and page), `ask` for an answer written from the documents with
numbered citations, `list_collections` / `list_documents` to see what is there, and `read_document` (by the id
`list_documents` or `search` gives) to read a document or some of its pages."""


PAGE_IMAGE_URL = (
    "A link a browser opens: the passage's page as a PNG with the passage highlighted (for a file without pages, "
    "the passage in its surrounding text). Null over stdio, where no HTTP server serves it."
)


# -- the wire types (their JSON schemas are the tools' input and output schemas) ----------------------------------
class Passage(BaseModel):
    """A passage of a document, as retrieval found it."""

    document_id: str = Field(description="The document's id: read it with read_document or rag://documents/{id}.")
    collection: str
    file_name: str
    page: int | None = Field(description="Page number (1-based), None for files without pages.")
    heading: str = Field(description="The section heading the passage is under, or empty.")
    score: float | None = Field(description="Retrieval score (higher is better).")
    text: str
    page_image_url: str | None = Field(default=None, description=PAGE_IMAGE_URL)


class SearchResult(BaseModel):
    collection: str
    passages: list[Passage]


class Turn(BaseModel):
    """One earlier message of the conversation."""

    role: Literal["user", "assistant"]
    content: str


class Source(BaseModel):
    """A passage the answer was given, numbered as its citations ``[n]`` are."""

    n: int
    document_id: str
    file_name: str
    page: int | None
    heading: str
    score: float | None
    cited: bool = Field(description="The answer cites [n]; when it cites nothing, the best passages, not cited.")
    text: str
    page_image_url: str | None = Field(default=None, description=PAGE_IMAGE_URL)


class AnswerFigures(BaseModel):
    retrieval_ms: float
    first_token_ms: float | None
    total_ms: float
    prompt_tokens: int
    answer_tokens: int
    tokens_per_s: float | None


class AskResult(BaseModel):
    answer: str = Field(description="The answer, citing its sources as [n].")
    collection: str
    sources: list[Source]
    cited: list[int] = Field(description="The numbers [n] the answer cites.")
    notes: list[str] = Field(description="What the user should know of this answer (evidence cut, ...).")
    figures: AnswerFigures


class CollectionSummary(BaseModel):
    name: str
    chunks: int
    embedding_model: str
    default: bool = Field(description="The collection tools use when none is named.")


class CollectionList(BaseModel):
    collections: list[CollectionSummary]


class DocumentSummary(BaseModel):
    id: str
    uri: str
    collection: str
    file_name: str
    chunks: int
    complete: bool = Field(description="False while an interrupted update is pending (the next ingest repairs it).")


class DocumentList(BaseModel):
    collection: str
    documents: list[DocumentSummary]


class DocumentContent(BaseModel):
    id: str
    uri: str
    collection: str
    file_name: str
    pages: list[int] = Field(description="The pages the text covers (empty for files without pages).")
    text: str
    total_chars: int = Field(description="Characters of the whole text asked for (before max_chars).")
    truncated: bool = Field(description="True when the text was cut at max_chars: ask for fewer pages.")


def _uri(doc_id: str) -> str:
    return DOCUMENT_URI.format(document_id=doc_id)


@contextlib.contextmanager
def _as_tool_error() -> Iterator[None]:
    """The product's errors, as the tool errors MCP hosts show (``isError`` with our message)."""
    try:
        yield
    except RagError as error:
        raise ToolError(str(error)) from error


AccessOf = Callable[["Context[Any, Any] | ServerRequestContext[Any, Any]"], Grant]
"""Which collections the caller of one MCP request may read."""


def access_from_request(ctx: Context[Any, Any] | ServerRequestContext[Any, Any]) -> Grant:
    """What :class:`GuardedMcpEndpoint` decided for the HTTP request that carried this message; nothing for a
    message that did not come through it."""
    request_context = ctx.request_context if isinstance(ctx, Context) else ctx
    access = getattr(request_context.request, "scope", {}).get(ACCESS_SCOPE_KEY)
    return access if isinstance(access, Grant) else Grant("nobody", frozenset())


PageLinkOf = Callable[["Context[Any, Any] | ServerRequestContext[Any, Any]", str], "str | None"]
"""The URL a browser opens for a page view's path (:func:`rag.app.pages.view_path`), for the caller of one MCP
request; None where no HTTP server serves page views."""


def no_page_links(ctx: Context[Any, Any] | ServerRequestContext[Any, Any], path: str) -> None:
    """On stdio: no HTTP server runs beside the MCP server, so a page view has no URL to give."""
    return None


def signed_page_links(policy: AccessPolicy) -> PageLinkOf:
    """Inside ``rag serve``: a page view's URL absolute to the server the MCP request came to, signed for its
    caller's key as ``/v1/chunks``' links are (:func:`rag.server.access.signed_url`)."""

    def link(ctx: Context[Any, Any] | ServerRequestContext[Any, Any], path: str) -> str | None:
        request_context = ctx.request_context if isinstance(ctx, Context) else ctx
        request = request_context.request
        base_url = getattr(request, "base_url", None)
        if base_url is None:  # a message that did not come over HTTP
            return None
        return signed_url(policy, access_from_request(ctx), str(base_url).rstrip("/"), path)

    return link


def local_access(ctx: Context[Any, Any] | ServerRequestContext[Any, Any]) -> Grant:
    """A server on stdio: its only caller is the user's own assistant, which started it; it reads everything."""
    return LOCAL


def create_mcp_server(
    assistant: Assistant,
    library: DocumentLibrary,
    *,
    access_of: AccessOf = access_from_request,
    page_link: PageLinkOf = no_page_links,
) -> MCPServer[Any]:
    """The MCP server over ``assistant`` (answers, with its admission) and ``library`` (collections, documents).

    ``access_of``: which collections the caller of a request may read: by default what the HTTP guard decided
    (:class:`GuardedMcpEndpoint`), nothing without it; :func:`local_access` on stdio. ``page_link``: the URL of a
    passage's page view (``page_image_url``): :func:`signed_page_links` inside ``rag serve``, none on stdio.
    """
    from rag.app.assistant import AskOptions

    components = assistant.components
    default_collection = components.settings.collection
    server: MCPServer[Any] = MCPServer(
        "chinese-mixtral-rag", title="Your documents", instructions=INSTRUCTIONS, log_level="WARNING"
    )
    read_only = ToolAnnotations(read_only_hint=True, open_world_hint=False)

    def readable(ctx: Context[Any, Any] | ServerRequestContext[Any, Any]) -> list[str]:
        access = access_of(ctx)
        return [info.name for info in library.collections() if access.can_read(info.name)]

    def collection_for(ctx: Context[Any, Any], name: str | None) -> str:
        """The collection a tool reads: the one named, else the default; one the caller cannot read is unknown."""
        wanted = name or default_collection
        known = readable(ctx)
        if wanted not in known:
            choices = ", ".join(known) or "none yet: ingest documents first (`ingest ./docs`)"
            raise ToolError(f"collection '{wanted}' does not exist: use one of {choices}")
        return wanted

    def document_in(ctx: Context[Any, Any], doc_id: str) -> tuple[str, str]:
        with _as_tool_error():
            return library.find_document(doc_id, readable(ctx))

    # -- tools ---------------------------------------------------------------------------------------------------
    @server.tool(annotations=read_only)
    async def search(
        query: Annotated[str, Field(min_length=1, description="What to look for, in any language.")],
        ctx: Context[Any, Any],
        k: Annotated[int, Field(ge=1, le=50, description="Passages to return.")] = 5,
        collection: Annotated[str | None, Field(description="Collection to search (default: the server's).")] = None,
        sources: Annotated[
            list[str], Field(description="Only these files (names or folders), e.g. ['report.pdf'].")
        ] = [],  # noqa: B006 (pydantic copies defaults)
    ) -> SearchResult:
        """Search the user's documents: the passages that best match the query (hybrid dense + BM25 retrieval),
        with their file, page, heading, score and document id. Loads no language model; fast."""
        name = await asyncio.to_thread(collection_for, ctx, collection)
        if not query.strip():
            raise ToolError("query is empty: say what to look for")
        filters: dict[str, Any] = {"sources": list(sources)} if sources else {}
        with _as_tool_error():
            found = await components.retriever(name).ainvoke(query, k=k, **filters)
        passages = []
        for chunk in map(FoundChunk.from_document, found):
            passages.append(
                Passage(
                    document_id=chunk.document_id,
                    collection=name,
                    file_name=chunk.file_name,
                    page=chunk.page,
                    heading=chunk.heading,
                    score=chunk.score,
                    text=chunk.text,
                    page_image_url=page_link(ctx, chunk.view_path),
                )
            )
        return SearchResult(collection=name, passages=passages)

    @server.tool(annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False, idempotent_hint=False))
    async def ask(
        question: Annotated[str, Field(min_length=1, description="The question, in Chinese or English.")],
        ctx: Context[Any, Any],
        conversation: Annotated[
            list[Turn], Field(description="Earlier turns, oldest first, for a follow-up question.")
        ] = [],  # noqa: B006
        collection: Annotated[
            str | None, Field(description="Collection to answer from (default: the server's).")
        ] = None,
        k: Annotated[int, Field(ge=1, le=50, description="Top passages expanded first.")] = 5,
        max_tokens: Annotated[int | None, Field(ge=1, le=8192, description="Most tokens in the answer.")] = None,
        temperature: Annotated[float | None, Field(ge=0.0, le=2.0, description="Sampling temperature.")] = None,
        sources: Annotated[list[str], Field(description="Only these files (names or folders).")] = [],  # noqa: B006
    ) -> AskResult:
        """Answer a question from the user's documents with the local model, citing passages as [n]; returns the
        answer, its sources (file, page, document id) and figures. Slow on a CPU (seconds to minutes): with a
        progress token, progress notifications carry the search and reading status, then the answer's text
        piece by piece. Cancelling the request stops the generation."""
        name = await asyncio.to_thread(collection_for, ctx, collection)
        if not components.use_llm:
            raise ToolError("this server runs without a language model (--no-llm): use the search tool")
        options = AskOptions(
            collection=name, k=k, max_tokens=max_tokens, temperature=temperature, sources=tuple(sources)
        )
        history = [(turn.role, turn.content) for turn in conversation]
        step = 0

        async def progress(message: str) -> None:
            nonlocal step
            step += 1
            await ctx.report_progress(step, None, message)

        first: AnswerEvent | None = None
        final: AnswerEvent | None = None
        answer = ""
        with _as_tool_error():
            # closed however this ends: a cancelled request stops the generation and gives the slot back
            async with contextlib.aclosing(assistant.astream(question, history, options)) as events:
                async for event in events:
                    if event.kind == "passages":
                        first = event
                        await progress(f"found {len(event.passages)} passages in '{name}'; the model reads them")
                    elif event.kind == "reading":
                        stats = event.stats
                        await progress(f"reading the passages: {stats.read_tokens} of {stats.to_read_tokens} tokens")
                    elif event.kind == "delta":
                        answer += event.text
                        await progress(event.text)
                    elif event.kind == "done":
                        final = event
        if first is None or final is None:
            raise ToolError("the answer ended before it was complete: ask again")
        sources_out = [
            Source(
                n=int(source["n"]),
                document_id=str(source["document_id"]),
                file_name=str(source.get("file_name") or ""),
                page=source.get("page"),
                heading=str(source.get("heading") or ""),
                score=source.get("score"),
                cited=bool(source.get("cited")),
                text=str(source.get("text") or ""),
                page_image_url=page_link(ctx, _source_view_path(source)),
            )
            for source in final.sources
        ]
        stats = final.stats
        return AskResult(
            answer=final.text or answer,
            collection=name,
            sources=sources_out,
            cited=[source.n for source in sources_out if source.cited],
            notes=[str(note) for note in final.notes],
            figures=AnswerFigures(
                retrieval_ms=round(stats.retrieval_ms, 1),
                first_token_ms=None if stats.first_token_ms is None else round(stats.first_token_ms, 1),
                total_ms=round(stats.total_ms, 1),
                prompt_tokens=stats.prompt_tokens,
                answer_tokens=stats.answer_tokens,
                tokens_per_s=None if stats.tokens_per_s is None else round(stats.tokens_per_s, 1),
            ),
        )

    @server.tool(annotations=read_only)
    async def list_collections(ctx: Context[Any, Any]) -> CollectionList:
        """The collections of documents (each a separate index), with their sizes; one is the default."""
        access = access_of(ctx)
        with _as_tool_error():
            infos = await asyncio.to_thread(library.collections)
        return CollectionList(
            collections=[
                CollectionSummary(
                    name=info.name,
                    chunks=info.chunks,
                    embedding_model=info.embedding_model,
                    default=info.name == default_collection,
                )
                for info in infos
                if access.can_read(info.name)
            ]
        )

    @server.tool(annotations=read_only)
    async def list_documents(
        ctx: Context[Any, Any],
        collection: Annotated[str | None, Field(description="Collection to list (default: the server's).")] = None,
    ) -> DocumentList:
        """The documents of a collection: id (for read_document), file name, chunks."""

        def listing() -> DocumentList:
            name = collection_for(ctx, collection)
            with _as_tool_error():
                documents = library.documents(name)
            return DocumentList(collection=name, documents=[_summary(name, document) for document in documents])

        return await asyncio.to_thread(listing)

    @server.tool(annotations=read_only)
    async def read_document(
        document_id: Annotated[str, Field(min_length=1, description="The id list_documents or search gives.")],
        ctx: Context[Any, Any],
        first_page: Annotated[int | None, Field(ge=1, description="First page to read (default: the first).")] = None,
        last_page: Annotated[int | None, Field(ge=1, description="Last page to read (default: the last).")] = None,
        max_chars: Annotated[int, Field(ge=1, le=1_000_000, description="Most characters to return.")] = (
            DEFAULT_MAX_CHARS
        ),
    ) -> DocumentContent:
        """A document's text as ingested (whole, or pages first_page..last_page), by its id."""

        def read() -> DocumentContent:
            name, path = document_in(ctx, document_id)
            with _as_tool_error():
                content = library.document_text(name, path, first_page=first_page, last_page=last_page)
            return DocumentContent(
                id=document_id,
                uri=_uri(document_id),
                collection=name,
                file_name=content.file_name,
                pages=content.pages,
                text=content.text[:max_chars],
                total_chars=len(content.text),
                truncated=len(content.text) > max_chars,
            )

        return await asyncio.to_thread(read)

    # -- resources -----------------------------------------------------------------------------------------------
    @server.resource(
        DOCUMENT_URI,
        name="document",
        title="A document",
        description="A document's text as ingested, by its id (list_documents gives the ids).",
        mime_type="text/plain",
    )
    async def document_resource(document_id: str, ctx: Context[Any, Any]) -> str:
        def read() -> str:
            try:
                name, path = library.find_document(document_id, readable(ctx))
                return library.document_text(name, path).text
            except RagError as error:
                raise ResourceError(str(error)) from error

        return await asyncio.to_thread(read)

    async def list_resources(
        ctx: ServerRequestContext[Any, Any], params: PaginatedRequestParams | None
    ) -> ListResourcesResult:
        """Every document the caller may read, as a resource (the template reads one by id)."""

        def listing() -> list[Resource]:
            return [
                Resource(
                    uri=_uri(document.id),
                    name=document.file_name,
                    title=f"{document.file_name} ({name})",
                    description=f"{document.chunks} chunks in collection '{name}'",
                    mime_type="text/plain",
                )
                for name in readable(ctx)
                for document in library.documents(name)
            ]

        return ListResourcesResult(resources=await asyncio.to_thread(listing))

    # The documents change as they are ingested: listed when asked, for this caller, not registered one by one.
    server._lowlevel_server.add_request_handler("resources/list", PaginatedRequestParams, list_resources)
    return server


def _source_view_path(source: dict[str, Any]) -> str:
    """The page view of an answer's source: its page with all its chunks highlighted (a source may join several)."""
    chunk_ids = [str(chunk_id) for chunk_id in source.get("chunk_ids") or [source.get("chunk_id") or ""]]
    return view_path(str(source["document_id"]), str(source.get("file_name") or ""), source.get("page"), chunk_ids)


def _summary(collection: str, document: DocumentInfo) -> DocumentSummary:
    return DocumentSummary(
        id=document.id,
        uri=_uri(document.id),
        collection=collection,
        file_name=document.file_name,
        chunks=document.chunks,
        complete=document.complete,
    )


class GuardedMcpEndpoint:
    """The streamable HTTP endpoint of ``server`` behind the HTTP API's key rule (:func:`caller_grant`): a refused
    caller gets 401 before any MCP message is read; an admitted one's :class:`Grant` rides in the request's scope
    for the tools. Run :meth:`lifespan` for as long as the app serves."""

    def __init__(self, server: MCPServer[Any], *, policy: AccessPolicy, host: str = "127.0.0.1") -> None:
        # On loopback the SDK also refuses other Host and Origin headers (DNS rebinding from a web page)
        self.app = server.streamable_http_app(streamable_http_path="/mcp", host=host)
        self.server = server
        self.policy = policy

    def lifespan(self) -> contextlib.AbstractAsyncContextManager[None]:
        return self.server.session_manager.run()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        import json

        from rag.server.access import caller_grant
        from rag.server.errors import ApiError, error_body

        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope.get("headers", [])}
        try:
            access = caller_grant(self.policy, headers.get("authorization"))
        except ApiError as error:
            body = json.dumps(error_body(error.status, error.message, code=error.code)).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": error.status,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"www-authenticate", b'Bearer realm="rag"'),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await self.app({**scope, ACCESS_SCOPE_KEY: access}, receive, send)
