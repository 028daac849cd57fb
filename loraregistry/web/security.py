"""The server's guard, one ASGI middleware in front of everything:

* a token, when the server has one (always when it binds beyond loopback): ``Authorization:
  Bearer TOKEN``, or the cookie a browser gets by opening any page once with ``?token=TOKEN``
  (HttpOnly, SameSite=Strict, so other sites cannot ride on it);
* without a token, only loopback ``Host`` names (a web page elsewhere cannot reach the server
  through DNS rebinding);
* bounded request bodies and query strings (413 / 414);
* headers that keep the browser strict: a Content-Security-Policy with no inline script, no
  sniffing, no framing.
"""
from __future__ import annotations

import hmac
import ipaddress
import json
from dataclasses import dataclass
from http.cookies import SimpleCookie
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qsl, urlencode

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

TOKEN_ENV = "LORAREGISTRY_TOKEN"
COOKIE = "loraregistry_token"
LOOPBACK_NAMES = ("localhost",)
CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; object-src 'none'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
# Swagger UI starts itself with an inline script: allowed on the API docs page only.
DOCS_CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
            "script-src 'self' 'unsafe-inline'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_name(header: str) -> str:
    """The name in a Host header, without the port (``[::1]:8765`` -> ``::1``)."""
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 64 * 1024
    max_query_bytes: int = 4 * 1024


class _TooLarge(Exception):
    pass


class Guard:
    """ASGI middleware; ``token`` None means open to loopback clients only."""

    def __init__(self, app: Callable[..., Awaitable[None]], token: str | None, limits: Limits = Limits(),
                 docs_path: str = "/api/docs") -> None:
        self.app = app
        self.token = token.encode() if token else None
        self.limits = limits
        self.docs_path = docs_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if len(scope.get("query_string", b"")) > self.limits.max_query_bytes:
            await _plain(send, 414, "query string too long")
            return
        if self.token is None:
            if not is_loopback(_host_name(headers.get("host", ""))):
                await _plain(send, 400, "this server answers loopback host names only (start it with --token to serve others)")
                return
        else:
            denied = await self._check_token(scope, headers, send)
            if denied:
                return
        length = headers.get("content-length")
        if length is not None and (not (length.isascii() and length.isdigit()) or int(length) > self.limits.max_body_bytes):
            await _plain(send, 413, f"request body over {self.limits.max_body_bytes} bytes")
            return

        csp = DOCS_CSP if scope["path"] == self.docs_path else CSP
        started = False

        async def guarded_send(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [
                    (b"content-security-policy", csp.encode()), (b"x-content-type-options", b"nosniff"),
                    (b"x-frame-options", b"DENY"), (b"referrer-policy", b"no-referrer"),
                ]
            await send(message)

        received = 0

        async def counted_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limits.max_body_bytes:  # a chunked body that never said its length
                    raise _TooLarge
            return message

        try:
            await self.app(scope, counted_receive, guarded_send)
        except _TooLarge:
            if not started:
                await _plain(send, 413, f"request body over {self.limits.max_body_bytes} bytes")

    async def _check_token(self, scope: Scope, headers: dict[str, str], send: Send) -> bool:
        """True when the request was answered here (refused, or redirected to drop ``?token=``)."""
        given = None
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            given = auth[7:].strip()
        if given is None and "cookie" in headers:
            morsel = SimpleCookie(headers["cookie"]).get(COOKIE)
            given = morsel.value if morsel else None
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        from_query = next((v for k, v in query if k == "token"), None)
        if from_query is not None and self._ok(from_query) and scope["method"] in ("GET", "HEAD"):
            # Remember it in a cookie and drop it from the address bar (and from history and logs).
            rest = urlencode([(k, v) for k, v in query if k != "token"])
            location = scope.get("root_path", "") + scope["path"] + (f"?{rest}" if rest else "")
            cookie = f"{COOKIE}={from_query}; Path=/; HttpOnly; SameSite=Strict"
            await send({"type": "http.response.start", "status": 303,
                        "headers": [(b"location", location.encode("latin-1")), (b"set-cookie", cookie.encode("latin-1")),
                                    (b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return True
        if given is None and from_query is not None:
            given = from_query
        if given is not None and self._ok(given):
            return False
        await _plain(send, 401, "a token is required: send 'Authorization: Bearer TOKEN', or open the page once with ?token=TOKEN",
                     [(b"www-authenticate", b'Bearer realm="loraregistry"')])
        return True

    def _ok(self, given: str) -> bool:
        assert self.token is not None
        return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), self.token)


async def _plain(send: Send, status: int, detail: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    """A JSON error body in FastAPI's shape ({"detail": ...})."""
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"x-content-type-options", b"nosniff"), *(extra or [])]})
    await send({"type": "http.response.body", "body": body})
