"""Model files: dlib's from the face-recognition-models package, OpenCV's YuNet bundled in dfdcore/assets (nothing
is downloaded)."""
from __future__ import annotations

import functools
import hashlib
import threading
import warnings

import dlib


def _locations():
    with warnings.catch_warnings():  # the package imports pkg_resources, which warns on import
        warnings.simplefilter("ignore")
        import face_recognition_models
    return face_recognition_models


@functools.cache
def frontal_detector() -> dlib.fhog_object_detector:
    return dlib.get_frontal_face_detector()


@functools.cache
def shape_predictor(points: int) -> dlib.shape_predictor:
    models = _locations()
    if points == 68:
        return dlib.shape_predictor(models.pose_predictor_model_location())
    if points == 5:
        return dlib.shape_predictor(models.pose_predictor_five_point_model_location())
    raise ValueError(f"landmark model must have 5 or 68 points, got {points}")


@functools.cache
def cnn_detector() -> dlib.cnn_face_detection_model_v1:
    """dlib's MMOD CNN face detector: finds more profile and small faces, ~100x slower than HOG on a CPU."""
    return dlib.cnn_face_detection_model_v1(_locations().cnn_face_detector_model_location())


@functools.cache
def face_recognizer() -> dlib.face_recognition_model_v1:
    """dlib's face-recognition ResNet: 128-d descriptors, same person when closer than 0.6 (dlib's convention)."""
    return dlib.face_recognition_model_v1(_locations().face_recognition_model_location())


# OpenCV's YuNet (MIT; dfdcore/assets/SOURCES.md), bundled because no registry package that ships it installs
# beside opencv-python-headless 5 without pulling in an application. Checked on load: a Git LFS pointer or a
# truncated copy would otherwise fail inside OpenCV's ONNX parser with an unhelpful message.
YUNET_FILE = "face_detection_yunet_2023mar.onnx"
YUNET_SHA256 = "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4"
YUNET_NMS = 0.3  # OpenCV's default: boxes overlapping more than this are one face
YUNET_TOP_K = 5000  # candidates kept before NMS; a crowd photo has hundreds of anchors above threshold


@functools.cache
def yunet_model() -> bytes:
    """The bundled YuNet ONNX file, its sha256 checked."""
    from importlib.resources import files
    data = (files("dfdcore") / "assets" / YUNET_FILE).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != YUNET_SHA256:
        raise RuntimeError(f"dfdcore/assets/{YUNET_FILE}: expected sha256 {YUNET_SHA256}, got {digest} "
                           f"({len(data)} bytes; a Git LFS pointer or a damaged copy?)")
    return data


_yunet_local = threading.local()


def yunet_detector():
    """OpenCV's ``cv2.FaceDetectorYN`` on the bundled YuNet model, one per thread: the detector keeps its input
    size and thresholds as state, so two threads sharing one would race between ``setInputSize`` and ``detect``."""
    detector = getattr(_yunet_local, "detector", None)
    if detector is None:
        import cv2
        import cv2.utils.logging as cv_logging
        level = cv_logging.getLogLevel()
        cv_logging.setLogLevel(cv_logging.LOG_LEVEL_ERROR)  # OpenCV 5 warns that its new engine ignores targets
        try:
            detector = cv2.FaceDetectorYN.create("onnx", yunet_model(), b"", (320, 320), 0.6, YUNET_NMS, YUNET_TOP_K)
        finally:
            cv_logging.setLogLevel(level)
        _yunet_local.detector = detector
    return detector
