"""Component boxes by the official rule, and their clamped per-scale windows."""
from __future__ import annotations

import pytest
import torch

from dfdcore import part_boxes
from dfdcore.components import PART_LANDMARKS, scale_boxes


def landmarks_with(part_points: dict[int, list[tuple[float, float]]]) -> torch.Tensor:
    lm = torch.full((68, 2), 256.0)
    for part, points in part_points.items():
        for idx, point in zip(PART_LANDMARKS[part], points):
            lm[idx] = torch.tensor(point)
    return lm


def test_box_from_spread_points():
    # Mouth points spread 100 px wide, 40 px high, centred at (250.5, 380): L = 50.
    pts = [(200.5 + 100 * (i % 2), 360 + 40 * ((i // 2) % 2)) for i in range(20)]
    boxes = part_boxes(landmarks_with({3: pts}))
    assert boxes.shape == (1, 4, 4) and boxes.dtype == torch.int64
    assert boxes[0, 3].tolist() == [201, 331, 300, 430]  # trunc([250.5-50+1, 380-50+1, 250.5+50, 380+50])


def test_minimum_half_size_is_16_px_on_512():
    tight = [(100.0 + 0.1 * i, 200.0) for i in range(11)]
    box = part_boxes(landmarks_with({0: tight}))[0, 0].tolist()
    cx = sum(100.0 + 0.1 * i for i in range(11)) / 11
    assert box == [int(cx - 16 + 1), int(200 - 16 + 1), int(cx + 16), int(200 + 16)]
    small = part_boxes(landmarks_with({0: tight}) / 4, face_size=128)[0, 0].tolist()
    assert small[2] - small[0] in (7, 8)  # half-size 4 on a 128 face


def test_truncation_toward_zero_for_negative_values():
    pts = [(-30.7 + i, 50.0) for i in range(11)]
    box = part_boxes(landmarks_with({0: pts}))[0, 0].tolist()
    cx = sum(-30.7 + i for i in range(11)) / 11
    assert box[0] == int(cx - 16 + 1)  # int() truncates toward zero, as the official rule does


def test_bad_landmarks_are_rejected():
    with pytest.raises(ValueError, match=r"\(B, 68, 2\)"):
        part_boxes(torch.zeros(5, 2))
    with pytest.raises(ValueError, match="NaN"):
        part_boxes(torch.full((68, 2), float("nan")))


def test_scale_windows_clamp_and_skip():
    boxes = torch.tensor([[[-40, -8, 60, 90], [500, 500, 560, 560], [600, 10, 700, 60], [100, 100, 131, 131]]])
    windows = scale_boxes(boxes, stride=16, feature_size=32)[0]
    assert windows[0] == (0, 0, 3, 5)           # negative corner clamped (the official code would crash)
    assert windows[1] == (31, 31, 32, 32)       # upper bound clipped to the map, still one cell
    assert windows[2] is None                   # entirely outside: component skipped
    assert windows[3] == (6, 6, 8, 8)           # in range: ⌊v/16⌋, the official rule
