"""`dfd serve`: a web page to drop photographs on and see them restored, before/after, with their faces.

FastAPI and a small hand-written page rather than Gradio: FastAPI and uvicorn already come with Prefect (no new
dependency, where Gradio would add a large front-end bundle and its own queue), and a page of our own keeps every
reply under our control — limits and bad files answer HTTP 4xx with a reason, never a traceback. Uploads are the
request body itself (``fetch(url, {body: file})``), so no multipart parser is needed either.

One process holds its models, built once at start, and restores one photograph at a time (``RestoreQueue``): a
second upload waits its turn instead of doubling the memory, and the page shows it as queued. The restoration is
``dfdcore``'s ``Restorer``, as in ``dfd restore``; the limits are ``dfd restore``'s (``--max-bytes``, and
``--max-pixels`` defaulting to what half of this machine's memory holds at the requested upscale).
"""
# No `from __future__ import annotations` here: FastAPI reads the route functions' annotations at run time, and
# they name fastapi classes imported inside create_app (fastapi is imported only when serving).
import asyncio
import base64
import collections
import contextlib
import importlib.util
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources

import click

from dfd.options import build_model, model_options, model_spec, resolve_model, use_all_cores

TICKET_HEADER = "X-Dfd-Ticket"


class UploadError(Exception):
    """A request we refuse: its HTTP status, a short stable reason and the detail shown to the user."""

    def __init__(self, status: int, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.status, self.reason, self.detail = status, reason, detail


@dataclass(frozen=True)
class Limits:
    """What one upload may be: ``max_bytes`` of file; ``max_pixels`` (width × height) or None for what half of the
    machine's memory holds at the requested upscale; ``max_waiting`` uploads queued behind the running one."""

    max_bytes: int
    max_pixels: int | None = None
    max_waiting: int = 8

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

    def state(self, ticket: str) -> dict:
        """{"state": queued | running | unknown, "ahead": uploads before it, "waiting": all queued ones}."""
        with self._lock:
            order = list(self._tickets)
            waiting = sum(state == "queued" for state in self._tickets.values())
            if ticket not in self._tickets:
                return {"state": "unknown", "ahead": 0, "waiting": waiting}
            return {"state": self._tickets[ticket], "ahead": order.index(ticket), "waiting": waiting}

    async def run(self, ticket: str, job):
        """Await ``job()`` run on the worker thread after every job submitted before it; UploadError (503) when
        ``max_waiting`` jobs are already waiting."""
        with self._lock:
            if sum(state == "queued" for state in self._tickets.values()) >= self.max_waiting:
                raise UploadError(503, "busy", f"{self.max_waiting} uploads are already waiting; try again later")
            ticket = ticket if ticket and ticket not in self._tickets else f"anonymous-{id(job)}-{time.time_ns()}"
            self._tickets[ticket] = "queued"

        def started():
            with self._lock:
                self._tickets[ticket] = "running"
            return job()

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


def restore_upload(models: dict, data: bytes, name: str, choice: Choice, limits: Limits, batch_size: int,
                   device: str) -> dict:
    """Decode, restore and encode one uploaded photograph; runs on the queue's thread, one at a time.

    Returns the reply: the restored PNG (base64, (H·s, W·s)), the faces found (boxes in input pixels), sizes, the
    model's label and timings. Raises UploadError (4xx) for files that are not usable photographs or have no face.
    """
    from dfdcore.io.images import ImageDecodeError, decode_image, encode_image
    from dfdcore.restoration.restorer import RestoreOptions, Restorer, model_identity, model_label

    started, clock = time.time(), time.perf_counter()
    try:
        image = decode_image(data, name=name, max_pixels=limits.pixels_at(choice.upscale))
    except ImageDecodeError as exc:
        raise UploadError(413 if exc.reason == "image too large" else 422, exc.reason, exc.detail) from exc
    decoded = time.perf_counter()
    model = models[choice.model]
    if hasattr(model, "fidelity"):
        model.fidelity = choice.fidelity  # safe: the queue runs one restoration at a time
    restorer = Restorer(model, RestoreOptions(upscale=choice.upscale, only_largest=choice.only_largest),
                        batch_size=batch_size, device=device)
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
        "input": {"width": image.size[0], "height": image.size[1]}, "width": width, "height": height,
        "faces": [{"box": [int(v) for v in face.detection.box], "score": round(float(face.detection.score), 3)}
                  for face in result.faces],
        "seconds": {"decode": decoded - clock, **result.seconds, "encode": time.perf_counter() - encode_started},
        "started": started, "finished": time.time(),
        "image": base64.b64encode(png).decode("ascii"),
    }


