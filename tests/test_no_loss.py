"""Nothing lost, nothing hung: name collisions, outputs inside inputs, concurrent runs, special files, odd names,
memory bombs, storage faults, killed runs and dead workers — each input ends as exactly one row (issue 11)."""
from __future__ import annotations

import os
import signal
import stat
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from dfd.cli import main
from dfdcore.io.atomic import remove_stale_parts
from dfdcore.restoration.manifest import manifest_parts, read_manifest
from dfdcore.restoration.memory import bytes_per_pixel, default_max_pixels, machine_memory_bytes

from .conftest import PORTRAITS, portrait

IDENTITY = ["--model", "identity", "--upscale", "1"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def rows_of(out: Path) -> dict[str, dict]:
    return {row["relpath"]: row for row in read_manifest(str(out / "manifest.parquet")).values()}


def small_photos(folder: Path, count: int, prefix: str = "p", side: int = 256) -> list[Path]:
    """``count`` small JPEG portraits (the bundled portraits, cycled) — small, so detection takes tens of ms."""
    folder.mkdir(parents=True, exist_ok=True)
    sources = [p for p in PORTRAITS.values() if p.suffix == ".jpg" and "partial" not in p.name]
    paths = []
    for i in range(count):
        image = Image.open(sources[i % len(sources)]).convert("RGB")
        image.thumbnail((side, side))
        path = folder / f"{prefix}_{i:02d}.jpg"
        image.save(path, quality=92)
        paths.append(path)
    return paths


def test_inputs_differing_only_in_extension_or_case_get_distinct_outputs(tmp_path):
    folder = tmp_path / "in"
    [jpg] = small_photos(folder, 1)
    image = Image.open(jpg)
    image.save(folder / "photo.bmp")
    image.save(folder / "photo.webp")
    image.save(folder / "x.png")
    image.save(folder / "x.tif")
    image.save(folder / "a.JPG", format="JPEG")
    image.save(folder / "a.jpg")
    out = tmp_path / "out"
    assert run("restore", folder, "-o", out, *IDENTITY).exit_code == 0
    rows = rows_of(out)
    assert len(rows) == 7 and all(r["status"] == "ok" for r in rows.values())
    outputs = [r["outputs"][0] for r in rows.values()]
    assert len({o.casefold() for o in outputs}) == 7, outputs  # distinct even on case-insensitive stores
    assert all(Path(o).is_file() for o in outputs)
    assert Path(rows["p_00.jpg"]["outputs"][0]).name == "p_00.jpg"  # no collision: the plain name
    assert Path(rows["photo.bmp"]["outputs"][0]).name.startswith("photo~")
    # the rule depends only on the input names: a rerun with --force writes the same names
    assert run("restore", folder, "-o", out, *IDENTITY, "--force").exit_code == 0
    assert sorted(r["outputs"][0] for r in rows_of(out).values()) == sorted(outputs)
    assert len(list((out / "restored_imgs").iterdir())) == 7


def test_output_inside_or_equal_to_the_input_never_reads_or_overwrites_it(tmp_path):
    folder = tmp_path / "photos"
    small_photos(folder, 2)
    planted = folder / "restored_imgs" / "p_00.jpg"  # an input where an output would go
    planted.parent.mkdir()
    planted.write_bytes(b"an input that must survive")
    result = run("restore", folder, "-o", folder, *IDENTITY)
    assert result.exit_code == 1 and "already hold files dfd did not write" in result.output
    assert planted.read_bytes() == b"an input that must survive"
    assert not (folder / "manifest.parquet").exists()
    planted.unlink()
    planted.parent.rmdir()
    assert run("restore", folder, "-o", folder, *IDENTITY).exit_code == 0
    rerun = run("restore", folder, "-o", folder, *IDENTITY)  # its own outputs are left out, quietly
    assert set(rows_of(folder)) == {"p_00.jpg", "p_01.jpg"} and "2 already done" in rerun.output
    assert "left out   3 files of the output itself" in rerun.output  # 2 outputs and the manifest's part
    # An output inside the input: reruns do not take in the previous outputs.
    other = tmp_path / "other"
    small_photos(other, 2)
    nested = other / "out"
    for _ in range(3):
        assert run("restore", other, "-o", nested, *IDENTITY).exit_code == 0
    assert set(rows_of(nested)) == {"p_00.jpg", "p_01.jpg"}
    assert len(list((nested / "restored_imgs").rglob("*.jpg"))) == 2


def test_two_concurrent_runs_into_one_output_keep_every_row(tmp_path):
    small_photos(tmp_path / "a", 15, "a")
    small_photos(tmp_path / "b", 12, "b")
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = [subprocess.Popen([sys.executable, "-m", "dfd", "restore", str(tmp_path / name), "-o", str(out),
                              *IDENTITY], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            for name in ("a", "b")]
    for process in runs:
        output, _ = process.communicate(timeout=600)
        assert process.returncode == 0, output.decode()[-2000:]
    rows = rows_of(out)
    assert len(rows) == 27 and all(r["status"] == "ok" for r in rows.values())
    assert len(list((out / "restored_imgs").iterdir())) == 27


def test_special_files_are_rows_and_never_hang(tmp_path):
    folder = tmp_path / "in"
    small_photos(folder, 1)
    os.mkfifo(folder / "x.jpg")
    os.symlink("/dev/zero", folder / "z.jpg")
    os.symlink(folder / "p_00.jpg", folder / "link.jpg")
    os.symlink(folder / "missing.jpg", folder / "dangling.jpg")
    Image.new("RGB", (64, 64)).save(folder / "anim.gif")
    (folder / "notes.txt").write_text("not a photo")
    out = tmp_path / "out"
    started = time.monotonic()
    result = run("restore", folder, "-o", out, *IDENTITY)
    assert time.monotonic() - started < 120
    rows = rows_of(out)
    assert rows["p_00.jpg"]["status"] == rows["link.jpg"]["status"] == "ok"
    assert rows["x.jpg"]["status"] == "skipped" and "FIFO" in rows["x.jpg"]["error"]
    assert rows["z.jpg"]["status"] == "skipped" and "character device" in rows["z.jpg"]["error"]
    assert rows["dangling.jpg"]["status"] == "failed" and "broken symbolic link" in rows["dangling.jpg"]["error"]
    assert rows["anim.gif"]["status"] == rows["notes.txt"]["status"] == "skipped"
    assert "not an image file name (.gif)" in rows["anim.gif"]["error"]
    assert result.exit_code == 1  # the broken link failed
    # A FIFO named on its own is a row too, not "no such file".
    alone = run("restore", folder / "x.jpg", "-o", tmp_path / "alone", *IDENTITY)
    assert alone.exit_code == 0, alone.output
    assert rows_of(tmp_path / "alone")["x.jpg"]["status"] == "skipped"


def test_a_file_name_that_is_not_utf8_is_recorded_exactly_and_reruns_skip_it(tmp_path):
    folder = tmp_path / "in"
    [photo] = small_photos(folder, 1)
    odd = os.fsdecode(b"caf\xe9-\xff.jpg")  # Latin-1 bytes: not UTF-8
    os.rename(photo, folder / odd)
    out = tmp_path / "out"
    first = run("restore", folder, "-o", out, *IDENTITY)
    assert first.exit_code == 0, first.output
    [row] = read_manifest(str(out / "manifest.parquet")).values()
    assert row["relpath"] == odd and row["source_uri"] == str(folder / odd) and row["status"] == "ok"
    assert Path(row["outputs"][0]).is_file() and os.fsencode(Path(row["outputs"][0]).name) == b"caf\xe9-\xff.jpg"
    second = run("restore", folder, "-o", out, *IDENTITY)
    assert "1 already done" in second.output


def _png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width`` × ``height`` pixels (one IDAT of a few zero rows): a decompression bomb's header."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
            + chunk(b"IEND", b""))


def test_the_default_pixel_limit_follows_memory_and_refuses_bombs_before_decoding(tmp_path):
    assert default_max_pixels(2, memory_bytes=24 * 2**30) < 13_000 ** 2  # the 164 KB bomb of the issue
    assert default_max_pixels(2, workers=2, memory_bytes=24 * 2**30) == default_max_pixels(2, memory_bytes=12 * 2**30)
    assert default_max_pixels(4) < default_max_pixels(1)
    # an image that would need more than the machine's memory at --upscale 2
    side = int((machine_memory_bytes() / bytes_per_pixel(2)) ** 0.5) + 1
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "bomb.png").write_bytes(_png_header(side, side))
    result = run("restore", folder, "-o", tmp_path / "out", "--model", "identity", "--upscale", "2")
    row = rows_of(tmp_path / "out")["bomb.png"]
    assert result.exit_code == 1 and row["status"] == "failed" and "image too large" in row["error"]


