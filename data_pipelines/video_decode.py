"""Video bytes -> a fixed-shape clip: PyAV decode, frame sampling, resize and crop/pad.

    frames, frame_mask = decode_video(data, FrameSampling(num_frames=16, image_size=224))

Sampling modes (``FrameSampling.mode``):

  uniform  N frames spread evenly over the whole clip's time (the frame showing at the
           centre of each of N equal time bins, from the stream's timestamps: a
           variable-frame-rate file is sampled by time; by frame index where a
           container has no timestamps).
  fps      frames at a fixed rate (``fps`` per second) from the start, up to N.
  dense    N consecutive frames: a window of a long video; its start comes from
           ``window_seed`` (a per-example seed, train) or is centred (None, eval).

Every frame is resized so its short side (``crop``) or long side (``pad``)
equals ``image_size``, then centre-cropped or zero-padded to a square. A clip
with fewer frames than N is padded with zero frames whose ``frame_mask`` is
False: short clips are never dropped.

``iter_frames`` streams every frame (or every k-th) of a clip of any length,
one at a time, for ``frejax.inference.streaming``.

Failures raise ``VideoDecodeError`` with a ``kind`` from ``DECODE_ERRORS``, so
callers can count them by cause.
"""

from __future__ import annotations

import collections
import dataclasses
import io
from collections.abc import Iterator

import av
from absl import logging
import numpy as np

# Causes of a clip that cannot be read, in the order of their integer codes (1..).
DECODE_ERRORS: tuple[str, ...] = (
    "unreadable_file",  # the file vanished or cannot be opened after indexing
    "empty_file",
    "not_a_video",      # no container FFmpeg knows, or no video stream in it
    "corrupt_video",    # the decoder failed part-way
    "no_frames",        # a valid container without a single decodable frame
)

# What FFmpeg and PyAV raise on a damaged file: FFmpeg's errors, and metadata that
# PyAV cannot decode as text.
_MEDIA_ERRORS = (av.error.FFmpegError, UnicodeDecodeError)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg")
SAMPLING_MODES = ("uniform", "fps", "dense", "linspace")
RESIZE_MODES = ("crop", "pad", "stretch")


class VideoDecodeError(ValueError):
    """A clip that cannot be decoded; ``kind`` is one of ``DECODE_ERRORS``."""

    def __init__(self, kind: str, message: str):
        if kind not in DECODE_ERRORS:
            raise ValueError(f"unknown decode error kind {kind!r}")
        super().__init__(f"{kind}: {message}")
        self.kind = kind


@dataclasses.dataclass(frozen=True)
class FrameSampling:
    """How to turn a clip of any length and size into ``(num_frames, S, S, 3)``."""

    num_frames: int
    image_size: int
    mode: str = "uniform"
    fps: float = 2.0
    resize: str = "crop"

    def __post_init__(self):
        if self.mode not in SAMPLING_MODES:
            raise ValueError(f"sampling mode must be one of {SAMPLING_MODES}, got {self.mode!r}")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {RESIZE_MODES}, got {self.resize!r}")
        if self.num_frames < 1 or self.image_size < 1 or self.fps <= 0:
            raise ValueError(f"num_frames, image_size and fps must be positive: {self}")


def sample_indices(num_available: int, num_frames: int, mode: str,
                   window_seed: int | None = None) -> np.ndarray:
    """Frame indices (ascending, at most ``num_frames``) for ``uniform``, ``dense`` or ``linspace``.

    uniform: the centres of ``num_frames`` equal bins over the clip; a clip shorter
    than ``num_frames`` gives all its frames (padding is the caller's job).
    dense: ``num_frames`` consecutive frames, the window start drawn from
    ``window_seed`` or centred when it is None.
    linspace: ``np.linspace(0, n - 1, num_frames, dtype=int)`` as lmms-eval samples for
    LLaVA-OneVision; a clip shorter than ``num_frames`` repeats frames.
    """
    if mode == "linspace":  # lmms-eval's video loaders: always num_frames, repeats if short
        return np.linspace(0, num_available - 1, num_frames, dtype=int)
    if num_available <= num_frames:
        return np.arange(num_available)
    if mode == "uniform":
        return ((np.arange(num_frames) + 0.5) * num_available / num_frames).astype(np.int64)
    if mode == "dense":
        slack = num_available - num_frames
        start = (slack // 2 if window_seed is None
                 else int(np.random.default_rng(window_seed).integers(0, slack + 1)))
        return np.arange(start, start + num_frames)
    raise ValueError(f"sample_indices: mode must be uniform or dense, got {mode!r}")


