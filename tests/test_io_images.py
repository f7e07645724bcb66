"""Image decode/encode on real photos and on broken, hostile and unusual files."""
from __future__ import annotations

import io
import pickle
import struct
import time
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps

from dfdcore.io import ImageDecodeError, decode_image, encode_image, read_rgb, write_image
from dfdcore.io.images import orient

from .conftest import portrait


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height RGB but holds one empty IDAT: a decompression bomb's header."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b""))
            + _png_chunk(b"IEND", b""))


def _saved(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _reason(data: bytes, **kwargs) -> str:
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(data, name="case.bin", **kwargs)
    assert str(caught.value).startswith("case.bin: cannot read image: ")
    return caught.value.reason


def test_real_photos_decode_to_consistent_views():
    decoded = decode_image(portrait("obama.jpg").read_bytes(), "obama.jpg")
    assert decoded.format == "JPEG" and decoded.size == (910, 1137)
    assert decoded.rgb8.shape == (1137, 910, 3) and decoded.rgb8.dtype == np.uint8
    assert decoded.rgb.shape == (1137, 910, 3) and decoded.rgb.dtype == np.float32
    assert decoded.alpha is None and not decoded.grey and decoded.bit_depth == 8
    np.testing.assert_array_equal(np.rint(decoded.rgb * 255).astype(np.uint8), decoded.rgb8)


def test_empty_file():
    assert _reason(b"") == "empty file"


def test_decode_errors_survive_pickling():
    # Workers in other processes report failures back to the driver.
    error = ImageDecodeError("truncated image", "ends early", "s3://b/x.jpg")
    again = pickle.loads(pickle.dumps(error))
    assert (again.reason, again.detail, again.name, str(again)) == (error.reason, error.detail, error.name,
                                                                    str(error))


def test_text_file_is_not_an_image():
    assert _reason(b"name,score\nobama,0.9\n" * 20) == "not an image"


def test_corrupt_bytes_after_a_jpeg_signature():
    assert _reason(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4) in ("not an image", "corrupt image")


@pytest.mark.parametrize("name", ["obama.jpg", "grace_hopper.jpg", "astronaut.png", "32bit.png"])
@pytest.mark.parametrize("fraction", [0.05, 0.5, 0.98])
def test_truncated_files_raise(name, fraction):
    data = portrait(name).read_bytes()
    assert _reason(data[:int(len(data) * fraction)]) == "truncated image"


@pytest.mark.parametrize("name", ["grace_hopper.jpg", "astronaut.png"])
def test_truncated_files_raise_even_when_pil_is_told_to_accept_them(name, monkeypatch):
    # Some library in the process may switch this global on; we must still refuse grey-filled pictures.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    data = portrait(name).read_bytes()
    assert _reason(data[:len(data) // 2]) == "truncated image"


def test_complete_file_decodes_when_pil_accepts_truncation(monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    data = portrait("obama.jpg").read_bytes()  # has an EXIF block, so an FF D9 comes before the scan too
    assert decode_image(data).size == (910, 1137)


def test_decompression_bomb_fails_fast_without_allocating():
    bomb = _png_header_only(100_000, 100_000)
    assert len(bomb) < 100
    started = time.perf_counter()
    assert _reason(bomb) == "image too large"
    assert time.perf_counter() - started < 1.0


def test_max_pixels_is_checked_before_decoding():
    # 8000 x 8000 is within PIL's own limit; the header alone must be enough for ours.
    started = time.perf_counter()
    assert _reason(_png_header_only(8000, 8000), max_pixels=1_000_000) == "image too large"
    assert time.perf_counter() - started < 1.0
    assert _reason(portrait("astronaut.png").read_bytes(), max_pixels=512 * 512 - 1) == "image too large"
    assert decode_image(portrait("astronaut.png").read_bytes(), max_pixels=512 * 512).size == (512, 512)


def test_rgba_keeps_alpha_through_png_round_trip():
    source = Image.open(portrait("32bit.png"))
    assert source.mode == "RGBA"
    decoded = decode_image(portrait("32bit.png").read_bytes())
    assert decoded.alpha is not None and decoded.alpha.shape == (1200, 626)
    # Its alpha is all opaque; fade it so that a lost or flattened channel would show.
    faded = np.asarray(source).copy()
    faded[..., 3] = np.linspace(0, 255, 626).round().astype(np.uint8)
    decoded = decode_image(_saved(Image.fromarray(faded), "PNG"))
    np.testing.assert_array_equal(np.rint(decoded.alpha * 255).astype(np.uint8), faded[..., 3])
    again = decode_image(encode_image(decoded.rgb, alpha=decoded.alpha, ext="png"))
    np.testing.assert_array_equal(again.rgb8, decoded.rgb8)
    np.testing.assert_allclose(again.alpha, decoded.alpha, atol=1e-6)


def test_alpha_is_composited_on_white_for_jpeg():
    rgb = np.zeros((8, 8, 3), np.float32)
    alpha = np.zeros((8, 8), np.float32)
    alpha[:, 4:] = 1.0
    decoded = decode_image(encode_image(rgb, alpha=alpha, ext="jpg", quality=100))
    assert decoded.alpha is None
    assert decoded.rgb8[:, :2].min() > 240 and decoded.rgb8[:, 6:].max() < 15


@pytest.mark.parametrize("ext", ["webp", "tiff"])
def test_alpha_kept_by_webp_and_tiff(ext):
    rgb = np.full((6, 6, 3), 0.5, np.float32)
    alpha = np.tile(np.linspace(0, 1, 6, dtype=np.float32), (6, 1))
    decoded = decode_image(encode_image(rgb, alpha=alpha, ext=ext))
    assert decoded.alpha is not None
    np.testing.assert_allclose(decoded.alpha, alpha, atol=1 / 255 + 1e-6)


def test_greyscale_in_greyscale_out():
    grey = np.asarray(Image.open(portrait("grace_hopper.jpg")).convert("L"))
    decoded = decode_image(_saved(Image.fromarray(grey), "PNG"))
    assert decoded.grey and decoded.bit_depth == 8
    np.testing.assert_array_equal(decoded.rgb8[..., 0], grey)
    np.testing.assert_array_equal(decoded.rgb8[..., 0], decoded.rgb8[..., 2])
    written = Image.open(io.BytesIO(encode_image(decoded.rgb, grey=True, ext="png")))
    assert written.mode == "L"
    np.testing.assert_array_equal(np.asarray(written), grey)


def test_sixteen_bit_greyscale_png_keeps_sixteen_bits():
    levels = (np.arange(64 * 48, dtype=np.uint32) * 21 % 65536).astype(np.uint16).reshape(48, 64)
    data = _saved(Image.fromarray(levels), "PNG")
    decoded = decode_image(data)
    assert decoded.grey and decoded.bit_depth == 16
    np.testing.assert_array_equal(np.rint(decoded.rgb[..., 1] * 65535).astype(np.uint16), levels)
    written = Image.open(io.BytesIO(encode_image(decoded.rgb, grey=True, bit_depth=16, ext="png")))
    assert written.mode == "I;16"
    np.testing.assert_array_equal(np.asarray(written), levels)


def test_sixteen_bit_colour_png_keeps_sixteen_bits():
    # Pillow reads these as 8-bit RGB; the decoder must not.
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 65536, (20, 30, 4), dtype=np.uint16)
    ok, encoded = cv2.imencode(".png", rgba[..., [2, 1, 0, 3]])
    assert ok
    assert Image.open(io.BytesIO(encoded.tobytes())).mode == "RGBA"
    decoded = decode_image(encoded.tobytes())
    assert decoded.bit_depth == 16 and not decoded.grey
    np.testing.assert_array_equal(np.rint(decoded.rgb * 65535).astype(np.uint16), rgba[..., :3])
    np.testing.assert_array_equal(np.rint(decoded.alpha * 65535).astype(np.uint16), rgba[..., 3])
    np.testing.assert_array_equal(decoded.rgb8, np.rint(rgba[..., :3] / 257).astype(np.uint8))
    again = decode_image(encode_image(decoded.rgb, alpha=decoded.alpha, bit_depth=16, ext="png", text={"k": "v"}))
    np.testing.assert_array_equal(again.rgb, decoded.rgb)
    np.testing.assert_array_equal(again.alpha, decoded.alpha)


def test_sixteen_bit_tiff_round_trip():
    rng = np.random.default_rng(1)
    rgb = rng.random((10, 12, 3), dtype=np.float32)
    decoded = decode_image(encode_image(rgb, bit_depth=16, ext="tif"))
    assert decoded.format == "TIFF" and decoded.bit_depth == 16
    np.testing.assert_allclose(decoded.rgb, rgb, atol=0.5 / 65535 + 1e-7)


def test_sixteen_bit_is_reduced_for_formats_without_it():
    data = encode_image(np.full((4, 4, 3), 0.5, np.float32), bit_depth=16, ext="jpg")
    assert decode_image(data).bit_depth == 8


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_rotated_jpeg_comes_out_upright(orientation):
    upright = np.asarray(Image.open(portrait("grace_hopper.jpg")))[:300, :200]
    # Store the pixels as a camera would (sideways), with the tag that undoes it.
    stored = np.asarray(ImageOps.exif_transpose(_tagged(Image.fromarray(upright), _INVERSE[orientation])))
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = orientation
    decoded = decode_image(_saved(image, "JPEG", quality=98, exif=exif.tobytes()))
    assert decoded.size == (200, 300)
    assert np.abs(decoded.rgb8.astype(int) - upright).mean() < 3


_INVERSE = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 8, 7: 7, 8: 6}


def _tagged(image: Image.Image, orientation: int) -> Image.Image:
    exif = image.getexif()
    exif[0x0112] = orientation
    return Image.open(io.BytesIO(_saved(image, "PNG", exif=exif.tobytes())))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_matches_pil(orientation):
    array = np.arange(3 * 5 * 3, dtype=np.uint8).reshape(3, 5, 3)
    expected = np.asarray(ImageOps.exif_transpose(_tagged(Image.fromarray(array), orientation)))
    np.testing.assert_array_equal(orient(array, orientation), expected)


def test_palette_png_with_transparency_gives_alpha():
    palette = Image.new("P", (4, 2))
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putdata([0, 1, 0, 1, 1, 0, 1, 0])
    decoded = decode_image(_saved(palette, "PNG", transparency=1))
    assert decoded.alpha is not None and not decoded.grey
    np.testing.assert_array_equal(decoded.alpha[0], [1, 0, 1, 0])
    np.testing.assert_array_equal(decoded.rgb8[0, 0], [255, 0, 0])


def test_palette_without_transparency_has_no_alpha():
    decoded = decode_image(_saved(Image.open(portrait("astronaut.png")).convert("P"), "PNG"))
    assert decoded.alpha is None and decoded.rgb8.shape == (512, 512, 3)


def test_cmyk_jpeg_gives_sensible_rgb():
    rgb = np.asarray(Image.open(portrait("grace_hopper.jpg")))
    data = _saved(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    decoded = decode_image(data)
    assert decoded.format == "JPEG" and not decoded.grey
    assert np.abs(decoded.rgb8.astype(int) - rgb).mean() < 3


def test_bilevel_and_float_modes():
    bilevel = decode_image(_saved(Image.fromarray(np.eye(4, dtype=bool)), "PNG"))
    assert bilevel.grey and set(np.unique(bilevel.rgb8)) == {0, 255}
    floats = Image.fromarray(np.linspace(-0.5, 1.5, 12, dtype=np.float32).reshape(3, 4), "F")
    decoded = decode_image(_saved(floats, "TIFF"))
    assert decoded.grey and decoded.bit_depth == 16
    assert decoded.rgb.min() == 0 and decoded.rgb.max() == 1


def test_sixteen_bit_ppm_keeps_its_scale():
    samples = np.array([[[1, 512, 1023]]], dtype=">u2")
    decoded = decode_image(b"P6\n1 1\n1023\n" + samples.tobytes())
    assert decoded.bit_depth == 16
    np.testing.assert_allclose(decoded.rgb[0, 0], np.array([1, 512, 1023]) / 1023, rtol=1e-6)


def test_encode_rounds_to_nearest_and_checks_input():
    rgb = np.full((2, 2, 3), 100.4 / 255, np.float32)
    rgb[0, 0] = 100.6 / 255
    out = np.asarray(Image.open(io.BytesIO(encode_image(rgb))))
    assert out[0, 0, 0] == 101 and out[1, 1, 0] == 100
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        encode_image(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="extension"):
        encode_image(np.zeros((4, 4, 3), np.float32), ext="docx")
    with pytest.raises(ValueError, match="alpha"):
        encode_image(np.zeros((4, 4, 3), np.float32), alpha=np.zeros((3, 4), np.float32))


def test_png_text_chunks():
    data = encode_image(np.zeros((4, 4, 3), np.float32), text={"dfd:model": "random weights"})
    assert Image.open(io.BytesIO(data)).text == {"dfd:model": "random weights"}


def test_read_rgb_and_write_image_keep_working(tmp_path):
    rgb = read_rgb(portrait("grace_hopper.jpg"))
    assert rgb.shape == (512, 512, 3) and rgb.dtype == np.uint8
    written = write_image(tmp_path / "out" / "x.png", rgb, {"note": "hi"})
    assert written == tmp_path / "out" / "x.png"
    np.testing.assert_array_equal(read_rgb(written), rgb)
    assert Image.open(written).text == {"note": "hi"}
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["x.png"]
    with pytest.raises(ValueError, match="missing.jpg: cannot read image"):
        read_rgb(tmp_path / "missing.jpg")
