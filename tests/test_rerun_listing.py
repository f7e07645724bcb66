"""Reruns recognise unchanged inputs from their listing (size + modification time on file systems, ETag on S3)
without reading them; a touched file is read once and its new listing recorded; changed content is redone."""
from __future__ import annotations

import os
import shutil

import fsspec

from dfdcore.io.storage import RESTORABLE_EXTENSIONS, list_images
from dfdcore.restoration.bulk import RunOptions, restore_sources
from dfdcore.restoration.manifest import read_manifest
from dfdcore.restoration.restorer import IdentityModel, RestoreOptions, Restorer

from .conftest import copy_portraits, portrait
from .s3server import create_bucket, s3_server  # noqa: F401  (fixture)

NAMES = ["grace_hopper.jpg", "obama.jpg", "biden.jpg"]


def run(source: str, out: str, **run_options):
    restorer = Restorer(IdentityModel(128), RestoreOptions(upscale=1))
    return restore_sources(list_images([source], RESTORABLE_EXTENSIONS), out, restorer, RunOptions(**run_options))


def test_local_rerun_reads_nothing_unchanged_and_only_what_changed(tmp_path):
    source = copy_portraits(tmp_path / "in", NAMES)
    out = str(tmp_path / "out")
    first = run(str(source), out)
    assert (first.restored, first.read) == (3, 3)
    rows = read_manifest(f"{out}/manifest.parquet")
    assert all(row["listing"].startswith(f"size:{os.path.getsize(row['source_uri'])};mtime:") for row in rows.values())

    again = run(str(source), out)
    assert (again.skipped, again.read, again.restored) == (3, 0, 0)

    # Same bytes, new modification time (a copy, a touch): read once to find it unchanged, the listing recorded.
    touched = source / "obama.jpg"
    os.utime(touched, (1_800_000_000, 1_800_000_000))
    third = run(str(source), out)
    assert (third.skipped, third.read, third.restored) == (3, 1, 0)
    assert run(str(source), out).read == 0

    # New content under the old name: read and redone.
    shutil.copy(portrait("astronaut.png"), source / "biden.jpg")
    fourth = run(str(source), out)
    assert (fourth.restored, fourth.read, fourth.skipped) == (1, 1, 2)

    # The listing is trusted: bytes swapped with size and time kept are not noticed (--force redoes everything).
    grace = source / "grace_hopper.jpg"
    stat = grace.stat()
    data = bytearray(grace.read_bytes())
    data[-3] ^= 0xFF  # inside the JPEG's entropy-coded data, same size
    grace.write_bytes(bytes(data))
    os.utime(grace, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert run(str(source), out).read == 0
    forced = run(str(source), out, force=True)
    assert (forced.read, forced.restored) == (3, 3)


def test_s3_rerun_compares_etags_without_downloading(tmp_path, s3_server):
    bucket = create_bucket(s3_server, "listing")
    fs = fsspec.filesystem("s3", endpoint_url=s3_server)
    for name in NAMES:
        fs.put(str(portrait(name)), f"{bucket}/in/{name}")
    out = f"{bucket}/out"
    first = run(f"{bucket}/in", out)
    assert (first.restored, first.read) == (3, 3)
    listings = {row["relpath"]: row["listing"] for row in read_manifest(f"{out}/manifest.parquet").values()}
    assert all(value.startswith("etag:") for value in listings.values())

    assert run(f"{bucket}/in", out).read == 0
    fs.put(str(portrait("obama.jpg")), f"{bucket}/in/obama.jpg")  # the same bytes uploaded again: the same ETag
    assert run(f"{bucket}/in", out).read == 0
    fs.put(str(portrait("astronaut.png")), f"{bucket}/in/obama.jpg")
    changed = run(f"{bucket}/in", out)
    assert (changed.read, changed.restored, changed.skipped) == (1, 1, 2)


def test_restore_bucket_rerun_reads_no_photo(prefect_server, tmp_path):
    """Through the flow and its Ray workers: the driver recognises the unchanged photos from the listing and sends
    no chunk at all; a changed photo is the only one a worker reads."""
    from dfd.flows.restore_bucket import restore_bucket
    from dfdcore.restoration.restorer import ModelSpec

    source = copy_portraits(tmp_path / "in", NAMES)
    out = str(tmp_path / "out")
    args = (str(source), out, ModelSpec("identity", face_size=128), RestoreOptions(upscale=1), RunOptions(workers=1))
    first = restore_bucket(*args)
    assert (first.restored, first.read) == (3, 3)
    again = restore_bucket(*args)
    assert (again.skipped, again.read, again.manifest_appends) == (3, 0, 0)
    shutil.copy(portrait("astronaut.png"), source / "obama.jpg")
    third = restore_bucket(*args)
    assert (third.restored, third.read, third.skipped, third.manifest_appends) == (1, 1, 2, 1)


def test_a_corrupt_file_is_not_retried_until_it_changes_but_a_limit_failure_is(tmp_path):
    source = copy_portraits(tmp_path / "in", NAMES[:1])
    (source / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = str(tmp_path / "out")
    first = run(str(source), out)
    rows = {r["relpath"]: r for r in read_manifest(f"{out}/manifest.parquet").values()}
    assert first.failed == 1 and rows["broken.jpg"]["retry"] is False and rows["grace_hopper.jpg"]["retry"] is None
    again = run(str(source), out)
    assert (again.read, again.failed, again.skipped, again.failed_before) == (0, 0, 2, 1)
    (source / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 still not a jpeg")  # changed: tried again
    assert run(str(source), out).failed == 1
    assert run(str(source), out, force=True).read == 2

    # Refused for this run's --max-pixels, not for its bytes: retried by every run (the limit may be raised).
    small = run(str(source), str(tmp_path / "out2"), max_pixels=1000)
    rows = {r["relpath"]: r for r in read_manifest(f"{tmp_path}/out2/manifest.parquet").values()}
    assert small.failed == 2 and rows["grace_hopper.jpg"]["retry"] is True
    assert run(str(source), str(tmp_path / "out2")).restored == 1
