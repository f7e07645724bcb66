"""The Parquet run manifest: round trips on local disk and S3, merging, and deciding what a rerun may skip."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dfdcore.io import join_uri, read_bytes, write_bytes_atomic
from dfdcore.io.hashing import sha256_bytes
from dfdcore.restoration.compaction import compact, compact_tier, relist
from dfdcore.restoration.manifest import (
    COLUMNS,
    PLAN_COLUMNS,
    SCHEMA,
    append_rows,
    is_current,
    manifest_parts,
    merge_rows,
    read_manifest,
    write_manifest,
)

from .s3server import create_bucket, s3_server  # noqa: F401  (fixture)

WHEN = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)


def _face(shift: float) -> dict:
    # Values exactly representable in float32, so round trips compare equal.
    return {"det_box": [10.5 + shift, 20.0, 110.25, 140.0], "det_score": 0.875,
            "lm5": [float(v) + shift for v in range(10)], "lm68": [float(v) / 4 for v in range(136)],
            "strength": 0.25 + shift / 4}


def _rows() -> list[dict]:
    ok = {"source_uri": "/in/a.jpg", "relpath": "a.jpg", "content_sha256": sha256_bytes(b"a"), "status": "ok",
          "error": None, "n_faces": 2, "faces": [_face(0), {**_face(1), "lm68": None, "strength": None}],
          "outputs": ["/out/restored/a.png", "/out/compare/a.png"], "model_id": "dfdnet-test",
          "random_weights": True, "config_hash": "cfg1",
          "seconds": {"decode": 0.25, "detect": 1.5, "restore": 2.0, "paste": 0.25, "write": 0.0, "total": 4.0},
          "note": None, "model_version": "dfd-generator/3", "updated_at": WHEN,
          "frames": None, "frames_with_faces": None, "faces_total": None, "segments": None, "frame_rate": None,
          "listing": "size:1;mtime:1796145790.5", "retry": None}
    failed = {"source_uri": "/in/bad.jpg", "relpath": "bad.jpg", "content_sha256": sha256_bytes(b"bad"),
              "status": "failed", "error": "truncated image: the file ends early", "model_id": "dfdnet-test",
              "config_hash": "cfg1", "seconds": {"decode": 0.01, "detect": None, "restore": None, "paste": None,
                                                 "write": None, "total": 0.01},
              "updated_at": WHEN}
    return [ok, failed]


def test_schema_documents_every_column():
    assert SCHEMA.names == list(COLUMNS)
    assert all(field.metadata and field.metadata[b"doc"] for field in SCHEMA)
    assert SCHEMA.field("faces").type.value_type.field("lm68").type == pa.list_(pa.float32())


def test_local_round_trip(tmp_path):
    uri = str(tmp_path / "run" / "manifest.parquet")
    assert read_manifest(uri) == {}
    rows = _rows()
    write_manifest(uri, rows)
    back = read_manifest(uri)
    assert list(back) == ["/in/a.jpg", "/in/bad.jpg"]
    assert back["/in/a.jpg"] == rows[0]
    failed = back["/in/bad.jpg"]
    assert failed["n_faces"] == 0 and failed["faces"] == [] and failed["outputs"] == []
    assert failed["random_weights"] is False and failed["error"].startswith("truncated image")
    assert pq.read_table(uri).schema.equals(SCHEMA)  # the folder of parts reads as one dataset
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["manifest.parquet"]


def test_rows_are_checked(tmp_path):
    uri = str(tmp_path / "m.parquet")
    with pytest.raises(ValueError, match="status must be one of"):
        write_manifest(uri, [{**_rows()[0], "status": "done"}])
    with pytest.raises(ValueError, match="unknown manifest columns"):
        write_manifest(uri, [{**_rows()[0], "sha": "x"}])
    with pytest.raises(ValueError, match="lacks"):
        write_manifest(uri, [{"source_uri": "/in/a.jpg", "status": "ok"}])
    with pytest.raises(ValueError, match=r"/in/a.jpg: seconds: unknown keys \['upload'\]; the manifest schema has "
                                         r"\['decode', 'detect', 'restore', 'paste', 'write', 'total'\]"):
        write_manifest(uri, [{**_rows()[0], "seconds": {**_rows()[0]["seconds"], "upload": 1.0}}])
    with pytest.raises(ValueError, match=r"faces\[1\]: unknown keys \['yaw'\]"):
        write_manifest(uri, [{**_rows()[0], "faces": [_face(0), {**_face(1), "yaw": 3.0}]}])
    with pytest.raises(ValueError, match="seconds must be a mapping with keys among"):
        write_manifest(uri, [{**_rows()[0], "seconds": 4.0}])
    with pytest.raises(ValueError, match="face 0: lm5 must hold 10 numbers, got 2 values"):
        write_manifest(uri, [{**_rows()[0], "faces": [{**_face(0), "lm5": [1.0, 2.0]}]}])
    assert not (tmp_path / "m.parquet").exists()


def test_unreadable_manifest_is_a_clear_error(tmp_path):
    uri = str(tmp_path / "m.parquet")
    write_bytes_atomic(uri, b"not parquet at all")
    with pytest.raises(ValueError, match="not a readable manifest"):
        read_manifest(uri)


def test_defaults_fill_in(tmp_path):
    uri = str(tmp_path / "m.parquet")
    before = dt.datetime.now(dt.timezone.utc)
    write_manifest(uri, [{"source_uri": "/in/x.jpg", "relpath": "x.jpg", "status": "no_face",
                          "content_sha256": "abc", "config_hash": "c"}])
    row = read_manifest(uri)["/in/x.jpg"]
    assert row["n_faces"] == 0 and row["error"] is None and row["seconds"] is None
    assert before - dt.timedelta(seconds=1) <= row["updated_at"] <= dt.datetime.now(dt.timezone.utc)


def test_s3_round_trip(s3_server):
    bucket = create_bucket(s3_server, "runs")
    uri = join_uri(bucket, "run1/manifest.parquet")
    assert read_manifest(uri) == {}
    write_manifest(uri, _rows())
    back = read_manifest(uri)
    assert back["/in/a.jpg"] == _rows()[0]
    assert sum(pq.read_table(pa.BufferReader(read_bytes(p))).num_rows for p in manifest_parts(uri)) == 2
    write_manifest(uri, merge_rows(back, [{**_rows()[1], "status": "ok", "error": None}]))
    assert read_manifest(uri)["/in/bad.jpg"]["status"] == "ok"


def test_merge_rows_replaces_by_source_and_copies():
    old = {row["source_uri"]: row for row in _rows()}
    new = [{**_rows()[1], "status": "ok", "error": None},
           {**_rows()[0], "source_uri": "/in/c.jpg", "relpath": "c.jpg"}]
    merged = merge_rows(old, new)
    assert sorted(merged) == ["/in/a.jpg", "/in/bad.jpg", "/in/c.jpg"]
    assert merged["/in/bad.jpg"]["status"] == "ok"
    assert old["/in/bad.jpg"]["status"] == "failed"
    merged["/in/a.jpg"]["status"] = "failed"
    assert old["/in/a.jpg"]["status"] == "ok"
    assert merge_rows(old, {}) == old


def test_is_current():
    ok, failed = _rows()
    assert is_current(ok, sha256_bytes(b"a"), "cfg1")
    assert not is_current(ok, sha256_bytes(b"a changed"), "cfg1")
    assert not is_current(ok, sha256_bytes(b"a"), "cfg2")
    assert not is_current(failed, sha256_bytes(b"bad"), "cfg1")
    assert is_current({**ok, "status": "no_face", "faces": []}, sha256_bytes(b"a"), "cfg1")
    assert not is_current(None, sha256_bytes(b"a"), "cfg1")


def test_sha256_bytes():
    assert sha256_bytes(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert len(sha256_bytes(np.zeros(10, np.uint8).tobytes())) == 64


def test_a_single_file_manifest_of_an_earlier_dfd_is_read_and_becomes_a_part(tmp_path):
    uri = str(tmp_path / "manifest.parquet")
    pq.write_table(pa.Table.from_pylist([{"source_uri": "/in/a.jpg", "relpath": "a.jpg", "status": "ok",
                                          "content_sha256": "x", "config_hash": "c", "updated_at": WHEN}]), uri)
    assert read_manifest(uri)["/in/a.jpg"]["status"] == "ok"  # columns it lacks come back as None
    assert read_manifest(uri)["/in/a.jpg"]["note"] is None
    append_rows(uri, [{"source_uri": "/in/b.jpg", "relpath": "b.jpg", "status": "no_face"}])
    assert (tmp_path / "manifest.parquet").is_dir() and len(manifest_parts(uri)) == 2
    assert sorted(read_manifest(uri)) == ["/in/a.jpg", "/in/b.jpg"]
    assert compact(uri) == 2 and len(manifest_parts(uri)) == 1 and len(read_manifest(uri)) == 2


def test_the_latest_row_of_a_source_wins_across_parts(tmp_path):
    uri = str(tmp_path / "manifest.parquet")
    later = WHEN + dt.timedelta(seconds=1)
    append_rows(uri, [{**_rows()[1], "updated_at": later}])           # written first, but newer
    append_rows(uri, [{**_rows()[1], "status": "ok", "error": None}])  # written second, older
    assert read_manifest(uri)["/in/bad.jpg"]["status"] == "failed"
    append_rows(uri, [{**_rows()[0], "n_faces": 5}])  # the same time twice: the later part wins
    append_rows(uri, [{**_rows()[0], "n_faces": 7}])
    assert read_manifest(uri)["/in/a.jpg"]["n_faces"] == 7
    before = read_manifest(uri)
    assert compact(uri) == 4 and len(manifest_parts(uri)) == 1  # merged in Arrow: the same latest rows
    assert read_manifest(uri) == before and before["/in/bad.jpg"]["status"] == "failed"


def test_compaction_keeps_names_that_are_not_utf8(tmp_path):
    uri = str(tmp_path / "manifest.parquet")
    odd = b"/in/caf\xe9.jpg".decode("utf-8", "surrogateescape")  # a Latin-1 name, as os.listdir gives it
    row = {**_rows()[0], "source_uri": odd, "relpath": odd[4:], "outputs": [odd + ".png"]}
    append_rows(uri, [row])
    append_rows(uri, [{**row, "n_faces": 1, "faces": [_face(0)], "updated_at": WHEN + dt.timedelta(seconds=1)}])
    compact(uri)
    [(key, kept)] = read_manifest(uri).items()
    assert key == odd and kept["outputs"] == [odd + ".png"] and kept["n_faces"] == 1


def test_plan_columns_and_relist(tmp_path):
    """A rerun plans from a few columns (no faces, outputs or timings); ``relist`` records a new listing on the
    latest full row of each source named, every other column kept."""
    uri = str(tmp_path / "manifest.parquet")
    append_rows(uri, _rows())
    plan = read_manifest(uri, PLAN_COLUMNS)["/in/a.jpg"]
    assert set(plan) == {"source_uri", "updated_at", *PLAN_COLUMNS} and plan["status"] == "ok"
    assert relist(uri, {"/in/a.jpg": "size:1;mtime:2", "/in/gone.jpg": "size:3;mtime:4"}) == 1
    rows = read_manifest(uri)
    assert rows["/in/a.jpg"]["listing"] == "size:1;mtime:2" and rows["/in/a.jpg"]["updated_at"] > WHEN
    assert {k: v for k, v in rows["/in/a.jpg"].items() if k not in ("listing", "updated_at")} == \
        {k: v for k, v in _rows()[0].items() if k not in ("listing", "updated_at")}
    assert rows["/in/bad.jpg"]["listing"] is None and "/in/gone.jpg" not in rows


def test_tiered_compaction_keeps_parts_few_and_rows_latest(tmp_path):
    """200 appends of one row each (50 sources, each written 4 times, later rows newer), compact_tier after every
    append: never more than fan_in - 1 parts per level, every source's latest row kept, each row rewritten once
    per level (not the whole manifest every few appends); compact() then leaves one part above the levels."""
    uri = str(tmp_path / "manifest.parquet")
    fan_in, expected, most_parts, merged = 4, {}, 0, 0
    for i in range(200):
        source = f"/in/{i % 50:02d}.jpg"
        row = {**_rows()[0], "source_uri": source, "relpath": source[4:], "n_faces": i,
               "updated_at": WHEN + dt.timedelta(seconds=i)}
        append_rows(uri, [row])
        merged += compact_tier(uri, fan_in=fan_in)
        expected[source] = i
        most_parts = max(most_parts, len(manifest_parts(uri)))
    levels = 4  # 4**4 = 256 > 200 appends
    assert most_parts <= levels * (fan_in - 1) + 1
    assert merged <= 200 * levels  # each appended part merged once per level at most (the whole-manifest way: ~5000)
    assert {k: v["n_faces"] for k, v in read_manifest(uri).items()} == expected
    assert compact(uri) >= 2 and len(manifest_parts(uri)) == 1
    [part] = manifest_parts(uri)
    assert part.endswith(".parquet") and "-L" in part.rsplit("/", 1)[1]
    assert {k: v["n_faces"] for k, v in read_manifest(uri).items()} == expected
