"""Connections and origins for `dfd serve`: no client may hold the server, no other web site may use it.

- **Request heads have a deadline.** uvicorn's h11 protocol waits for a request head forever (its keep-alive timer
  only runs after a response): a hundred connections that send half a head stayed open indefinitely. Our subclass
  gives each connection ``header_timeout`` seconds, from its opening or from the end of its previous response, to
  send a whole head; then it answers 408 (if part of a head came) and closes. A head still incomplete past 16 KiB
  is refused (400; h11 bounds what it buffers, not a head that arrives whole).
- **Connections are capped.** Past ``max_connections`` open connections a request is answered 503 (JSON, like every
  refusal here) at once — uvicorn's ``limit_concurrency`` (open connections and running requests), in JSON rather
  than plain text.
- **Host and Origin are checked.** A browser lets any page send a "simple" POST (Content-Type: text/plain) to
  127.0.0.1, and DNS rebinding lets a page reach it under its own name. So the Host header must name this server
  (localhost, 127.0.0.1, ::1, the bound address, every ``--allowed-host``; ``*`` allows any), and requests to
  ``/api/`` with an ``Origin`` other than the server's own (the Host they were sent to) or with
  ``Sec-Fetch-Site: cross-site`` are refused with 403. Scripts (curl, requests) send no Origin and pass.

Bodies (spool, timeouts, bytes in flight) are dfd.serve_upload's.
"""
from __future__ import annotations

import json
import logging
import socket
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass

MAX_HEAD_BYTES = 16 * 2**10  # h11's default, set explicitly: the request line and headers together
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_ADDRESSES = frozenset({"0.0.0.0", "::", ""})
DEFAULT_PORTS = {"http": 80, "https": 443}

log = logging.getLogger("uvicorn.error")


@dataclass(frozen=True)
class GuardSettings:
    """``header_timeout`` seconds for each request head; ``max_connections`` open at once; ``allowed_hosts``: the
    names the Host header may carry (``*`` among them allows any)."""

    allowed_hosts: frozenset[str] = LOOPBACK_NAMES
    header_timeout: float = 10.0
    max_connections: int = 128


def split_host(value: str, default_port: int | None = None) -> tuple[str, int | None]:
    """"[::1]:8000" → ("::1", 8000); "Example.org" → ("example.org", default_port); ("", None) when unparsable."""
    try:
        parts = urllib.parse.urlsplit("//" + value.strip())
        return (parts.hostname or "").rstrip("."), parts.port or default_port
    except ValueError:
        return "", None


def allowed_hosts(bound: str, extra: Iterable[str] = ()) -> frozenset[str]:
    """The loopback names, the address the server is bound to and each of ``extra`` (names, or ``*``); for a
    wildcard bind (0.0.0.0, ::) this machine's host name and the addresses of its interfaces too."""
    names = set(LOOPBACK_NAMES) | {split_host(bound)[0] or bound.strip("[]").lower()}
    if bound in WILDCARD_ADDRESSES:
        names |= _this_machine()
    names |= {"*" if name.strip() == "*" else split_host(name)[0] for name in extra}
    return frozenset(names - {""})


def _this_machine() -> set[str]:
    import psutil

    names = {socket.gethostname().lower()}
    for addresses in psutil.net_if_addrs().values():
        names |= {a.address.split("%")[0].lower() for a in addresses if a.family in (socket.AF_INET, socket.AF_INET6)}
    return names


def refusal(scope: dict, allowed: frozenset[str]) -> tuple[int, str, str] | None:
    """(status, reason, detail) for a request this server must not answer, or None. ``scope``: the ASGI HTTP scope."""
    headers: dict[str, list[str]] = {}
    for name, value in scope["headers"]:
        headers.setdefault(name.decode("latin-1").lower(), []).append(value.decode("latin-1"))
    hosts = headers.get("host", [])
    if "*" not in allowed:
        if len(hosts) != 1:
            return 403, "host not allowed", f"expected one Host header, got {len(hosts)}"
        name = split_host(hosts[0])[0]
        if name not in allowed:
            return 403, "host not allowed", (f"Host {hosts[0]!r} is not a name of this server (it answers to "
                                             f"{', '.join(sorted(allowed))}); to allow it, start it with "
                                             f"--allowed-host {name or 'NAME'}")
    if not scope["path"].startswith("/api/"):
        return None  # the page itself may be opened from a link on another site; only the API does work
    if "cross-site" in headers.get("sec-fetch-site", []):
        return 403, "cross-site request", "the browser says this request comes from another site (Sec-Fetch-Site)"
    for origin in headers.get("origin", []):
        if not same_origin(origin, hosts[0] if len(hosts) == 1 else "", scope.get("scheme", "http")):
            return 403, "cross-site request", (f"Origin {origin} is not this server's own ({scope.get('scheme')}"
                                               f"://{hosts[0] if hosts else '?'}): only its own page may use the API")
    return None


