"""Restore a list of sources (any fsspec URLs) into an output root, with a manifest and resumable reruns.

Layout under OUT: ``restored_imgs/<relpath>``, optionally ``cropped_faces/`` and ``restored_faces/``
(``<relpath stem>_<face>.png``) and ``cmp/<relpath>.png`` (input | output), and ``manifest.parquet`` with one row
per input file (see ``manifest``). Videos (``dfdcore.io.video.VIDEO_EXTENSIONS``) are restored frame by frame into
``restored_imgs/<relpath stem>.mp4`` by ``dfdcore.restoration.video``, resumable by segments of frames. Before any
work, ``plan_outputs`` leaves out the output's own files (an output inside or equal to an input folder) and gives
inputs that would share an output name distinct names. Each output is written atomically; rows are appended to the
manifest every few images, so a killed run loses at most those rows and a rerun redoes only them. A full or
read-only output ends the run at once, every remaining input a row. A rerun skips an input unread when its listing
(ETag, or size and modification time) and the configuration match its row; else it reads and hashes it, and skips
it when the content is unchanged (recording the new listing, so the next run need not read it either).
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime

from dfdcore.io.hashing import sha256_bytes, stable_json
from dfdcore.io.storage import (
    DEFAULT_MAX_BYTES,
    DEFAULT_READ_TIMEOUT_S,
    Source,
    UnreadableInput,
    is_local,
    join_uri,
    read_input,
    storage_refused,
)
from dfdcore.io.video import is_video_name
from dfdcore.restoration.compaction import compact_quietly, compact_tier, relist_quietly
from dfdcore.restoration.integrity import set_aside_damaged
from dfdcore.restoration.lock import OutputLock, output_lock
from dfdcore.restoration.manifest import (
    PLAN_COLUMNS,
    UNRESTORABLE_BYTES,
    append_rows,
    is_current,
    is_listed_current,
    manifest_parts,
    normalise_row,
    printable,
    read_manifest,
)
from dfdcore.restoration.outputs import OutputStorageError, check_writable, face_records, write_outputs
from dfdcore.restoration.plan import MANIFEST_NAME, OUTPUT_FOLDERS, check_left_out, plan_outputs
from dfdcore.restoration.restorer import Restorer, decode_or_error, model_identity
from dfdcore.restoration.stopping import StopRequest
from dfdcore.restoration.video import video_config_hash, video_manifest_row

__all__ = ["MANIFEST_NAME", "OUTPUT_FOLDERS", "BulkSummary", "OutputStorageError", "RunOptions", "StopRequest",
           "check_writable", "restore_sources"]

COMPACT_TIER_EVERY = 4  # appends between looks at the manifest's parts (a listing each)


@dataclass(frozen=True)
class RunOptions:
    """How a bulk run goes, beside what it makes (``RestoreOptions``) and with what (``ModelSpec``): none of these
    change an output's pixels, so none is in ``config_hash``."""

    batch_size: int = 4              # faces per forward pass, across images
    workers: int = 0                 # Ray actors, each with its own model; 0 = the calling process
    chunk: int = 8                   # images handed to a worker at a time (the unit of retry and of recording)
    force: bool = False              # redo images the manifest records as done with this content and config
    save_faces: bool = False         # also write cropped_faces/ and restored_faces/
    cmp: bool = False                # also write cmp/ (input | output side by side)
    max_pixels: int | None = None    # refuse larger images (width × height); None: memory.default_max_pixels
    max_bytes: int = DEFAULT_MAX_BYTES  # refuse larger photo files, before reading them (videos are streamed)
    segment_seconds: float = 2.0     # video: seconds of frames restored and written together (the unit of resuming)
    gpus_per_worker: float = 0.0     # Ray GPUs each worker asks for (0.5: two share one); the worker's device is Ray's

    def __post_init__(self) -> None:
        for name in ("batch_size", "chunk", "max_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"RunOptions.{name} must be at least 1, got {getattr(self, name)}")
        if not self.segment_seconds > 0:
            raise ValueError(f"RunOptions.segment_seconds must be positive, got {self.segment_seconds}")
        if self.workers < 0:
            raise ValueError(f"RunOptions.workers must be 0 (this process) or more, got {self.workers}")
        if not 0 <= self.gpus_per_worker <= 1 or (self.gpus_per_worker and not self.workers):
            raise ValueError(f"RunOptions.gpus_per_worker (--gpus-per-worker) must lie in [0, 1] and needs Ray "
                             f"workers (the calling process runs on --device), got {self.gpus_per_worker:g} with "
                             f"workers={self.workers}")
        if self.max_pixels is not None and self.max_pixels < 1:
            raise ValueError(f"RunOptions.max_pixels must be at least 1 or None (the memory default), got "
                             f"{self.max_pixels}")

    def pixel_limit(self, upscale: int) -> int:
        """``max_pixels``, or what each worker's share of this machine's memory holds at ``upscale``."""
        from dfdcore.restoration.memory import default_max_pixels

        return self.max_pixels or default_max_pixels(upscale, max(1, self.workers))


@dataclass
class BulkSummary:
    """What a bulk restore did; ``rows`` are its manifest rows (skipped-as-current images keep their old row).
    Summaries of parts of one run (chunks, workers) add up: ``a + b``."""

    images: int = 0            # inputs worked on (the listing less the output's own files)
    restored: int = 0
    no_face: int = 0
    skipped: int = 0           # unchanged since the last run: not redone
    failed_before: int = 0     # of those, files that failed on their own bytes (corrupt, ...): not retried
    read: int = 0              # inputs whose bytes were read (unchanged ones whose listing matches are not)
    not_read: int = 0          # listed but not read (not an image name, a FIFO, ...): rows with the reason
    failed: int = 0
    faces: int = 0
    faces_as_they_were: int = 0  # of those, faces --strength auto (or 0) judged sharp: the photo left as it was
    excluded: int = 0          # files of the output itself found among the inputs, left out
    unrecorded: int = 0        # rows that could not be appended to the manifest (their images are redone)
    manifest_appends: int = 0  # parts appended to the manifest (one per flush, or per chunk with workers)
    manifest_seconds: float = 0.0  # time spent appending them (what recording costs; constant per append)
    seconds: float = 0.0       # wall clock of the whole run (set by whoever ran it: parts run side by side)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (source_uri, reason)
    rows: list[dict] = field(default_factory=list)  # kept by single-process runs; a Ray driver drops them
    relisted: list[tuple[str, str]] = field(default_factory=list)  # (source_uri, new listing): unchanged bytes
    model_id: str | None = None  # the identity of the model that made the outputs (stable JSON)
    storage_error: str | None = None  # why the run stopped early, or why rows could not be recorded
    run_id: str | None = None  # the tracking run (e.g. MLflow) that recorded this restore, when one did
    interrupted: str | None = None  # the signal (or other reason) that stopped the run before its end
    not_started: int = 0       # inputs an interrupted run left for the next (no row: nothing was done to them)
    damaged_parts: list[tuple[str, str]] = field(default_factory=list)  # manifest parts set aside: (part, why)

    @property
    def listed(self) -> int:
        """Every file the listing found, the output's own included."""
        return self.images + self.excluded

    def __add__(self, other: BulkSummary) -> BulkSummary:
        """The summary of both parts: counts add, failures and rows concatenate, the first storage error and
        tracking run are kept, seconds is the longer part's (parts run side by side; the caller sets the total)."""
        merged = {}
        for item in fields(self):
            mine, theirs = getattr(self, item.name), getattr(other, item.name)
            if item.name == "seconds":
                merged[item.name] = max(mine, theirs)
            elif isinstance(mine, (int, float, list)):
                merged[item.name] = mine + theirs
            else:  # optional text: the first one says what happened first
                merged[item.name] = mine if mine is not None else theirs
        return BulkSummary(**merged)

    @classmethod
    def all_failed(cls, sources: Sequence[Source], reason: str) -> BulkSummary:
        """``sources`` that were not restored, each a failed row saying ``reason`` (a dead worker, a full disk)."""
        rows = [{"source_uri": s.uri, "relpath": s.relpath, "status": "failed", "error": reason} for s in sources]
        return cls(images=len(rows), failed=len(rows), rows=rows, failures=[(s.uri, reason) for s in sources])


def restore_sources(sources: Sequence[Source], out: str, restorer: Restorer, run: RunOptions = RunOptions(), *,
                    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S, on_image: Callable[[], None] | None = None,
                    flush_every: int = 8, flush_seconds: float = 5.0,
                    previous: Mapping[str, Mapping] | None = None, record: bool = True,
                    on_segment: Callable[[Source, int, int], None] | None = None,
                    stop: StopRequest | None = None, on_wait: Callable[[str], None] | None = None,
                    lock: OutputLock | None = None) -> BulkSummary:
    """Restore every source not already done with the same content and configuration (unless ``run.force``).

    ``run``: what to write beside the restored images, the input limits (``batch_size``, ``workers`` and ``chunk``
    are the caller's: the ``restorer`` batches, ``tasks.restore`` spreads over workers).
    ``previous``: manifest rows to decide what is current, for ``sources`` already planned by ``prepare_run``
    (default: this call prepares the run itself). With ``record=False`` nothing is appended to the manifest: the
    rows are returned for the caller to record — how parallel workers share one.
    ``on_segment(source, index, count)``: called after each video segment restored (``count`` segments to do).
    ``stop``: once set, no new image is started; those in hand are finished and recorded, the summary says
    ``interrupted``. A whole run (no ``previous``) holds the output's lock (``lock.output_lock``: another
    configuration is refused, the same one waits — ``on_wait`` is told) and sets damaged manifest parts aside.
    """
    if previous is None:  # this call is the whole run; otherwise the caller planned it (prepare_run)
        return _whole_run(sources, out, restorer, run, on_image, on_wait, read_timeout_s=read_timeout_s,
                          flush_every=flush_every, flush_seconds=flush_seconds, record=record,
                          on_segment=on_segment, stop=stop)
    started = time.perf_counter()
    manifest_uri = join_uri(out, MANIFEST_NAME)
    old_rows = previous
    max_pixels = run.pixel_limit(restorer.options.upscale)
    identity = model_identity(restorer.model)
    config_hash = restorer.options.config_hash(identity)
    summary = BulkSummary(images=len(sources), model_id=stable_json(identity))
    pending: list[dict] = []
    last_flush = time.monotonic()
    parts_since_compaction = 0

    def flush(final: bool = False) -> None:
        nonlocal last_flush, parts_since_compaction
        if not record or not pending:
            return
        t0 = time.perf_counter()
        try:
            append_rows(manifest_uri, pending)
        except OSError as exc:  # the rows stay pending: the next flush tries again
            if final:
                summary.unrecorded = len(pending)
                summary.storage_error = summary.storage_error or f"cannot record rows in {manifest_uri}: {exc}"
            return
        pending.clear()
        summary.manifest_appends += 1
        summary.manifest_seconds += time.perf_counter() - t0
        last_flush = time.monotonic()
        if lock is not None:
            lock.heartbeat()
        parts_since_compaction += 1
        if parts_since_compaction >= COMPACT_TIER_EVERY:
            compact_tier(manifest_uri)
            parts_since_compaction = 0

    def row(source: Source, digest: str | None, status: str, error: str | None, **extra) -> dict:
        record_ = {"source_uri": source.uri, "relpath": source.relpath, "content_sha256": digest,
                   "status": status, "error": error, "n_faces": 0, "faces": [], "outputs": [],
                   "model_id": stable_json(identity), "model_version": identity.get("registered"),
                   "random_weights": bool(identity.get("random_weights", False)),
                   "config_hash": config_hash, "listing": source.listing, "updated_at": datetime.now(UTC)}
        record_.update(extra)
        return normalise_row(record_)  # a column or timing the schema lacks fails here, where it was made

    def finish(record_: dict) -> None:
        summary.rows.append(record_)
        pending.append(record_)
        if record_["status"] == "failed":
            summary.failed += 1
            summary.failures.append((record_["source_uri"], record_["error"]))
        summary.not_read += record_["status"] == "skipped"
        if on_image:
            on_image()
        if len(pending) >= flush_every or time.monotonic() - last_flush >= flush_seconds:
            flush()

    def skip_current(row_: Mapping | None, refresh: bool = False, listing: str | None = None) -> None:
        """An input found unchanged, ``row_`` its manifest row. ``refresh``: recorded again with the new ``listing``
        when only the listing changed (a touched or copied file), so that the next run need not read it either."""
        summary.skipped += 1
        summary.failed_before += row_ is not None and row_.get("status") == "failed"
        if refresh and row_ is not None and listing is not None and row_.get("listing") != listing:
            summary.relisted.append((str(row_["source_uri"]), listing))  # recorded at the end (``relist``)
        if on_image:
            on_image()

    videos = [s for s in sources if s.skip is None and is_video_name(s.relpath)]
    photos = [s for s in sources if not (s.skip is None and is_video_name(s.relpath))]

    def decoded():
        for index, source in enumerate(photos):
            if stop:
                summary.interrupted = stop.reason
                summary.not_started += len(photos) - index
                return
            if summary.storage_error:
                finish(row(source, None, "failed", f"not attempted: {summary.storage_error}"))
                continue
            if source.skip:
                finish(row(source, None, "skipped", source.skip))
                continue
            old_row = old_rows.get(source.uri)
            if not run.force and is_listed_current(old_row, source.listing, config_hash):
                skip_current(old_row)  # the listing vouches for the bytes: not read
                continue
            t0 = time.perf_counter()
            summary.read += 1
            try:
                data = read_input(source.uri, run.max_bytes, read_timeout_s)
            except UnreadableInput as exc:
                finish(row(source, None, "skipped" if exc.skipped else "failed", f"{exc.reason}: {exc.detail}"))
                continue
            except Exception as exc:  # noqa: BLE001 - unreadable object: a row, not a crash
                finish(row(source, None, "failed", f"cannot read: {printable(str(exc))}"))
                continue
            digest = sha256_bytes(data)
            if not run.force and is_current(old_row, digest, config_hash):
                skip_current(old_row, refresh=True, listing=source.listing)
                continue
            image = decode_or_error(data, source.relpath, max_pixels)
            if isinstance(image, Exception):
                finish(row(source, digest, "failed", printable(str(image)),
                           retry=image.reason not in UNRESTORABLE_BYTES))
                continue
            yield (source, digest, image, time.perf_counter() - t0), image

    for (source, digest, image, decode_seconds), result in restorer.restore_images(decoded()):
        if isinstance(result, Exception):
            finish(row(source, digest, "failed", printable(f"{type(result).__name__}: {result}")))
            continue
        t0 = time.perf_counter()
        try:
            outputs = write_outputs(out, source, image, result, restorer, identity, run.save_faces, run.cmp)
        except OSError as exc:
            if storage_refused(exc):
                summary.storage_error = f"output storage {out} refused a write: {exc.strerror or exc}"
            finish(row(source, digest, "failed", f"cannot write output: {printable(str(exc))}"))
            continue
        except Exception as exc:  # noqa: BLE001
            finish(row(source, digest, "failed", f"cannot write output: {printable(str(exc))}"))
            continue
        n_faces = len(result.faces)
        summary.faces += n_faces
        summary.faces_as_they_were += sum(strength == 0 for strength in result.strengths)
        summary.restored += bool(n_faces)
        summary.no_face += not n_faces
        seconds = dict(result.seconds, decode=decode_seconds, write=time.perf_counter() - t0)
        seconds["total"] = sum(seconds.values())
        note = "; ".join(filter(None, [f"first of {image.frames} frames restored" if image.frames > 1 else None,
                                       result.note])) or None  # result.note: an aligned crop's landmark source
        finish(row(source, digest, "ok" if n_faces else "no_face", None if n_faces else "no face found",
                   note=note, n_faces=n_faces, faces=face_records(result), outputs=outputs,
                   seconds={k: float(v) for k, v in seconds.items()}))  # a key the schema lacks is refused

    for index, source in enumerate(videos):
        if stop:
            summary.interrupted = stop.reason
            summary.not_started += len(videos) - index
            break
        if summary.storage_error:
            finish(row(source, None, "failed", f"not attempted: {summary.storage_error}"))
            continue
        if not run.force and is_listed_current(old_rows.get(source.uri), source.listing,
                                               video_config_hash(config_hash)):
            skip_current(old_rows.get(source.uri))
            continue
        summary.read += 1
        video_row = video_manifest_row(source, out, restorer, run, config_hash, old_rows, max_pixels, row,
                                       on_segment)
        if video_row is None:  # current by content: not redone
            skip_current(old_rows.get(source.uri), refresh=True, listing=source.listing)
            continue
        if video_row.pop("_storage_error", None):
            summary.storage_error = video_row["error"]
        summary.faces += video_row["faces_total"] or 0
        summary.restored += video_row["status"] == "ok"
        summary.no_face += video_row["status"] == "no_face"
        finish(video_row)

    flush(final=True)
    if record:
        relist_quietly(manifest_uri, summary.relisted)
        summary.damaged_parts += compact_quietly(manifest_uri)
    summary.seconds = time.perf_counter() - started
    return summary


def _whole_run(sources: Sequence[Source], out: str, restorer: Restorer, run: RunOptions,
               on_image: Callable[[], None] | None, on_wait: Callable[[str], None] | None, **options) -> BulkSummary:
    """``restore_sources`` of a whole run: the output's lock held, the run planned, then its images restored."""
    started = time.perf_counter()
    out = absolute_output(out)
    config_hash = restorer.options.config_hash(model_identity(restorer.model))
    with output_lock(out, config_hash, on_wait) as lock:
        planned, excluded, rows, damaged = prepare_run(sources, out, on_image)
        summary = restore_sources(planned, out, restorer, run, previous=rows, on_image=on_image, lock=lock,
                                  **options)
    summary.excluded = len(excluded)
    summary.damaged_parts = damaged + summary.damaged_parts
    summary.seconds = time.perf_counter() - started
    return summary


def absolute_output(out: str) -> str:
    """A local output as an absolute path (the manifest's ``outputs`` then name files as its ``source_uri`` does,
    wherever the reader runs); URLs as they are."""
    return os.path.abspath(out) if is_local(out) and "://" not in out else out


def prepare_run(sources: Sequence[Source], out: str, on_image: Callable[[], None] | None = None
                ) -> tuple[list[Source], list[Source], dict[str, dict], list[tuple[str, str]]]:
    """What every run does before any work: check that ``out`` takes writes, plan the outputs (``plan``), set
    damaged manifest parts aside (``integrity``), read the manifest and refuse when the output's folders hold files
    dfd did not write. Returns (sources to work on, the output's own files left out — counted on ``on_image`` —,
    the manifest's rows: their ``PLAN_COLUMNS`` only, the damaged parts set aside: (part, why))."""
    check_writable(out)
    planned, excluded = plan_outputs(sources, out)
    manifest_uri = join_uri(out, MANIFEST_NAME)
    damaged = set_aside_damaged(manifest_parts(manifest_uri))
    rows = read_manifest(manifest_uri, PLAN_COLUMNS)  # not faces, outputs, timings: bounded per row
    if excluded:
        check_left_out(excluded, out, read_manifest(manifest_uri, ("outputs",)))
    for _ in excluded if on_image else ():
        on_image()
    return planned, excluded, rows, damaged
