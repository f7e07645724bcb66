"""`dfd serve`: a web page to drop photographs on and see them restored, before/after, with their faces.

FastAPI and a small hand-written page rather than Gradio: FastAPI and uvicorn already come with Prefect (no new
dependency, where Gradio would add a large front-end bundle and its own queue), and a page of our own keeps every
reply under our control — limits and bad files answer HTTP 4xx with a reason, never a traceback. Uploads are the
request body itself (``fetch(url, {body: file})``), so no multipart parser is needed either.

One process holds its models, built once at start, and restores one photograph at a time (``RestoreQueue``): a
second upload waits its turn instead of doubling the memory, and the page shows it as queued. The restoration is
``dfdcore``'s ``Restorer``, as in ``dfd restore``; the limits are ``dfd restore``'s (``--max-bytes``, and
``--max-pixels`` defaulting to what half of this machine's memory holds at the requested upscale).

No client can starve it and no other web site can use it: bodies are spooled (memory up to 1 MiB, then a temporary
file) under idle and total timeouts and a cap on bytes in flight (dfd.serve_upload); request heads have a deadline,
connections a cap, and the Host, Origin and Sec-Fetch-Site headers are checked (dfd.serve_guard).
"""
# No `from __future__ import annotations` here: FastAPI reads the route functions' annotations at run time, and
# they name fastapi classes imported inside create_app (fastapi is imported only when serving).
import asyncio
import base64
import collections
import contextlib
import importlib.util
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources

import click

from dfd.options import build_model, model_options, model_spec, resolve_model, use_all_cores
from dfd.serve_guard import GuardSettings, allowed_hosts, server_config
from dfd.serve_upload import (BodyLimits, ClientGone, InFlight, Upload, UploadError, find_file_part,
                              is_multipart, log, received, refuse_declared_size)

TICKET_HEADER = "X-Dfd-Ticket"


@dataclass(frozen=True)
class Limits:
    """What one upload may be: ``max_bytes`` of file; ``max_pixels`` (width × height) or None for what half of the
    machine's memory holds at the requested upscale; ``max_waiting`` uploads queued behind the running one; its
    body whole within ``body_timeout`` s, with at most ``idle_timeout`` s between chunks; ``max_bytes_in_flight``
    bytes held by all uploads together (None: twice ``max_bytes``)."""

    max_bytes: int
    max_pixels: int | None = None
    max_waiting: int = 8
    idle_timeout: float = 30.0
    body_timeout: float = 600.0
    max_bytes_in_flight: int | None = None

    def body(self) -> BodyLimits:
        in_flight = self.max_bytes_in_flight if self.max_bytes_in_flight is not None else 2 * self.max_bytes
        return BodyLimits(self.max_bytes, self.idle_timeout, self.body_timeout, in_flight)

    def pixels_at(self, upscale: int) -> int:
        from dfdcore.restoration.memory import default_max_pixels

        return self.max_pixels if self.max_pixels is not None else default_max_pixels(upscale)


class RestoreQueue:
    """Runs jobs one at a time, first come first served, on one worker thread; knows who is waiting.

    Tickets are the page's own names for its uploads (any string), so it can ask where it stands while its upload
    request is still open.
    """

    def __init__(self, max_waiting: int) -> None:
        self.max_waiting = max_waiting
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dfd-serve")
        self._lock = threading.Lock()
        self._tickets: collections.OrderedDict[str, str] = collections.OrderedDict()  # ticket → queued | running
        self._seconds = 5.0  # a running mean of the jobs' durations, for Retry-After

    def state(self, ticket: str) -> dict:
        """{"state": queued | running | unknown, "ahead": uploads before it, "waiting": all queued ones}."""
        with self._lock:
            order = list(self._tickets)
            waiting = sum(state == "queued" for state in self._tickets.values())
            if ticket not in self._tickets:
                return {"state": "unknown", "ahead": 0, "waiting": waiting}
            return {"state": self._tickets[ticket], "ahead": order.index(ticket), "waiting": waiting}

    def check_room(self) -> None:
        """UploadError 429 (with Retry-After: the seconds the waiting jobs should take) when ``max_waiting`` jobs
        are already waiting; called before an upload's body is read, and again when it is whole."""
        with self._lock:
            waiting = sum(state == "queued" for state in self._tickets.values())
            if waiting >= self.max_waiting:
                retry = min(3600, math.ceil(self._seconds * (waiting + 1)))
                raise UploadError(429, "busy", f"{waiting} uploads are already waiting (--max-waiting); try again "
                                               f"in about {retry} s", {"Retry-After": str(retry)})

    async def run(self, ticket: str, job):
        """Await ``job()`` run on the worker thread after every job submitted before it; UploadError (429) when
        ``max_waiting`` jobs are already waiting."""
        self.check_room()  # no await between this check and the insertion below: no other upload slips in
        with self._lock:
            ticket = ticket if ticket and ticket not in self._tickets else f"anonymous-{id(job)}-{time.time_ns()}"
            self._tickets[ticket] = "queued"

        def started():
            with self._lock:
                self._tickets[ticket] = "running"
            clock = time.perf_counter()
            try:
                return job()
            finally:
                self._seconds = 0.7 * self._seconds + 0.3 * (time.perf_counter() - clock)

        try:
            return await asyncio.wrap_future(self._worker.submit(started))
        finally:
            with self._lock:
                self._tickets.pop(ticket, None)

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)


