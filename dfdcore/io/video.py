"""Video decode/encode with PyAV (FFmpeg's libraries, bundled with the ``av`` wheel; no system ffmpeg needed).

Frames come out as upright (H, W, 3) uint8 RGB (the container's rotation applied), one at a time, so a video is
never held in memory whole. Restored frames are written as H.264/yuv420p segments at the source's exact frame rate
(rationals such as 30000/1001 kept); ``mux_segments`` joins segments without re-encoding and adds the source's
audio, copied when the output container takes its codec and re-encoded to AAC otherwise, so its duration is kept.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import PurePosixPath

import numpy as np

VIDEO_EXTENSIONS = ("mp4", "mov", "mkv", "avi", "webm", "m4v")
OUTPUT_EXT = ".mp4"
# Audio codecs the MP4 muxer takes as they are; anything else (PCM of .mov/.avi, Vorbis of .webm) becomes AAC.
MP4_AUDIO_CODECS = frozenset({"aac", "mp3", "alac", "ac3", "eac3", "opus", "flac"})
# x264 settings: CRF 18 is close to visually lossless; "medium" is x264's own balance of speed and size.
H264_OPTIONS = {"crf": "18", "preset": "medium"}
AAC_BIT_RATE = 192_000


class VideoDecodeError(ValueError):
    """A video that cannot be read: ``reason`` short and stable ("not a video", "no video stream"), ``detail``
    says more (FFmpeg's message)."""

    def __init__(self, reason: str, detail: str, name: str = ""):
        self.reason, self.detail, self.name = reason, detail, name
        super().__init__(f"{reason}: {detail}" + (f" ({name})" if name else ""))

    def __reduce__(self):
        return type(self), (self.reason, self.detail, self.name)


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about a video: ``width`` × ``height`` upright (after ``rotation``, the degrees
    counter-clockwise FFmpeg reports for the display matrix), the exact ``frame_rate``, ``frames`` as the header
    gives it (0 when it does not: Matroska, WebM), the audio codec (None without audio)."""

    width: int
    height: int
    frame_rate: Fraction
    frames: int
    rotation: int
    audio_codec: str | None


def is_video_name(name: str) -> bool:
    """Whether ``name``'s extension (any case) is one of VIDEO_EXTENSIONS."""
    return PurePosixPath(name).suffix.lower().lstrip(".") in VIDEO_EXTENSIONS


def _open(path: str | os.PathLike, name: str = ""):
    import av

    try:
        return av.open(str(path), metadata_errors="ignore")
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        raise VideoDecodeError("not a readable video", str(exc), name) from exc


def probe_video(path: str | os.PathLike, name: str = "") -> VideoInfo:
    """Open ``path`` and decode its first frame (a file whose header opens but whose frames do not is refused
    here, before any work). Raises VideoDecodeError saying why it cannot be read."""
    import av

    with _open(path, name) as container:
        if not container.streams.video:
            raise VideoDecodeError("no video stream", f"streams: {[s.type for s in container.streams]}", name)
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        if not rate or rate <= 0:
            raise VideoDecodeError("no frame rate", f"stream {stream.index} gives none", name)
        try:
            first = next(container.decode(stream), None)
        except av.error.FFmpegError as exc:
            raise VideoDecodeError("corrupt video", str(exc), name) from exc
        if first is None:
            raise VideoDecodeError("corrupt video", "no frame could be decoded", name)
        rotation = round((first.rotation or 0) / 90) * 90 % 360
        width, height = (first.width, first.height) if rotation in (0, 180) else (first.height, first.width)
        audio = container.streams.audio[0].codec_context.name if container.streams.audio else None
        return VideoInfo(width, height, Fraction(rate), int(stream.frames or 0), rotation, audio)


def read_frames(path: str | os.PathLike, name: str = "") -> Iterator[np.ndarray]:
    """Every frame of ``path``'s first video stream in order → upright (H, W, 3) uint8 RGB, one at a time.
    A decoding error (truncated or corrupt data) is raised as VideoDecodeError saying at which frame."""
    import av

    with _open(path, name) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        index = 0
        try:
            for frame in container.decode(stream):
                rgb = frame.to_ndarray(format="rgb24")
                quarter_turns = round((frame.rotation or 0) / 90) % 4
                # FFmpeg's rotation is counter-clockwise, np.rot90's too: -90 (a phone held upright) → clockwise
                yield np.ascontiguousarray(np.rot90(rgb, k=quarter_turns)) if quarter_turns else rgb
                index += 1
        except av.error.FFmpegError as exc:
            raise VideoDecodeError("corrupt video", f"decoding failed after {index} frames: {exc}", name) from exc


def even_frame(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) → (H + H % 2, W + W % 2, 3), the edge repeated: yuv420p needs even sides."""
    pad_h, pad_w = rgb.shape[0] % 2, rgb.shape[1] % 2
    return np.pad(rgb, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge") if pad_h or pad_w else rgb


class SegmentWriter:
    """Encode RGB frames to an H.264/yuv420p MP4 at ``frame_rate``, frame ``i`` at time i / frame_rate.

    ``with SegmentWriter(path, rate) as writer: writer.write(rgb)``; frames must share one size (made even)."""

    def __init__(self, path: str | os.PathLike, frame_rate: Fraction, options: dict[str, str] = H264_OPTIONS):
        import av

        self.path, self.frame_rate, self.options = str(path), Fraction(frame_rate), dict(options)
        self.container = av.open(self.path, "w", format="mp4")
        self.stream = None
        self.frames = 0

    def write(self, rgb: np.ndarray) -> None:
        import av

        rgb = even_frame(np.ascontiguousarray(rgb))
        if self.stream is None:
            self.stream = self.container.add_stream("libx264", rate=self.frame_rate, options=self.options)
            self.stream.width, self.stream.height, self.stream.pix_fmt = rgb.shape[1], rgb.shape[0], "yuv420p"
            self.stream.time_base = 1 / self.frame_rate
        elif (rgb.shape[1], rgb.shape[0]) != (self.stream.width, self.stream.height):
            raise ValueError(f"every frame of a segment must be {self.stream.width}x{self.stream.height}, got "
                             f"{rgb.shape[1]}x{rgb.shape[0]}")
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts = self.frames
        self.container.mux(self.stream.encode(frame))
        self.frames += 1

    def close(self) -> None:
        if self.stream is not None:
            self.container.mux(self.stream.encode(None))
        self.container.close()

    def __enter__(self) -> SegmentWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def mux_segments(segments: Sequence[str], frame_counts: Sequence[int], frame_rate: Fraction,
                 audio_source: str | None, out_path: str) -> None:
    """Join H.264 ``segments`` (each from ``SegmentWriter``, frame_counts[i] frames) into ``out_path`` (MP4)
    without re-encoding, segment i starting at frame sum(frame_counts[:i]); with the first audio stream of
    ``audio_source`` copied (or re-encoded to AAC when MP4 does not take its codec)."""
    import av

    if len(segments) != len(frame_counts) or not segments:
        raise ValueError(f"expected one frame count per segment and at least one segment, got {len(segments)} "
                         f"segments and {len(frame_counts)} counts")
    with av.open(out_path, "w", format="mp4") as out:
        with av.open(segments[0]) as first:
            video = out.add_stream_from_template(first.streams.video[0])
        source = av.open(audio_source) if audio_source else None
        try:
            audio_in = source.streams.audio[0] if source is not None and source.streams.audio else None
            copy_audio = audio_in is not None and audio_in.codec_context.name in MP4_AUDIO_CODECS
            if audio_in is None:
                audio_out = None
            elif copy_audio:
                audio_out = out.add_stream_from_template(audio_in)
            else:
                audio_out = out.add_stream("aac", rate=audio_in.codec_context.sample_rate or 48000)
                audio_out.layout = audio_in.codec_context.layout.name if audio_in.codec_context.layout else "stereo"
                audio_out.bit_rate = AAC_BIT_RATE
            start = 0
            for path, count in zip(segments, frame_counts):
                _copy_video(path, start, frame_rate, video, out)
                start += count
            if audio_in is not None:
                (_copy_packets if copy_audio else _encode_aac)(source, audio_in, audio_out, out)
        finally:
            if source is not None:
                source.close()


def _copy_video(path: str, start_frame: int, frame_rate: Fraction, video, out) -> None:
    import av

    with av.open(path) as segment:
        stream = segment.streams.video[0]
        offset = round(Fraction(start_frame) / frame_rate / stream.time_base)
        for packet in segment.demux(stream):
            if packet.dts is None:  # the demuxer's end-of-stream marker
                continue
            packet.pts += offset
            packet.dts += offset
            packet.stream = video
            out.mux(packet)


def _copy_packets(source, audio_in, audio_out, out) -> None:
    for packet in source.demux(audio_in):
        if packet.dts is None:
            continue
        packet.stream = audio_out
        out.mux(packet)


def _encode_aac(source, audio_in, audio_out, out) -> None:
    import av

    resampler = av.AudioResampler(format="fltp", layout=audio_out.layout.name, rate=audio_out.rate)
    # Timestamps counted in samples from 0: the encoder then stamps its priming samples before 0 and the MP4
    # muxer writes the edit list that hides them, so the duration is the source's (gaps in the source are closed).
    written = 0

    def encode(frames) -> None:
        nonlocal written
        for converted in frames:
            converted.pts, converted.time_base = written, Fraction(1, audio_out.rate)
            written += converted.samples
            out.mux(audio_out.encode(converted))

    for frame in source.decode(audio_in):
        encode(resampler.resample(frame))
    encode(resampler.resample(None))
    out.mux(audio_out.encode(None))