async def read_body(request, max_bytes: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``max_bytes`` (never read whole)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise UploadError(413, "file too large", f"{int(declared)} bytes, more than the limit of {max_bytes}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise UploadError(413, "file too large", f"more than the limit of {max_bytes} bytes")
        chunks.append(chunk)
    if not size:
        raise UploadError(422, "empty file", "the upload has no bytes")
    return b"".join(chunks)


def create_app(models: dict, limits: Limits, *, batch_size: int = 4, device: str = "cpu", fidelity: float = 1.0):
    """The FastAPI app: ``GET /`` the page, ``GET /api/config`` models and limits, ``POST /api/restore`` (body: the
    file; query: model, upscale, fidelity, only_largest; header X-Dfd-Ticket: the page's name for it) and
    ``GET /api/queue?ticket=`` where an upload stands. ``models``: name → face model, built once by the caller."""
    from fastapi import FastAPI, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse

    from dfdcore.restoration.restorer import model_identity, model_label

    queue = RestoreQueue(limits.max_waiting)

    @contextlib.asynccontextmanager
    async def lifespan(_):
        yield
        queue.close()

    app = FastAPI(title="dfd serve", docs_url=None, redoc_url=None, lifespan=lifespan)
    page = resources.files("dfd").joinpath("serve_page.html").read_text(encoding="utf-8")

    def error(status: int, reason: str, detail: str) -> JSONResponse:
        return JSONResponse({"error": reason, "detail": detail}, status_code=status)

    @app.exception_handler(UploadError)
    async def refused(_, exc: UploadError):
        return error(exc.status, exc.reason, exc.detail)

    @app.exception_handler(RequestValidationError)
    async def bad_option(_, exc: RequestValidationError):
        detail = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in exc.errors())
        return error(422, "bad option", detail)

    @app.exception_handler(Exception)
    async def failed(_, exc: Exception):  # a message, never a traceback, even for our own bugs
        return error(500, "server error", f"{type(exc).__name__}: {exc}")

    @app.get("/", response_class=HTMLResponse)
    async def index():
        return page

    @app.get("/api/config")
    async def config():
        return {"models": {name: model_label(model_identity(model)) for name, model in models.items()},
                "fidelity": fidelity, "max_bytes": limits.max_bytes, "max_pixels": limits.max_pixels,
                "max_waiting": limits.max_waiting}

    @app.get("/api/queue")
    async def where(ticket: str = ""):
        return queue.state(ticket)

    @app.post("/api/restore")
    async def restore(http: Request, model: str = Query(next(iter(models))), upscale: int = Query(2, ge=1, le=8),
                      fidelity: float = Query(fidelity, ge=0, le=1), only_largest: bool = False, name: str = "upload"):
        if model not in models:
            raise UploadError(422, "bad option", f"model must be one of {sorted(models)}, got {model!r}")
        data = await read_body(http, limits.max_bytes)
        choice = Choice(model, upscale, fidelity, only_largest)
        return await queue.run(http.headers.get(TICKET_HEADER, ""),
                               lambda: restore_upload(models, data, name, choice, limits, batch_size, device))

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
              help="Uploads that may wait behind the one being restored; more are refused (HTTP 503).")
@model_options
def serve(host, port, batch_size, max_bytes, max_pixels, max_waiting, **options) -> None:
    """A web page to restore photographs: upload, choose the options, compare before/after, see the faces.

    The models are built once at start: --weights/--dictionary (or --random-weights; without model options the
    bundled dfd-pd-128) and the identity model. One photograph is restored at a time; other uploads wait in a
    queue the page shows. Open http://HOST:PORT/.
    """
    from dfdcore.restoration.restorer import resolve_device

    missing = [name for name in ("fastapi", "uvicorn") if importlib.util.find_spec(name) is None]
    if missing:
        raise click.ClickException(f"`dfd serve` needs {' and '.join(missing)}: pip install 'dfd[serve]'")
    import uvicorn

    use_all_cores()
    spec = resolve_model(model_spec(options), "dfd serve")
    models = load_models(spec)
    app = create_app(models, Limits(max_bytes, max_pixels, max_waiting), batch_size=batch_size,
                     device=resolve_device(spec.device), fidelity=spec.fidelity)
    click.echo(f"dfd serve: models {', '.join(models)} on http://{host}:{port}/", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")


if __name__ == "__main__":  # pragma: no cover - `python -m dfd.serve`, as the tests start it
    serve()