@dataclass(frozen=True)
class Choice:
    """One upload's choices (the page's controls)."""

    model: str
    upscale: int
    fidelity: float
    only_largest: bool
    strength: float | str = "auto"  # RestoreOptions.strength


def restore_upload(models: dict, upload: Upload, name: str, choice: Choice, limits: Limits, batch_size: int,
                   device: str) -> dict:
    """Read (from its spool), decode, restore and encode one uploaded photograph; runs on the queue's thread, one
    at a time, so only the running upload's bytes are in memory.

    Returns the reply: the restored PNG (base64, (H·s, W·s)), the faces found (boxes in input pixels), sizes, the
    model's label and timings. Raises UploadError (4xx) for files that are not usable photographs or have no face.
    """
    from dfdcore.io.images import ImageDecodeError, decode_image, encode_image
    from dfdcore.restoration.restorer import RestoreOptions, Restorer, model_identity, model_label

    started, clock = time.time(), time.perf_counter()
    try:
        image = decode_image(upload.read(), name=name, max_pixels=limits.pixels_at(choice.upscale))
    except ImageDecodeError as exc:
        raise UploadError(413 if exc.reason == "image too large" else 422, exc.reason, exc.detail) from exc
    decoded = time.perf_counter()
    model = models[choice.model]
    if hasattr(model, "fidelity"):
        model.fidelity = choice.fidelity  # safe: the queue runs one restoration at a time
    options = RestoreOptions(upscale=choice.upscale, only_largest=choice.only_largest, strength=choice.strength)
    restorer = Restorer(model, options, batch_size=batch_size, device=device)
    (_, result), = restorer.restore_images([(name, image)])
    if isinstance(result, Exception):
        raise UploadError(500, "restoration failed", f"{type(result).__name__}: {result}")
    if not result.faces:
        raise UploadError(422, "no face", "no face was found in this photograph (dlib HOG detector, faces from "
                                          "about 40 px)")
    label = model_label(model_identity(model))
    encode_started = time.perf_counter()
    png = encode_image(result.restored, alpha=result.alpha, grey=image.grey, bit_depth=image.bit_depth, ext="png",
                       text={"dfd:model": label})
    height, width = result.restored.shape[:2]
    return {
        "name": name, "model": choice.model, "label": label, "upscale": choice.upscale,
        "fidelity": choice.fidelity if hasattr(model, "fidelity") else None, "only_largest": choice.only_largest,
        "strength": choice.strength,
        "input": {"width": image.size[0], "height": image.size[1]}, "width": width, "height": height,
        "faces": [{"box": [int(v) for v in face.detection.box], "score": round(float(face.detection.score), 3),
                   "strength": round(float(strength), 3)} for face, strength in zip(result.faces, result.strengths)],
        "seconds": {"decode": decoded - clock, **result.seconds, "encode": time.perf_counter() - encode_started},
        "started": started, "finished": time.time(),
        "image": base64.b64encode(png).decode("ascii"),
    }


