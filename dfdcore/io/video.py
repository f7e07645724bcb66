"""Video decode/encode with PyAV (FFmpeg's libraries, bundled with the ``av`` wheel; no system ffmpeg needed).

Frames come out as upright (H, W, 3) uint8 RGB (the container's rotation applied), one at a time, so a video is
never held in memory whole, each with its presentation time. Restored frames are written as H.264/yuv420p
segments with the source's timestamps in the source's time base (``frame_ticks``): a variable frame rate stays
variable, a gap stays a gap, a constant rate such as 30000/1001 stays exact. ``mux_segments`` joins segments
without re-encoding and adds the source's audio, copied when the output container takes its codec and re-encoded
to AAC otherwise, so its duration is kept.
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
# No B-frames: decode order = presentation order, each sample's decode time its presentation time (see h264_options)
NO_REORDER = {"bf": "0"}
STEADY_RATE = 0.25  # frame intervals within this fraction of the shortest: B-frames kept
AAC_BIT_RATE = 192_000


class VideoDecodeError(ValueError):
    """A video that cannot be read: ``reason`` short and stable ("not a video", "no video stream"), ``detail``
    says more (FFmpeg's message)."""

    def __init__(self, reason: str, detail: str, name: str = ""):
        self.reason, self.detail, self.name = reason, detail, name
        super().__init__(f"{reason}: {detail}" + (f" ({name})" if name else ""))

    def __reduce__(self):
        return type(self), (self.reason, self.detail, self.name)


FALLBACK_TIME_BASE = Fraction(1, 90000)  # MPEG's clock: for a stream whose own time base is missing or absurd


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about a video: ``width`` × ``height`` upright (after ``rotation``, the degrees
    counter-clockwise FFmpeg reports for the display matrix), the exact ``frame_rate`` (the average one for a
    variable rate), ``frames`` as the header gives it (0 when it does not: Matroska, WebM), the audio codec (None
    without audio), the stream's ``time_base`` (seconds a tick), its ``end`` in seconds (its start plus duration;
    None when the header does not say) and ``other_video``: the video streams that are not restored, described."""

    width: int
    height: int
    frame_rate: Fraction
    frames: int
    rotation: int
    audio_codec: str | None
    time_base: Fraction = FALLBACK_TIME_BASE
    end: Fraction | None = None
    other_video: tuple[str, ...] = ()


def is_video_name(name: str) -> bool:
    """Whether ``name``'s extension (any case) is one of VIDEO_EXTENSIONS."""
    return PurePosixPath(name).suffix.lower().lstrip(".") in VIDEO_EXTENSIONS


def _open(path: str | os.PathLike, name: str = ""):
    import av

    try:
        return av.open(str(path), metadata_errors="ignore")
    except (av.error.FFmpegError, UnicodeDecodeError) as exc:
        raise VideoDecodeError("not a readable video", str(exc), name) from exc


def _main_video(container):
    """The video stream restored: the first that is not an attached picture (cover art), else the first."""
    streams = list(container.streams.video)
    moving = [s for s in streams if not s.disposition & _attached_pic()]
    return (moving or streams)[0]


def _attached_pic() -> int:
    import av

    return int(av.stream.Disposition.attached_pic)


def _describe(stream) -> str:
    kind = "attached picture" if stream.disposition & _attached_pic() else "video"
    return f"stream {stream.index}: {kind} {stream.codec_context.name} {stream.width}x{stream.height}"


def _time_base(stream) -> Fraction:
    """The stream's time base when it is usable by the encoder and the MP4 muxer (a 32-bit clock), else 1/90000."""
    base = stream.time_base
    if base is None or base <= 0 or base.denominator >= 2 ** 31 or base.numerator >= 2 ** 31:
        return FALLBACK_TIME_BASE
    return Fraction(base)


def _stream_end(stream) -> Fraction | None:
    if not stream.duration or stream.time_base is None:
        return None
    return (Fraction(stream.start_time or 0) + stream.duration) * stream.time_base


