"""Restore the faces of a video: detect on every frame, track, smooth the landmarks, restore in batches across
frames, paste back, encode — resumable by segments of frames.

Work happens in ``OUT/.dfd-video/<content>-<config>-<N>f/`` (hidden: listings skip it), keyed by the video's
content, the configuration and the segment length, so a changed input or option never reuses old work:

1. ``det-K.json``: the detections (box, score, 5 points) of the frames of segment K, written when the segment's
   frames are all detected. A rerun reads them instead of detecting again.
2. Tracking and smoothing (``dfdcore.face.track``) over all frames' detections — the same on every run, so
   segments restored by different runs join without a jump.
3. ``seg-K.mp4``: segment K restored (H.264), written atomically, its frames stamped with their source
   timestamps less the segment's first; a rerun restores only the missing segments.
4. ``restored_imgs/<stem>.mp4``: the segments joined without re-encoding, each moved to its first frame's source
   time, with the source's audio, written atomically; then the work folder is removed.

Every run decodes every frame in step 1 and takes each frame's presentation time from there (``frame_ticks``): a
variable frame rate, or a pause of an hour between two frames, comes out as it went in. A video that fails leaves
no work folder; one whose run was interrupted keeps it for the rerun (``video_work``).

Memory holds the detections (a few numbers per face and frame), the frames' timestamps and one batch of frames,
never the whole video.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path, PurePosixPath
from types import SimpleNamespace

import cv2
import numpy as np
import torch

from dfdcore.components import part_boxes
from dfdcore.face.align import align_face
from dfdcore.face.detect import DetectedFace, detect_faces, landmarks
from dfdcore.face.pipeline import AlignedFace
from dfdcore.face.track import TRACK_SETTINGS, Observation, TrackedFace, face_motion, link_tracks, smooth_tracks
from dfdcore.io.hashing import sha256_json, sha256_path
from dfdcore.io.images import DecodedImage
from dfdcore.io.pixels import uint8_to_unit, unit_to_uint8
from dfdcore.io.storage import (
    Source,
    UnreadableInput,
    exists,
    join_uri,
    local_copy,
    read_bytes,
    storage_refused,
    write_bytes_atomic,
)
from dfdcore.io.video import (
    H264_OPTIONS,
    OUTPUT_EXT,
    SegmentWriter,
    VideoDecodeError,
    frame_durations,
    frame_ticks,
    h264_options,
    mux_segments,
    probe_video,
    read_timed_frames,
)
from dfdcore.restoration.manifest import UNRESTORABLE_BYTES, is_current, is_finished, printable
from dfdcore.restoration.restorer import Restorer, select_faces
from dfdcore.restoration.video_work import (
    local_file,
    remove_stale_work,
    remove_work,
    scratch_folder,
    work_key,
    work_uri,
    written,
)

SEGMENT_SECONDS = 2.0
# What changes a video's output beside the options; "timing": segments are stamped with the source's timestamps
# (earlier work, stamped 1 / rate apart, is not reused for them).
VIDEO_SETTINGS = {"tracking": TRACK_SETTINGS, "h264": H264_OPTIONS, "timing": "source pts"}
VARIABLE_RATE = 1.1  # frame intervals further apart than this ratio: the row says the rate is variable


def video_config_hash(image_config_hash: str) -> str:
    """The configuration hash of a video: the photos' one (options, model) and the tracking and encoding settings."""
    return sha256_json({"image": image_config_hash, "video": VIDEO_SETTINGS})


def segment_length(frame_rate: Fraction, seconds: float = SEGMENT_SECONDS) -> int:
    """Frames per segment: ``seconds`` of video at ``frame_rate``, at least one."""
    return max(1, round(float(frame_rate) * seconds))


@dataclass
class VideoOutcome:
    """What restoring one video did: per-frame counts, the output, and where the time went."""

    output: str
    frames: int
    frames_with_faces: int
    faces_total: int
    tracks: int
    segments: int
    segments_reused: int
    frame_rate: Fraction
    seconds: dict[str, float] = field(default_factory=dict)
    declared_frames: int = 0  # what the container's header says (0: it does not say)
    duration: float = 0.0  # seconds from the first frame's time to the last frame's end
    intervals: tuple[float, float] = (0.0, 0.0)  # the shortest and longest seconds between two frames
    other_video: tuple[str, ...] = ()  # the video streams not restored (``VideoInfo.other_video``)


