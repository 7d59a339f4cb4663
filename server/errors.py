"""The JSON error shape of API.md, and the middleware that guarantees it.

Handlers raise ``ApiError`` (or aiohttp's HTTP exceptions); anything under ``/api``,
``/webhooks``, ``/whip`` and ``/whep`` leaves as ``{"error", "detail"}``. Redis being
unreachable (restarting, loading its AOF) is a 503 with Retry-After, which browsers and
Stripe retry; any other unexpected exception is logged and answered 500 with the same
shape, never an HTML trace.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from aiohttp import web
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger("showroom.http")

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "unauthorized",
    404: "not_found",
    405: "bad_request",
    409: "conflict",
    413: "too_large",
    415: "bad_request",
    422: "bad_request",
    429: "rate_limited",
    503: "unavailable",
}
JSON_PREFIXES = ("/api/", "/webhooks/", "/whip/", "/whep/")


class ApiError(Exception):
    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status, self.code, self.detail, self.headers = status, code, detail, headers or {}


def bad_request(detail: str) -> ApiError:
    return ApiError(400, "bad_request", detail)


def not_found(detail: str) -> ApiError:
    return ApiError(404, "not_found", detail)


def unauthorized(detail: str = "Authentication required.") -> ApiError:
    return ApiError(401, "unauthorized", detail, {"WWW-Authenticate": 'Bearer realm="showroom"'})


def conflict(code: str, detail: str) -> ApiError:
    return ApiError(409, code, detail)


def error_response(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response({"error": code, "detail": detail}, status=status, headers=headers)


async def read_body(request: web.Request, max_bytes: int) -> bytes:
    """The whole body, or 413 past ``max_bytes``. Reads until EOF: one ``read(n)`` may
    return only the first chunk of a body that arrives in several."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise _too_large(max_bytes)
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.read(max_bytes + 1 - size):
        chunks.append(chunk)
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes)
    return b"".join(chunks)


def _too_large(max_bytes: int) -> ApiError:
    return ApiError(413, "too_large", f"Body is larger than {max_bytes} bytes.")


async def read_json(request: web.Request, max_bytes: int = 16 * 1024) -> dict[str, Any]:
    """Parse a JSON object body: 413 when too large, 400 when not a JSON object."""
    raw = await read_body(request, max_bytes)
    try:
        data = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError):
        raise bad_request("Body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise bad_request("Body must be a JSON object.")
    return data


def string_or_null(body: dict[str, Any], name: str, example: str) -> str | None:
    """A field that must be present and be a string or null (null clears a setting)."""
    if name not in body:
        raise bad_request(f'Send {{"{name}": "{example}"}} or {{"{name}": null}}.')
    value = body[name]
    if value is not None and not isinstance(value, str):
        raise bad_request(f"{name} must be a string or null.")
    return value


@web.middleware
async def json_errors(request: web.Request, handler):
    if not request.path.startswith(JSON_PREFIXES):
        return await handler(request)
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.detail, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _CODES.get(exc.status, "bad_request" if exc.status < 500 else "internal")
        detail = exc.text if exc.text and not exc.text.startswith(str(exc.status)) else exc.reason
        headers = {
            k: v
            for k, v in exc.headers.items()
            if k.lower() not in ("content-type", "content-length")
        }
        return error_response(exc.status, code, detail, headers)
    except (RedisConnectionError, RedisTimeoutError) as exc:
        _log_outage(exc)
        return error_response(
            503,
            "unavailable",
            "The shop is briefly unavailable; please try again in a moment.",
            {"Retry-After": "1"},
        )
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(
            500, "internal", "Something went wrong on our side; it has been logged."
        )


_outage = {"logged_at": 0.0, "since_log": 0}


def _log_outage(exc: Exception) -> None:
    """One line a second while Redis is unreachable, not one per request of a flash drop."""
    _outage["since_log"] += 1
    now = time.monotonic()
    if now - _outage["logged_at"] >= 1.0:
        log.warning("Redis unavailable (%d requests answered 503): %s", _outage["since_log"], exc)
        _outage["logged_at"], _outage["since_log"] = now, 0
