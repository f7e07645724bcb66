"""`dfd restore` end to end on real photographs: failures as rows, resumable reruns, alpha, greyscale, S3."""
from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from dfd.cli import main
from dfdcore.restoration.manifest import TIMINGS, read_manifest

from .conftest import PORTRAITS, portrait
from .s3server import s3_server  # noqa: F401  (fixture)

SMALL_RANDOM = ["--random-weights", "--face-size", "128", "--ngf", "8", "--k", "8"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture()
def photo_folder(tmp_path):
    folder = tmp_path / "in"
    (folder / "nested").mkdir(parents=True)
    shutil.copy(portrait("grace_hopper.jpg"), folder / "grace_hopper.jpg")
    shutil.copy(portrait("astronaut.png"), folder / "nested" / "astronaut.png")
    (folder / "corrupt.jpg").write_bytes(portrait("obama.jpg").read_bytes()[:2000] + b"\x00garbage" * 50)
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.jpg").write_text("this is a text file, not a photograph\n")
    return folder


def test_bad_files_become_failure_rows_and_good_photos_are_restored(tmp_path, photo_folder):
    out = tmp_path / "out"
    before = {p: p.read_bytes() for p in photo_folder.rglob("*") if p.is_file()}
    result = run("restore", photo_folder, "-o", out, "--model", "identity", "--upscale", "1")
    assert result.exit_code == 1, result.output  # failures without --allow-failures
    rows = read_manifest(str(out / "manifest.parquet"))
    by_name = {r["relpath"]: r for r in rows.values()}
    assert {n for n, r in by_name.items() if r["status"] == "failed"} == {"corrupt.jpg", "empty.png", "notes.jpg"}
    assert all(by_name[n]["error"] for n in ("corrupt.jpg", "empty.png", "notes.jpg"))
    assert by_name["grace_hopper.jpg"]["status"] == "ok" and by_name["grace_hopper.jpg"]["n_faces"] == 1
    assert by_name["nested/astronaut.png"]["status"] == "ok"
    assert (out / "restored_imgs" / "grace_hopper.jpg").exists()
    assert (out / "restored_imgs" / "nested" / "astronaut.png").exists()
    assert {p: p.read_bytes() for p in photo_folder.rglob("*") if p.is_file()} == before  # inputs untouched
    assert "3 failed" in result.output


def test_rerun_does_no_work_and_force_redoes(tmp_path, photo_folder):
    out = tmp_path / "out"
    first = run("restore", photo_folder, "-o", out, "--model", "identity", "--allow-failures")
    assert first.exit_code == 0
    output = out / "restored_imgs" / "grace_hopper.jpg"
    stamp = output.stat().st_mtime_ns
    second = run("restore", photo_folder, "-o", out, "--model", "identity", "--allow-failures")
    # 2 photos done, 3 files that failed on their own bytes (corrupt, truncated, empty) are not read again
    assert "5 already done" in second.output and "0 restored" in second.output and "0 failed" in second.output
    assert "not retried 3 files" in second.output and "read       0 of" in second.output
    assert output.stat().st_mtime_ns == stamp
    changed = run("restore", photo_folder, "-o", out, "--model", "identity", "--allow-failures", "--upscale", "1")
    assert "2 restored" in changed.output  # a different configuration is new work
    forced = run("restore", photo_folder, "-o", out, "--model", "identity", "--allow-failures", "--upscale", "1",
                 "--force")
    assert "2 restored" in forced.output


def test_rgba_keeps_alpha_and_grey_stays_grey(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(portrait("32bit.png"), folder / "rgba.png")
    Image.open(portrait("grace_hopper.jpg")).convert("L").save(folder / "grey.png")
    out = tmp_path / "out"
    result = run("restore", folder, "-o", out, *SMALL_RANDOM, "--upscale", "2")
    assert result.exit_code == 0, result.output
    with Image.open(portrait("32bit.png")) as source, Image.open(out / "restored_imgs" / "rgba.png") as restored:
        assert restored.mode == "RGBA" and restored.size == (source.width * 2, source.height * 2)
        alpha_in = np.asarray(source.getchannel("A"), dtype=np.float32)
        alpha_out = np.asarray(restored.getchannel("A"), dtype=np.float32)[::2, ::2]
        assert np.abs(alpha_out - alpha_in).mean() < 2.0
    with Image.open(out / "restored_imgs" / "grey.png") as grey:
        assert grey.mode in ("L", "I;16")
    assert "RANDOM WEIGHTS" in result.output


def test_s3_bucket_as_input_and_output(tmp_path, s3_server):  # noqa: F811
    import fsspec

    fs = fsspec.filesystem("s3", endpoint_url=s3_server)
    fs.mkdir("photos")
    fs.put(str(portrait("grace_hopper.jpg")), "photos/in/a/grace_hopper.jpg")
    fs.pipe("photos/in/broken.png", b"\x89PNG\r\n\x1a\n broken")
    result = run("restore", "s3://photos/in", "-o", "s3://photos/out", "--model", "identity", "--upscale", "1",
                 "--allow-failures", "--save-faces", "--cmp")
    assert result.exit_code == 0, result.output
    assert fs.exists("photos/out/restored_imgs/a/grace_hopper.jpg")
    assert fs.exists("photos/out/restored_faces/a/grace_hopper_00.png")
    assert fs.exists("photos/out/cmp/a/grace_hopper.png")
    rows = read_manifest("s3://photos/out/manifest.parquet")
    assert {r["relpath"]: r["status"] for r in rows.values()} == {"a/grace_hopper.jpg": "ok", "broken.png": "failed"}
    restored = Image.open(io.BytesIO(fs.cat("photos/out/restored_imgs/a/grace_hopper.jpg")))
    assert restored.size == Image.open(portrait("grace_hopper.jpg")).size
    again = run("restore", "s3://photos/in", "-o", "s3://photos/out", "--model", "identity", "--upscale", "1",
                "--allow-failures", "--save-faces", "--cmp")
    assert "2 already done" in again.output and "not retried 1 file that" in again.output  # broken.png: its own bytes


def test_weights_without_their_dictionary_explain_what_to_do(tmp_path, photo_folder):
    result = CliRunner().invoke(main, ["restore", str(photo_folder), "-o", str(tmp_path / "o"), "--weights", "g.pth"])
    assert result.exit_code == 2 and "--weights without --dictionary" in result.output
    assert "DictionaryCenter512/" in result.output and not (tmp_path / "o").exists()


def test_ray_workers_give_the_same_outputs(tmp_path, photo_folder):
    single, parallel = tmp_path / "single", tmp_path / "parallel"
    assert run("restore", photo_folder, "-o", single, *SMALL_RANDOM, "--allow-failures").exit_code == 0
    result = run("restore", photo_folder, "-o", parallel, *SMALL_RANDOM, "--allow-failures", "--workers", "2")
    assert result.exit_code == 0, result.output
    rows_single, rows_parallel = (read_manifest(str(p / "manifest.parquet")) for p in (single, parallel))
    assert {r["relpath"]: r["status"] for r in rows_single.values()} == \
        {r["relpath"]: r["status"] for r in rows_parallel.values()}
    for name in ("grace_hopper.jpg", "nested/astronaut.png"):
        a = np.asarray(Image.open(single / "restored_imgs" / name), dtype=np.float32)
        b = np.asarray(Image.open(parallel / "restored_imgs" / name), dtype=np.float32)
        assert np.abs(a - b).max() <= 1.0  # same model, same seed; JPEG re-encoding aside


@pytest.mark.parametrize("upscale, bar", [(1, 38.0), (2, 37.0)])
def test_identity_model_reproduces_the_photo_in_face_regions(upscale, bar):
    """Restorer end to end with the identity model: face regions match the (upscaled) input."""
    from dfdcore.face import face_to_image_matrix, paste_faces, upscale_image
    from dfdcore.io import decode_image
    from dfdcore.restoration.restorer import IdentityModel, RestoreOptions, Restorer

    restorer = Restorer(IdentityModel(512), RestoreOptions(upscale=upscale), batch_size=4)
    images = [(p.name, decode_image(p.read_bytes())) for p in PORTRAITS.values()]
    psnrs = []
    for (name, image), (_, result) in zip(images, restorer.restore_images(images)):
        reference = upscale_image(image.rgb, upscale)
        _, mask = paste_faces(reference, [(f.image.astype(np.float32) / 255, face_to_image_matrix(f.matrix, upscale))
                                          for f in result.faces], return_mask=True)
        inside = mask > 0.5
        psnrs.append(10 * np.log10(1 / np.mean((result.restored[inside] - reference[inside]) ** 2)))
    assert len(psnrs) == len(PORTRAITS) and np.median(psnrs) >= bar, psnrs


def test_sixteen_bit_input_keeps_its_depth(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    grey = np.asarray(Image.open(portrait("grace_hopper.jpg")).convert("L"), dtype=np.uint16) * 257 + 3
    Image.fromarray(grey).save(folder / "deep.png")  # 16-bit greyscale PNG; +3 is below 8-bit resolution
    out = tmp_path / "out"
    assert run("restore", folder, "-o", out, "--model", "identity", "--upscale", "1").exit_code == 0
    with Image.open(out / "restored_imgs" / "deep.png") as restored:
        assert restored.mode.startswith("I")  # still 16-bit greyscale
        pixels = np.asarray(restored, dtype=np.int64)
    background = pixels[:40, :40]  # a corner far from the face: the input at full precision
    assert np.array_equal(background, grey[:40, :40].astype(np.int64))


def test_a_small_face_pasted_back_unchanged_loses_nothing_against_a_plain_bicubic_upscale():
    """Crop → paste of an unchanged face costs nothing: the small face is enlarged into its crop bicubically."""
    import cv2

    from dfdcore.evaluation.metrics import psnr
    from dfdcore.face.paste import upscale_image
    from dfdcore.io.images import decode_image
    from dfdcore.restoration.restorer import IdentityModel, RestoreOptions, Restorer

    truth = cv2.resize(np.asarray(Image.open(portrait("grace_hopper.jpg")).convert("RGB")), (256, 256),
                       interpolation=cv2.INTER_AREA)
    small = cv2.resize(truth, (128, 128), interpolation=cv2.INTER_AREA)  # the face is ~45 px wide here
    image = decode_image(cv2.imencode(".png", small[..., ::-1])[1].tobytes())
    (_, result), = Restorer(IdentityModel(128), RestoreOptions(upscale=2, upsample=2)).restore_images([(0, image)])
    assert len(result.faces) == 1
    x1, y1, x2, y2 = (2 * v for v in result.faces[0].detection.box)
    face = (slice(max(0, y1), y2), slice(max(0, x1), x2))
    pasted = (result.restored * 255).round().astype(np.uint8)
    bicubic = (np.clip(upscale_image(small.astype(np.float32) / 255, 2), 0, 1) * 255).round().astype(np.uint8)
    assert psnr(pasted[face], truth[face]) > psnr(bicubic[face], truth[face]) - 0.1, "round trip loses detail"


def test_the_manifest_keeps_every_timing_it_measures(tmp_path):
    # bulk hands the manifest every timing it measured: a stage the schema lacks is refused (not dropped), a
    # stage the schema has but bulk did not measure comes back None — either fails here.
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(portrait("grace_hopper.jpg"), folder / "grace_hopper.jpg")
    assert run("restore", folder, "-o", tmp_path / "out", "--model", "identity").exit_code == 0
    [row] = read_manifest(str(tmp_path / "out" / "manifest.parquet")).values()
    seconds = row["seconds"]
    assert set(seconds) == {"decode", "detect", "restore", "paste", "write", "total"} == set(TIMINGS)
    assert all(value is not None and value >= 0 for value in seconds.values()), seconds
    assert seconds["paste"] > 0 and seconds["write"] > 0
    parts = sum(v for k, v in seconds.items() if k != "total")
    assert abs(seconds["total"] - parts) < 1e-3 * max(1.0, parts)


def test_summaries_of_parts_add_up():
    from dfdcore.io.storage import Source
    from dfdcore.restoration.bulk import BulkSummary

    first = BulkSummary(images=3, restored=2, no_face=1, faces=5, skipped=1, seconds=2.0, rows=[{"source_uri": "a"}])
    failed = BulkSummary.all_failed([Source("s3://b/x.jpg", "x.jpg"), Source("s3://b/y.jpg", "y.jpg")], "disk full")
    stopped = BulkSummary(storage_error="output storage refused a write", unrecorded=4, seconds=3.5, run_id="r1")
    total = first + failed + stopped + BulkSummary(storage_error="later", run_id="r2")
    assert (total.images, total.restored, total.no_face, total.failed, total.faces, total.skipped) == (5, 2, 1, 2, 5, 1)
    assert (total.unrecorded, total.seconds, total.run_id) == (4, 3.5, "r1")
    assert total.storage_error == "output storage refused a write"  # the first one says what happened first
    assert total.failures == [("s3://b/x.jpg", "disk full"), ("s3://b/y.jpg", "disk full")]
    assert [r["source_uri"] for r in total.rows] == ["a", "s3://b/x.jpg", "s3://b/y.jpg"]
    assert failed.rows[0] == {"source_uri": "s3://b/x.jpg", "relpath": "x.jpg", "status": "failed",
                              "error": "disk full"}
    assert len(first.rows) == 1 and first.failures == []  # the parts are not changed