def probe_video(path: str | os.PathLike, name: str = "") -> VideoInfo:
    """Open ``path`` and decode its first frame (a file whose header opens but whose frames do not is refused
    here, before any work). Raises VideoDecodeError saying why it cannot be read."""
    import av

    with _open(path, name) as container:
        if not container.streams.video:
            raise VideoDecodeError("no video stream", f"streams: {[s.type for s in container.streams]}", name)
        stream = _main_video(container)
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
        others = tuple(_describe(s) for s in container.streams.video if s.index != stream.index)
        return VideoInfo(width, height, Fraction(rate), int(stream.frames or 0), rotation, audio,
                         _time_base(stream), _stream_end(stream), others)


def read_frames(path: str | os.PathLike, name: str = "") -> Iterator[np.ndarray]:
    """Every frame of ``path``'s video stream (``probe_video``'s) in order → upright (H, W, 3) uint8 RGB."""
    for rgb, _ in read_timed_frames(path, name):
        yield rgb


def read_timed_frames(path: str | os.PathLike, name: str = ""
                      ) -> Iterator[tuple[np.ndarray, Fraction | None]]:
    """Every frame of ``path``'s video stream in order → (upright (H, W, 3) uint8 RGB, its presentation time in
    seconds, exact; None for a frame without a timestamp), one at a time. A decoding error (truncated or corrupt
    data) is raised as VideoDecodeError saying at which frame."""
    import av

    with _open(path, name) as container:
        stream = _main_video(container)
        stream.thread_type = "AUTO"
        index = 0
        try:
            for frame in container.decode(stream):
                rgb = frame.to_ndarray(format="rgb24")
                quarter_turns = round((frame.rotation or 0) / 90) % 4
                stamp = frame.pts if frame.pts is not None else frame.dts
                base = frame.time_base or stream.time_base
                time = None if stamp is None or base is None else stamp * Fraction(base)
                # FFmpeg's rotation is counter-clockwise, np.rot90's too: -90 (a phone held upright) → clockwise
                yield (np.ascontiguousarray(np.rot90(rgb, k=quarter_turns)) if quarter_turns else rgb), time
                index += 1
        except av.error.FFmpegError as exc:
            raise VideoDecodeError("corrupt video", f"decoding failed after {index} frames: {exc}", name) from exc


def frame_ticks(times: Sequence[Fraction | None], time_base: Fraction, frame_rate: Fraction) -> list[int]:
    """Presentation times in seconds → timestamps in ``time_base`` ticks, strictly increasing and starting at 0 or
    later: a frame without a time, or not after the one before (a damaged file), comes one frame (1 / frame_rate,
    at least a tick) after the one before; a negative start is moved to 0."""
    step = max(1, round(1 / (Fraction(frame_rate) * time_base)))
    ticks: list[int] = []
    for time in times:
        tick = None if time is None else round(Fraction(time) / time_base)
        if ticks and (tick is None or tick <= ticks[-1]):
            tick = ticks[-1] + step
        ticks.append(0 if tick is None else tick)
    return [t - ticks[0] for t in ticks] if ticks and ticks[0] < 0 else ticks


def frame_durations(ticks: Sequence[int], end: int | None) -> list[int]:
    """Each frame's duration in ticks: until the next frame; the last one's until ``end`` (the stream's end in
    ticks) when that comes after it, else the median of the others (one tick for a lone frame without an end)."""
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    if not ticks:
        return []
    last = end - ticks[-1] if end is not None and end > ticks[-1] else (int(np.median(gaps)) if gaps else 1)
    return gaps + [last]


def h264_options(gaps: Sequence[int], options: dict[str, str] = H264_OPTIONS) -> dict[str, str]:
    """x264's ``options`` for frames ``gaps`` ticks apart: as they are for a steady rate, without B-frames
    (``NO_REORDER``) for an irregular one. MP4 times its samples by decode time, which B-frames put some frames
    behind the presentation time; the length of the stream is the last decode time plus a duration, so with a gap
    among the last frames it would come out short by up to the gap (an hour's pause: an hour short). Within
    ``STEADY_RATE`` the error stays under a frame."""
    if gaps and max(gaps) - min(gaps) > STEADY_RATE * min(gaps):
        return dict(options, **NO_REORDER)
    return dict(options)


