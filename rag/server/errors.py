"""Errors in OpenAI's envelope, ``{"error": {"message", "type", "param", "code"}}``, with real status codes: where
:mod:`rag.errors` (and bad requests) become HTTP answers. The server keeps serving after every one."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from rag.errors import (
    BusyError,
    ConfigError,
    ContextOverflowError,
    DocumentNotFoundError,
    EmptyStoreError,
    ModelMismatchError,
    ModelNotFoundError,
    NotFoundError,
    RagError,
    RequestError,
    StoreError,
)

__all__ = ["ApiError", "error_body", "install_error_handlers", "stream_error_event"]

logger = logging.getLogger("rag.server")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}


class ApiError(Exception):
    """An error answer: status, message, and OpenAI's ``type``/``param``/``code``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}


def error_body(status: int, message: str, *, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def from_rag_error(error: RagError) -> ApiError:
    """The HTTP answer for one of our errors (their messages are written for users)."""
    if isinstance(error, BusyError):
        return ApiError(503, str(error), code="server_busy", headers={"Retry-After": str(error.retry_after_s)})
    if isinstance(error, ContextOverflowError):
        return ApiError(400, str(error), code="context_length_exceeded", param="messages")
    if isinstance(error, EmptyStoreError):
        return ApiError(400, str(error), code="empty_collection", param="model")
    if isinstance(error, ModelMismatchError):
        return ApiError(409, str(error), code="embedding_model_mismatch")
    if isinstance(error, ModelNotFoundError):
        return ApiError(503, str(error), code="model_unavailable")
    if isinstance(error, StoreError):
        return ApiError(503, str(error), code="store_unavailable", headers={"Retry-After": "5"})
    if isinstance(error, DocumentNotFoundError):
        return ApiError(404, str(error), code="document_not_found", param=error.param)
    if isinstance(error, NotFoundError):
        return ApiError(404, str(error), code="not_found", param=error.param)
    if isinstance(error, RequestError):
        return ApiError(400, str(error), code="invalid_value", param=error.param)
    if isinstance(error, ConfigError):
        return ApiError(400, str(error), code="invalid_value")
    return ApiError(500, str(error), code="rag_error")


def stream_error_event(error: BaseException) -> str:
    """The one ``data:`` event a failing stream sends before it closes."""
    if isinstance(error, RagError):
        api = from_rag_error(error)
    elif isinstance(error, ApiError):
        api = error
    else:
        logger.exception("answer failed mid-stream", exc_info=error)
        api = ApiError(500, "the answer failed: see the server's log")
    body = error_body(api.status, api.message, code=api.code, param=api.param)
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def _json(api: ApiError) -> JSONResponse:
    return JSONResponse(
        error_body(api.status, api.message, code=api.code, param=api.param), status_code=api.status, headers=api.headers
    )


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return _json(error)

    @app.exception_handler(RagError)
    async def rag_error(request: Request, error: RagError) -> JSONResponse:
        return _json(from_rag_error(error))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = error.errors()
        first = problems[0] if problems else {}
        location = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path")]
        if first.get("type") == "json_invalid":
            return _json(ApiError(400, f"the body is not valid JSON: {first.get('ctx', {}).get('error', '')}".strip(),
                                  code="invalid_json"))  # fmt: skip
        message = "; ".join(
            f"{'.'.join(str(p) for p in problem.get('loc', ()) if p != 'body') or 'body'}: {problem.get('msg')}"
            for problem in problems[:5]
        )
        return _json(
            ApiError(400, message or "invalid request", code="invalid_value", param=".".join(location) or None)
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code)
        return _json(ApiError(error.status_code, str(error.detail), code=code))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        logger.exception("unexpected error on %s %s", request.method, request.url.path, exc_info=error)
        return _json(ApiError(500, "internal error: see the server's log"))
