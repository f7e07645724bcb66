"""Horizontal flips of aligned faces with their landmarks (left and right parts swap)."""
from __future__ import annotations

import torch

# iBUG-68 horizontal mirror: FLIP_68[i] is the point that lands on index i after a left/right flip
# (jaw 0↔16, brows 17↔26, nostrils 31↔35, eyes 36↔45 …, mouth 48↔54 …; nose bridge 27–30, 51, 57, 62, 66 fixed).
FLIP_68: tuple[int, ...] = (
    *range(16, -1, -1),                              # jaw 0..16
    *range(26, 21, -1), *range(21, 16, -1),          # brows 17..21 ↔ 22..26
    27, 28, 29, 30,                                  # nose bridge
    35, 34, 33, 32, 31,                              # nostrils
    45, 44, 43, 42, 47, 46,                          # left eye 36..41 ← right eye
    39, 38, 37, 36, 41, 40,                          # right eye 42..47 ← left eye
    54, 53, 52, 51, 50, 49, 48,                      # outer upper lip 48..54
    59, 58, 57, 56, 55,                              # outer lower lip 55..59
    64, 63, 62, 61, 60,                              # inner upper lip 60..64
    67, 66, 65,                                      # inner lower lip 65..67
)
assert len(FLIP_68) == 68 and sorted(FLIP_68) == list(range(68))



def flip_faces(faces: torch.Tensor, landmarks68: torch.Tensor, face_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Horizontal flip for augmentation → (faces (B, 3, S, S), landmarks (B, 68, 2)); boxes of the flipped face are
    ``part_boxes(landmarks, face_size)`` as for any face.

    Pixel column j goes to S−1−j, so a landmark x (pixel-index coordinates) goes to S−1−x; with integer-valued
    landmarks the official box rule then gives exactly mirrored boxes. The points are re-indexed with ``FLIP_68``
    so that the flipped face's left_eye is again the eye on the image's left (the original right eye).
    """
    landmarks68 = torch.as_tensor(landmarks68)
    if landmarks68.ndim == 2:
        landmarks68 = landmarks68.unsqueeze(0)
    if faces.ndim != 4 or faces.shape[-1] != face_size or landmarks68.shape != (faces.shape[0], 68, 2):
        raise ValueError(f"expected faces (B, 3, {face_size}, {face_size}) and landmarks (B, 68, 2), got "
                         f"{tuple(faces.shape)} and {tuple(landmarks68.shape)}")
    flipped = landmarks68[:, list(FLIP_68)].clone()
    flipped[..., 0] = face_size - 1 - flipped[..., 0]
    return faces.flip(-1), flipped