def restore_video(path: str, name: str, digest: str, out: str, stem: str, restorer: Restorer, config_hash: str, *,
                  max_pixels: int, segment_seconds: float = SEGMENT_SECONDS,
                  on_segment: Callable[[int, int], None] | None = None) -> VideoOutcome:
    """Restore the local video file ``path`` (``name`` for messages, content ``digest``) into
    ``out/restored_imgs/<stem>.mp4``. ``on_segment(index, count)`` is called after each segment restored by this
    call (not for segments an earlier run left). Raises VideoDecodeError for a file that is not a readable video.
    On any error the work folder is removed (a KeyboardInterrupt, or a killed process, keeps it for the rerun)."""
    started = time.perf_counter()
    if restorer.options.aligned:
        raise VideoDecodeError("not an aligned face crop", "--aligned takes photos of aligned faces; restore "
                                                           "videos without it", name)
    info = probe_video(path, name)
    if info.width * info.height > max_pixels:
        raise VideoDecodeError("video too large", f"{info.width}x{info.height} = {info.width * info.height} "
                                                  f"pixels a frame, more than the limit of {max_pixels}", name)
    length = segment_length(info.frame_rate, segment_seconds)
    work = work_uri(out, digest, config_hash, length)
    seconds = {"detect": 0.0, "restore": 0.0, "paste": 0.0, "write": 0.0}
    try:
        with scratch_folder(work) as scratch:
            detections, times = _detections(path, name, restorer, work, length, seconds)
            frames, base = len(detections), info.time_base
            ticks = frame_ticks(times, base, info.frame_rate)
            durations = frame_durations(ticks, None if info.end is None else round(info.end / base))
            plan = smooth_tracks(link_tracks(detections), frames)
            count = math.ceil(frames / length)
            missing = [k for k in range(count) if not exists(_segment_uri(work, k))]
            if missing:
                timing = SegmentTiming(ticks, durations, base, info.frame_rate,
                                       h264_options([b - a for a, b in zip(ticks, ticks[1:])]))
                _restore_segments(path, name, plan, set(missing), length, restorer, work, scratch, timing,
                                  seconds, on_segment)
            t0 = time.perf_counter()
            output = join_uri(out, f"restored_imgs/{stem}{restorer.options.suffix}{OUTPUT_EXT}")
            segments = [local_file(_segment_uri(work, k), scratch) for k in range(count)]
            with written(output, scratch) as target:
                mux_segments(segments, [ticks[k * length] * base for k in range(count)], path, str(target))
            seconds["write"] += time.perf_counter() - t0
    except Exception:
        with contextlib.suppress(Exception):  # the failure is what is reported, not a refused clean-up
            remove_work(work)
        raise
    remove_work(work)
    seconds["total"] = time.perf_counter() - started
    seconds["decode"] = max(0.0, seconds["total"] - sum(v for k, v in seconds.items() if k != "total"))
    tracks = {face.track for faces in plan for face in faces}
    gaps = [(b - a) * base for a, b in zip(ticks, ticks[1:])]
    return VideoOutcome(output, frames, sum(bool(f) for f in plan), sum(len(f) for f in plan), len(tracks), count,
                        count - len(missing), info.frame_rate, seconds, declared_frames=info.frames,
                        duration=float((ticks[-1] - ticks[0] + durations[-1]) * base),
                        intervals=(float(min(gaps)), float(max(gaps))) if gaps else (0.0, 0.0),
                        other_video=info.other_video)


@dataclass(frozen=True)
class SegmentTiming:
    """When each frame is shown: ``ticks[i]`` (frame i's timestamp) and ``durations[i]`` in ``time_base`` ticks;
    ``frame_rate``, the average rate, for the encoder's rate control; ``options``: x264's (``h264_options``)."""

    ticks: Sequence[int]
    durations: Sequence[int]
    time_base: Fraction
    frame_rate: Fraction
    options: dict[str, str]


def detect_frame(rgb: np.ndarray, index: int, restorer: Restorer, previous: np.ndarray | None = None
                 ) -> list[Observation]:
    """The faces of one frame that the restorer's options select, with their 5 landmarks and, given the
    ``previous`` frame (RGB), their motion since it (``face_motion``)."""
    options = restorer.options
    found = detect_faces(rgb, upsample=options.upsample, min_score=options.min_score, detector=options.detector)
    # select_faces reads only .detection: the same --min-face / --only-center / --only-largest as photos
    chosen = select_faces([SimpleNamespace(detection=d) for d in found], rgb.shape[:2], options)
    observations = [Observation(index, np.asarray(c.detection.box, np.float64),
                                landmarks(rgb, c.detection.box, points=5), float(c.detection.score)) for c in chosen]
    if previous is None or not observations:
        return observations
    before, now = cv2.cvtColor(previous, cv2.COLOR_RGB2GRAY), cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return [dataclasses.replace(o, motion=face_motion(before, now, o.box)) for o in observations]


