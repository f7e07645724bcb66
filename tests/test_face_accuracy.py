"""Detection counts and landmark consistency of the dlib face front end: on the team set (DFD_SHARED) when given,
else on the bundled portraits (their counts in tests/data/SOURCES.md)."""
from __future__ import annotations

import functools
import re

import numpy as np
import pytest

from dfdcore.face import align_face, detect_faces, landmarks
from dfdcore.face.pipeline import _map_box
from dfdcore.io import read_rgb

from .conftest import BUNDLED, portrait, team_path, team_reason

TEAM_FACES = team_path("data/faces/SOURCES.md") and team_path("data/faces")
FACES = TEAM_FACES or BUNDLED
SOURCES = FACES / "SOURCES.md"
# Median over faces of the mean distance (face pixels, 512 face) between the 5 landmarks found again on the
# aligned face and the photo's 5 landmarks carried there by the alignment.
LANDMARK_MEDIAN_PX = 2.5


def _expected_counts(table: str) -> dict[str, int]:
    """SOURCES.md's table → {path under faces/: number of faces}; a ``folder/Name_*/ (N files)`` row with
    ``k each`` stands for each of its N files, which must all be there."""
    counts = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 4 or not re.fullmatch(r"\d+( each)?", cells[3]):
            continue  # header, separator, prose
        name, faces = cells[0], int(cells[3].split()[0])
        many = re.fullmatch(r"(\S*\*\S*?)/? \((\d+) files\)", name)
        if many:
            files = sorted(p for p in FACES.glob(f"{many.group(1)}/*") if p.is_file())
            if len(files) != int(many.group(2)):
                raise AssertionError(f"SOURCES.md lists {many.group(2)} files for {many.group(1)}, found {len(files)}")
            counts.update({p.relative_to(FACES).as_posix(): faces for p in files})
        else:
            counts[name] = faces
    return counts


EXPECTED = _expected_counts(SOURCES.read_text()) if SOURCES.exists() else {}
# The photographs the landmark check runs on: every listed portrait and group photo.
PHOTOS = sorted(n for n in EXPECTED if n.split("/")[0] in ("portraits", "groups"))


@functools.cache
def _detections(name: str):
    rgb = read_rgb(TEAM_FACES / name if TEAM_FACES else portrait(name.removeprefix("portraits/")))
    return rgb, detect_faces(rgb, upsample=1, min_score=0.2)


def test_sources_table_is_parsed():
    if not TEAM_FACES:
        pytest.skip(team_reason("data/faces/SOURCES.md"))
    assert len(EXPECTED) >= 24 + 55 and sum(n.startswith("identities/") for n in EXPECTED) == 55
    assert EXPECTED["groups/bald_guys.jpg"] == 24 and EXPECTED["groups/dogs.jpg"] == 0


@pytest.mark.parametrize("folder", ["portraits", "groups", "identities"])
def test_every_listed_face_is_found(folder):
    names = [n for n in EXPECTED if n.startswith(folder + "/")]
    if not names:
        pytest.skip(team_reason(f"data/faces/{folder}") if not TEAM_FACES else f"no {folder} photos in {SOURCES}")
    found = {n: len(_detections(n)[1]) for n in names}
    wrong = {n: f"{found[n]} found, {EXPECTED[n]} listed" for n in names if found[n] != EXPECTED[n]}
    assert not wrong, wrong


def test_landmarks_found_again_on_the_aligned_face_match_the_carried_ones():
    distances = []
    for name in PHOTOS:
        rgb, detections = _detections(name)
        for detection in detections:
            points = landmarks(rgb, detection.box, points=5)
            crop, matrix = align_face(rgb, points, face_size=512)
            carried = points @ matrix[:, :2].T + matrix[:, 2]
            again = landmarks(crop, _map_box(matrix, detection.box), points=5)
            distances.append(np.linalg.norm(again - carried, axis=1).mean())
    assert len(distances) >= (70 if TEAM_FACES else sum(EXPECTED.values()))  # 9 bundled portraits, 1 face each
    median = float(np.median(distances))
    assert median <= LANDMARK_MEDIAN_PX, f"median {median:.2f} px over {len(distances)} faces"