def create_app(models: dict, limits: Limits, *, batch_size: int = 4, device: str = "cpu", fidelity: float = 1.0):
    """The FastAPI app: ``GET /`` the page, ``GET /api/config`` models and limits, ``POST /api/restore`` (body: the
    file; query: model, upscale, fidelity, only_largest, strength; header X-Dfd-Ticket: the page's name for it) and
    ``GET /api/queue?ticket=`` where an upload stands; GET routes answer HEAD too; no /docs, /redoc or
    /openapi.json. ``models``: name → face model, built once by the caller. ``app.state``: its queue and in_flight.
    The Host/Origin checks and the connection limits are not here but around it (dfd.serve_guard.server_config)."""
    from fastapi import FastAPI, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse

    from dfdcore.restoration.restorer import model_identity, model_label

    body_limits = limits.body()
    queue, in_flight = RestoreQueue(limits.max_waiting), InFlight(body_limits.max_in_flight)

    @contextlib.asynccontextmanager
    async def lifespan(_):
        yield
        queue.close()

    app = FastAPI(title="dfd serve", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.queue, app.state.in_flight = queue, in_flight
    page = resources.files("dfd").joinpath("serve_page.html").read_text(encoding="utf-8")

    def error(status: int, reason: str, detail: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": reason, "detail": detail}, status_code=status, headers=headers)

    @app.exception_handler(UploadError)
    async def refused(_, exc: UploadError):
        return error(exc.status, exc.reason, exc.detail, exc.headers)

    @app.exception_handler(ClientGone)
    async def gone(http: Request, exc: ClientGone):  # handled here, not by `failed`: one line, no traceback
        log.warning("%s %s from %s: %s", http.method, http.url.path, http.client.host if http.client else "?", exc)
        return error(400, "client gone", str(exc))  # nobody reads it: uvicorn drops replies to closed connections

    @app.exception_handler(RequestValidationError)
    async def bad_option(_, exc: RequestValidationError):
        detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in exc.errors())
        return error(422, "bad option", detail)

    @app.exception_handler(Exception)
    async def failed(_, exc: Exception):  # a message, never a traceback, even for our own bugs
        return error(500, "server error", f"{type(exc).__name__}: {exc}")

    @app.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse)
    async def index():
        return page

    @app.api_route("/api/config", methods=["GET", "HEAD"])
    async def config():
        return {"models": {name: model_label(model_identity(model)) for name, model in models.items()},
                "fidelity": fidelity, "max_bytes": limits.max_bytes, "max_pixels": limits.max_pixels,
                "max_waiting": limits.max_waiting, "max_bytes_in_flight": body_limits.max_in_flight,
                "idle_timeout": body_limits.idle_timeout, "body_timeout": body_limits.total_timeout}

    @app.api_route("/api/queue", methods=["GET", "HEAD"])
    async def where(ticket: str = ""):
        return queue.state(ticket)

    @app.post("/api/restore")
    async def restore(http: Request, model: str = Query(next(iter(models))), upscale: int = Query(2, ge=1, le=8),
                      fidelity: float = Query(fidelity, ge=0, le=1), only_largest: bool = False,
                      strength: str = "auto", name: str | None = None):
        from dfdcore.face.strength import check_strength

        if model not in models:
            raise UploadError(422, "bad option", f"model must be one of {sorted(models)}, got {model!r}")
        try:
            strength = check_strength(strength)
        except ValueError as exc:
            raise UploadError(422, "bad option", str(exc)) from exc
        refuse_declared_size(http.headers, limits.max_bytes)
        queue.check_room()  # before reading the body: a full queue costs the client nothing but this reply
        choice = Choice(model, upscale, fidelity, only_largest, strength)
        async with received(http.receive, body_limits, in_flight) as upload:
            if is_multipart(http.headers.get("content-type")):
                await asyncio.to_thread(find_file_part, upload, http.headers["content-type"])
            label = name or upload.filename or "upload"
            return await queue.run(http.headers.get(TICKET_HEADER, ""),
                                   lambda: restore_upload(models, upload, label, choice, limits, batch_size, device))

    return app


def load_models(spec) -> dict:
    """Every model the page offers, each built once: the given weights ("dfdnet"), the random network ("random") or
    the bundled model (by its name, e.g. "dfd-pd-128": naming no model means it), and always "identity" (faces
    pasted back unchanged: checks detection and paste-back alone). dlib's detector and landmark models are loaded
    here too: lazily, they made the first upload 4 s slower than the next ones."""
    from dfdcore.face.models import frontal_detector, shape_predictor
    from dfdcore.restoration.restorer import IdentityModel

    frontal_detector(), shape_predictor(5), shape_predictor(68)

    spec = spec.resolved()
    models = {}
    if spec.name == "dfdnet":
        models["random" if spec.random_weights else spec.bundled or "dfdnet"] = build_model(spec)
    models["identity"] = IdentityModel(spec.face_size if spec.random_weights else 512)
    return models


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0 for every interface: anyone who reaches it can upload).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--batch-size", default=4, show_default=True, type=click.IntRange(1),
              help="Faces per forward pass.")