def even_frame(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) → (H + H % 2, W + W % 2, 3), the edge repeated: yuv420p needs even sides."""
    pad_h, pad_w = rgb.shape[0] % 2, rgb.shape[1] % 2
    return np.pad(rgb, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge") if pad_h or pad_w else rgb


class SegmentWriter:
    """Encode RGB frames to an H.264/yuv420p MP4: frame ``i`` at ``pts`` ticks of ``time_base`` lasting
    ``duration`` ticks (by default: time_base 1 / frame_rate, frame i at tick i lasting one).

    ``with SegmentWriter(path, rate) as writer: writer.write(rgb)``; frames must share one size (made even) and
    come in presentation order, their ``pts`` increasing. ``frame_rate`` (the average one for a variable rate)
    is what x264's rate control assumes."""

    def __init__(self, path: str | os.PathLike, frame_rate: Fraction, options: dict[str, str] = H264_OPTIONS,
                 time_base: Fraction | None = None):
        import av

        self.path, self.frame_rate, self.options = str(path), Fraction(frame_rate), dict(options)
        self.time_base = Fraction(time_base) if time_base is not None else 1 / self.frame_rate
        self.container = av.open(self.path, "w", format="mp4")
        self.stream = None
        self.frames = 0
        self.last_pts: int | None = None
        self._durations: dict[int, int] = {}  # pts → duration of the frames not yet out of the encoder

    def write(self, rgb: np.ndarray, pts: int | None = None, duration: int = 1) -> None:
        import av

        rgb = even_frame(np.ascontiguousarray(rgb))
        if self.stream is None:
            self.stream = self.container.add_stream("libx264", rate=self.frame_rate, options=self.options)
            self.stream.width, self.stream.height, self.stream.pix_fmt = rgb.shape[1], rgb.shape[0], "yuv420p"
            # the encoder's own clock: without it PyAV rounds every pts to 1 / rate and a variable rate is lost
            self.stream.codec_context.time_base = self.time_base
            self.stream.time_base = self.time_base
        elif (rgb.shape[1], rgb.shape[0]) != (self.stream.width, self.stream.height):
            raise ValueError(f"every frame of a segment must be {self.stream.width}x{self.stream.height}, got "
                             f"{rgb.shape[1]}x{rgb.shape[0]}")
        pts = self.frames if pts is None else int(pts)
        if self.last_pts is not None and pts <= self.last_pts:
            raise ValueError(f"frame timestamps must increase: got {pts} after {self.last_pts}")
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts, frame.time_base = pts, self.time_base
        self._durations[pts] = max(1, int(duration))
        self._mux(self.stream.encode(frame))
        self.frames += 1
        self.last_pts = pts

    def _mux(self, packets) -> None:
        # x264 does not carry frame durations to its packets; the MP4 muxer needs the last one for the stream's
        # length (else it repeats the previous gap: a clip ending after a long pause would be cut short)
        for packet in packets:
            packet.duration = self._durations.pop(packet.pts, 0)
            self.container.mux(packet)

    def close(self) -> None:
        if self.stream is not None:
            self._mux(self.stream.encode(None))
        self.container.close()

    def __enter__(self) -> SegmentWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def mux_segments(segments: Sequence[str], starts: Sequence[Fraction], audio_source: str | None,
                 out_path: str) -> None:
    """Join H.264 ``segments`` (each from ``SegmentWriter``, its timestamps from 0) into ``out_path`` (MP4)
    without re-encoding, segment i moved to start at ``starts[i]`` seconds; with the first audio stream of
    ``audio_source`` copied (or re-encoded to AAC when MP4 does not take its codec)."""
    import av

    if len(segments) != len(starts) or not segments:
        raise ValueError(f"expected one start time per segment and at least one segment, got {len(segments)} "
                         f"segments and {len(starts)} start times")
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
            for path, start in zip(segments, starts):
                _copy_video(path, Fraction(start), video, out)
            if audio_in is not None:
                (_copy_packets if copy_audio else _encode_aac)(source, audio_in, audio_out, out)
        finally:
            if source is not None:
                source.close()


def _copy_video(path: str, start: Fraction, video, out) -> None:
    import av

    with av.open(path) as segment:
        stream = segment.streams.video[0]
        offset = round(start / stream.time_base)
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
