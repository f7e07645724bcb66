"""Detection, landmarks and FFHQ alignment on real photographs with the real dlib models."""
from __future__ import annotations

import numpy as np
import pytest
from skimage.transform import SimilarityTransform

from dfdcore.face import align_faces, detect_faces, estimate_similarity, landmarks, template_points
from dfdcore.io import read_rgb

from .conftest import portrait, team_file


def test_similarity_matches_scikit_image():
    rng = np.random.default_rng(0)
    src, dst = rng.random((5, 2)) * 100, rng.random((5, 2)) * 500
    reference = SimilarityTransform.from_estimate(src, dst)
    assert np.abs(estimate_similarity(src, dst) - reference.params[:2]).max() < 1e-9


def test_similarity_recovers_a_known_transform():
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -5.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    src = np.random.default_rng(1).random((5, 2)) * 200
    matrix = estimate_similarity(src, src @ rot.T + shift)
    assert np.allclose(matrix[:, :2], rot) and np.allclose(matrix[:, 2], shift)


@pytest.mark.parametrize("name", ["grace_hopper.jpg", "obama.jpg", "astronaut.png"])
def test_aligned_face_puts_landmarks_on_the_template(name):
    faces = align_faces(read_rgb(portrait(name)), face_size=512)
    assert len(faces) == 1
    face = faces[0]
    assert face.image.shape == (512, 512, 3) and face.detection.score >= 0.2
    # Re-detecting the 5 points on the aligned face must land near the template they were aligned to.
    points5 = landmarks(face.image, (100, 100, 412, 412), points=5)
    assert np.abs(points5 - template_points(512)).max() < 12
    left_eye, right_eye, nose, mouth = face.boxes
    assert left_eye[2] <= right_eye[2] and left_eye[0] < nose[0] < right_eye[2]
    assert nose[1] < mouth[1] and mouth[3] < 512
    assert all(b[2] - b[0] >= 31 for b in face.boxes)  # minimum half-size 16 → side ≥ 31 px


def test_group_photo_finds_every_face():
    faces = align_faces(read_rgb(team_file("data/faces/groups/2008_002506.jpg")), face_size=128)
    assert len(faces) == 3  # SOURCES.md: 3 faces with HOG, one upsampling step, score ≥ 0.2
    assert all(f.image.shape == (128, 128, 3) for f in faces)


def test_no_face_in_a_photo_of_dogs():
    assert align_faces(read_rgb(team_file("data/faces/groups/dogs.jpg"))) == []


def test_unreadable_image_is_a_clear_error(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ValueError, match="broken.jpg: cannot read image"):
        read_rgb(bad)


def test_cnn_detector_finds_the_face_hog_finds():
    rgb = read_rgb(portrait("grace_hopper.jpg"))
    [cnn] = detect_faces(rgb, upsample=0, min_score=0.0, detector="cnn")
    [hog] = detect_faces(rgb, upsample=0, detector="hog")
    centre = lambda b: np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2])  # noqa: E731
    assert np.linalg.norm(centre(cnn.box) - centre(hog.box)) < 30 and cnn.score > 0
    with pytest.raises(ValueError, match="detector must be one of"):
        detect_faces(rgb, detector="yolo")
