"""The FastAPI application: factory, life cycle, error shape, size limit, request ids.

`create_app(settings, runtime)` builds the app; uvicorn serves
`childface.api.app:create_app` with `--factory`. On start-up the lifespan
starts the `Runtime` (database check, model load, index catch-up) off the
event loop; on shutdown it saves the index snapshot.

Every error, ours or the framework's (validation, 404, 405, oversized body),
leaves as `{"error": {"code": ..., "message": ...}}` with a 4xx status (5xx
only for real faults, with code `internal_error`; a 5xx names its request id
in the body, the message, the `X-Request-ID` header and the log line).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from childface.api.rate_limit import AddressRateLimit, RateLimited, client_address
from childface.api.strict_query import STRICT_QUERY
from childface.config import Settings, get_settings
from childface.services.accounts import AccountError
from childface.services.errors import DomainError
from childface.services.runtime import Runtime

log = logging.getLogger("childface.api")

REQUEST_ID_HEADER = "X-Request-ID"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
request_id_var: ContextVar[str] = ContextVar("request_id", default="-")
#: Swagger UI (/docs) and ReDoc (/redoc) load their scripts and styles from here, never from a CDN
DOCS_ASSETS_URL = "/docs-assets"

_STATUS_CODES = {
    400: "invalid_input",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    422: "invalid_input",
}
_ACCOUNT_STATUS = {
    "invalid_credentials": 401,
    "too_many_attempts": 429,
    "not_found": 404,
    "conflict": 409,
    "username_taken": 409,
    "name_taken": 409,
    "last_admin": 409,
}


class RequestIdFilter(logging.Filter):
    """Puts the current request id on every log record (`%(request_id)s`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


def logging_config(level: str = "info") -> dict[str, Any]:
    """uvicorn's `log_config`: one line per record, each with the request id it belongs to."""
    level = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"request_id": {"()": RequestIdFilter}},
        "formatters": {
            "plain": {"format": "%(asctime)s %(levelname)-7s [%(request_id)s] %(name)s: %(message)s"}
        },
        "handlers": {
            "console": {
                "class": "logging.StreamHandler",
                "formatter": "plain",
                "filters": ["request_id"],
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            "childface": {"handlers": ["console"], "level": level, "propagate": False},
            "uvicorn": {"handlers": ["console"], "level": level, "propagate": False},
            # our middleware writes one access line per request, with its id
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
        },
    }


def error_response(
    status: int, code: str, message: str, details: Any = None, *, retry_after_s: int | None = None
) -> JSONResponse:
    """The error shape; a 5xx also names its request id (body and message), for a person to quote."""
    body: dict[str, Any] = {"code": code, "message": message}
    if status >= 500:
        request_id = request_id_var.get()
        body["message"] = f"{message}; quote request id {request_id}"
        body["request_id"] = request_id
    if details is not None:
        body["details"] = details
    headers = {"Retry-After": str(retry_after_s)} if retry_after_s is not None else None
    return JSONResponse({"error": jsonable_encoder(body)}, status_code=status, headers=headers)