def test_outputs_and_the_manifest_honour_the_umask(tmp_path):
    folder = tmp_path / "in"
    small_photos(folder, 1)
    old = os.umask(0o022)
    try:
        assert run("restore", folder, "-o", tmp_path / "out", *IDENTITY).exit_code == 0
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert files and {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o644}


def test_multi_frame_files_and_damaged_pngs_say_what_happened(tmp_path):
    folder = tmp_path / "in"
    [photo] = small_photos(folder, 1)
    frames = [Image.open(photo).convert("RGB")] * 3
    frames[0].save(folder / "pages.tif", save_all=True, append_images=frames[1:])
    good = portrait("astronaut.png").read_bytes()
    (folder / "badcrc.png").write_bytes(good[:29] + bytes([good[29] ^ 0xFF]) + good[30:])  # IHDR checksum broken
    rows = rows_of(_restored(folder, tmp_path / "out"))
    assert rows["pages.tif"]["status"] == "ok" and rows["pages.tif"]["note"] == "first of 3 frames restored"
    assert rows["badcrc.png"]["status"] == "failed" and rows["badcrc.png"]["error"].startswith("badcrc.png: cannot "
                                                                                              "read image: corrupt")


def _restored(folder: Path, out: Path) -> Path:
    run("restore", folder, "-o", out, *IDENTITY)
    return out


