"""Sizes of a DFDNet generator, derived from two numbers: the face size and the channel width.

The official release is ``GeneratorConfig(face_size=512, ngf=64)``; tests use small
networks such as ``GeneratorConfig(face_size=128, ngf=8)`` with the same structure.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

PARTS: tuple[str, ...] = ("left_eye", "right_eye", "nose", "mouth")
PART_PREFIXES: dict[str, str] = {"left_eye": "le", "right_eye": "re", "nose": "no", "mouth": "mo"}
# Component box sides on a 512-px face; they fix the dictionary spatial sizes.
PART_SIDES_512: tuple[int, ...] = (80, 80, 50, 110)
# Feature-map strides of the four VGG taps: relu2_2, relu3_4, relu4_4, conv5_4.
TAP_STRIDES: tuple[int, ...] = (2, 4, 8, 16)
OFFICIAL_FACE_SIZE = 512
OFFICIAL_NGF = 64


@dataclass(frozen=True)
class GeneratorConfig:
    """Face size in pixels and channel width (``ngf``; VGG19 widths scale with it)."""

    face_size: int = OFFICIAL_FACE_SIZE
    ngf: int = OFFICIAL_NGF

    def __post_init__(self) -> None:
        if self.face_size % 32 or self.face_size < 64:
            raise ValueError(f"face_size must be a multiple of 32 and >= 64, got {self.face_size}")
        if self.ngf < 1:
            raise ValueError(f"ngf must be >= 1, got {self.ngf}")

    @property
    def is_official(self) -> bool:
        return self.face_size == OFFICIAL_FACE_SIZE and self.ngf == OFFICIAL_NGF

    @property
    def feature_sizes(self) -> tuple[int, ...]:
        """Spatial side of each VGG tap, e.g. (256, 128, 64, 32) for a 512 face."""
        return tuple(self.face_size // s for s in TAP_STRIDES)

    @property
    def tap_channels(self) -> tuple[int, ...]:
        """Channels of each VGG tap, e.g. (128, 256, 512, 512) for ngf 64."""
        return (2 * self.ngf, 4 * self.ngf, 8 * self.ngf, 8 * self.ngf)

    @property
    def scales(self) -> tuple[int, ...]:
        """Scale names used by dictionaries and state_dict keys: the tap sides."""
        return self.feature_sizes

    def part_side(self, part: str) -> int:
        """Component box side on this face size (80/80/50/110 on a 512 face)."""
        return PART_SIDES_512[PARTS.index(part)] * self.face_size // OFFICIAL_FACE_SIZE

    def dict_size(self, scale: int, part: str) -> int:
        """Spatial side of the dictionary entries of ``part`` at ``scale``.

        part_side // stride, as the official release (3 or more there); at least 2 so that the unbiased variance of
        component AdaIN is defined in small test networks.
        """
        stride = self.face_size // scale
        return max(2, self.part_side(part) // stride)

    def dict_shape(self, scale: int, part: str, k: int) -> tuple[int, int, int, int]:
        channels = self.tap_channels[self.scales.index(scale)]
        side = self.dict_size(scale, part)
        return (k, channels, side, side)

    @property
    def min_half_size(self) -> float:
        """Smallest half-side of a component box (16 px on a 512 face)."""
        return 16 * self.face_size / OFFICIAL_FACE_SIZE

    def to_dict(self) -> dict:
        return asdict(self)


OFFICIAL = GeneratorConfig()
