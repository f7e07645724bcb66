"""Head pose, expression descriptors and balanced selection (dfdcore.face.pose / dfdcore.dictionary.selection)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from dfdcore.dictionary import selection
from dfdcore.face import detect_faces, landmarks, pose
from dfdcore.io.images import read_rgb

from .conftest import portrait

FRONTAL = ["grace_hopper.jpg", "astronaut.png", "obama.jpg"]


def synthetic_landmarks(yaw: float, pitch: float, roll: float, size=(640, 480)) -> np.ndarray:
    """(68, 2) with the model points projected at the given pose; the other points are unused by head_pose."""
    pts, idx = pose.project_model(yaw, pitch, roll, image_size=size)
    lm = np.zeros((68, 2))
    lm[idx] = pts
    return lm


def photo_landmarks(rgb: np.ndarray) -> np.ndarray:
    faces = detect_faces(rgb)
    assert faces, "expected a face in the photo"
    return landmarks(rgb, faces[0].box)


@pytest.fixture(scope="module")
def hopper():
    rgb = read_rgb(portrait("grace_hopper.jpg"))
    return rgb, photo_landmarks(rgb)


# ------------------------------------------------------------------------------------------------------- pose

def test_rotation_round_trip():
    for angles in [(0, 0, 0), (35, -12, 8), (-70, 20, -25), (5, 40, 60)]:
        assert np.allclose(pose.euler_angles(pose.rotation_matrix(*angles)), angles, atol=1e-9)


@pytest.mark.parametrize("angles", [(0, 0, 0), (30, 0, 0), (-45, 10, 5), (10, -20, -15), (60, 5, 0), (0, 25, 20)])
def test_synthetic_pose_recovered(angles):
    rng = np.random.default_rng(1)
    lm = synthetic_landmarks(*angles) + rng.normal(0, 0.5, (68, 2))  # half-pixel landmark noise
    assert np.allclose(pose.head_pose(lm, (640, 480)), angles, atol=3.0)


def test_sign_conventions_in_the_image():
    """The documented senses, checked on projected points rather than through rotation_matrix's algebra."""
    front = synthetic_landmarks(0, 0, 0)
    turned, up, rolled = synthetic_landmarks(20, 0, 0), synthetic_landmarks(0, 20, 0), synthetic_landmarks(0, 0, 20)
    eyes = [36, 39, 42, 45]
    # yaw > 0: nose tip right of the eyes' centre; pitch > 0: nose tip closer to (higher towards) the eyes.
    assert turned[30, 0] - turned[eyes, 0].mean() > 5
    assert (up[30, 1] - up[eyes, 1].mean()) < (front[30, 1] - front[eyes, 1].mean()) - 5
    # roll > 0: counter-clockwise on screen, so (y down) the image-right eye corner rises above the left one.
    assert rolled[45, 1] < rolled[36, 1] - 5


def test_head_poses_batched_matches_single():
    lms = np.stack([synthetic_landmarks(a, -a / 2, a / 3) for a in (-30, 0, 25)])
    batch = pose.head_poses(lms, np.array([640, 480]))
    assert batch.shape == (3, 3)
    assert np.allclose(batch[2], pose.head_pose(lms[2], (640, 480)))
    with pytest.raises(ValueError, match=r"\(N, 68, 2\)"):
        pose.head_poses(np.zeros((3, 5, 2)), np.array([640, 480]))


@pytest.mark.parametrize("name", FRONTAL)
def test_frontal_portraits(name):
    rgb = read_rgb(portrait(name))
    yaw, pitch, roll = pose.head_pose(photo_landmarks(rgb), (rgb.shape[1], rgb.shape[0]))
    assert abs(yaw) < 15 and abs(roll) < 10, (yaw, pitch, roll)


def test_rotated_photo_changes_roll(hopper):
    rgb, lm = hopper
    h, w = rgb.shape[:2]
    before = pose.head_pose(lm, (w, h))
    rotated = cv2.warpAffine(rgb, cv2.getRotationMatrix2D((w / 2, h / 2), 20, 1.0), (w, h))
    after = pose.head_pose(photo_landmarks(rotated), (w, h))  # detected afresh on the rotated photo
    assert after[2] - before[2] == pytest.approx(20, abs=3)
    assert abs(after[0] - before[0]) < 5


def test_mirrored_photo_negates_yaw_and_roll():
    rgb = read_rgb(portrait("astronaut.png"))  # turned a little (yaw ~ +6°)
    h, w = rgb.shape[:2]
    yaw, pitch, roll = pose.head_pose(photo_landmarks(rgb), (w, h))
    m_yaw, m_pitch, m_roll = pose.head_pose(photo_landmarks(np.ascontiguousarray(rgb[:, ::-1])), (w, h))
    assert m_yaw == pytest.approx(-yaw, abs=3) and m_roll == pytest.approx(-roll, abs=3)
    assert m_pitch == pytest.approx(pitch, abs=3)


# ------------------------------------------------------------------------------------------------- expression

