"""Receiving one upload for `dfd serve` without letting slow or hostile clients starve the server.

A request body goes to a spool (``tempfile.SpooledTemporaryFile``: memory up to 1 MiB, then a temporary file), never
to a list of chunks in memory: ten clients that each send 30 MB of a declared 100 MB and stall no longer hold 300 MB
of the server's memory. Each body must keep arriving (``idle_timeout`` seconds at most between chunks) and be whole
within ``total_timeout`` seconds (408 otherwise), and the bytes held by all uploads together — received, queued or
being restored — stay under ``max_in_flight`` (503 otherwise). A client that leaves mid-upload costs one log line.

multipart/form-data bodies (an HTML form's file input) are accepted when they hold exactly one file part; the file
is found inside the spool and only its bytes are read later. The page itself sends the file as the raw body.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
import time
from dataclasses import dataclass, field
from email.message import Message
from email.utils import collapse_rfc2231_value

SPOOL_IN_MEMORY = 2**20  # bytes of a body kept in memory before its spool moves to a temporary file
# Only a timed-out upload is answered with Connection: close. Other refusals sent before the body was read whole
# leave the connection open: uvicorn discards the rest of the body as it comes (dfd.serve_guard closes the
# connection if that takes longer than the header timeout), so the client, still sending, reads the reply instead
# of a connection reset.
CLOSE = {"Connection": "close"}

log = logging.getLogger("uvicorn.error")  # uvicorn's own handler: one line on stderr, formatted like its messages


class UploadError(Exception):
    """A request we refuse: its HTTP status, a short stable reason, the detail shown to the user, extra headers."""

    def __init__(self, status: int, reason: str, detail: str, headers: dict[str, str] | None = None):
        super().__init__(f"{reason}: {detail}")
        self.status, self.reason, self.detail, self.headers = status, reason, detail, headers or {}


class ClientGone(Exception):
    """The client closed its connection before its upload was whole: there is nobody left to answer."""


@dataclass(frozen=True)
class BodyLimits:
    """``max_bytes`` per body; ``idle_timeout`` seconds at most between two chunks and ``total_timeout`` seconds for
    the whole body; ``max_in_flight`` bytes held by all uploads together."""

    max_bytes: int
    idle_timeout: float = 30.0
    total_timeout: float = 600.0
    max_in_flight: int = 2**30


class InFlight:
    """Bytes of uploads held now, across requests (all on the event loop's thread: no lock needed)."""

    def __init__(self, cap: int) -> None:
        self.cap, self.held = cap, 0

    def take(self, count: int) -> None:
        if self.held + count > self.cap:
            raise UploadError(503, "busy", f"uploads in progress already hold {self.held} bytes, the limit is "
                                           f"{self.cap} (--max-bytes-in-flight); try again later",
                              {"Retry-After": "10"})
        self.held += count

    def give(self, count: int) -> None:
        self.held -= count


@dataclass
class Upload:
    """One received body: its spool, its size, and where the file lies in it (``start``, ``length``: the whole body,
    or its one multipart file part, whose ``filename`` is then known)."""

    spool: tempfile.SpooledTemporaryFile = field(repr=False)
    size: int = 0
    start: int = 0
    length: int = -1
    filename: str | None = None

    def read(self) -> bytes:
        """The file's bytes (read on the restoration thread: queued uploads keep only their spool)."""
        self.spool.seek(self.start)
        return self.spool.read(self.length)


def declared_length(headers) -> int | None:
    """Content-Length as an int, or None when absent (chunked) or not a number (h11 refuses those anyway)."""
    value = headers.get("content-length")
    return int(value) if value and value.strip().isdigit() else None


def refuse_declared_size(headers, max_bytes: int) -> None:
    """413 before reading anything when the declared Content-Length is over ``max_bytes``."""
    declared = declared_length(headers)
    if declared is not None and declared > max_bytes:
        raise UploadError(413, "file too large", f"{declared} bytes, more than the limit of {max_bytes}")


@contextlib.asynccontextmanager
async def received(receive, limits: BodyLimits, in_flight: InFlight):
    """``async with received(request.receive, ...) as upload``: the body read into a spool under ``limits``; the
    spool is closed and its bytes given back to ``in_flight`` when the block ends.

    Raises UploadError 408 (too slow), 413 (too large), 422 (empty), 503 (``in_flight`` full); ClientGone when the
    client disconnects first.
    """
    upload = Upload(tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY, prefix="dfd-serve-"))
    try:
        await _receive_into(upload, receive, limits, in_flight)
        if not upload.size:
            raise UploadError(422, "empty file", "the upload has no bytes")
        upload.length = upload.size
        yield upload
    finally:
        upload.spool.close()
        in_flight.give(upload.size)


