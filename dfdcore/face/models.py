"""dlib model files shipped by the face-recognition-models package (nothing is downloaded)."""
from __future__ import annotations

import functools
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
