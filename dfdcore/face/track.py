"""Faces across the frames of a video: detections linked into tracks, and each track's landmarks smoothed in time.

A detector and landmark predictor run on every frame independently put the 5 points a pixel or so off in random
directions; aligning with them makes the pasted-back face shake against a steady head. ``link_tracks`` joins the
detections of consecutive frames (box overlap, else nearby centres) into tracks that survive a few missed frames;
``smooth_track`` replaces each track's points by a locally linear fit over a short centred window, which keeps
steady motion (pans, a turning head) unchanged while averaging the noise, and fills the frames a short gap missed.
The work is offline (all frames' detections known), so the window looks ahead as well as back and has no lag.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

IOU_MIN = 0.3        # box overlap that links a detection to a track
CENTRE_MAX = 0.5     # else: centres closer than this fraction of the track's box side
MAX_GAP = 3          # frames a track may go undetected and still continue (the gap is filled by smoothing)
RADIUS = 3           # frames each side in the smoothing window
SIGMA = 2.0          # Gaussian weight of the window, in frames
TRACK_SETTINGS = {"iou_min": IOU_MIN, "centre_max": CENTRE_MAX, "max_gap": MAX_GAP, "radius": RADIUS,
                  "sigma": SIGMA}  # everything here that changes an output (hashed with the restore options)


@dataclass(frozen=True)
class Observation:
    """One face found in one frame: ``box`` (4,) x1, y1, x2, y2, ``points5`` (5, 2), both in frame pixels."""

    frame: int
    box: np.ndarray
    points5: np.ndarray
    score: float


@dataclass
class Track:
    """One face followed through the video: its observations in frame order."""

    id: int
    observations: list[Observation] = field(default_factory=list)

    @property
    def last(self) -> Observation:
        return self.observations[-1]


@dataclass(frozen=True)
class TrackedFace:
    """A track's face in one frame, smoothed: ``points5`` (5, 2) and ``box`` (4,) in frame pixels; ``observed``
    is False for a frame of a filled gap."""

    track: int
    points5: np.ndarray
    box: np.ndarray
    score: float
    observed: bool


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N, 4) and (M, 4) boxes x1, y1, x2, y2 → (N, M) intersection over union."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(hi - lo, 0, None).prod(-1)
    area = lambda boxes: np.clip(boxes[:, 2:] - boxes[:, :2], 0, None).prod(-1)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def link_tracks(frames: Sequence[Sequence[Observation]], max_gap: int = MAX_GAP) -> list[Track]:
    """Per-frame observations → tracks, ids in order of appearance. Each frame's detections go greedily to the
    live tracks (seen within ``max_gap`` + 1 frames) by decreasing IoU ≥ IOU_MIN, then by increasing centre
    distance < CENTRE_MAX × box side; what is left starts new tracks."""
    tracks: list[Track] = []
    for index, found in enumerate(frames):
        live = [t for t in tracks if index - t.last.frame <= max_gap + 1]
        free = list(range(len(found)))
        if live and found:
            pairs = _greedy(live, found)
            for t, d in pairs:
                live[t].observations.append(found[d])
            free = [d for d in free if d not in {d for _, d in pairs}]
        for d in free:
            tracks.append(Track(len(tracks), [found[d]]))
    return tracks


def _greedy(live: list[Track], found: Sequence[Observation]) -> list[tuple[int, int]]:
    boxes_t = np.stack([t.last.box for t in live])
    boxes_d = np.stack([o.box for o in found])
    iou = box_iou(boxes_t, boxes_d)
    centres_t, centres_d = (boxes_t[:, :2] + boxes_t[:, 2:]) / 2, (boxes_d[:, :2] + boxes_d[:, 2:]) / 2
    side = (boxes_t[:, 2:] - boxes_t[:, :2]).mean(1, keepdims=True)
    distance = np.linalg.norm(centres_t[:, None] - centres_d[None], axis=-1) / np.maximum(side, 1e-6)
    # every IoU match before any centre one; within each, the closest first
    candidates = [(0, -iou[t, d], t, d) for t, d in zip(*np.nonzero(iou >= IOU_MIN))]
    candidates += [(1, distance[t, d], t, d) for t, d in zip(*np.nonzero((iou < IOU_MIN) & (distance < CENTRE_MAX)))]
    pairs, used_t, used_d = [], set(), set()
    for _, _, t, d in sorted(candidates):
        if t not in used_t and d not in used_d:
            pairs.append((int(t), int(d)))
            used_t.add(t)
            used_d.add(d)
    return pairs


def smooth_track(track: Track, radius: int = RADIUS, sigma: float = SIGMA, max_gap: int = MAX_GAP
                 ) -> dict[int, TrackedFace]:
    """{frame: smoothed face} for every frame from the track's first to its last observation, except inside gaps
    longer than ``max_gap`` (those frames have no face). Each frame's points and box are the value at that frame
    of a weighted least-squares line through the observations within ``radius`` frames (Gaussian weights of
    ``sigma`` frames); a frame with a single observation in reach keeps it."""
    frames = np.array([o.frame for o in track.observations])
    values = np.stack([np.concatenate([o.points5.reshape(-1), o.box]) for o in track.observations])  # (T, 14)
    scores = np.array([o.score for o in track.observations])
    seen = set(frames.tolist())
    smoothed: dict[int, TrackedFace] = {}
    for frame in range(int(frames[0]), int(frames[-1]) + 1):
        observed = frame in seen
        if not observed and _gap_around(frames, frame) > max_gap:
            continue
        near = np.abs(frames - frame) <= radius
        estimate = _local_line(frames[near] - frame, values[near], sigma)
        smoothed[frame] = TrackedFace(track.id, estimate[:10].reshape(5, 2), estimate[10:],
                                      float(scores[near].max()), observed)
    return smoothed


def _gap_around(frames: np.ndarray, frame: int) -> int:
    after = int(np.searchsorted(frames, frame))
    return int(frames[after] - frames[after - 1] - 1)


def _local_line(offsets: np.ndarray, values: np.ndarray, sigma: float) -> np.ndarray:
    """The value at offset 0 of the weighted least-squares line through ``values`` (K, D) at ``offsets`` (K,)."""
    if len(offsets) == 0:
        raise ValueError("expected at least one observation in the smoothing window, got none")
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    if len(np.unique(offsets)) < 2:
        return (weights[:, None] * values).sum(0) / weights.sum()
    design = np.stack([np.ones_like(offsets, dtype=np.float64), offsets.astype(np.float64)], 1)  # (K, 2)
    gram = design.T @ (weights[:, None] * design)
    coefficients = np.linalg.solve(gram, design.T @ (weights[:, None] * values))
    return coefficients[0]


def smooth_tracks(tracks: Sequence[Track], frames: int, **options) -> list[list[TrackedFace]]:
    """Every track smoothed (``smooth_track``) and laid out by frame: ``frames`` lists, each of the faces of that
    frame in track order."""
    by_frame: list[list[TrackedFace]] = [[] for _ in range(frames)]
    for track in tracks:
        for frame, face in smooth_track(track, **options).items():
            by_frame[frame].append(face)
    return by_frame
