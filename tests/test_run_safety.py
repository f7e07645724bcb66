"""A run that cannot rot or clash silently (issue 25): damaged manifest parts are set aside by name, SIGTERM and
SIGINT stop cleanly with every finished image recorded, and one configuration writes into an output at a time."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from dfd.cli import main
from dfdcore.restoration.integrity import DAMAGED_SUFFIX, digest_in_name
from dfdcore.restoration.lock import LOCK_NAME, output_lock
from dfdcore.restoration.manifest import append_rows, manifest_parts, read_manifest

from .test_no_loss import IDENTITY, rows_of, small_photos


def _restore(folder: Path, out: Path, *extra: str):
    return CliRunner().invoke(main, ["restore", str(folder), "-o", str(out), *IDENTITY, *extra])


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_flipped_byte_is_named_set_aside_and_the_other_parts_rows_kept(tmp_path):
    folder, out = tmp_path / "in", tmp_path / "out"
    small_photos(folder, 3)
    assert _restore(folder, out).exit_code == 0
    manifest = str(out / "manifest.parquet")
    first = rows_of(out)
    # a second part: rows of three other sources (as a second run into the output would leave)
    others = [{**row, "source_uri": row["source_uri"] + ".other", "relpath": "other/" + row["relpath"]}
              for row in first.values()]
    second = append_rows(manifest, others)
    assert all(digest_in_name(part) for part in manifest_parts(manifest))
    _flip_byte(Path(second))

    with pytest.raises(ValueError, match="damaged manifest part"):  # the documented reader names it
        read_manifest(manifest)
    result = _restore(folder, out)
    assert result.exit_code != 0
    assert "DAMAGED" in result.output and Path(second).name in result.output
    assert not Path(second).exists() and Path(second + DAMAGED_SUFFIX).exists()  # moved aside, not deleted
    rows = rows_of(out)
    assert set(first) <= set(rows)  # no row of the other part lost ...
    assert "3 already done" in result.output  # ... and its images not redone
    assert all(rows[name]["status"] == "ok" for name in first)
    assert _restore(folder, out).exit_code == 0  # the next run finds nothing damaged


def test_an_unreadable_part_found_by_compaction_is_not_swallowed(tmp_path):
    from dfdcore.restoration.compaction import compact_quietly

    folder, out = tmp_path / "in", tmp_path / "out"
    small_photos(folder, 2)
    assert _restore(folder, out).exit_code == 0
    manifest = str(out / "manifest.parquet")
    extra = append_rows(manifest, [{**row, "source_uri": row["source_uri"] + ".x"} for row in
                                   read_manifest(manifest).values()])
    Path(extra).write_bytes(b"PAR1 not really")
    damaged = compact_quietly(manifest)
    assert [part for part, _ in damaged] == [extra]
    assert len(manifest_parts(manifest)) == 1 and len(read_manifest(manifest)) == 2


def test_a_foreign_parquet_file_is_reported_with_its_own_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    manifest = tmp_path / "manifest.parquet"
    manifest.mkdir()
    pq.write_table(pa.table({"name": ["x"], "size": [1]}), manifest / "part-foreign.parquet")
    with pytest.raises(ValueError, match=r"no source_uri column among the file's columns \['name', 'size'\]"):
        read_manifest(str(manifest))


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_cleanly_with_every_finished_image_recorded(tmp_path, sig, code):
    folder, out = tmp_path / "in", tmp_path / "out"
    small_photos(folder, 40)
    process = subprocess.Popen([sys.executable, "-m", "dfd", "restore", str(folder), "-o", str(out), *IDENTITY],
                               env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    written = out / "restored_imgs"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(list(written.glob("*.jpg"))) < 2 and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(sig)
    output, _ = process.communicate(timeout=300)
    text = output.decode()
    assert process.returncode == code, text[-2000:]
    assert "interrupted by" in text and "files" in text  # the summary, saying so
    rows = rows_of(out)
    outputs = {Path(uri).name for row in rows.values() for uri in row["outputs"]}
    on_disk = {path.name for path in written.iterdir() if not path.name.startswith(".")}
    assert on_disk == outputs, "every output has its row"
    assert 2 <= len(rows) < 40, "the signal should have stopped the run mid-way"
    rerun = _restore(folder, out)
    assert rerun.exit_code == 0
    assert f"{len(rows)} already done" in rerun.output and f"{40 - len(rows)} restored" in rerun.output


def test_a_second_configuration_is_refused_before_writing_anything(tmp_path):
    folder, out = tmp_path / "in", tmp_path / "out"
    small_photos(folder, 2)
    out.mkdir()
    with output_lock(str(out), "another-configuration"):  # a live run of this process with other settings
        result = _restore(folder, out)
    assert result.exit_code == 1
    assert "another dfd run" in result.output and "other settings" in result.output
    assert sorted(p.name for p in out.iterdir()) == [], "nothing written, the lock released after"


def test_two_real_runs_with_different_upscales_the_second_refuses(tmp_path):
    folder, out = tmp_path / "in", tmp_path / "out"
    small_photos(folder, 30)
    command = [sys.executable, "-m", "dfd", "restore", str(folder), "-o", str(out), "--model", "identity"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([*command, "--upscale", "1"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (out / LOCK_NAME).exists() and first.poll() is None:
        time.sleep(0.02)
    second = subprocess.run([*command, "--upscale", "3"], env=env, capture_output=True, text=True, timeout=300)
    first_output, _ = first.communicate(timeout=600)
    assert first.returncode == 0, first_output.decode()[-2000:]
    assert second.returncode == 1 and "other settings" in second.stderr, second.stderr[-2000:]
    rows = rows_of(out)
    assert len(rows) == 30 and len({row["config_hash"] for row in rows.values()}) == 1
    assert not (out / LOCK_NAME).exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    folder, out = tmp_path / "in", tmp_path / "out"
    small_photos(folder, 1)
    dead = subprocess.Popen(["true"])
    dead.wait()
    out.mkdir()
    (out / LOCK_NAME).write_text(f'{{"host": "{os.uname().nodename}", "pid": {dead.pid}, "started": "x", '
                                 f'"heartbeat": 0, "config_hash": "old", "token": "t"}}')
    assert _restore(folder, out).exit_code == 0
    assert not (out / LOCK_NAME).exists()