def test_a_corrupt_manifest_part_is_set_aside_by_name_and_its_images_redone(tmp_path):
    folder = tmp_path / "in"
    small_photos(folder, 1)
    out = _restored(folder, tmp_path / "out")
    [part] = manifest_parts(str(out / "manifest.parquet"))
    Path(part).write_bytes(b"garbage")
    with pytest.raises(ValueError, match="damaged manifest part.*Move it aside or delete it"):
        read_manifest(str(out / "manifest.parquet"))  # the documented reader: one line saying what to do
    result = CliRunner().invoke(main, ["restore", str(folder), "-o", str(out), *IDENTITY])
    assert result.exit_code == 1  # a run sets it aside itself, says so, and exits non-zero
    assert f"DAMAGED    manifest part {part}" in result.output and "1 restored" in result.output
    assert Path(part + ".damaged").read_bytes() == b"garbage"
    assert "Traceback" not in result.output


def test_stale_part_files_of_killed_writers_are_removed(tmp_path):
    out = tmp_path / "out" / "restored_imgs"
    out.mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = os.uname().nodename.replace(".", "-")
    stale = out / f".a.jpg.{host}.{dead.pid}.abc123.part"
    live = out / f".b.jpg.{host}.{os.getpid()}.def456.part"
    old = out / ".c.jpg.otherhost.1.ghi789.part"
    for path in (stale, live, old):
        path.write_bytes(b"partial")
    os.utime(old, (time.time() - 3 * 86400,) * 2)
    assert sorted(remove_stale_parts(tmp_path / "out")) == sorted([stale, old])
    assert live.exists()


def _mount_tmpfs(path: Path, options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.fixture()
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "size=600k"):
        pytest.skip("needs a tmpfs mount (root with CAP_SYS_ADMIN) to fill a disk")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_stops_the_run_at_once_with_every_input_a_row(tmp_path, small_disk):
    folder = tmp_path / "in"
    small_photos(folder, 12, side=400)
    result = run("restore", folder, "-o", small_disk / "out", *IDENTITY, "--ext", "png")
    assert result.exit_code == 1
    assert "STOPPED" in result.output and "No space left on device" in result.output
    rows = rows_of(small_disk / "out") if (small_disk / "out" / "manifest.parquet").exists() else {}
    recorded = sum(r["status"] == "ok" for r in rows.values())
    not_attempted = [r for r in rows.values() if (r["error"] or "").startswith("not attempted")]
    if rows:  # the rows fit: every input is one, the ones after the failure were not attempted
        assert len(rows) == 12 and not_attempted and recorded < 12
    else:
        assert "rows could not be recorded" in result.output


