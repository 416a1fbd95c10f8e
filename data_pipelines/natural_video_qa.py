r"""A video-QA benchmark on real footage: temporal questions from real motion, and probes.

    python -m data_pipelines.natural_video_qa --out=/data/natural_qa
    python -m frejax.main --config=configs/short_video.py --workdir=workdirs/natural_qa \
        --config.data.name=video_folder --config.data.root=/data/natural_qa \
        --config.data.train_annotations=/data/natural_qa/train.jsonl \
        --config.data.eval_annotations=/data/natural_qa/eval.jsonl

Any folder of videos is the footage (``--footage``; default the camera-recorded clips
of ``data_pipelines.natural_footage``). The last ``--eval_videos`` of them by name are
held out: every eval example comes from footage no training example has seen.

Every example is ``--frames`` frames of the footage, transformed so the answer is
exact, written as one small video file plus a multiple-choice annotation line
(the ``video_folder`` format: ``family`` gives per-family accuracy):

* Temporal families, from the footage's own motion (no edit a single frame shows):
  ``direction`` forwards or backwards; ``speed`` every 1st, 2nd or 4th frame;
  ``freeze`` where a frozen stretch (a quarter of the clip) sits; ``order`` whether
  the clip's two halves, taken apart in time, come in their original order.
* Probes composited into the footage: ``static_detail`` the colour of a small
  square present in every frame (needs full spatial resolution); ``brief_event``
  when a square flashes for one or two frames (beginning, middle or end);
  ``counting`` how often it flashes; ``object_motion`` which way a square moves.

Examples are planned first (``plan``: which source frames, which edit, seeded) and
rendered from the decoded footage (``render``), so the answer of every example is
known from its plan. Files are encoded losslessly enough (H.264 4:4:4, CRF 12)
that a probe's colour survives.
"""

from __future__ import annotations

import dataclasses
import json
import os

import av
import numpy as np
from absl import app, flags

from data_pipelines import natural_footage, package_assets, video_decode

FAMILIES = ("direction", "speed", "freeze", "order",
            "static_detail", "brief_event", "counting", "object_motion")
_QUESTIONS = {
    "direction": ("Is the video playing forwards or backwards?", ["forwards", "backwards"]),
    "speed": ("How fast is the video playing?",
              ["normal speed", "twice as fast", "four times as fast"]),
    "freeze": ("Where does the video freeze?",
               ["at the beginning", "in the middle", "at the end"]),
    "order": ("Are the two halves of the video in their original order?", ["yes", "no"]),
    "static_detail": ("What colour is the small square?", ["red", "green", "blue", "yellow"]),
    "brief_event": ("When does the square flash?",
                    ["at the beginning", "in the middle", "at the end"]),
    "counting": ("How many times does the square flash?", ["once", "twice", "three times"]),
    "object_motion": ("Which way does the square move?", ["left", "right"]),
}
_COLOURS = np.array([[230, 25, 25], [25, 200, 25], [25, 25, 230], [240, 220, 20]], np.uint8)
_STRIDES = (1, 2, 4)


@dataclasses.dataclass(frozen=True)
class Example:
    """One planned example: source frames, the edit, and the answer's option index."""

    family: str
    video: int                 # index into the footage list
    frames: tuple[int, ...]    # source frame per output frame (after temporal edits)
    answer: int                # index into the family's options
    probe: tuple = ()          # composited square: (colour, row, col, size, per-frame cols or None, shown frames)


