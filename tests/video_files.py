"""Tiny real video files and annotation sets for the data tests (built with PyAV)."""

from __future__ import annotations

import json
import os

import av
import numpy as np

# (file name, container, codec, pixel format, width, height, frames)
CLIPS = (
    ("h264.mp4", "mp4", "libx264", "yuv444p", 37, 23, 3),      # odd size: 4:4:4
    ("vp9.webm", "webm", "libvpx-vp9", "yuv444p", 23, 37, 2),  # portrait, no frame count
    ("mjpeg.avi", "avi", "mjpeg", "yuvj444p", 37, 23, 1),      # a single frame
    ("mpeg4.mkv", "matroska", "mpeg4", "yuv420p", 40, 24, 20),  # longer than num_frames
)


def frame_colour(i: int) -> np.ndarray:
    """Frame i of every clip is one flat colour: sampling is checkable after lossy coding."""
    return np.array([(37 * i) % 256, 255 - (23 * i) % 256, 128], np.uint8)


def write_frames(path, frames: np.ndarray, container: str = "mp4", codec: str = "libx264",
                 pix_fmt: str = "yuv444p", rate: int = 8, options: dict | None = None) -> None:
    """Encodes ``frames`` ``(F, H, W, 3)`` uint8 into one video file."""
    with av.open(str(path), "w", format=container) as c:
        s = c.add_stream(codec, rate=rate)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        if options:
            s.options = options
        for image in frames:
            for packet in s.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)


def write_clip(path: str, container: str, codec: str, pix_fmt: str, width: int, height: int,
               num_frames: int, rate: int = 8) -> None:
    frames = np.stack([np.broadcast_to(frame_colour(i), (height, width, 3))
                       for i in range(num_frames)])
    write_frames(path, frames, container, codec, pix_fmt, rate)


def write_bad_files(root: str) -> dict[str, str]:
    """Broken inputs by kind -> file name under root."""
    open(os.path.join(root, "empty.mp4"), "wb").close()
    with open(os.path.join(root, "notes.mp4"), "w") as f:
        f.write("this is a text file, not a video\n")
    good = open(os.path.join(root, "h264.mp4"), "rb").read()
    # Noise over the coded frames (the mdat box), the container index intact.
    start = good.index(b"mdat") + 4
    size = int.from_bytes(good[start - 8:start - 4], "big") - 8
    noise = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes()
    with open(os.path.join(root, "corrupt.mp4"), "wb") as f:
        f.write(good[:start] + noise + good[start + size:])
    with av.open(os.path.join(root, "zero.avi"), "w", format="avi") as c:
        s = c.add_stream("mjpeg", rate=8)
        s.width, s.height, s.pix_fmt = 16, 16, "yuvj420p"
        c.start_encoding()  # a header and no frame
    return dict(empty_file="empty.mp4", not_a_video="notes.mp4", corrupt_video="corrupt.mp4",
                no_frames="zero.avi")


def write_jsonl(path: str, entries) -> str:
    with open(path, "w") as f:
        for e in entries:
            f.write(e if isinstance(e, str) else json.dumps(e))
            f.write("\n")
    return path


def make_folder(root: str) -> str:
    """The four good clips under ``root/clips``; returns root."""
    os.makedirs(os.path.join(root, "clips"), exist_ok=True)
    for name, *spec in CLIPS:
        write_clip(os.path.join(root, "clips", name), *spec)
    return root


def qa_entries(n: int, families=("colour", "motion")) -> list[dict]:
    """``n`` plain and multiple-choice records cycling over the good clips."""
    out = []
    for i in range(n):
        clip = f"clips/{CLIPS[i % len(CLIPS)][0]}"
        if i % 3 == 2:
            out.append(dict(video=clip, question=f"which clip is number {i}",
                            options=["first one", "second one", "third one"],
                            answer=["A", "second one", "(C)"][(i // 3) % 3],
                            family=families[i % len(families)]))
        else:
            out.append(dict(video=clip, question=f"what is shown in clip {i % 4}",
                            answer=f"shape {i % 4}", family=families[i % len(families)]))
    return out
