"""Faces in photographs: detection, 5- and 68-point landmarks (dlib, models from face-recognition-models),
alignment to the FFHQ template, paste-back."""
from dfdcore.face.align import FFHQ_TEMPLATE_512, align_face, estimate_similarity, template_points
from dfdcore.face.detect import DetectedFace, detect_faces, landmarks
from dfdcore.face.paste import face_to_image_matrix, paste_faces, upscale_image
from dfdcore.face.pipeline import AlignedFace, align_faces

__all__ = ["AlignedFace", "DetectedFace", "FFHQ_TEMPLATE_512", "align_face", "align_faces", "detect_faces",
           "estimate_similarity", "face_to_image_matrix", "landmarks", "paste_faces", "template_points",
           "upscale_image"]
