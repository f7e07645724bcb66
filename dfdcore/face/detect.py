"""Face detection (dlib HOG, dlib CNN, OpenCV YuNet and YuNet + HOG combined; scores exposed) and dlib landmarks."""
from __future__ import annotations

from dataclasses import dataclass

import dlib
import numpy as np

from dfdcore.face.models import YUNET_NMS, cnn_detector, frontal_detector, shape_predictor, yunet_detector

Point = tuple[float, float]


@dataclass(frozen=True)
class DetectedFace:
    """One detection. ``box``: x1, y1, x2, y2 in image pixels; ``score``: the detector's own scale (dlib HOG: SVM
    margin, dlib CNN: confidence, YuNet: probability in [0, 1]); ``keypoints``: YuNet's 5 points in image pixels
    (right eye, left eye, nose tip, right and left mouth corners, "right" as the person's), None for dlib."""

    box: tuple[int, int, int, int]
    score: float
    keypoints: tuple[Point, Point, Point, Point, Point] | None = None

    @property
    def area(self) -> int:
        return max(0, self.box[2] - self.box[0]) * max(0, self.box[3] - self.box[1])


def _rgb_uint8(rgb: np.ndarray) -> np.ndarray:
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {rgb.shape} {rgb.dtype}")
    return np.ascontiguousarray(rgb)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 1) greyscale, or (H, W, 3) RGB, uint8 → (H, W, 3) uint8 RGB."""
    if image.dtype == np.uint8 and (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1)):
        return np.ascontiguousarray(np.repeat(image.reshape(image.shape[0], image.shape[1], 1), 3, axis=2))
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB or (H, W) greyscale uint8 image, got {image.shape} {image.dtype}")
    return np.ascontiguousarray(image)


DETECTORS = ("hog", "cnn", "yunet", "yunet+hog")
# dlib's scores are margins (HOG) or confidences (CNN) where 0.2 keeps its usual detections; YuNet's is a probability,
# and 0.6 keeps every annotated face of the groups photos while dropping most dog faces and textures
# (bench/RESULTS.md, "Face detectors"). OpenCV's demo uses 0.9, which loses blurred and small faces.
DEFAULT_MIN_SCORE = {"hog": 0.2, "cnn": 0.2, "yunet": 0.6, "yunet+hog": 0.6}

# "yunet+hog": YuNet finds the faces HOG misses (small, blurred, turned); dlib's HOG places the box wherever it also
# sees the face, because dlib's shape predictor was trained on HOG's boxes and is sensitive to a few pixels of shift
# (seeded with YuNet's boxes, even mapped, a few small faces get landmarks off by half the eye distance). A face only
# YuNet sees is looked for by HOG again on a crop zoomed so that the face is SNAP_FACE_PX wide; a face neither pass
# of HOG confirms is kept only at YuNet probability >= YUNET_UNCONFIRMED (dog faces and textures score below).
YUNET_UNCONFIRMED = 0.8
SNAP_FACE_PX = 100     # HOG's window is 80 px: a little larger than that is where it is surest
SNAP_MARGIN = 0.6      # context around YuNet's box on each side, in box sides
SNAP_MIN_SCORE = -0.5  # HOG margin accepted on the zoomed crop (YuNet already vouches for a face there)
SNAP_MIN_IOU = 0.3     # HOG's box on the crop must overlap YuNet's this much (their conventions differ)
MATCH_IOU = 0.4        # one face seen by both detectors

# YuNet sees faces of about 10 to 300 px (its training scheme): one pass at (nearly) full resolution finds the small
# ones, a second pass on a copy whose long side is YUNET_COARSE_SIDE finds faces that fill a large photo.
YUNET_MAX_SIDE = 2560  # beyond this the full-resolution pass is downscaled: time grows with pixels, 10-px faces of
#                        a 5000-px photo are not worth restoring
YUNET_COARSE_SIDE = 640


def detect_faces(rgb: np.ndarray, upsample: int = 1, min_score: float | None = None, detector: str = "hog"
                 ) -> list[DetectedFace]:
    """Face detections with score ≥ ``min_score``, largest first. ``rgb``: (H, W, 3) RGB or (H, W) greyscale uint8.

    ``detector``: "hog" (dlib's frontal HOG detector, its SVM score), "cnn" (dlib's MMOD CNN, its confidence) or
    "yunet" (OpenCV's YuNet, a probability; boxes mapped to dlib's convention and clipped to the image, 5 keypoints;
    ``upsample`` is ignored, the model finds ~10-px faces at full resolution) or "yunet+hog" (both: HOG's box and
    score wherever HOG sees the face, with ``upsample``, at HOG's default threshold; YuNet's keypoints where it sees it;
    ``min_score`` is YuNet's probability; see YUNET_UNCONFIRMED). ``min_score`` None: DEFAULT_MIN_SCORE of the detector.
    """
    if detector not in DETECTORS:
        raise ValueError(f"detector must be one of {DETECTORS}, got {detector!r}")
    image = _as_rgb(rgb)
    threshold = DEFAULT_MIN_SCORE[detector] if min_score is None else float(min_score)
    if detector == "yunet":
        faces = _yunet_faces(image, threshold)
    elif detector == "yunet+hog":
        faces = _combined_faces(image, upsample, threshold)
    else:
        faces = _dlib_faces(image, detector, upsample, threshold)
    return sorted(faces, key=lambda f: f.area, reverse=True)


def _dlib_faces(rgb: np.ndarray, detector: str, upsample: int, min_score: float) -> list[DetectedFace]:
    if detector == "hog":
        rects, scores, _ = frontal_detector().run(rgb, upsample, -1.0)
        found = zip(rects, scores)
    else:
        found = [(d.rect, d.confidence) for d in cnn_detector()(rgb, upsample)]
    return [DetectedFace((r.left(), r.top(), r.right(), r.bottom()), float(s)) for r, s in found if s >= min_score]


def box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over union of two x1, y1, x2, y2 boxes."""
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def pair_boxes(first: list[tuple], second: list[tuple], min_iou: float) -> list[tuple[int, int]]:
    """Greedy one-to-one pairs (index in ``first``, index in ``second``), best overlap first, IoU >= ``min_iou``."""
    candidates = sorted(((box_iou(a, b), i, j) for i, a in enumerate(first) for j, b in enumerate(second)),
                        reverse=True)
    used_first, used_second, pairs = set(), set(), []
    for overlap, i, j in candidates:
        if overlap < min_iou:
            break
        if i not in used_first and j not in used_second:
            used_first.add(i)
            used_second.add(j)
            pairs.append((i, j))
    return pairs


def _combined_faces(rgb: np.ndarray, upsample: int, min_score: float) -> list[DetectedFace]:
    hog = _dlib_faces(rgb, "hog", upsample, DEFAULT_MIN_SCORE["hog"])
    yunet = _yunet_faces(rgb, min_score)
    pairs = dict(pair_boxes([f.box for f in hog], [f.box for f in yunet], MATCH_IOU))
    faces = [DetectedFace(f.box, f.score, yunet[pairs[i]].keypoints if i in pairs else None)
             for i, f in enumerate(hog)]
    for j in sorted(set(range(len(yunet))) - set(pairs.values())):
        face = yunet[j]
        snapped = _hog_on_zoomed_crop(rgb, face.box)
        box = snapped or face.box
        if (snapped is not None or face.score >= YUNET_UNCONFIRMED) and all(
                box_iou(box, kept.box) < MATCH_IOU for kept in faces):  # the zoomed HOG box may be a kept face's
            faces.append(DetectedFace(box, face.score, face.keypoints))
    return faces


def _hog_on_zoomed_crop(rgb: np.ndarray, box: tuple[int, int, int, int]) -> tuple[int, int, int, int] | None:
    """HOG's box for the face YuNet found at ``box``, looked for on a crop around it zoomed to SNAP_FACE_PX; None when
    HOG sees no face overlapping ``box`` there."""
    import cv2
    x1, y1, x2, y2 = box
    side = max(x2 - x1, y2 - y1)
    left, top = max(0, round(x1 - SNAP_MARGIN * side)), max(0, round(y1 - SNAP_MARGIN * side))
    right = min(rgb.shape[1], round(x2 + SNAP_MARGIN * side))
    bottom = min(rgb.shape[0], round(y2 + SNAP_MARGIN * side))
    zoom = SNAP_FACE_PX / side
    crop = cv2.resize(rgb[top:bottom, left:right], None, fx=zoom, fy=zoom,
                      interpolation=cv2.INTER_LINEAR if zoom > 1 else cv2.INTER_AREA)
    rects, _, _ = frontal_detector().run(np.ascontiguousarray(crop), 0, SNAP_MIN_SCORE)
    found = [(left + r.left() / zoom, top + r.top() / zoom, left + r.right() / zoom, top + r.bottom() / zoom)
             for r in rects]
    best = max(found, key=lambda b: box_iou(b, box), default=None)
    if best is None or box_iou(best, box) < SNAP_MIN_IOU:
        return None
    height, width = rgb.shape[:2]
    bx1, by1 = min(max(0, round(best[0])), width - 1), min(max(0, round(best[1])), height - 1)
    return bx1, by1, min(max(bx1 + 1, round(best[2])), width), min(max(by1 + 1, round(best[3])), height)


def yunet_scales(height: int, width: int) -> list[float]:
    """Resize factors of YuNet's passes over an (height, width) image, largest first (1.0 = full resolution)."""
    long_side = max(height, width)
    scales = [min(1.0, YUNET_MAX_SIDE / long_side)]
    if long_side > YUNET_COARSE_SIDE * 1.5:  # below that the full-resolution pass already sees the largest faces
        scales.append(YUNET_COARSE_SIDE / long_side)
    return scales


def _yunet_raw(rgb: np.ndarray, scale: float, min_score: float) -> np.ndarray:
    """One YuNet pass on ``rgb`` resized by ``scale`` → (N, 15) float32 rows in ``rgb``'s pixels: x, y, w, h, five
    (x, y) keypoints, score."""
    import cv2
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    if scale != 1.0:
        size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
        bgr = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
    net = yunet_detector()
    net.setInputSize((bgr.shape[1], bgr.shape[0]))  # the model was exported for 640x640; OpenCV infers any size
    net.setScoreThreshold(min_score)
    _, rows = net.detect(bgr)
    if rows is None:
        return np.zeros((0, 15), np.float32)
    rows = rows.copy()
    # back to source pixels: x and y with the factor of their own axis (rounding made the two differ slightly)
    rows[:, 0:14:2] *= rgb.shape[1] / bgr.shape[1]
    rows[:, 1:14:2] *= rgb.shape[0] / bgr.shape[0]
    return rows


# YuNet's box runs from forehead to chin, dlib's is squarer and lower; dlib's shape predictor was trained on dlib's
# boxes and places landmarks worse in YuNet's (mean error 0.027 → 0.015 of the eye distance on the 25 faces of dlib's
# testing_with_face_landmarks.xml, as good as seeding it with the annotated boxes). Offsets of x1, y1, x2, y2 in
# units of YuNet's box width and height: medians over the 18 faces of training_with_face_landmarks.xml.
YUNET_TO_DLIB = (-0.102, 0.135, 0.006, -0.045)


def _box_from_xywh(row: np.ndarray, height: int, width: int) -> tuple[int, int, int, int]:
    """YuNet's float x, y, w, h → integer x1, y1, x2, y2 in dlib's box convention (YUNET_TO_DLIB), clipped to the
    image: a face cut by the border gets the visible part, so ``rgb[y1:y2, x1:x2]`` never wraps around."""
    x, y, w, h = (float(v) for v in row[:4])
    dx1, dy1, dx2, dy2 = YUNET_TO_DLIB
    x1 = min(max(0, round(x + dx1 * w)), width - 1)
    y1 = min(max(0, round(y + dy1 * h)), height - 1)
    x2 = min(max(x1 + 1, round(x + w + dx2 * w)), width)
    y2 = min(max(y1 + 1, round(y + h + dy2 * h)), height)
    return x1, y1, x2, y2


def _yunet_faces(rgb: np.ndarray, min_score: float) -> list[DetectedFace]:
    import cv2
    height, width = rgb.shape[:2]
    rows = np.concatenate([_yunet_raw(rgb, s, min_score) for s in yunet_scales(height, width)])
    if len(rows) == 0:
        return []
    # the same face seen by both passes: keep the more confident box (OpenCV's NMS, YuNet's own overlap)
    keep = cv2.dnn.NMSBoxes(rows[:, :4].tolist(), rows[:, 14].tolist(), min_score, YUNET_NMS)
    faces = []
    for i in np.asarray(keep, dtype=int).reshape(-1):
        row = rows[i]
        points = tuple((float(row[4 + 2 * k]), float(row[5 + 2 * k])) for k in range(5))
        faces.append(DetectedFace(_box_from_xywh(row, height, width), float(row[14]), points))
    return faces


def landmarks(rgb: np.ndarray, box: tuple[int, int, int, int], points: int = 68) -> np.ndarray:
    """dlib shape predictor in ``box`` → (points, 2) float64 (x, y) in image pixels."""
    shape = shape_predictor(points)(_rgb_uint8(rgb), dlib.rectangle(*(int(v) for v in box)))
    return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
