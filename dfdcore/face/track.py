"""Faces across the frames of a video: detections linked into tracks, and each track's landmarks smoothed in time.

A detector and landmark predictor run on every frame independently put the 5 points a pixel or so off in random
directions; aligning with them makes the pasted-back face shake against a steady head. ``link_tracks`` joins the
detections of consecutive frames (box overlap, else nearby centres) into tracks that survive a few missed frames.
``face_motion`` measures how the face region moved since the previous frame (optical flow of corner features, a
similarity fitted with RANSAC: a few hundredths of a pixel where landmarks are off by a pixel), so a shaking camera
or a moving head is followed exactly. ``smooth_track`` carries the observations of a short centred window into each
frame through those motions and averages them; where a motion is missing (a filled gap, a textureless face) it
fits a weighted line through the window instead, which keeps steady motion and averages the noise. The work is
offline (all frames' detections known), so the window looks ahead as well as back and has no lag.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

IOU_MIN = 0.3        # box overlap that links a detection to a track
CENTRE_MAX = 0.5     # else: centres closer than this fraction of the track's box side
MAX_GAP = 3          # frames a track may go undetected and still continue (the gap is filled by smoothing)
RADIUS = 3           # frames each side in the smoothing window
SIGMA = 2.0          # Gaussian weight of the window, in frames
MIN_FEATURES = 8     # tracked corner features below which a face's motion is not trusted
TRACK_SETTINGS = {"iou_min": IOU_MIN, "centre_max": CENTRE_MAX, "max_gap": MAX_GAP, "radius": RADIUS,
                  "sigma": SIGMA, "motion": "lk-similarity-v1"}  # what changes an output (hashed with the options)


@dataclass(frozen=True)
class Observation:
    """One face found in one frame: ``box`` (4,) x1, y1, x2, y2, ``points5`` (5, 2), both in frame pixels;
    ``motion`` (2, 3) maps the previous frame's pixels onto this one's around the face (None: not measured)."""

    frame: int
    box: np.ndarray
    points5: np.ndarray
    score: float
    motion: np.ndarray | None = None


def face_motion(previous: np.ndarray, current: np.ndarray, box: np.ndarray) -> np.ndarray | None:
    """(2, 3) similarity taking ``previous`` frame pixels to ``current`` ones around the face in ``box`` (grown by
    a fifth), from pyramidal Lucas-Kanade flow of corner features and a RANSAC fit; None with under MIN_FEATURES
    agreeing features. ``previous``, ``current``: (H, W) uint8 grey frames."""
    height, width = current.shape
    x1, y1, x2, y2 = (float(v) for v in box)
    grow_x, grow_y = (x2 - x1) / 10, (y2 - y1) / 10
    mask = np.zeros((height, width), np.uint8)
    top, bottom = max(0, int(y1 - grow_y)), min(height, int(y2 + grow_y))
    mask[top:bottom, max(0, int(x1 - grow_x)):min(width, int(x2 + grow_x))] = 255
    corners = cv2.goodFeaturesToTrack(previous, maxCorners=200, qualityLevel=0.01, minDistance=3, mask=mask)
    if corners is None or len(corners) < MIN_FEATURES:
        return None
    moved, status, _ = cv2.calcOpticalFlowPyrLK(previous, current, corners, None, winSize=(15, 15), maxLevel=2)
    ok = status.reshape(-1) == 1
    if ok.sum() < MIN_FEATURES:
        return None
    matrix, inliers = cv2.estimateAffinePartial2D(corners[ok], moved[ok], method=cv2.RANSAC,
                                                  ransacReprojThreshold=1.0)
    if matrix is None or inliers is None or inliers.sum() < MIN_FEATURES:
        return None
    return matrix


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
    area_a, area_b = (np.clip(x[:, 2:] - x[:, :2], 0, None).prod(-1) for x in (a, b))
    union = area_a[:, None] + area_b[None, :] - inter
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
    longer than ``max_gap`` (those frames have no face). Each frame's points and box are the Gaussian-weighted
    (``sigma`` frames) mean of the observations within ``radius`` frames carried into that frame by the measured
    motions; where a motion in the window is missing, the value at that frame of a weighted least-squares line
    through the observations instead; a frame with a single observation in reach keeps it."""
    frames = np.array([o.frame for o in track.observations])
    values = np.stack([np.concatenate([o.points5.reshape(-1), o.box]) for o in track.observations])  # (T, 14)
    scores = np.array([o.score for o in track.observations])
    motions = {o.frame: o.motion for o in track.observations if o.motion is not None}
    seen = set(frames.tolist())
    smoothed: dict[int, TrackedFace] = {}
    for frame in range(int(frames[0]), int(frames[-1]) + 1):
        observed = frame in seen
        if not observed and _gap_around(frames, frame) > max_gap:
            continue
        near = np.abs(frames - frame) <= radius
        carried = [_carry(values[i], int(frames[i]), frame, motions) for i in np.nonzero(near)[0]]
        if all(c is not None for c in carried):
            weights = np.exp(-0.5 * ((frames[near] - frame) / sigma) ** 2)
            estimate = (weights[:, None] * np.stack(carried)).sum(0) / weights.sum()
        else:
            estimate = _local_line(frames[near] - frame, values[near], sigma)
        smoothed[frame] = TrackedFace(track.id, estimate[:10].reshape(5, 2), estimate[10:],
                                      float(scores[near].max()), observed)
    return smoothed


def _carry(value: np.ndarray, source: int, target: int, motions: dict[int, np.ndarray]) -> np.ndarray | None:
    """(14,) points and box of frame ``source`` → frame ``target`` through the motions between them (``motions[t]``:
    frame t-1 → t); None when one is missing."""
    matrix = np.eye(3)
    for t in range(min(source, target) + 1, max(source, target) + 1):
        if t not in motions:
            return None
        matrix = np.vstack([motions[t], [0.0, 0.0, 1.0]]) @ matrix
    if source > target:
        matrix = np.linalg.inv(matrix)
    points = value.reshape(7, 2) @ matrix[:2, :2].T + matrix[:2, 2]
    return points.reshape(-1)


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
