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
import zlib
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from checkout import text

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
    """The whole (decoded) body, or 413 past ``max_bytes``. Reads until EOF: one
    ``read(n)`` may return only the first chunk of a body that arrives in several.

    The app decodes ``Content-Encoding`` itself (aiohttp's own decoding is off, see
    ``create_app``): a body that does not decode, or an encoding we do not speak, is a
    400 instead of a 500 or a dropped connection, and ``max_bytes`` bounds the decoded
    size, so a small compressed body cannot inflate into a large one."""
    decoder = _decoder(request.headers.get("Content-Encoding", ""))
    if decoder is None and request.content_length is not None:
        if request.content_length > max_bytes:
            raise _too_large(max_bytes)
    chunks: list[bytes] = []
    size = 0
    try:
        while chunk := await request.content.read(65536 if decoder else max_bytes + 1 - size):
            if decoder is not None:
                chunk = decoder.decompress(chunk, max_bytes + 1 - size)
            chunks.append(chunk)
            size += len(chunk)
            if size > max_bytes or (decoder is not None and decoder.unconsumed_tail):
                raise _too_large(max_bytes)
        if decoder is not None:
            chunks.append(decoder.flush())
            if not decoder.eof:
                raise bad_request("The compressed body is incomplete.")
    except zlib.error:
        raise bad_request("The body does not match its Content-Encoding.") from None
    except RequestPayloadError:
        raise bad_request("The body could not be read (broken transfer encoding).") from None
    except ConnectionResetError:
        # The client went away mid-body (a phone losing its signal): a 4xx nobody reads,
        # not a server error in the operator's log.
        raise bad_request("The connection closed before the body arrived.") from None
    return b"".join(chunks)


def _decoder(header: str):
    """A zlib decoder for the request's Content-Encoding, None for an unencoded body."""
    encoding = header.strip().lower()
    if encoding in ("", "identity"):
        return None
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj(zlib.MAX_WBITS)
    raise bad_request(
        f"Content-Encoding {header[:40]!r} is not supported (use gzip, deflate or none)."
    )


def _too_large(max_bytes: int) -> ApiError:
    return ApiError(413, "too_large", f"Body is larger than {max_bytes} bytes.")


MAX_JSON_DEPTH = 32


async def read_json(request: web.Request, max_bytes: int = 16 * 1024) -> dict[str, Any]:
    """Parse a JSON object body: 413 when too large, 400 when not a JSON object, nested
    deeper than ``MAX_JSON_DEPTH``, or carrying a control or format character in any
    string (see ``checkout.text``: every text the API takes is checked here; one-line
    fields also go through ``check_text`` for line breaks)."""
    raw = await read_body(request, max_bytes)
    try:
        data = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError):
        raise bad_request("Body is not valid JSON.") from None
    except RecursionError:  # '[' x 5000: the parser's own stack ran out
        log.info("%s %s: JSON nested too deeply; answered 400", request.method, request.path)
        raise bad_request(f"JSON is nested deeper than {MAX_JSON_DEPTH} levels.") from None
    if not isinstance(data, dict):
        raise bad_request("Body must be a JSON object.")
    check_json_text(data)
    return data


def check_json_text(data: Any) -> None:
    """400 for nesting deeper than MAX_JSON_DEPTH or an unsafe character in any key or
    string value (iterative: a deep document cannot exhaust the stack here)."""
    stack: list[tuple[str, Any, int]] = [("", data, 0)]
    while stack:
        path, value, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise bad_request(f"JSON is nested deeper than {MAX_JSON_DEPTH} levels.")
        if isinstance(value, str):
            check_text(value, path or "body", one_line=False)
        elif isinstance(value, dict):
            for key, item in value.items():
                name = f"{path}.{key}" if path else str(key)
                if text.unsafe_char(key) is not None:
                    raise bad_request("A field name contains a control or formatting character.")
                stack.append((name, item, depth + 1))
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", item, depth + 1) for i, item in enumerate(value))


def check_text(value: str, name: str, one_line: bool = True) -> str:
    """400 when ``value`` carries a control or format character (``checkout.text``);
    ``one_line`` fields (names, emails) refuse tabs and line breaks too."""
    bad = text.unsafe_char(value, allow_whitespace=not one_line)
    if bad is not None:
        raise bad_request(
            f"{name} contains a control or formatting character "
            f"({text.describe(bad)}); remove it and try again."
        )
    return value


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