def plan(num_source_frames: list[int], family: str, count: int, frames: int, size: int,
         rng: np.random.Generator, probe_side: int = 0) -> list[Example]:
    """``count`` examples of ``family`` over videos of the given lengths, answers balanced.

    ``probe_side``: the composited square's side in pixels (0: ``size // 12``).
    """
    if family not in FAMILIES:
        raise ValueError(f"natural_video_qa: unknown family {family!r}; choose from {FAMILIES}")
    options = len(_QUESTIONS[family][1])
    need = frames * max(_STRIDES) if family == "speed" else 2 * frames
    usable = [v for v, n in enumerate(num_source_frames) if n >= need]
    if not usable:
        raise ValueError(f"natural_video_qa: family {family!r} needs videos of at least {need}"
                         f" frames; the longest has {max(num_source_frames, default=0)}")
    out = []
    for i in range(count):
        answer = i % options  # balanced answers; the order is shuffled below
        video = int(rng.choice(usable))
        n = num_source_frames[video]
        out.append(_plan_one(family, answer, video, n, frames, size, rng,
                             probe_side or max(3, size // 12)))
    order = rng.permutation(len(out))
    return [out[j] for j in order]


TEMPORAL_FAMILIES = ("direction", "speed", "freeze", "order")  # edits of time alone


def plan_one(family: str, answer: int, video: int, num_source_frames: int, frames: int,
             size: int, rng: np.random.Generator, probe_side: int = 0) -> Example:
    """One example of ``family`` with the given answer from ``video`` (of that many frames)."""
    return _plan_one(family, answer, video, num_source_frames, frames, size, rng,
                     probe_side or max(3, size // 12))


def _window(n: int, length: int, stride: int, rng) -> list[int]:
    start = int(rng.integers(0, n - (length - 1) * stride))
    return [start + k * stride for k in range(length)]


def _plan_one(family: str, answer: int, video: int, n: int, t: int, size: int, rng,
              side: int) -> Example:
    probe = ()
    if family == "direction":
        idx = _window(n, t, 1, rng)
        idx = idx[::-1] if answer == 1 else idx
    elif family == "speed":
        idx = _window(n, t, _STRIDES[answer], rng)
    elif family == "freeze":
        hold = max(2, t // 4)
        start = {0: 0, 1: (t - hold) // 2, 2: t - hold}[answer]
        base = _window(n, t, 1, rng)
        idx = base[:start + 1] + [base[start]] * (hold - 1) + base[start + 1:t - hold + 1]
    elif family == "order":
        # Two stretches at least half a clip apart in time, played in order or swapped.
        half, rest = t // 2, t - t // 2
        gap = int(rng.integers(2 * half, n - rest + 1))
        start = int(rng.integers(0, n - gap - rest + 1))
        first = [start + k for k in range(half)]
        second = [start + gap + k for k in range(rest)]
        idx = first + second if answer == 0 else second + first
    else:
        idx = _window(n, t, 1, rng)
        row = int(rng.integers(0, size - side))
        col = int(rng.integers(0, size - side))
        colour = int(rng.integers(0, len(_COLOURS)))
        shown = tuple(range(t))
        cols = None
        if family == "static_detail":
            colour = answer
        elif family == "brief_event":
            third = t // 3
            start = answer * third + int(rng.integers(0, max(1, third - 1)))
            shown = tuple(range(start, min(t, start + int(rng.integers(1, 3)))))
        elif family == "counting":
            slots = rng.choice(np.arange(0, t - 1, 2), size=answer + 1, replace=False)
            shown = tuple(sorted(int(s) for s in slots))  # single frames, never adjacent
        elif family == "object_motion":
            travel = np.linspace(0, size - side, t).round().astype(int)
            cols = tuple(int(c) for c in (travel if answer == 1 else travel[::-1]))
        probe = (colour, row, col, side, cols, shown)
    return Example(family, video, tuple(int(i) for i in idx), answer, probe)


def render(example: Example, footage: np.ndarray) -> np.ndarray:
    """The example's frames ``(T, S, S, 3)`` uint8 from its video's decoded frames."""
    out = footage[np.asarray(example.frames)].copy()
    if example.probe:
        colour, row, col, side, cols, shown = example.probe
        for k in shown:
            c = cols[k] if cols is not None else col
            out[k, row:row + side, c:c + side] = _COLOURS[colour]
    return out


def question(example: Example) -> tuple[str, list[str]]:
    return _QUESTIONS[example.family]


def decode_footage(path: str, size: int, max_frames: int) -> np.ndarray:
    """Every frame of ``path`` (up to ``max_frames``), short side to ``size``, centre crop."""
    with open(path, "rb") as f:
        data = f.read()
    frames = []
    for frame in video_decode.iter_frames(data, size, "crop"):
        frames.append(frame)
        if len(frames) >= max_frames:
            break
    return np.stack(frames)


def write_video(path: str, frames: np.ndarray, rate: int = 8) -> None:
    with av.open(path, "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=rate)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv444p"
        s.options = {"crf": "12", "preset": "veryfast"}
        for image in frames:
            for packet in s.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)


def build(footage: list[str], out: str, *, frames: int = 16, size: int = 112,
          train_per_family: int = 200, eval_per_family: int = 50, eval_videos: int = 1,
          max_source_frames: int = 4000, seed: int = 0, families=FAMILIES,
          probe_side: int = 0) -> dict:
    """Plans, renders and writes the benchmark under ``out``; returns its manifest."""
    footage = sorted(footage, key=os.path.basename)
    if len(footage) <= eval_videos or eval_videos < 1:
        raise ValueError(f"natural_video_qa: {len(footage)} videos cannot hold out"
                         f" --eval_videos={eval_videos} and keep one for training")
    decoded = [decode_footage(p, size, max_source_frames) for p in footage]
    lengths = [len(d) for d in decoded]
    split_of = {"train": list(range(len(footage) - eval_videos)),
                "eval": list(range(len(footage) - eval_videos, len(footage)))}
    rng = np.random.default_rng(seed)
    manifest = dict(frames=frames, size=size, seed=seed, families=list(families),
                    probe_side=probe_side or max(3, size // 12),
                    footage={os.path.basename(p): n for p, n in zip(footage, lengths)},
                    splits={})
    for split, count in (("train", train_per_family), ("eval", eval_per_family)):
        videos = split_of[split]
        lines = []
        for family in families:
            local = plan([lengths[v] for v in videos], family, count, frames, size, rng,
                         probe_side=probe_side)
            for i, ex in enumerate(local):
                ex = dataclasses.replace(ex, video=videos[ex.video])
                rel = os.path.join(split, family, f"{i:05d}.mp4")
                os.makedirs(os.path.join(out, split, family), exist_ok=True)
                write_video(os.path.join(out, rel), render(ex, decoded[ex.video]))
                text, options = question(ex)
                lines.append(dict(video=rel, question=text, options=options,
                                  answer="ABCD"[ex.answer], family=family,
                                  source=os.path.basename(footage[ex.video])))
        with open(os.path.join(out, f"{split}.jsonl"), "w") as f:
            f.writelines(json.dumps(line) + "\n" for line in lines)
        manifest["splits"][split] = dict(
            examples=len(lines), videos=[os.path.basename(footage[v]) for v in videos])
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
    return manifest


def main(argv):
    del argv
    f = flags.FLAGS
    if f.footage:
        names = sorted(n for n in os.listdir(f.footage) if not n.startswith("."))
        footage = [os.path.join(f.footage, n) for n in names]
    else:

        footage = natural_footage.install(package_assets.asset_dir("natural_footage"))
    manifest = build(footage, f.out, frames=f.frames, size=f.size,
                     train_per_family=f.train_per_family, eval_per_family=f.eval_per_family,
                     eval_videos=f.eval_videos, seed=f.seed, probe_side=f.probe_side)
    for split, info in manifest["splits"].items():
        print(f"{split}: {info['examples']} examples from {', '.join(info['videos'])}")


if __name__ == "__main__":
    flags.DEFINE_string("out", None, "destination folder (videos, train.jsonl, eval.jsonl)")
    flags.DEFINE_string("footage", "", "folder of videos (default: the natural footage clips)")
    flags.DEFINE_integer("frames", 16, "frames per example")
    flags.DEFINE_integer("size", 112, "frame side in pixels")
    flags.DEFINE_integer("train_per_family", 200, "training examples per family")
    flags.DEFINE_integer("eval_per_family", 50, "eval examples per family")
    flags.DEFINE_integer("eval_videos", 1, "videos held out for eval (the last by name)")
    flags.DEFINE_integer("seed", 0, "seed of the plan")
    flags.DEFINE_integer("probe_side", 0, "side of the composited square in pixels"
                         " (0: size // 12)")
    flags.mark_flag_as_required("out")
    app.run(main)