def same_origin(origin: str, host: str, scheme: str) -> bool:
    """Whether ``origin`` (scheme://host[:port]) is the one the request was sent to: ``scheme`` (the request's)
    and ``host`` (its Host header; the port defaulting by scheme)."""
    try:
        parts = urllib.parse.urlsplit(origin.strip().lower())
        port = parts.port or DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        return False
    sent_to = split_host(host, DEFAULT_PORTS.get(scheme))
    return bool(parts.hostname) and (parts.scheme, parts.hostname.rstrip("."), port) == (scheme, *sent_to)


def json_bytes(reason: str, detail: str) -> bytes:
    return json.dumps({"error": reason, "detail": detail}).encode()


async def send_json(send, status: int, reason: str, detail: str, headers: Iterable[tuple[str, str]] = ()) -> None:
    """One whole JSON reply {"error": reason, "detail": detail} (a body left unread is discarded as it comes)."""
    body = json_bytes(reason, detail)
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
           *((k.lower().encode(), v.encode()) for k, v in headers)]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware: refuses (403) what ``refusal`` refuses before the app sees it; passes the rest on."""

    def __init__(self, app, allowed: frozenset[str]) -> None:
        self.app, self.allowed = app, allowed

    async def __call__(self, scope, receive, send) -> None:
        why = refusal(scope, self.allowed) if scope["type"] == "http" else None
        if why:
            log.info("refused %s %s: %s", scope["method"], scope["path"], why[2])
            await send_json(send, *why)
            return
        await self.app(scope, receive, send)


def raw_reply(status: int, phrase: str, reason: str, detail: str) -> bytes:
    """A whole HTTP/1.1 reply written straight to the socket, for when h11 holds no request to answer."""
    body = json_bytes(reason, detail)
    return (f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n").encode() + body


def guarded_protocol(header_timeout: float, max_connections: int) -> type:
    """uvicorn's h11 protocol class with a deadline on each request head and a JSON 503 past ``max_connections``."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    async def crowded(scope, receive, send) -> None:
        await send_json(send, 503, "busy", f"more than {max_connections} connections are open "
                                           "(--max-connections); try again later",
                        [("Retry-After", "5"), ("Connection", "close")])

    class GuardedH11Protocol(H11Protocol):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.limit_concurrency = None  # counted below instead, answered in JSON
            self.guarded_app, self.head_timer = self.app, None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self.arm()

        def connection_lost(self, exc) -> None:
            self.disarm()
            super().connection_lost(exc)

        def handle_events(self) -> None:
            full = len(self.connections) > max_connections or len(self.tasks) >= max_connections
            self.app = crowded if full else self.guarded_app
            super().handle_events()
            if self.cycle is not None and not self.cycle.response_complete:
                self.disarm()  # a whole head came: the body's timeouts are the app's

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
                self.arm()  # the next head (keep-alive) has the same deadline

        def send_400_response(self, msg: str) -> None:
            self.transport.write(raw_reply(400, "Bad Request", "bad request", f"{msg} (not HTTP/1.1, or a request "
                                                                              f"head over {MAX_HEAD_BYTES} bytes)"))
            self.transport.close()

        def arm(self) -> None:
            self.disarm()
            self.head_timer = self.loop.call_later(header_timeout, self.head_overdue)

        def disarm(self) -> None:
            if self.head_timer is not None:
                self.head_timer.cancel()
                self.head_timer = None

        def head_overdue(self) -> None:
            self.head_timer = None
            if self.transport.is_closing() or (self.cycle is not None and not self.cycle.response_complete):
                return
            if self.conn.their_state is h11.IDLE and self.conn.trailing_data[0]:  # part of a head came
                self.transport.write(raw_reply(408, "Request Timeout", "request head timed out",
                                               f"no whole request head within {header_timeout:g} s"))
            self.transport.close()

    return GuardedH11Protocol


def server_config(app, host: str, port: int, settings: GuardSettings, log_level: str = "warning"):
    """The uvicorn.Config serving ``app`` behind Guard with the guarded h11 protocol (no websockets)."""
    import uvicorn

    return uvicorn.Config(Guard(app, settings.allowed_hosts), host=host, port=port, log_level=log_level,
                          http=guarded_protocol(settings.header_timeout, settings.max_connections), ws="none",
                          h11_max_incomplete_event_size=MAX_HEAD_BYTES, timeout_keep_alive=5)