def resize_frame(frame: av.VideoFrame, size: int, resize: str) -> np.ndarray:
    """One decoded frame -> ``(size, size, 3)`` uint8 RGB (short-side crop, long-side pad, or
    ``stretch``: both sides to ``size`` with bicubic resampling, as LLaVA-OneVision's
    processor resizes video frames)."""
    if resize == "stretch":
        return frame.to_ndarray(width=size, height=size, format="rgb24", interpolation="BICUBIC")
    w, h = frame.width, frame.height
    scale = size / (min(w, h) if resize == "crop" else max(w, h))
    # Round, then clamp so crop never falls below and pad never exceeds `size`.
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    if resize == "crop":
        nw, nh = max(nw, size), max(nh, size)
    else:
        nw, nh = min(nw, size), min(nh, size)
    rgb = frame.to_ndarray(width=nw, height=nh, format="rgb24", interpolation="BILINEAR")
    if resize == "crop":
        top, left = (nh - size) // 2, (nw - size) // 2
        return np.ascontiguousarray(rgb[top:top + size, left:left + size])
    out = np.zeros((size, size, 3), np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top:top + nh, left:left + nw] = rgb
    return out


def decode_video(data: bytes, sampling: FrameSampling, window_seed: int | None = None,
                 cut_short: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Encoded video bytes -> ``frames (T, S, S, 3) uint8``, ``frame_mask (T,) bool``.

    T is ``sampling.num_frames`` and S ``sampling.image_size``; frames past the
    end of a short clip are zeros with ``frame_mask`` False. ``cut_short``: the file is
    known to end early (``check_complete`` warned), so a decoding error at its cut end
    samples over the frames decoded before it instead of refusing the video.
    """
    if not data:
        raise VideoDecodeError("empty_file", "the file has 0 bytes")
    if sampling.mode == "fps":
        picked = _decode_at_fps(data, sampling)
    else:
        times = _packet_times(data)
        count = len(times)
        if count == 0:
            raise VideoDecodeError("no_frames", "the video stream holds no frames")
        if sampling.mode == "uniform" and times_known(times):
            wanted = uniform_by_time(times, sampling.num_frames)
        else:
            wanted = sample_indices(count, sampling.num_frames, sampling.mode, window_seed)
        picked, decoded = _decode_indices(data, wanted, sampling, cut_short)
        if len(picked) < len(wanted) and decoded:
            # Fewer frames decode than packets were demuxed (a cut-off stream, packets
            # without a picture): sample again over the frames that really exist,
            # rather than padding the end of the clip.
            wanted = sample_indices(decoded, sampling.num_frames, sampling.mode, window_seed)
            picked, _ = _decode_indices(data, wanted, sampling)
    if not picked:
        raise VideoDecodeError("no_frames", "no frame could be decoded")
    t, s = sampling.num_frames, sampling.image_size
    frames = np.zeros((t, s, s, 3), np.uint8)
    frames[:len(picked)] = picked
    return frames, np.arange(t) < len(picked)


def iter_frames(data: bytes, image_size: int, resize: str = "crop",
                every: int = 1, where: str = "video",
                min_frame_fraction: float = 0.5) -> Iterator[np.ndarray]:
    """Every ``every``-th frame of the whole clip, ``(S, S, 3)`` uint8, decoded one at a time.

    For videos longer than a model's clip (``frejax.inference.streaming``): frames are
    resized as they are decoded and never held together, so memory does not
    grow with the video's length. A file cut short warns, naming ``where`` and the
    present and announced frame counts, and is refused below ``min_frame_fraction``
    of them (``check_complete``), as predict does: a stream of a few frames would
    otherwise stand for the whole video without a word.
    """
    if every < 1:
        raise ValueError(f"iter_frames: every must be >= 1, got {every}")
    if resize not in RESIZE_MODES:
        raise ValueError(f"iter_frames: resize must be one of {RESIZE_MODES}, got {resize!r}")
    if not data:
        raise VideoDecodeError("empty_file", "the file has 0 bytes")
    cut_short = check_complete(data, where, min_frame_fraction) < 1.0
    container, stream = _open(data)
    yielded = 0
    try:
        with container:
            for i, frame in enumerate(container.decode(stream)):
                if i % every == 0:
                    yielded += 1
                    yield resize_frame(frame, image_size, resize)
    except _MEDIA_ERRORS as e:
        if cut_short and yielded:
            return  # the cut end of a file already warned about: its frames so far stand
        raise VideoDecodeError("corrupt_video", f"decoding failed after {yielded}"
                               f" frames ({e})") from None
    if not yielded:
        raise VideoDecodeError("no_frames", "no frame could be decoded")


def decode_timed(data: bytes, image_size: int, resize: str = "crop",
                 max_frames: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Every frame (up to ``max_frames``; 0: all) with its presentation time in seconds:
    ``frames (F, S, S, 3) uint8``, ``times (F,)`` float64 from the first frame.

    Times come from each frame's timestamp, so a variable-frame-rate file keeps its real
    timing; a frame without one is placed one nominal frame interval after the last.
    """
    if not data:
        raise VideoDecodeError("empty_file", "the file has 0 bytes")
    container, stream = _open(data)
    step = 1.0 / float(stream.average_rate or 25)
    frames, times = [], []
    try:
        with container:
            for frame in container.decode(stream):
                t = frame.time if frame.time is not None else (times[-1] + step if times
                                                               else 0.0)
                frames.append(resize_frame(frame, image_size, resize))
                times.append(float(t))
                if max_frames and len(frames) >= max_frames:
                    break
    except _MEDIA_ERRORS as e:
        raise VideoDecodeError("corrupt_video", f"decoding failed after {len(frames)}"
                               f" frames ({e})") from None
    if not frames:
        raise VideoDecodeError("no_frames", "no frame could be decoded")
    times = np.asarray(times) - times[0]
    order = np.argsort(times, kind="stable")  # decode order is presentation order, mostly
    return np.stack(frames)[order], times[order]


def effective_fps(times: np.ndarray) -> float:
    """Frames per second over a clip's timestamps (0 for a single frame)."""
    span = float(times[-1] - times[0]) if len(times) > 1 else 0.0
    return (len(times) - 1) / span if span > 0 else 0.0


def resample_by_time(times: np.ndarray, fps: float) -> np.ndarray:
    """Indices of the frames nearest to ``0, 1/fps, 2/fps, ...`` over the clip's span:
    a constant-rate view of a file whose frames come at irregular times."""
    if fps <= 0:
        raise ValueError(f"resample_by_time: fps must be positive, got {fps}")
    grid = np.arange(0.0, float(times[-1]) + 0.5 / fps, 1.0 / fps)
    right = np.clip(np.searchsorted(times, grid), 1, len(times) - 1)
    left = right - 1
    return np.where(grid - times[left] <= times[right] - grid, left, right) if len(times) > 1 \
        else np.zeros(len(grid), int)


def _open(data: bytes) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except _MEDIA_ERRORS as e:
        raise VideoDecodeError("not_a_video", f"not a container FFmpeg can read ({e})") from None
    try:
        streams = container.streams.video
    except _MEDIA_ERRORS as e:  # stream metadata PyAV cannot read (e.g. not UTF-8)
        container.close()
        raise VideoDecodeError("not_a_video", f"unreadable stream metadata ({e})") from None
    if not streams:
        container.close()
        raise VideoDecodeError("not_a_video", "the container has no video stream")
    stream = streams[0]
    # One decode thread: parallelism comes from Grain workers, one clip each.
    stream.thread_type = "NONE"
    stream.codec_context.thread_count = 1
    return container, stream


def frame_counts(data: bytes) -> tuple[int, int]:
    """``(nominal, present)``: the frames the container's header announces (its frame
    count, else duration x rate; 0 when it says neither) and the frames its stream holds.

    A file cut short keeps the header of the whole video: fewer frames are present
    than announced.
    """
    container, stream = _open(data)
    with container:
        nominal = int(stream.frames or 0)
        if not nominal and stream.duration and stream.time_base and stream.average_rate:
            nominal = round(float(stream.duration * stream.time_base * stream.average_rate))
    return nominal, _count_frames(data)


def check_complete(data: bytes, where: str, min_fraction: float) -> float:
    """Warns when fewer frames are present than the header announces, naming both counts;
    refuses the video (``VideoDecodeError``) below ``min_fraction`` of them. Returns the
    fraction present (1.0 when the header announces no count)."""
    nominal, present = frame_counts(data)
    if not nominal or present >= nominal:
        return 1.0
    fraction = present / nominal
    message = (f"{where}: {present} of the {nominal} frames its header announces are present"
               " (a file cut short?)")
    if fraction < min_fraction:
        raise VideoDecodeError("corrupt_video", f"{message}; below --min_frame_fraction="
                               f"{min_fraction}, so it is not answered")
    logging.warning("%s; sampling over the %d present", message, present)
    return fraction


def _count_frames(data: bytes) -> int:
    """Frames in the first video stream, by demuxing (no decoding; WebM/MKV lack a count)."""
    return len(_packet_times(data))


def _packet_times(data: bytes) -> np.ndarray:
    """Presentation times (seconds, ascending) of the first video stream's frames, by
    demuxing; NaN where a packet has no timestamp."""
    container, stream = _open(data)
    base = float(stream.time_base) if stream.time_base else float("nan")
    try:
        with container:
            pts = [p.pts for p in container.demux(stream) if p.size]
    except _MEDIA_ERRORS as e:
        raise VideoDecodeError("corrupt_video", f"demuxing failed ({e})") from None
    times = np.array([np.nan if t is None else t * base for t in pts], np.float64)
    return np.sort(times) if times_known(times) else times


def times_known(times: np.ndarray) -> bool:
    """Every frame has a distinct timestamp (else sampling falls back to frame indices)."""
    return len(times) > 1 and bool(np.isfinite(times).all()) and len(np.unique(times)) == len(times)


def uniform_by_time(times: np.ndarray, num_frames: int) -> np.ndarray:
    """``uniform`` sampling by time: the frame showing at the centre of each of
    ``num_frames`` equal time bins over the clip (its last frame lasting the median frame
    interval). For a constant frame rate these are the indices ``sample_indices`` gives;
    a variable-frame-rate file is sampled evenly in time, not in frame count."""
    if len(times) <= num_frames:
        return np.arange(len(times))
    start = times[0]
    end = times[-1] + float(np.median(np.diff(times)))
    centres = start + (np.arange(num_frames) + 0.5) * (end - start) / num_frames
    # Rounding guard: a centre that falls on a frame's start shows that frame.
    return np.clip(np.searchsorted(times, centres + 1e-9, side="right") - 1, 0, len(times) - 1)


def _decode_indices(data: bytes, wanted: np.ndarray, sampling: FrameSampling,
                    cut_short: bool = False) -> tuple[list[np.ndarray], int]:
    """Decodes in order, keeping the frames at ``wanted`` positions; stops after the last.

    Returns the kept frames and how many frames were decoded (all of the clip's
    when it ended before the last wanted one).
    """
    container, stream = _open(data)
    times = collections.Counter(wanted.tolist())  # linspace may want a frame twice
    last = int(wanted[-1])
    picked, decoded = [], 0
    try:
        with container:
            for i, frame in enumerate(container.decode(stream)):
                decoded = i + 1
                if i in times:
                    picked += [resize_frame(frame, sampling.image_size, sampling.resize)] * times[i]
                if i >= last:
                    break
    except _MEDIA_ERRORS as e:
        if cut_short and decoded:  # the cut end: what decoded before it is the video
            return picked, decoded
        raise VideoDecodeError("corrupt_video", f"decoding failed after {len(picked)} of"
                               f" {len(wanted)} frames ({e})") from None
    return picked, decoded


def _decode_at_fps(data: bytes, sampling: FrameSampling) -> list[np.ndarray]:
    """The first frame at or after each time k / fps (k = 0..N-1) from the clip start."""
    container, stream = _open(data)
    rate = float(stream.average_rate or 25)
    picked, start, k = [], None, 0
    try:
        with container:
            for i, frame in enumerate(container.decode(stream)):
                t = frame.time if frame.time is not None else i / rate
                start = t if start is None else start
                if t - start + 0.5 / rate >= k / sampling.fps:
                    picked.append(resize_frame(frame, sampling.image_size, sampling.resize))
                    k += 1
                    if k == sampling.num_frames:
                        break
    except _MEDIA_ERRORS as e:
        raise VideoDecodeError("corrupt_video", f"decoding failed after {len(picked)}"
                               f" frames ({e})") from None
    return picked
