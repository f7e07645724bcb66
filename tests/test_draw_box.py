"""`dfd restore --draw-box`: the restored faces' detection boxes and aligned squares are drawn into the output, and
nothing else changes (identity model, real portraits)."""
from __future__ import annotations

import cv2
import numpy as np
from click.testing import CliRunner
from PIL import Image

from dfd.restore_commands import restore
from dfdcore.io.images import decode_image
from dfdcore.restoration.restorer import (
    BOX_COLOUR,
    IdentityModel,
    RestoreOptions,
    Restorer,
    face_outline,
    line_width,
)

from .conftest import portrait


def restore_photo(name: str, **options):
    image = decode_image(portrait(name).read_bytes(), name=name)
    restorer = Restorer(IdentityModel(512), RestoreOptions(**options))
    [(_, result)] = restorer.restore_images([(name, image)])
    return result


def outline_mask(shape, outlines, width: int) -> np.ndarray:
    """(H, W) bool: pixels within ``width`` of any outline (where drawing may change them)."""
    mask = np.zeros(shape, np.uint8)
    for box, square in outlines:
        for corners in (box, square):
            cv2.polylines(mask, [np.round(corners).astype(np.int32).reshape(-1, 1, 2)], True, 1, 3 * width)
    return mask.astype(bool)


def test_box_outline_changes_and_the_rest_does_not():
    plain = restore_photo("grace_hopper.jpg", upscale=2)
    boxed = restore_photo("grace_hopper.jpg", upscale=2, draw_box=True)
    [face] = boxed.faces
    box, square = face_outline(face, 2)
    width = line_width(boxed.restored.shape)
    assert width == 3  # 1024-px output
    changed = np.abs(boxed.restored - plain.restored).max(axis=2) > 1e-6
    # every pixel on the detection box's edges (sampled along them) is the box colour
    for (x0, y0), (x1, y1) in zip(box, np.roll(box, -1, axis=0)):
        for t in np.linspace(0, 1, 25):
            x, y = round(x0 + t * (x1 - x0)), round(y0 + t * (y1 - y0))
            np.testing.assert_allclose(boxed.restored[y, x], BOX_COLOUR, atol=1e-6)
            assert changed[y, x]
    # the box is where the face is: the pasted detection, scaled into the 2x output
    x1, y1, x2, y2 = face.detection.box
    assert np.allclose(box[0], (2 * x1 + 0.5, 2 * y1 + 0.5)) and np.allclose(box[2], (2 * x2 + 0.5, 2 * y2 + 0.5))
    # far from both outlines nothing changed, and the lines are a small part of the picture
    near = outline_mask(changed.shape, [(box, square)], width)
    assert not changed[~near].any()
    assert 0.005 < changed.mean() < 0.03


def test_line_width_follows_the_output_and_alpha_shows_the_lines(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    rgb = np.asarray(Image.open(portrait("astronaut.png")).convert("RGB"))
    Image.fromarray(np.dstack([rgb, np.zeros(rgb.shape[:2], np.uint8)]), "RGBA").save(folder / "clear.png")
    out = tmp_path / "out"
    result = CliRunner().invoke(restore, [str(folder), "-o", str(out), "--model", "identity", "--upscale", "1",
                                          "--draw-box"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    with Image.open(out / "restored_imgs" / "clear.png") as restored:
        pixels = np.asarray(restored)
    assert pixels.shape == (512, 512, 4)
    opaque = pixels[..., 3] > 0
    green = (pixels[..., 1] == 255) & (pixels[..., 0] == 0) & (pixels[..., 2] == 0)
    # fully transparent input: only the drawn lines are opaque, and they are the box (green) or square (magenta)
    assert opaque.any() and (green & opaque).sum() > 0.5 * 4 * 100
    magenta = (pixels[..., 0] == 255) & (pixels[..., 1] == 0) & (pixels[..., 2] == 255)
    assert not (opaque & ~green & ~magenta).any()
    assert line_width((512, 512, 3)) == 1 and line_width((4000, 3000, 3)) == 10
