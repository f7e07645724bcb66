"""Identity loss: the distance between dlib face-recognition descriptors of the restored and the target face.

GFPGAN trains with an ArcFace term of this kind; dfd uses dlib's ResNet (its PyTorch port,
``dfdcore.evaluation.dlib_resnet``, with dlib's own weights, frozen) — the network dfd's identity metric reads, so
the term pulls towards what is measured. Faces are aligned to the FFHQ template, so dlib's face chip (150 px,
padding 0.25 around the 5-point alignment) is one fixed square of the face for every sample.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

CHIP_SIZE = 150


@functools.cache
def template_chip_box(face_size: int) -> tuple[float, float, float, float]:
    """(x1, y1, x2, y2) in face pixels of dlib's 150-px face chip of the FFHQ template's 5 points."""
    import dlib

    from dfdcore.face.align import template_points

    parts = dlib.points([dlib.point(int(round(x)), int(round(y))) for x, y in template_points(face_size)])
    details = dlib.get_face_chip_details(
        dlib.full_object_detection(dlib.rectangle(0, 0, face_size - 1, face_size - 1), parts), CHIP_SIZE, 0.25)
    r = details.rect
    return r.left(), r.top(), r.right(), r.bottom()


def face_chips(faces: torch.Tensor, box: tuple[float, float, float, float]) -> torch.Tensor:
    """Aligned faces (B, 3, S, S) in [-1, 1] → dlib chips (B, 3, 150, 150) in [0, 255], differentiably (bilinear
    sampling of ``box``)."""
    size = faces.shape[-1]
    x1, y1, x2, y2 = (2 * (v + 0.5) / size - 1 for v in box)  # pixel centres → grid_sample's [-1, 1]
    ys = torch.linspace(y1, y2, CHIP_SIZE, device=faces.device, dtype=faces.dtype)
    xs = torch.linspace(x1, x2, CHIP_SIZE, device=faces.device, dtype=faces.dtype)
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], dim=-1).expand(faces.shape[0], -1, -1, -1)
    chips = F.grid_sample(faces, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return (chips + 1) * 127.5


class IdentityLoss(nn.Module):
    """Mean Euclidean distance of dlib descriptors, restored vs target (B, 3, S, S) in [-1, 1] → scalar. The
    descriptor network is frozen (its weights never train); gradients reach the restored faces only."""

    def __init__(self, face_size: int) -> None:
        super().__init__()
        from dfdcore.evaluation.dlib_resnet import DlibFaceEmbedder

        self.embedder = DlibFaceEmbedder.from_dlib_file().eval().requires_grad_(False)
        self.box = template_chip_box(face_size)

    def train(self, mode: bool = True) -> IdentityLoss:  # the embedder has no training mode worth having
        return super().train(False)

    def forward(self, restored: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if restored.shape != target.shape:
            raise ValueError(f"expected restored and target of the same shape, got {tuple(restored.shape)} and "
                             f"{tuple(target.shape)}")
        with torch.no_grad():
            reference = self.embedder(face_chips(target.float(), self.box))
        return (self.embedder(face_chips(restored.float(), self.box)) - reference).norm(dim=1).mean()
