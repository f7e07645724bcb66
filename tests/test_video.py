"""Videos through restore_sources: frame count, exact frame rate and audio kept, identity frames unchanged, reruns
skip, interrupted runs resume by segments, corrupt files are rows, rotation applied, landmark jitter smoothed."""
from __future__ import annotations

import importlib.util
import shutil
import struct
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from PIL import Image

from dfdcore.face.track import Observation, link_tracks, smooth_track
from dfdcore.io.storage import RESTORABLE_EXTENSIONS, list_images
from dfdcore.io.video import probe_video, read_frames
from dfdcore.restoration.bulk import RunOptions, restore_sources
from dfdcore.restoration.manifest import read_manifest
from dfdcore.restoration.restorer import IdentityModel, RestoreOptions, Restorer

from .conftest import REPO, portrait
from .s3server import create_bucket, s3_server  # noqa: F401  (fixture)

RATE = Fraction(30000, 1001)
FRAMES = 36
SIZE = 192
SEGMENT_S = 0.4  # 12 frames at 29.97 fps: three segments


def make_clip(path: Path, frames: int = FRAMES, audio: str = "aac", rate: Fraction = RATE, faststart: bool = False
              ) -> np.ndarray:
    """A portrait drifting slowly (sub-pixel steps, a little rotation) with a 440 Hz sine; → the frames written.
    ``faststart``: the MP4 index at the start, so a file cut short still opens."""
    still = np.asarray(Image.open(portrait("grace_hopper.jpg")).convert("RGB").resize((SIZE, SIZE), Image.LANCZOS))
    written = []
    with av.open(str(path), "w", options={"movflags": "faststart"} if faststart else {}) as container:
        video = container.add_stream("libx264", rate=rate, options={"crf": "10"})
        video.width, video.height, video.pix_fmt = SIZE, SIZE, "yuv420p"
        sound = container.add_stream(audio, rate=44100)
        sound.layout = "mono"
        for t in range(frames):
            m = cv2.getRotationMatrix2D((SIZE / 2, SIZE / 2), 0.8 * np.sin(t / 6), 1.0)
            m[:, 2] += [0.3 * t, 0.2 * t]
            frame = cv2.warpAffine(still, m, (SIZE, SIZE), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
            written.append(frame)
            container.mux(video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        samples = int(44100 * frames / rate)
        wave = (0.3 * np.sin(2 * np.pi * 440 * np.arange(samples) / 44100)).astype(np.float32)
        fmt = "flt" if audio == "aac" else "s16"
        wave = wave if fmt == "flt" else (wave * 32767).astype(np.int16)
        for start in range(0, samples, 1024):
            chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(wave[None, start:start + 1024]), format=fmt,
                                               layout="mono")
            chunk.sample_rate, chunk.pts = 44100, start
            container.mux(sound.encode(chunk))
        container.mux(video.encode(None))
        container.mux(sound.encode(None))
    return np.stack(written)


def audio_seconds(path: Path) -> tuple[float, float]:
    """(duration of the first audio stream in seconds, one audio frame's seconds)."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        return samples / stream.rate, (stream.codec_context.frame_size or 1024) / stream.rate


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-12)))


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """A folder with clip.mp4 (a portrait with AAC audio), broken.mp4 (its first 3000 bytes), notvideo.mkv (text)
    and a photo."""
    folder = tmp_path_factory.mktemp("clips")
    make_clip(folder / "clip.mp4")
    (folder / "broken.mp4").write_bytes((folder / "clip.mp4").read_bytes()[:3000])
    (folder / "notvideo.mkv").write_text("not a video at all\n")
    shutil.copy(portrait("grace_hopper.jpg"), folder / "photo.jpg")
    return folder


def test_identity_video_keeps_frames_rate_audio_and_pixels(clips, tmp_path):
    sources = list_images([str(clips)], RESTORABLE_EXTENSIONS, with_others=True)  # what dfd restore lists
    assert [s.relpath for s in sources] == ["broken.mp4", "clip.mp4", "notvideo.mkv", "photo.jpg"]
    out = str(tmp_path / "out")
    segments = []
    # 512-px identity faces: the crop → paste round trip costs nothing measurable (~60 dB), x264 alone remains
    restorer = Restorer(IdentityModel(512), RestoreOptions(upscale=1), batch_size=8)
    run = RunOptions(segment_seconds=SEGMENT_S)
    summary = restore_sources(sources, out, restorer, run, on_segment=lambda s, k, n: segments.append((k, n)))
    rows = {Path(uri).name: row for uri, row in read_manifest(str(Path(out) / "manifest.parquet")).items()}
    clip = rows["clip.mp4"]
    assert clip["status"] == "ok" and clip["error"] is None, clip
    assert (clip["frames"], clip["frames_with_faces"], clip["faces_total"], clip["segments"]) == (36, 36, 36, 3)
    assert clip["frame_rate"] == "30000/1001" and clip["n_faces"] == 1 and segments == [(0, 3), (1, 3), (2, 3)]
    assert rows["photo.jpg"]["status"] == "ok" and rows["photo.jpg"]["frames"] is None
    for bad in ("broken.mp4", "notvideo.mkv"):
        assert rows[bad]["status"] == "failed" and rows[bad]["error"].startswith("not a readable video"), rows[bad]
    assert summary.failed == 2 and summary.restored == 2

    output = Path(clip["outputs"][0])
    assert output == Path(out) / "restored_imgs" / "clip.mp4" and not (Path(out) / ".dfd-video").exists()
    with av.open(str(output)) as container:
        stream = container.streams.video[0]
        assert stream.average_rate == RATE and stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
    with av.open(str(clips / "clip.mp4")) as source, av.open(str(output)) as restored:
        length_in, length_out = (float(c.streams.video[0].duration * c.streams.video[0].time_base)
                                 for c in (source, restored))
    assert abs(length_out - length_in) < 1 / RATE and length_in > 1.1, (length_in, length_out)  # within a frame
    frames_in, frames_out = list(read_frames(clips / "clip.mp4")), list(read_frames(output))
    assert len(frames_out) == len(frames_in) == FRAMES
    quality = [psnr(a, b) for a, b in zip(frames_in, frames_out)]
    # x264 at CRF 18 and yuv420p's halved chroma, twice (the test clip, then dfd's output): ~36 dB measured
    assert min(quality) > 34 and np.mean(quality) > 35, quality
    seconds_in, frame_s = audio_seconds(clips / "clip.mp4")
    seconds_out, _ = audio_seconds(output)
    assert abs(seconds_out - seconds_in) <= frame_s and seconds_in > 1.1

    segments.clear()
    again = restore_sources(sources, out, restorer, run, on_segment=lambda s, k, n: segments.append((k, n)))
    # clip and photo are current; the corrupt clip and the text .mkv failed on their own bytes: not read again
    assert (again.skipped, again.failed_before, again.failed, again.read) == (4, 2, 0, 0) and segments == []


def test_interrupted_video_resumes_missing_segments(tmp_path, small_generator):
    make_clip(tmp_path / "clip.mp4", frames=12)
    sources = list_images([str(tmp_path / "clip.mp4")], RESTORABLE_EXTENSIONS)
    out = str(tmp_path / "out")
    restorer = Restorer(small_generator, RestoreOptions(upscale=2), batch_size=4)
    run = RunOptions(segment_seconds=0.14)  # 4 frames: three segments

    def interrupt(source, index, count):
        if index == 1:
            raise KeyboardInterrupt("stopped after segment 1")

    with pytest.raises(KeyboardInterrupt):
        restore_sources(sources, out, restorer, run, on_segment=interrupt)
    work = next((Path(out) / ".dfd-video").iterdir())
    assert sorted(p.name for p in work.glob("seg-*.mp4")) == ["seg-00000.mp4", "seg-00001.mp4"]
    redone = []
    summary = restore_sources(sources, out, restorer, run, on_segment=lambda s, k, n: redone.append(k))
    assert redone == [2] and summary.restored == 1, summary.failures
    row = summary.rows[0]
    assert row["segments"] == 3 and "2 of 3 segments kept from an earlier run" in row["note"]
    frames = list(read_frames(row["outputs"][0]))
    assert len(frames) == 12 and frames[0].shape == (2 * SIZE, 2 * SIZE, 3)


def test_audio_reencoded_when_mp4_does_not_take_it(tmp_path):
    clip = tmp_path / "pcm.mov"
    make_clip(clip, frames=12, audio="pcm_s16le")
    restorer = Restorer(IdentityModel(128), RestoreOptions(upscale=1), batch_size=8)
    summary = restore_sources(list_images([str(clip)], RESTORABLE_EXTENSIONS), str(tmp_path / "out"), restorer)
    output = summary.rows[0]["outputs"][0]
    with av.open(output) as container:
        assert container.streams.audio[0].codec_context.name == "aac"
    (seconds_in, _), (seconds_out, frame_s) = audio_seconds(clip), audio_seconds(Path(output))
    assert abs(seconds_out - seconds_in) <= frame_s, (seconds_in, seconds_out)


def test_rotation_metadata_is_applied(tmp_path):
    plain = tmp_path / "plain.mp4"
    marked = np.zeros((120, 160, 3), np.uint8)
    marked[:10, :20] = 255  # a white block in the stored frame's top-left corner
    with av.open(str(plain), "w") as container:
        stream = container.add_stream("libx264", rate=25, options={"crf": "0"})
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        for _ in range(3):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(marked, format="rgb24")))
        container.mux(stream.encode(None))
    data = bytearray(plain.read_bytes())
    tkhd = data.find(b"tkhd")  # version 0 track header: its display matrix after 32 bytes of times, ids, volume
    struct.pack_into(">9i", data, tkhd + 4 + 4 + 20 + 8 + 8, 0, 0x10000, 0, -0x10000, 0, 0, 0, 0, 0x40000000)
    rotated = tmp_path / "rotated.mp4"
    rotated.write_bytes(bytes(data))
    info = probe_video(rotated)
    assert (info.width, info.height, info.rotation) == (120, 160, 270)
    frame = next(read_frames(rotated))
    assert frame.shape == (160, 120, 3)
    ys, xs = np.nonzero(frame[..., 0] > 128)  # turned a quarter clockwise for display: now top-right
    assert ys.max() < 22 and xs.min() > 120 - 12


def _observation(frame: int, x: float, y: float = 50.0) -> Observation:
    box = np.array([x, y, x + 40, y + 40])
    points = np.array([[x + 30, y + 15], [x + 25, y + 15], [x + 10, y + 15], [x + 15, y + 15], [x + 20, y + 28]])
    return Observation(frame, box, points, 1.0)


def test_tracks_link_by_overlap_fill_short_gaps_and_keep_steady_motion():
    frames = [[_observation(t, 10 + 2 * t)] + ([_observation(t, 200)] if t >= 4 else []) for t in range(12)]
    frames[6] = [f for f in frames[6] if f.box[0] == 200]  # the moving face missed for two frames
    frames[7] = [f for f in frames[7] if f.box[0] == 200]
    tracks = link_tracks(frames)
    assert [len(t.observations) for t in tracks] == [10, 8] and tracks[1].observations[0].frame == 4
    smoothed = smooth_track(tracks[0])
    assert sorted(smoothed) == list(range(12)) and not smoothed[6].observed and smoothed[5].observed
    for t, face in smoothed.items():  # a straight motion is kept exactly, through the gap too
        np.testing.assert_allclose(face.box, [10 + 2 * t, 50, 50 + 2 * t, 90], atol=1e-9)
    far = [[_observation(t, 10)] if t < 3 or t > 8 else [] for t in range(12)]
    assert len(smooth_track(link_tracks(far)[0])) == 3  # a gap longer than MAX_GAP: a new track after it


def test_smoothing_reduces_landmark_jitter_on_a_shaky_video():
    spec = importlib.util.spec_from_file_location("bench_video_jitter", REPO / "bench" / "bench_video_jitter.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    # half-pixel random shake on a slow drift: a window average alone would smooth the true shake away too;
    # carried through the measured motions it follows the shake and averages only the landmark noise
    result = bench.measure(portrait("grace_hopper.jpg"), frames=24, size=SIZE, shake_px=0.5)
    assert result["frames_detected"] == result["frames_smoothed"] == 24 and result["motion_measured"] > 0.9
    assert result["jitter_smoothed_px"] < 0.5 * result["jitter_raw_px"], result
    assert result["jitter_smoothed_px"] < result["jitter_line_px"], result


@pytest.mark.parametrize("workers", [0, 1], ids=["in-process", "ray-actor"])
def test_dfd_restore_takes_a_video(tmp_path, workers):
    """`dfd restore clip.mp4` with no video option: in this process, and in a Ray actor as restore_bucket runs."""
    from click.testing import CliRunner

    from dfd.restore_commands import restore

    make_clip(tmp_path / "clip.mp4", frames=12)
    out = tmp_path / "out"
    args = [str(tmp_path / "clip.mp4"), "-o", str(out), "--model", "identity", "--upscale", "2",
            "--workers", str(workers)]
    result = CliRunner().invoke(restore, args)
    assert result.exit_code == 0, result.output
    row = next(iter(read_manifest(str(out / "manifest.parquet")).values()))
    assert (row["status"], row["frames"], row["frames_with_faces"], row["segments"]) == ("ok", 12, 12, 1), row
    with av.open(str(out / "restored_imgs" / "clip.mp4")) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height, stream.average_rate) == (2 * SIZE, 2 * SIZE, RATE)
        assert stream.frames == 12 and len(container.streams.audio) == 1


def test_face_motion_measures_a_sub_pixel_shift():
    from dfdcore.face.detect import detect_faces
    from dfdcore.face.track import face_motion

    still = np.asarray(Image.open(portrait("grace_hopper.jpg")).convert("RGB").resize((SIZE, SIZE), Image.LANCZOS))
    grey = cv2.cvtColor(still, cv2.COLOR_RGB2GRAY)
    shift = np.array([[1.0, 0.0, 0.3], [0.0, 1.0, -0.2]])
    moved = cv2.warpAffine(grey, shift, (SIZE, SIZE), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    box = np.asarray(detect_faces(still)[0].box, np.float64)
    matrix = face_motion(grey, moved, box)
    np.testing.assert_allclose(matrix[:, 2], [0.3, -0.2], atol=0.05)
    np.testing.assert_allclose(matrix[:, :2], np.eye(2), atol=0.005)
    assert face_motion(np.zeros_like(grey), np.zeros_like(grey), box) is None  # no texture: not measured


def test_video_in_and_out_of_a_bucket(tmp_path, s3_server):
    """A video read from S3 (downloaded to the dfd home, not into memory) and its segments and output written
    there; a rerun skips it."""
    from dfdcore.io.storage import read_bytes, write_bytes_atomic

    bucket = create_bucket(s3_server, "videos")
    make_clip(tmp_path / "clip.mp4", frames=12)
    write_bytes_atomic(f"{bucket}/in/clip.mp4", (tmp_path / "clip.mp4").read_bytes())
    restorer = Restorer(IdentityModel(128), RestoreOptions(upscale=1), batch_size=8)
    run = RunOptions(segment_seconds=0.2)  # 6 frames: two segments, uploaded then fetched back for the mux
    summary = restore_sources(list_images([f"{bucket}/in"], RESTORABLE_EXTENSIONS), f"{bucket}/out", restorer, run)
    row = summary.rows[0]
    assert (row["status"], row["frames"], row["segments"]) == ("ok", 12, 2), row
    assert row["outputs"] == [f"{bucket}/out/restored_imgs/clip.mp4"]
    (tmp_path / "back.mp4").write_bytes(read_bytes(row["outputs"][0]))
    assert len(list(read_frames(tmp_path / "back.mp4"))) == 12
    from dfdcore.io.storage import filesystem_for

    fs, _ = filesystem_for(bucket)
    assert not [key for key in fs.find("videos/out") if "/.dfd-video/" in key]  # the work folder is removed
    again = restore_sources(list_images([f"{bucket}/in"], RESTORABLE_EXTENSIONS), f"{bucket}/out", restorer, run)
    assert again.skipped == 1


def test_aligned_mode_refuses_a_video_with_a_reason(tmp_path):
    make_clip(tmp_path / "clip.mp4", frames=3)
    restorer = Restorer(IdentityModel(128), RestoreOptions(upscale=1, aligned=True))
    clip = list_images([str(tmp_path / "clip.mp4")], RESTORABLE_EXTENSIONS)
    summary = restore_sources(clip, str(tmp_path / "out"), restorer)
    assert summary.failed == 1 and summary.rows[0]["error"].startswith("not an aligned face crop")


def test_truncated_video_with_its_header_restores_what_decodes_and_says_so(tmp_path):
    whole = tmp_path / "whole.mp4"
    make_clip(whole, faststart=True)
    cut = tmp_path / "in" / "cut.mp4"
    cut.parent.mkdir()
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size * 6 // 10])
    restorer = Restorer(IdentityModel(128), RestoreOptions(upscale=1))
    summary = restore_sources(list_images([str(cut)], RESTORABLE_EXTENSIONS), str(tmp_path / "out"), restorer)
    [row] = read_manifest(str(tmp_path / "out" / "manifest.parquet")).values()
    assert summary.failed == 0 and row["status"] == "ok"
    assert 0 < row["frames"] < FRAMES
    assert f"the header declares {FRAMES} frames: the file may be truncated" in row["note"]


def test_restore_bucket_flow_restores_a_video_beside_photos(prefect_server, tmp_path):
    """The nightly flow (Prefect, a Ray actor, MLflow) takes a clip as it takes photos; its rerun skips both."""
    from dfd.flows.restore_bucket import restore_bucket
    from dfdcore.restoration.restorer import ModelSpec

    from .conftest import copy_portraits

    source = copy_portraits(tmp_path / "incoming", ["obama.jpg"])
    make_clip(source / "clip.mp4", frames=24)
    out = tmp_path / "out"
    identity, same_size = ModelSpec("identity", face_size=128), RestoreOptions(upscale=1)
    run = RunOptions(workers=1, segment_seconds=0.4)
    first = restore_bucket(str(source), str(out), identity, same_size, run)
    assert (first.listed, first.restored, first.failed) == (2, 2, 0)
    rows = {r["relpath"]: r for r in read_manifest(str(out / "manifest.parquet")).values()}
    clip = rows["clip.mp4"]
    assert (clip["status"], clip["frames"], clip["segments"], clip["frame_rate"]) == ("ok", 24, 2, "30000/1001")
    assert probe_video(str(out / "restored_imgs" / "clip.mp4")).frames == 24
    again = restore_bucket(str(source), str(out), identity, same_size, run)
    assert (again.restored, again.skipped) == (0, 2)
