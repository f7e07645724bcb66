"""Video timing through restore_sources: each frame's presentation time is kept (a variable frame rate, an hour's
gap), a second video stream is said in the row, a clip that fails mid-decode is a row and leaves no work folder,
and stale work folders are removed by a later run. Clips are made here with PyAV: 64×64 frames without faces
(timing does not need faces)."""
from __future__ import annotations

import os
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from dfdcore.io.storage import RESTORABLE_EXTENSIONS, list_images
from dfdcore.io.video import frame_durations, frame_ticks, h264_options, read_timed_frames
from dfdcore.restoration.bulk import RunOptions, restore_sources
from dfdcore.restoration.manifest import read_manifest
from dfdcore.restoration.restorer import IdentityModel, RestoreOptions, Restorer
from dfdcore.restoration.video_work import STALE_EMPTY_S, STALE_WORK_S, remove_stale_work

SIZE = 64
MS = Fraction(1, 1000)
FRAME_S = 0.04  # the clips' nominal frame duration (25 fps): "within one frame"


def timed_clip(path: Path, times_ms: list[int], last_ms: int = 40, streams: int = 1, faststart: bool = False,
               ) -> None:
    """An H.264 MP4 whose frame i is shown at times_ms[i] (no B-frames: decode times are these times too, and the
    MP4's length their end), the last one lasting ``last_ms``; ``streams`` video streams of the same frames (the
    second one darker)."""
    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {}) as container:
        videos = []
        for _ in range(streams):
            video = container.add_stream("libx264", rate=25, options={"bf": "0", "crf": "18"})
            video.width, video.height, video.pix_fmt = SIZE, SIZE, "yuv420p"
            video.codec_context.time_base = MS
            videos.append(video)
        # packets come out of the encoder later than their frames go in: their durations are found by pts
        gaps = dict(zip(times_ms, [b - a for a, b in zip(times_ms, times_ms[1:])] + [last_ms]))

        def mux(packets) -> None:
            for packet in packets:
                packet.duration = gaps[packet.pts]
                container.mux(packet)

        rng = np.random.default_rng(0)
        for t in times_ms:
            noise = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)  # incompressible: packets of real size
            for s, video in enumerate(videos):
                frame = av.VideoFrame.from_ndarray(noise // (s + 1), format="rgb24")
                frame.pts, frame.time_base = t, MS
                mux(video.encode(frame))
        for video in videos:
            mux(video.encode(None))


def timing(path: Path) -> tuple[list[float], float]:
    """(every frame's presentation time in seconds, the container's duration in seconds)."""
    with av.open(str(path)) as container:
        duration = container.duration / 1e6
    return [float(t) for _, t in read_timed_frames(path)], duration


def restore(inputs: list[Path], out: Path, segment_seconds: float = 2.0):
    restorer = Restorer(IdentityModel(128), RestoreOptions(upscale=1), batch_size=8)
    sources = list_images([str(p) for p in inputs], RESTORABLE_EXTENSIONS)
    summary = restore_sources(sources, str(out), restorer, RunOptions(segment_seconds=segment_seconds))
    rows = {Path(uri).name: row for uri, row in read_manifest(str(out / "manifest.parquet")).items()}
    return summary, rows


@pytest.mark.parametrize("segment_seconds", [0.01, 4000.0], ids=["1-frame-segments", "one-segment"])
def test_variable_frame_rate_and_an_hours_gap_are_kept(tmp_path, segment_seconds):
    vfr = [0, 40, 500, 520, 2000, 2040, 2080]
    gap = [0, 40, 80, 120, 3_599_960]  # five frames, the last an hour later: the clip lasts 3,600 s
    timed_clip(tmp_path / "vfr.mp4", vfr)
    timed_clip(tmp_path / "gap.mp4", gap)
    out = tmp_path / "out"
    # segments are counted in frames at the average rate (3.3 fps; 5 frames an hour): one frame a segment, each
    # moved to its own start time; or one segment holding every frame, the gaps inside it
    summary, rows = restore([tmp_path / "vfr.mp4", tmp_path / "gap.mp4"], out, segment_seconds=segment_seconds)
    assert summary.failed == 0, summary.failures
    for name, times_ms in (("vfr.mp4", vfr), ("gap.mp4", gap)):
        row = rows[name]
        assert row["status"] == "no_face" and row["frames"] == len(times_ms), row
        assert row["segments"] == (len(times_ms) if segment_seconds < 1 else 1), row
        times_in, duration_in = timing(tmp_path / name)
        np.testing.assert_allclose(times_in, np.array(times_ms) / 1000, atol=1e-6)  # the clip is what we meant
        times_out, duration_out = timing(Path(row["outputs"][0]))
        assert len(times_out) == len(times_in)
        # the source's ticks are written as they are: equal to the millisecond, well within one frame
        np.testing.assert_allclose(times_out, times_in, atol=0.001)
        assert abs(duration_out - duration_in) < FRAME_S, (name, duration_in, duration_out)
        assert "variable frame rate" in row["note"] and "timestamps kept" in row["note"], row["note"]
    assert abs(timing(Path(rows["gap.mp4"]["outputs"][0]))[1] - 3600.0) < FRAME_S
    assert "3600.000 s" in rows["gap.mp4"]["note"] and "frames 0.040 s to 3599.840 s apart" in rows["gap.mp4"]["note"]
    assert "frames 0.020 s to 1.480 s apart" in rows["vfr.mp4"]["note"]
    assert not (out / ".dfd-video").exists()


def test_resumed_clip_keeps_its_timestamps(tmp_path):
    """Segments written by an interrupted run and by its rerun join at the source's times."""
    times_ms = [0, 40, 80, 700, 740, 1900, 1940, 5000, 5020]
    timed_clip(tmp_path / "vfr.mp4", times_ms)
    sources = list_images([str(tmp_path / "vfr.mp4")], RESTORABLE_EXTENSIONS)
    restorer = Restorer(IdentityModel(128), RestoreOptions(upscale=1), batch_size=8)
    run = RunOptions(segment_seconds=1.2)  # 2 frames a segment at the average 1.78 fps: five segments

    def interrupt(source, index, count):
        if index == 2:
            raise KeyboardInterrupt("stopped after segment 2")

    with pytest.raises(KeyboardInterrupt):
        restore_sources(sources, str(tmp_path / "out"), restorer, run, on_segment=interrupt)
    work = next((tmp_path / "out" / ".dfd-video").iterdir())
    assert len(list(work.glob("seg-*.mp4"))) == 3  # an interrupted run keeps its work
    redone = []
    summary = restore_sources(sources, str(tmp_path / "out"), restorer, run,
                              on_segment=lambda s, k, n: redone.append(k))
    row = summary.rows[0]
    assert redone == [3, 4] and "3 of 5 segments kept from an earlier run" in row["note"], (redone, row["note"])
    (times_in, duration_in), (times_out, duration_out) = timing(tmp_path / "vfr.mp4"), timing(Path(row["outputs"][0]))
    np.testing.assert_allclose(times_out, times_in, atol=0.001)
    assert abs(duration_out - duration_in) < FRAME_S, (duration_in, duration_out)


def test_second_video_stream_is_noted_in_the_row(tmp_path):
    timed_clip(tmp_path / "two.mp4", [40 * i for i in range(6)], streams=2)
    _, rows = restore([tmp_path / "two.mp4"], tmp_path / "out")
    row = rows["two.mp4"]
    assert row["status"] == "no_face" and row["frames"] == 6, row
    assert f"only the first video stream is restored; left out: stream 1: video h264 {SIZE}x{SIZE}" in row["note"]
    assert "variable frame rate" not in row["note"], row["note"]
    with av.open(row["outputs"][0]) as container:
        assert len(container.streams.video) == 1 and container.streams.video[0].frames == 6
    first = next(read_timed_frames(row["outputs"][0]))[0].astype(int)
    with av.open(str(tmp_path / "two.mp4")) as container:  # the first stream's frame, not the darker second's
        source = [next(container.decode(video=0)).to_ndarray(format="rgb24").astype(int)]
    assert np.abs(first - source[0]).mean() < 12, np.abs(first - source[0]).mean()


def test_clip_failing_mid_decode_is_a_row_and_leaves_no_work_folder(tmp_path):
    whole = tmp_path / "whole.mp4"
    timed_clip(whole, [40 * i for i in range(40)], faststart=True)
    # cut short (alone that ends as an `ok` row with a note, test_video::truncated…) and damaged before the cut:
    # H.264 data that the decoder refuses, some 24 frames in
    data = bytearray(whole.read_bytes()[: len(whole.read_bytes()) * 8 // 10])
    middle = len(data) * 6 // 8
    data[middle:middle + 5000] = b"\xff" * 5000
    broken = tmp_path / "in" / "broken.mp4"
    broken.parent.mkdir()
    broken.write_bytes(bytes(data))
    out = tmp_path / "out"
    stale = out / ".dfd-video" / "0123456789abcdef-0123456789abcdef-50f"  # an empty folder an earlier dfd left
    stale.mkdir(parents=True)
    hour_ago = time.time() - STALE_EMPTY_S - 60
    os.utime(stale, (hour_ago, hour_ago))
    # 5-frame segments: four segments' detections are saved before decoding fails
    summary, rows = restore([broken], out, segment_seconds=0.2)
    row = rows["broken.mp4"]
    assert row["status"] == "failed" and row["error"].startswith("corrupt video: decoding failed after "), row
    failed_after = int(row["error"].split("decoding failed after ")[1].split()[0])
    assert 5 <= failed_after < 40, row["error"]
    assert summary.failed == 1 and row["outputs"] == []
    assert not (out / ".dfd-video").exists(), list((out / ".dfd-video").rglob("*"))
    assert not list((out / "restored_imgs").glob("*")) if (out / "restored_imgs").exists() else True


def test_stale_work_folders_are_removed_and_live_ones_kept(tmp_path):
    root = tmp_path / ".dfd-video"
    now = time.time()

    def folder(name: str, idle_s: float, files: tuple[str, ...] = ()) -> Path:
        path = root / name
        path.mkdir(parents=True)
        for file in files:
            (path / file).write_bytes(b"x")
            os.utime(path / file, (now - idle_s, now - idle_s))
        os.utime(path, (now - idle_s, now - idle_s))
        return path

    empty_old = folder("aaaaaaaaaaaaaaaa-1111111111111111-50f", STALE_EMPTY_S + 60)
    empty_new = folder("bbbbbbbbbbbbbbbb-1111111111111111-50f", 60)  # a run detecting its first segment
    work_old = folder("cccccccccccccccc-1111111111111111-50f", STALE_EMPTY_S + 60, ("det-00000.json", "seg-00000.mp4"))
    finished = folder("dddddddddddddddd-1111111111111111-50f", STALE_EMPTY_S + 60, ("det-00000.json",))
    week = folder("eeeeeeeeeeeeeeee-1111111111111111-50f", STALE_WORK_S + 60, ("seg-00000.mp4",))
    removed = remove_stale_work(str(tmp_path), {"dddddddddddddddd-1111111111111111"}, now=now)
    assert sorted(Path(r).name for r in removed) == sorted(p.name for p in (empty_old, finished, week))
    assert not empty_old.exists() and not finished.exists() and not week.exists()
    assert empty_new.exists() and work_old.exists()  # in use, and resumable work of a killed run
    assert remove_stale_work(str(tmp_path / "nothing-here")) == []


@pytest.mark.parametrize(("times", "expected"), [
    ([Fraction(0), Fraction(1, 25), Fraction(1, 2)], [0, 40, 500]),
    ([Fraction(0), None, Fraction(1, 50), Fraction(1)], [0, 40, 80, 1000]),  # missing / not increasing: +1 frame
    ([Fraction(-1, 10), Fraction(0)], [0, 100]),  # a negative start moved to 0
])
def test_frame_ticks(times, expected):
    assert frame_ticks(times, MS, Fraction(25)) == expected


def test_b_frames_only_for_a_steady_rate():
    assert "bf" not in h264_options([1001] * 30) and "bf" not in h264_options([33, 34, 33, 34])  # 1-tick jitter
    assert h264_options([40, 460, 20])["bf"] == "0" and h264_options([40, 40, 3_599_840])["bf"] == "0"


def test_frame_durations_take_the_last_from_the_stream_end():
    assert frame_durations([0, 40, 500], 540) == [40, 460, 40]
    assert frame_durations([0, 40, 500], None) == [40, 460, 250]  # no end: the median gap
    assert frame_durations([0, 40, 500], 500) == [40, 460, 250]  # an end not after the last frame is ignored