def test_closed_eyes_score_lower(hopper):
    lm = hopper[1]
    closed = lm.copy()
    for upper, lower in [(37, 41), (38, 40), (43, 47), (44, 46)]:
        closed[upper] = closed[lower] + [0, -0.5]  # upper lid onto the lower one
    open_, shut = pose.expression(lm), pose.expression(closed)
    assert open_["eye_open_left"] > 0.2 and open_["eye_open_right"] > 0.2
    assert shut["eye_open_left"] < 0.05 and shut["eye_open_right"] < 0.05
    assert shut["mouth_open"] == pytest.approx(open_["mouth_open"])


def test_mouth_opens_when_lower_lip_drops(hopper):
    lm = hopper[1]
    width = np.linalg.norm(lm[54] - lm[48])
    opened = lm.copy()
    opened[[55, 56, 57, 58, 59, 65, 66, 67]] += [0, 0.3 * width]
    assert pose.expression(opened)["mouth_open"] > pose.expression(lm)["mouth_open"] + 0.2


def test_expression_scale_and_shift_invariant(hopper):
    lm = hopper[1]
    moved = lm * 2.5 + [40, -17]
    assert np.allclose(pose.expressions(moved[None]), pose.expressions(lm[None]))
    assert pose.expressions(np.stack([lm, moved])).shape == (2, 4)


# -------------------------------------------------------------------------------------------------- selection

def skewed_set(n: int = 1000, seed: int = 0) -> np.ndarray:
    """(n, 3) yaw, pitch, mouth_open: 90 % frontal, 10 % profile (yaw ~ ±60°)."""
    rng = np.random.default_rng(seed)
    profile = rng.random(n) < 0.1
    yaw = np.where(profile, rng.choice([-60.0, 60.0], n), 0.0) + rng.normal(0, 6, n)
    return np.stack([yaw, rng.normal(0, 8, n), rng.gamma(1.5, 0.05, n)], axis=1)


@pytest.mark.parametrize("method", selection.METHODS)
def test_selection_flattens_histogram(method):
    d = skewed_set()
    sel, bin_id, stats = selection.select_balanced(d, 150, method=method, bins=(5, 3, 3), seed=4)
    assert sel.shape == (150,) and len(np.unique(sel)) == 150 and sel.dtype.kind == "i"
    assert bin_id.shape == (1000,)
    assert stats["counts_before"].sum() == 1000 and stats["counts_after"].sum() == 150
    assert stats["evenness_after"] > stats["evenness_before"] + 0.05
    assert stats["cv_after"] < stats["cv_before"]
    # Profiles are 10 % of the set; a balanced pick should hold far more of them.
    assert (np.abs(d[sel, 0]) > 30).mean() > 0.3


def test_stratified_is_as_flat_as_possible():
    d = skewed_set()
    _, _, stats = selection.select_balanced(d, 60, bins=(5, 3, 3), seed=0)
    before, after = stats["counts_before"], stats["counts_after"]
    level = after.max()
    # Every bin got min(count, level) or one less; no bin left behind while another holds 2+ more.
    assert (after >= np.minimum(before, level - 1)).all()


@pytest.mark.parametrize("method", selection.METHODS)
def test_selection_deterministic_and_complete(method):
    d = skewed_set(300)
    a = selection.select_balanced(d, 40, method=method, seed=7)[0]
    assert np.array_equal(a, selection.select_balanced(d, 40, method=method, seed=7)[0])
    assert not np.array_equal(a, selection.select_balanced(d, 40, method=method, seed=8)[0])
    everything = selection.select_balanced(d, 500, method=method)[0]
    assert np.array_equal(everything, np.arange(300))


def test_selection_errors():
    d = skewed_set(50)
    with pytest.raises(ValueError, match="method"):
        selection.select_balanced(d, 5, method="quantile")
    with pytest.raises(ValueError, match="one entry per descriptor column"):
        selection.select_balanced(d, 5, bins=(5, 3))
    with pytest.raises(ValueError, match="NaN"):
        selection.select_balanced(np.r_[d, [[np.nan, 0, 0]]], 5)


def test_farthest_handles_duplicates():
    d = np.zeros((20, 2))
    d[10:] = 1.0
    sel = selection.select_balanced(d, 12, method="farthest")[0]
    assert len(np.unique(sel)) == 12


def test_selection_histogram_png(tmp_path):
    d = skewed_set(300)
    sel = selection.select_balanced(d, 50, seed=1)[0]
    out = selection.selection_histogram(d, sel, ["yaw", "pitch", "mouth_open"], tmp_path / "hist.png")
    assert out.stat().st_size > 1000
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_balanced_subset_beats_a_random_subset_on_max_min_bin_ratio():
    """Max/min count over the yaw bins the data occupies: balanced selection vs a random subset of the same size."""
    d = skewed_set(seed=3)
    n = 120
    selected, bin_id, _ = selection.select_balanced(d, n, bins=(5, 1, 1), seed=0)
    random_pick = np.random.default_rng(0).choice(len(d), n, replace=False)
    occupied = np.unique(bin_id)

    def ratio(index):
        counts = np.array([(bin_id[index] == b).sum() for b in occupied])
        return counts.max() / max(counts.min(), 1)

    assert ratio(selected) < ratio(random_pick) / 2
