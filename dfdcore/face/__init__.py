"""Faces in photographs: detection, 5- and 68-point landmarks (dlib, models from face-recognition-models),
alignment to the FFHQ template."""
from .align import FFHQ_TEMPLATE_512, align_face, estimate_similarity, template_points
from .detect import DetectedFace, detect_faces, landmarks
from .pipeline import AlignedFace, align_faces, to_images, to_tensor

__all__ = ["AlignedFace", "align_faces", "to_images", "to_tensor", "DetectedFace", "detect_faces", "landmarks", "align_face", "estimate_similarity", "template_points",
           "FFHQ_TEMPLATE_512"]