def aligned_face(rgb: np.ndarray, face: TrackedFace, face_size: int) -> AlignedFace:
    """A tracked face aligned by its smoothed 5 points, with 68 landmarks found on the aligned crop inside its
    (smoothed) box carried onto the crop, as ``align_faces`` does for photos."""
    crop, matrix = align_face(rgb, face.points5, face_size)
    lm68 = landmarks(crop, _box_on_face(matrix, face.box), points=68)
    boxes = part_boxes(torch.from_numpy(lm68)[None], face_size=face_size)[0].numpy()
    box = tuple(round(float(v)) for v in face.box)
    return AlignedFace(crop, matrix, lm68, boxes, DetectedFace(box, face.score), face.points5)


def _box_on_face(matrix: np.ndarray, box: np.ndarray) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = (float(v) for v in box)
    corners = np.array([[x1, y1, 1], [x2, y1, 1], [x1, y2, 1], [x2, y2, 1]]) @ matrix.T
    lo, hi = corners.min(0), corners.max(0)
    return int(lo[0]), int(lo[1]), int(np.ceil(hi[0])), int(np.ceil(hi[1]))


def _detections(path: str, name: str, restorer: Restorer, work: str, length: int, seconds: dict
                ) -> tuple[list[list[Observation]], list[Fraction | None]]:
    """Every frame's observations, from ``det-K.json`` where an earlier run wrote it, else detected (and saved
    when the segment is complete or the video ends); and every frame's presentation time (seconds, None where the
    file gives none), decoded again by every run."""
    frames: list[list[Observation]] = []
    segment: list[list[Observation]] = []
    times: list[Fraction | None] = []
    cached, previous = None, None
    for index, (rgb, time_s) in enumerate(read_timed_frames(path, name)):
        times.append(time_s)
        k = index // length
        if index % length == 0:
            cached = _load_detections(work, k)
        if cached is not None and index % length < len(cached):
            segment.append(cached[index % length])
        else:
            t0 = time.perf_counter()
            segment.append(detect_frame(rgb, index, restorer, previous))
            seconds["detect"] += time.perf_counter() - t0
            cached = None  # a shorter cached segment than the video holds: detect the rest, save it again
        previous = rgb
        if len(segment) == length:
            if cached is None:
                _save_detections(work, k, segment)
            frames += segment
            segment = []
    if segment:
        if cached is None or len(cached) != len(segment):
            _save_detections(work, len(frames) // length, segment)
        frames += segment
    if not frames:
        raise VideoDecodeError("corrupt video", "no frame could be decoded", name)
    return frames, times


def _load_detections(work: str, k: int) -> list[list[Observation]] | None:
    try:
        rows = json.loads(read_bytes(_detections_uri(work, k)))
    except FileNotFoundError:
        return None
    return [[Observation(o["frame"], np.array(o["box"]), np.array(o["points5"]).reshape(5, 2), o["score"],
                         None if o["motion"] is None else np.array(o["motion"]).reshape(2, 3))
             for o in frame] for frame in rows]


def _save_detections(work: str, k: int, frames: list[list[Observation]]) -> None:
    rows = [[{"frame": o.frame, "box": o.box.tolist(), "points5": o.points5.reshape(-1).tolist(), "score": o.score,
              "motion": None if o.motion is None else o.motion.reshape(-1).tolist()}
             for o in frame] for frame in frames]
    write_bytes_atomic(_detections_uri(work, k), json.dumps(rows).encode())


def _restore_segments(path: str, name: str, plan: list[list[TrackedFace]], missing: set[int], length: int,
                      restorer: Restorer, work: str, scratch: Path, timing: SegmentTiming, seconds: dict,
                      on_segment: Callable[[int, int], None] | None) -> None:
    """Restore the frames of the ``missing`` segments and write each as ``seg-K.mp4``, frame i stamped
    ``timing.ticks[i]`` less the segment's first frame's."""
    pending: list[tuple[int, np.ndarray, list[AlignedFace]]] = []
    queued = 0
    writer, target, k = None, None, -1

    def flush() -> None:
        nonlocal queued
        t0 = time.perf_counter()
        restored = restorer.restore_faces([f for _, _, faces in pending for f in faces])
        t1 = time.perf_counter()
        cursor = 0
        for index, rgb, faces in pending:
            mine, cursor = restored[cursor:cursor + len(faces)], cursor + len(faces)
            result = restorer.compose(_as_image(rgb), faces, mine)
            start = timing.ticks[index - index % length]
            writer.write(unit_to_uint8(result.restored), timing.ticks[index] - start, timing.durations[index])
        seconds["restore"] += t1 - t0
        seconds["paste"] += time.perf_counter() - t1
        pending.clear()
        queued = 0

    frames = len(plan)
    try:
        for index, (rgb, _) in enumerate(read_timed_frames(path, name)):
            if index // length not in missing or index >= frames:
                continue
            if index % length == 0:
                k = index // length
                target = written(_segment_uri(work, k), scratch)
                writer = SegmentWriter(target.__enter__(), timing.frame_rate, timing.options, timing.time_base)
            t0 = time.perf_counter()
            faces = [aligned_face(rgb, face, restorer.face_size) for face in plan[index]]
            seconds["detect"] += time.perf_counter() - t0
            pending.append((index, rgb, faces))
            queued += len(faces)
            if queued >= restorer.batch_size:
                flush()
            if index % length == length - 1 or index == frames - 1:
                flush()
                writer.close()
                writer = None
                target.__exit__(None, None, None)
                target = None
                if on_segment:
                    on_segment(k, len(missing))
    finally:
        if writer is not None:
            writer.close()
        if target is not None:  # an unfinished segment: its temporary file goes, nothing is published
            target.__exit__(RuntimeError, RuntimeError("segment not finished"), None)


def _as_image(rgb: np.ndarray) -> DecodedImage:
    return DecodedImage(rgb, uint8_to_unit(rgb), None, False, 8, "VIDEO", (rgb.shape[1], rgb.shape[0]))


def _segment_uri(work: str, k: int) -> str:
    return join_uri(work, f"seg-{k:05d}.mp4")


def _detections_uri(work: str, k: int) -> str:
    return join_uri(work, f"det-{k:05d}.json")


def video_manifest_row(source: Source, out: str, restorer: Restorer, run, config_hash: str,
                       old_rows: Mapping[str, Mapping], max_pixels: int, row: Callable[..., dict],
                       on_segment: Callable[[Source, int, int], None] | None) -> dict | None:
    """The manifest row of one video restored by ``restore_video`` (``row`` builds it as ``restore_sources``
    does), or None when the manifest says it is current. ``run``: the run's ``RunOptions``."""
    video_hash = video_config_hash(config_hash)
    digest = None
    with contextlib.suppress(Exception):  # tidying up never costs a video its row
        remove_stale_work(out, lambda: {work_key(str(r["content_sha256"]), video_hash) for r in old_rows.values()
                                        if r.get("content_sha256") and is_finished(r)})
    try:
        with local_copy(source.uri) as path:
            digest = sha256_path(path)
            if not run.force and is_current(old_rows.get(source.uri), digest, video_hash):
                return None
            stem = source.stem or str(PurePosixPath(source.relpath).with_suffix(""))
            hook = (lambda k, n: on_segment(source, k, n)) if on_segment else None
            done = restore_video(path, printable(source.relpath), digest, out, stem, restorer, video_hash,
                                 max_pixels=max_pixels, segment_seconds=run.segment_seconds, on_segment=hook)
    except UnreadableInput as exc:
        return row(source, None, "skipped" if exc.skipped else "failed", f"{exc.reason}: {exc.detail}",
                   config_hash=video_hash)
    except VideoDecodeError as exc:
        return row(source, digest, "failed", printable(f"{exc.reason}: {exc.detail}"), config_hash=video_hash,
                   retry=exc.reason not in UNRESTORABLE_BYTES)
    except OSError as exc:
        failed = row(source, digest, "failed", f"cannot restore video: {printable(str(exc))}", config_hash=video_hash)
        if storage_refused(exc):
            failed["_storage_error"] = True
            failed["error"] = f"output storage {out} refused a write: {exc.strerror or exc}"
        return failed
    except Exception as exc:  # noqa: BLE001 - one bad video is a row, not the end of the batch
        return row(source, digest, "failed", printable(f"{type(exc).__name__}: {exc}"), config_hash=video_hash)
    return row(source, digest, "ok" if done.faces_total else "no_face", None if done.faces_total else "no face found",
               config_hash=video_hash, note=video_note(done),
               n_faces=done.tracks, outputs=[done.output], frames=done.frames,
               frames_with_faces=done.frames_with_faces, faces_total=done.faces_total, segments=done.segments,
               frame_rate=str(done.frame_rate), seconds={k: float(v) for k, v in done.seconds.items()})


def video_note(done: VideoOutcome) -> str:
    """The row's note: frames, rate and duration, and what to know — a variable rate (kept), the video streams
    not restored, the segments reused, a header declaring more frames than decoded."""
    notes = [f"video: {done.frames} frames at {done.frame_rate} fps, {done.duration:.3f} s"]
    shortest, longest = done.intervals
    if shortest > 0 and longest > VARIABLE_RATE * shortest:
        notes.append(f"variable frame rate (frames {shortest:.3f} s to {longest:.3f} s apart): timestamps kept")
    if done.other_video:
        notes.append(f"only the first video stream is restored; left out: {', '.join(done.other_video)}")
    if done.segments_reused:
        notes.append(f"{done.segments_reused} of {done.segments} segments kept from an earlier run")
    if done.declared_frames > done.frames:  # decoding stopped early: what came is restored, and said
        notes.append(f"the header declares {done.declared_frames} frames: the file may be truncated")
    return "; ".join(notes)