class _BodyTooLarge(StarletteHTTPException):
    """Raised from `receive`: an HTTPException, so the framework's body parsing passes it through."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body exceeds the limit of {limit} bytes")


class RequestContextMiddleware:
    """Request id in and out, one access-log line per request, the body-size limit, unhandled errors.

    The body-size limit is checked on Content-Length up front and again while the
    body streams in (chunked uploads have no length), before any parsing happens.

    An unhandled exception becomes a 500 here, while the request id is still
    known: the log line, the body and the `X-Request-ID` header all carry it.
    """

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        incoming = headers.get(REQUEST_ID_HEADER.lower(), "")
        request_id = incoming if _VALID_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status_holder = {"status": 500, "started": False}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                status_holder["started"] = True
                message.setdefault("headers", [])
                message["headers"] = [
                    *message["headers"],
                    (REQUEST_ID_HEADER.encode(), request_id.encode()),
                ]
            await send(message)

        limit = self.max_body_bytes
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge(limit)
            return message

        try:
            length = headers.get("content-length")
            if b"%00" in scope.get("query_string", b""):
                # no text column on either back end may hold NUL: refuse it before any handler runs
                refusal = error_response(
                    422, "invalid_input", "the query string must not contain NUL characters"
                )
                await refusal(scope, receive, send_with_id)
            elif length is not None and length.isdigit() and int(length) > limit:
                await _too_large(limit)(scope, receive, send_with_id)
            else:
                await self.app(scope, limited_receive, send_with_id)
        except _BodyTooLarge:
            if status_holder["started"]:
                raise
            await _too_large(limit)(scope, receive, send_with_id)
        except Exception:
            # answered here, not by Starlette's outer error middleware: there the request id
            # would be gone from the log line, the body and the headers
            log.exception("unhandled error")
            if status_holder["started"]:
                raise
            await error_response(500, "internal_error", "internal error")(scope, receive, send_with_id)
        finally:
            log.info(
                "%s %s -> %s in %.1f ms",
                scope.get("method"),
                scope.get("path"),
                status_holder["status"],
                (time.perf_counter() - started) * 1000,
            )
            request_id_var.reset(token)


def _too_large(limit: int) -> JSONResponse:
    return error_response(413, "payload_too_large", f"the request body exceeds the limit of {limit} bytes")


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(DomainError)
    async def _domain(_request: Request, exc: DomainError) -> JSONResponse:
        return error_response(
            exc.status,
            exc.code,
            exc.message,
            getattr(exc, "details", None),  # e.g. the later change an undo's refusal names
            retry_after_s=getattr(exc, "retry_after_s", None),
        )

    @app.exception_handler(AccountError)
    async def _account(_request: Request, exc: AccountError) -> JSONResponse:
        return error_response(
            _ACCOUNT_STATUS.get(exc.code, 400),
            exc.code,
            exc.message,
            retry_after_s=getattr(exc, "retry_after_s", None),
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type", "")}
            for err in exc.errors()
        ]
        summary = "; ".join(f"{'.'.join(map(str, d['loc']))}: {d['msg']}" for d in details[:5])
        return error_response(422, "invalid_input", summary or "invalid request", details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "http_error")
        response = error_response(exc.status_code, code, str(exc.detail))
        if exc.headers:
            response.headers.update(exc.headers)
        return response


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> FastAPI:
    """Build the API. Give a `runtime` to share loaded models (tests); else one is made from settings."""
    from childface.api.routes import (
        admin,
        audit,
        auth,
        calibration,
        children,
        faces,
        health,
        imports,
        models,
        recognition,
        relations,
        review,
        sightings,
    )
    from childface.api.routes import settings as settings_routes
    from childface.services.webhooks import WebhookWorker

    if settings is None:
        settings = runtime.settings if runtime is not None else get_settings()
    owned = runtime is None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if getattr(app.state, "runtime", None) is None:
            app.state.runtime = Runtime(settings)
        await run_in_threadpool(app.state.runtime.start)
        # delivers the video events' webhooks (the outbox rows `childface watch` writes)
        webhook_worker = WebhookWorker(app.state.runtime.db, app.state.runtime.settings).start()
        yield
        await run_in_threadpool(webhook_worker.stop)
        if owned:
            await run_in_threadpool(app.state.runtime.close)

    # FastAPIOffline: a FastAPI app whose /docs and /redoc pages use assets shipped in the package
    app = FastAPIOffline(
        static_url=DOCS_ASSETS_URL,
        title="childface",
        version="1.0",
        summary="Recognise enrolled children by face: enroll, recognise, correct, erase, audit.",
        lifespan=lifespan,
        responses={
            401: {"model": _error_model(), "description": "No or invalid credentials"},
            403: {"model": _error_model(), "description": "Not allowed for this caller"},
            422: {"model": _error_model(), "description": "Invalid request"},
        },
    )
    app.state.runtime = runtime
    app.state.settings = settings
    app.state.rate_limit = AddressRateLimit(settings.rate_limit_unauthenticated)
    _install_error_handlers(app)
    for module in (health, auth, children, faces, recognition, review, audit, admin, settings_routes, imports,
                   calibration, sightings, relations, models):
        # every route refuses query parameters it does not declare (422, naming them)
        app.include_router(module.router, dependencies=[STRICT_QUERY])
    docs = {app.openapi_url, "/docs", app.swagger_ui_oauth2_redirect_url, "/redoc"} - {None}
    app.add_middleware(
        DocsRateLimit, paths=frozenset(docs), prefix=DOCS_ASSETS_URL + "/", limit=app.state.rate_limit
    )
    # outermost: its request id reaches every response, the rate limit's 429 too
    app.add_middleware(RequestContextMiddleware, max_body_bytes=settings.max_upload_bytes)
    return app


class DocsRateLimit:
    """Counts each request for the API docs and their assets (no credentials needed) against its
    address's rate limit.

    API routes that need no credentials count through the `count_unauthenticated` dependency.
    """

    def __init__(self, app: ASGIApp, *, paths: frozenset[str], prefix: str, limit: AddressRateLimit) -> None:
        self.app = app
        self.paths = paths
        self.prefix = prefix
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (scope["path"] in self.paths or scope["path"].startswith(self.prefix)):
            try:
                self.limit.hit(client_address(scope))
            except RateLimited as exc:
                refusal = error_response(exc.status, exc.code, exc.message, retry_after_s=exc.retry_after_s)
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _error_model() -> type:
    from childface.api.schemas import ErrorResponse

    return ErrorResponse