@click.option("--max-bytes", default=512 * 2**20, show_default=True, type=click.IntRange(1),
              help="Refuse larger uploads (HTTP 413).")
@click.option("--max-pixels", type=click.IntRange(1), default=None,
              help="Refuse larger images (width × height, HTTP 413). Default: what half of this machine's memory "
                   "holds at the requested upscale (about 45 + 48·upscale² bytes per pixel).")
@click.option("--max-waiting", default=8, show_default=True, type=click.IntRange(1),
              help="Uploads that may wait behind the one being restored; more are refused before their body is "
                   "read (HTTP 429 with Retry-After).")
@click.option("--max-bytes-in-flight", type=click.IntRange(1), default=None,
              help="Bytes that all uploads together may hold (spooled to temporary files past 1 MiB each, until "
                   "restored); more are refused (HTTP 503). Default: twice --max-bytes.")
@click.option("--body-idle-timeout", default=30.0, show_default=True, type=click.FloatRange(0, min_open=True),
              help="Seconds an upload may send nothing before it is refused (HTTP 408, connection closed).")
@click.option("--body-timeout", default=600.0, show_default=True, type=click.FloatRange(0, min_open=True),
              help="Seconds for a whole upload body (HTTP 408 past it).")
@click.option("--header-timeout", default=10.0, show_default=True, type=click.FloatRange(0, min_open=True),
              help="Seconds for a connection to send a whole request head, from its opening or its previous "
                   "reply; then it is closed (HTTP 408 if part of a head came). Heads over 16 KiB: HTTP 400.")
@click.option("--max-connections", default=128, show_default=True, type=click.IntRange(1),
              help="Open connections served at once; a request past them is refused (HTTP 503).")
@click.option("--allowed-host", "allowed", multiple=True, metavar="NAME",
              help="Also answer requests whose Host header is NAME (repeatable; '*' for any). By default only "
                   "localhost, 127.0.0.1, ::1 and --host (with --host 0.0.0.0: this machine's name and addresses); "
                   "others get HTTP 403, which blocks DNS rebinding.")
@model_options
def serve(host, port, batch_size, max_bytes, max_pixels, max_waiting, max_bytes_in_flight, body_idle_timeout,
          body_timeout, header_timeout, max_connections, allowed, **options) -> None:
    """A web page to restore photographs: upload, choose the options, compare before/after, see the faces.

    The models are built once at start: --weights/--dictionary (or --random-weights; without model options the
    bundled dfd-pd-128) and the identity model. One photograph is restored at a time; other uploads wait in a
    queue the page shows. Open http://HOST:PORT/.

    No client can hold the server: uploads are spooled (memory up to 1 MiB, then a temporary file) under
    --body-idle-timeout, --body-timeout and --max-bytes-in-flight; request heads under --header-timeout;
    connections under --max-connections. No other web site can use it: the API refuses (HTTP 403) requests whose
    Host is not allowed (--allowed-host), whose Origin is not the server's own, or marked Sec-Fetch-Site:
    cross-site. Refusals are JSON {"error", "detail"}.
    """
    from dfdcore.restoration.restorer import resolve_device

    missing = [name for name in ("fastapi", "uvicorn") if importlib.util.find_spec(name) is None]
    if missing:
        raise click.ClickException(f"`dfd serve` needs {' and '.join(missing)}: pip install 'dfd[serve]'")
    import uvicorn

    limits = Limits(max_bytes, max_pixels, max_waiting, body_idle_timeout, body_timeout, max_bytes_in_flight)
    if limits.body().max_in_flight < max_bytes:
        raise click.BadParameter(f"{max_bytes_in_flight} is under --max-bytes ({max_bytes}): no upload of the "
                                 "largest size could be received", param_hint="--max-bytes-in-flight")
    guard = GuardSettings(allowed_hosts(host, allowed), header_timeout, max_connections)
    use_all_cores()
    spec = resolve_model(model_spec(options), "dfd serve")
    models = load_models(spec)
    app = create_app(models, limits, batch_size=batch_size, device=resolve_device(spec.device),
                     fidelity=spec.fidelity)
    click.echo(f"dfd serve: models {', '.join(models)} on http://{host}:{port}/ (answering to Host "
               f"{', '.join(sorted(guard.allowed_hosts))})", err=True)
    uvicorn.Server(server_config(app, host, port, guard)).run()


if __name__ == "__main__":  # pragma: no cover - `python -m dfd.serve`, as the tests start it
    serve()