def test_a_read_only_output_fails_before_any_work(tmp_path):
    folder = tmp_path / "in"
    small_photos(folder, 2)
    target = tmp_path / "ro"
    if os.geteuid() == 0:
        if not _mount_tmpfs(target, "ro,size=1m"):
            pytest.skip("root without mount: a read-only folder cannot be made")
    else:
        target.mkdir()
        target.chmod(0o555)
    try:
        started = time.monotonic()
        result = run("restore", folder, "-o", target / "out", *IDENTITY)
        assert result.exit_code == 1
        assert "cannot write to the output" in result.output and time.monotonic() - started < 30
        assert "restore" not in result.output.split("Error:")[0]  # no progress bar: failed before any work
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", "-l", str(target)], check=False)


def test_a_killed_run_loses_at_most_one_chunk_and_the_rerun_redoes_only_that(tmp_path):
    folder = tmp_path / "in"
    small_photos(folder, 30)
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-m", "dfd", "restore", str(folder), "-o", str(out), *IDENTITY],
                               env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    manifest = str(out / "manifest.parquet")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(read_manifest(manifest)) < 10:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    recorded = len(read_manifest(manifest))
    written = len(list((out / "restored_imgs").iterdir()))
    assert 10 <= recorded < 30, "the run should have been killed mid-way"
    assert written - recorded <= 8  # one chunk (flush_every) at most
    rerun = run("restore", folder, "-o", out, *IDENTITY)
    assert f"{recorded} already done" in rerun.output
    assert len(read_manifest(manifest)) == 30 and len(manifest_parts(manifest)) == 1  # compacted


def test_a_dead_ray_worker_is_replaced_and_its_chunk_retried(tmp_path):
    import psutil
    import ray

    from dfd.tasks.restore import restore_parallel
    from dfd.tasks.runtime import ensure_ray
    from dfdcore.io.storage import list_images
    from dfdcore.restoration.bulk import RunOptions
    from dfdcore.restoration.restorer import ModelSpec, RestoreOptions

    folder = tmp_path / "in"
    small_photos(folder, 16)
    out = tmp_path / "out"
    # Ray started here, not in the thread: started from the thread, its GCS did not outlive it (the next test
    # of the session found no GCS and the pytest process exited).
    ensure_ray()
    result = {}
    worker = threading.Thread(target=lambda: result.update(summary=restore_parallel(
        list_images([str(folder)]), str(out), ModelSpec("identity"), RestoreOptions(upscale=1),
        RunOptions(workers=2, chunk=2))))
    worker.start()
    killed = None
    deadline = time.monotonic() + 300
    while killed is None and time.monotonic() < deadline:
        if ray.is_initialized() and read_manifest(str(out / "manifest.parquet")):
            alive = [p.pid for p in psutil.process_iter(["cmdline"])
                     if "ray::RestoreWorker" in " ".join(p.info["cmdline"] or ())]
            if alive:
                killed = alive[0]
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    worker.join(timeout=600)
    assert killed, "no worker was killed"
    summary = result["summary"]
    rows = rows_of(out)
    assert summary.failed == 0 and len(rows) == 16 and all(r["status"] == "ok" for r in rows.values())
    assert (summary.images, summary.restored, summary.seconds > 0) == (16, 16, True)  # the chunks' sum
    assert len(list((out / "restored_imgs").iterdir())) == 16


def test_a_file_over_the_byte_limit_is_refused_before_reading(tmp_path):
    folder = tmp_path / "in"
    [photo] = small_photos(folder, 1)
    size = photo.stat().st_size
    result = run("restore", folder, "-o", tmp_path / "out", *IDENTITY, "--max-bytes", size - 1)
    row = rows_of(tmp_path / "out")["p_00.jpg"]
    assert result.exit_code == 1 and row["status"] == "failed" and row["content_sha256"] is None
    assert row["error"] == f"file too large: {size} bytes, more than the limit of {size - 1}"
    assert run("restore", folder, "-o", tmp_path / "out", *IDENTITY, "--max-bytes", size).exit_code == 0
