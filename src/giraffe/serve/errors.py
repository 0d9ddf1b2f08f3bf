"""Errors in OpenAI's shape, request-size limits and the optional API key.

Every failure the server reports - bad JSON, a wrong type, an unknown model, a prompt
over the context, a full queue, a missing key - leaves as
`{"error": {"message", "type", "param", "code"}}` with the status code OpenAI uses, so
clients raise their usual exceptions.

Which failures are the client's: exactly the error classes giraffe raises for bad input
(`USER_ERRORS`: decoding options, prompts, schemas, chat templates, token ids) become a
400 naming the field; any other exception, a plain ValueError included, is a fault of
the server and a 500. It does not know models or generation.
"""

from __future__ import annotations

import contextlib
import hmac
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from giraffe.generate.constraint import ConstraintError
from giraffe.generate.params import DecodingError, GenerationError
from giraffe.serve.responses import error_body
from giraffe.tokenizer import TokenizerError
from giraffe.tokenizer.chat import ChatTemplateError

log = logging.getLogger("giraffe.serve")

KINDS = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_overloaded",
    504: "timeout_error",
}


WHEN = {
    400: "a mistake in the request; `param` names the field",
    401: "missing or wrong API key (the server was started with --api-key)",
    404: "no such model, document, view or knowledge base",
    413: "the body is over --max-body-bytes",
    500: "a fault of the server itself",
    503: "--max-queue requests already wait; retry after Retry-After",
    504: "the request ran past --timeout",
}
ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}


def error_responses(codes) -> dict:
    """OpenAPI `responses` entries for these status codes, all in OpenAI's error shape."""
    body = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    return {str(c): {"description": WHEN[c], "content": body} for c in sorted(codes)}


class APIError(Exception):
    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        return error_body(
            self.message, KINDS.get(self.status, "server_error"), self.param, self.code
        )

    def response(self) -> JSONResponse:
        headers = {"Retry-After": "1"} if self.status in (429, 503) else None
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


class UnsupportedField(ValueError):
    """A field the client set that giraffe does not implement, or not in this combination."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


USER_ERRORS = (
    DecodingError,
    GenerationError,
    TokenizerError,
    ChatTemplateError,
    UnsupportedField,
)
# DecodingConfig's names -> the request fields that set them
HTTP_FIELD = {
    "max_new_tokens": "max_tokens",
    "json_schema": "response_format",
    "grammar": "response_format",
    "stop_token_ids": "stop",
}


def as_api_error(e: BaseException, param: str | None = None) -> APIError | None:
    """A user error as a 400 naming the field (its own, else `param`); None for anything else."""
    if isinstance(e, APIError):
        return e
    if isinstance(e, ConstraintError):
        return APIError(400, str(e), param or "response_format", "invalid_schema")
    if isinstance(e, GenerationError) and "context" in str(e):
        return APIError(400, str(e), param, "context_length_exceeded")
    if isinstance(e, USER_ERRORS):
        own = getattr(e, "param", None)
        return APIError(400, str(e), HTTP_FIELD.get(own, own) or param)
    return None


@contextlib.contextmanager
def user_errors(param: str | None = None):
    """Turn the user-error classes raised inside into a 400 (param: the field they concern)."""
    try:
        yield
    except USER_ERRORS as e:
        raise as_api_error(e, param) from e


def validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    """The first problem pydantic found, as one sentence naming the field."""
    errors = exc.errors()
    first = errors[0]
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    # A union's errors come one per member, each loc ending in the member's type ("str",
    # "list[str]"): the field is what the first error's group has in common.
    group = [
        [str(x) for x in e.get("loc", ()) if x != "body"]
        for e in errors
        if e.get("loc", ())[:2] == first.get("loc", ())[:2]
    ]
    loc = loc[: min(_common(loc, other) for other in group)]
    if "[key]" in loc:  # a map's key is wrong (logit_bias {"x": 1}): name the map
        loc = loc[: loc.index("[key]") - 1]
    if first.get("type") == "json_invalid":
        return "the request body is not valid JSON: " + first.get("msg", ""), None
    param = ".".join(loc) or None
    where = f"'{param}'" if param else "the request body"
    return f"{where}: {first.get('msg', 'invalid value')}", param


def _common(a: list[str], b: list[str]) -> int:
    """How many leading items a and b share."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        message, param = validation_message(exc)
        return APIError(400, message, param).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404:
            message = f"no such endpoint: {request.method} {request.url.path}"
        response = APIError(exc.status_code, message).response()
        response.headers.update(exc.headers or {})
        if exc.status_code == 405:  # Allow (RFC 9110): every method of this path, not one route's
            response.headers["Allow"] = ", ".join(allowed_methods(request))
        return response

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception):
        log.exception("request failed: %s %s", request.method, request.url.path)
        return APIError(500, f"internal error: {type(exc).__name__}: {exc}").response()


def allowed_methods(request: Request) -> list[str]:
    """The methods the routes at this path answer; a literal path wins over a template
    (/documents/ask is POST, though /documents/{name} would match it for DELETE)."""
    matching = [
        r for r in _routes(request.app.router.routes)
        if getattr(r, "methods", None) and r.matches(request.scope)[0] != Match.NONE
    ]  # fmt: skip
    literal = [r for r in matching if getattr(r, "path", None) == request.url.path]
    return sorted({m for r in (literal or matching) for m in r.methods})


def _routes(routes):
    """Every route, also those of included routers (FastAPI >= 0.165 wraps them, unprefixed)."""
    for r in routes:
        inner = getattr(r, "original_router", None)
        yield from _routes(inner.routes) if inner is not None else (r,)


def check_api_key(request: Request, api_key: str | None) -> None:
    """Bearer key, compared in constant time so response timing reveals nothing about it."""
    if api_key is None:
        return
    header = request.headers.get("authorization", "")
    given = header[7:] if header.lower().startswith("bearer ") else ""
    if not hmac.compare_digest(given.encode(), api_key.encode()):
        raise APIError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'")


class BodyLimit:
    """ASGI middleware: refuse bodies over `limit` bytes with 413, before reading them whole."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._refuse(scope, receive, send)
        seen = 0

        async def counting_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge
            return message

        try:
            await self.app(scope, counting_receive, send)
        except _TooLarge:
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope, receive, send) -> None:
        limit = f"the request body is larger than the server's limit ({self.limit} bytes)"
        await APIError(413, limit).response()(scope, receive, send)


class _TooLarge(Exception):
    pass