async def _receive_into(upload: Upload, receive, limits: BodyLimits, in_flight: InFlight) -> None:
    started = time.monotonic()
    while True:
        left = limits.total_timeout - (time.monotonic() - started)
        try:
            if left <= 0:
                raise TimeoutError
            message = await asyncio.wait_for(receive(), min(limits.idle_timeout, left))
        except TimeoutError:
            raise UploadError(408, "upload timed out", _too_slow(upload.size, limits, left), CLOSE) from None
        if message["type"] == "http.disconnect":
            raise ClientGone(f"the client disconnected after sending {upload.size} bytes")
        chunk = message.get("body", b"")
        if upload.size + len(chunk) > limits.max_bytes:
            raise UploadError(413, "file too large", f"more than the limit of {limits.max_bytes} bytes")
        in_flight.take(len(chunk))
        upload.size += len(chunk)
        upload.spool.write(chunk)
        if not message.get("more_body", False):
            return


def _too_slow(size: int, limits: BodyLimits, left: float) -> str:
    if left <= 0:
        return f"the body was not whole within {limits.total_timeout:g} s ({size} bytes came)"
    return f"no body bytes came for {limits.idle_timeout:g} s ({size} bytes came before)"


def is_multipart(content_type: str | None) -> bool:
    return (content_type or "").split(";")[0].strip().lower() == "multipart/form-data"


def find_file_part(upload: Upload, content_type: str) -> None:
    """Point ``upload`` at the one file part of its multipart/form-data body; UploadError 400 unless there is
    exactly one (a form's file input left empty — filename "" and no bytes — is not counted)."""
    header = Message()
    header["content-type"] = content_type
    boundary = header.get_param("boundary")
    upload.spool.seek(0)
    data = upload.spool.read()
    parts = _parts(data, str(boundary).encode("latin-1")) if boundary else None
    if parts is None:
        raise UploadError(400, "bad multipart", "the multipart/form-data body does not parse (boundary missing or "
                                                "not closed); send the file as the request body instead")
    files = [(name, start, end) for head, start, end in parts
             if (name := _filename(head)) is not None and (name or end > start)]
    if len(files) != 1:
        raise UploadError(400, "one file expected", f"the multipart/form-data body holds {len(files)} files; send "
                                                    "the file as the request body, or exactly one file part")
    upload.filename, upload.start, end = files[0]
    upload.length = end - upload.start


def _parts(data: bytes, boundary: bytes) -> list[tuple[str, int, int]] | None:
    """(part head, body start, body end) of each part between the boundaries (RFC 7578); None if malformed."""
    delimiter = b"--" + boundary
    position, parts = data.find(delimiter), []
    if position < 0:
        return None
    while True:
        position += len(delimiter)
        if data.startswith(b"--", position):
            return parts
        head_end = data.find(b"\r\n\r\n", position)
        body_end = data.find(b"\r\n" + delimiter, head_end + 4) if head_end >= 0 else -1
        if body_end < 0:
            return None
        parts.append((data[position:head_end].decode("latin-1"), head_end + 4, body_end))
        position = body_end + 2


def _filename(head: str) -> str | None:
    """The part's filename parameter (RFC 2231 forms decoded), or None for a plain form field."""
    for line in head.split("\r\n"):
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-disposition":
            disposition = Message()
            disposition["content-disposition"] = value.strip()
            filename = disposition.get_param("filename", header="content-disposition")
            return None if filename is None else collapse_rfc2231_value(filename)
    return None
