"""Procedural fine-grained video QA benchmark (deterministic, no downloads).

Every example is rendered on the fly from `np.random.default_rng([seed, split_id,
index])`, so an index always gives the same video and train/eval never share a
stream. Five question families separate what a token-compression method keeps:

  static_detail     a 5x5 px (at 32 px) static object: needs full-resolution anchors.
  brief_event       a 1-2 frame flash: lost by frame subsampling.
  motion_direction  steady motion: needs more than one frame.
  temporal_order    two objects (top / bottom band) each move during their own
                    window, one after the other: which moved first? Needs temporal order.
  counting          n in 1..4 well-separated flashes: needs dense temporal sampling.

Families cycle with the index (index % len(families)), so each gets 1/len of the
examples, or with `family_weights` a share proportional to its weight (the
training mix can favour the families that take longest to learn; evaluation
keeps the uniform cycle). Every clip also carries follow-up questions about the same content
(`followups`), trained in the same sequence after the family's question: where
the small object or the flash is, or the colour of the object that moved,
moved first or flashed. Encoding a clip costs far more than its text, so a second question per
clip is nearly free supervision for the skills the families share (finding a
small or brief object, reading its colour). Evaluation asks the family's
question only. Objects are saturated colours on a dark noisy background, with a
drifting grey distractor in the colour and counting families; sizes scale
with `image_size / 32`, event times with `num_frames` (flashes stay 1-2 frames).

The background noise (`background`) is drawn afresh every frame (`frame`, the
default: sensor-like noise that makes every inter-frame residual non-zero) or
once per clip and held still (`clip`: a static textured background, as in most
real footage, whose inter-frame residuals are zero away from the objects).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from data_pipelines import tokenizer as tokenizer_lib

FAMILIES: tuple[str, ...] = (
    "static_detail",
    "brief_event",
    "motion_direction",
    "temporal_order",
    "counting",
)
ALL_FAMILIES = FAMILIES

COLOR_NAMES: tuple[str, ...] = ("red", "green", "blue", "yellow", "cyan", "magenta")
_COLORS = np.array(
    [[235, 40, 40], [40, 225, 40], [50, 90, 255], [235, 225, 40], [40, 225, 235], [230, 50, 230]],
    np.int16,
)
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
NUMBERS: tuple[str, ...] = ("one", "two", "three", "four")
BANDS: tuple[str, ...] = ("top", "bottom")
BACKGROUNDS: tuple[str, ...] = ("frame", "clip")  # background noise drawn per frame | per clip

# Questions are written already tokenised (punctuation split by spaces).
QUESTIONS: dict[str, str] = {
    "static_detail": "what color is the small object",
    "brief_event": "what color was the flash",
    "motion_direction": "which way did the object move",
    "temporal_order": "which moved first , the top or the bottom object",
    "counting": "how many times did it flash",
}
ANSWERS: dict[str, tuple[str, ...]] = {
    "static_detail": COLOR_NAMES,
    "brief_event": COLOR_NAMES,
    "motion_direction": DIRECTIONS,
    "temporal_order": BANDS,
    "counting": NUMBERS,
}
# Follow-up questions per family, about the same clip (answer sets in the comments).
FOLLOWUPS: dict[str, tuple[str, ...]] = {
    "static_detail": ("is the small object at the top or the bottom",),  # BANDS
    "brief_event": ("was the flash at the top or the bottom",),  # BANDS
    "motion_direction": ("what color is the moving object",),  # COLOR_NAMES
    "temporal_order": ("what color is the object that moved first",),  # COLOR_NAMES
    "counting": ("what color was the flash",),  # COLOR_NAMES
}
SPLIT_IDS: dict[str, int] = {"train": 0, "eval": 1, "validation": 1, "test": 2}


# Token lengths every example fits (the first question, its answer and the
# follow-up turn, with the default chat template): the benchmark's text is fixed.
MAX_TEXT_LEN = 32
MAX_ANSWER_LEN = 2


def tokenizer() -> tokenizer_lib.WordTokenizer:
    """The benchmark's word tokenizer: the chat template's words, then ``vocabulary()``."""
    return tokenizer_lib.WordTokenizer(tokenizer_lib.TEMPLATE_WORDS + tuple(vocabulary()))


def vocabulary() -> list[str]:
    """Every word of every question and answer, sorted (fixed across runs)."""
    words = set(COLOR_NAMES) | set(DIRECTIONS) | set(NUMBERS) | set(BANDS)
    for q in (*QUESTIONS.values(), *(q for qs in FOLLOWUPS.values() for q in qs)):
        words |= {w for w in q.split() if not w.startswith("{")}
    return sorted(words)


def all_texts():
    """Every question-and-answer text an example can hold (each family's question and
    answers with every follow-up answer): what a tokenizer other than ``tokenizer()``
    is measured over to size ``data.max_text_len`` / ``data.max_answer_len``."""
    for family, question in QUESTIONS.items():
        for answer in ANSWERS[family]:
            for followup in FOLLOWUPS[family]:
                for followup_answer in (*COLOR_NAMES, *BANDS):
                    yield dict(question=question, answer=answer,
                               followups=((followup, followup_answer),))


# ----------------------------------------------------------------------------
# Drawing helpers (vectorised over frames).
# ----------------------------------------------------------------------------


def _paint(
    frames: np.ndarray,
    ys: np.ndarray,
    xs: np.ndarray,
    size: int,
    colour: np.ndarray,
    visible: np.ndarray | None = None,
) -> None:
    """Paints a size x size square at top-left (ys[t], xs[t]) in each frame t.

    frames: (T, H, W, 3) uint8, modified in place. ys, xs: (T,) ints.
    visible: optional (T,) bool; frames where it is False are left untouched.
    """
    t = frames.shape[0]
    ts = np.arange(t) if visible is None else np.flatnonzero(visible)
    ys = np.broadcast_to(np.asarray(ys, np.int64), (t,))[ts]
    xs = np.broadcast_to(np.asarray(xs, np.int64), (t,))[ts]
    offs = np.arange(size)
    # Advanced indexing: (n, size, size) pixel coordinates painted in one go.
    frames[
        ts[:, None, None], (ys[:, None] + offs)[:, :, None], (xs[:, None] + offs)[:, None, :]
    ] = colour


def _bounce(p0: float, v: float, t: np.ndarray, hi: int) -> np.ndarray:
    """Position p0 + v t reflected into [0, hi] (triangle wave), rounded. (T,)"""
    if hi <= 0:
        return np.zeros_like(t, np.int64)
    q = np.mod(p0 + v * t, 2 * hi)
    return np.rint(np.where(q > hi, 2 * hi - q, q)).astype(np.int64)


class _Canvas:
    """Per-example rendering context: rng, sizes and a noisy dark background."""

    def __init__(self, rng: np.random.Generator, num_frames: int, image_size: int,
                 background: str = "frame"):
        self.rng, self.t, self.h = rng, num_frames, image_size
        scale = image_size / 32.0
        self.small = max(2, round(5 * scale))  # static detail: 5x5 px at 32 px, under one 8x8 patch
        self.medium = max(2, round(7 * scale))  # flashes and movers: 7x7 px at 32 px
        self.large = max(3, round(7 * scale))  # drifting distractor
        level = rng.integers(6, 22)
        # Mild uniform noise in [0, 16): raw generator bits are ~8x faster than
        # rng.integers and just as deterministic.
        shape = (num_frames if background == "frame" else 1, image_size, image_size, 3)
        size = int(np.prod(shape))
        raw = rng.bit_generator.random_raw(-(-size // 8)).view(np.uint8)[:size]
        noise = (raw.reshape(shape) & 15) + np.uint8(level)
        self.frames = np.repeat(noise, num_frames // shape[0], axis=0)
        self.time = np.arange(num_frames, dtype=np.float64)

    def colour(self, idx: int) -> np.ndarray:
        """Colour `idx` with a little per-object jitter; stays clearly saturated."""
        jitter = self.rng.integers(-15, 16, 3)
        return np.clip(_COLORS[idx] + jitter, 0, 255).astype(np.uint8)

    def random_pos(self, size: int) -> tuple[int, int]:
        y, x = self.rng.integers(0, self.h - size + 1, 2)
        return int(y), int(x)

    def pos_in_band(self, size: int) -> tuple[int, int, str]:
        """A random top-left corner whose object lies wholly in the top or bottom
        half (so "top or bottom" has one answer); returns (y, x, band)."""
        band = int(self.rng.integers(0, 2))
        half = self.h // 2
        lo = 0 if band == 0 else half
        hi = half - size if band == 0 else self.h - size
        y = int(self.rng.integers(lo, hi + 1))
        x = int(self.rng.integers(0, self.h - size + 1))
        return y, x, BANDS[band]

    def drifting_distractor(self) -> None:
        """A large grey object drifting (bouncing) across the frame for the whole clip.

        Achromatic on purpose: it adds motion and residual energy everywhere (what
        a compressor must cope with) without competing with the coloured object a
        question asks about, so colour answers measure what the tokens kept.
        """
        s, hi = self.large, self.h - self.large
        speed = self.rng.uniform(0.6, 1.2) * hi / max(self.t - 1, 1)
        angle = self.rng.uniform(0, 2 * np.pi)
        y0, x0 = self.rng.uniform(0, hi, 2)
        ys = _bounce(y0, speed * np.sin(angle), self.time, hi)
        xs = _bounce(x0, speed * np.cos(angle), self.time, hi)
        grey = np.full(3, self.rng.integers(130, 200), np.uint8)
        _paint(self.frames, ys, xs, s, grey)


def _two_colours(rng: np.random.Generator) -> tuple[int, int]:
    a, b = rng.choice(len(COLOR_NAMES), 2, replace=False)
    return int(a), int(b)


# ----------------------------------------------------------------------------
# Families. Each paints `cv.frames` and returns (answer, follow-up answers).
# ----------------------------------------------------------------------------


def _static_detail(cv: _Canvas) -> tuple[str, tuple[str, ...]]:
    target = int(cv.rng.integers(0, len(COLOR_NAMES)))
    cv.drifting_distractor()
    y, x, band = cv.pos_in_band(cv.small)
    _paint(cv.frames, y, x, cv.small, cv.colour(target))  # on top: never occluded
    return COLOR_NAMES[target], (band,)


def _brief_event(cv: _Canvas) -> tuple[str, tuple[str, ...]]:
    flash = int(cv.rng.integers(0, len(COLOR_NAMES)))
    cv.drifting_distractor()
    duration = int(cv.rng.integers(1, 3))
    start = int(cv.rng.integers(1, cv.t - duration))  # never first/last frame
    visible = (cv.time >= start) & (cv.time < start + duration)
    y, x, band = cv.pos_in_band(cv.medium)
    _paint(cv.frames, y, x, cv.medium, cv.colour(flash), visible)
    return COLOR_NAMES[flash], (band,)


def _linear_path(
    cv: _Canvas,
    lo: float,
    hi: float,
    positive: bool,
    t_start: float = 0.0,
    travel: tuple[float, float] = (0.35, 0.55),
    t_end: float | None = None,
) -> np.ndarray:
    """Coordinates (T,) that hold still until t_start, move steadily by a random
    fraction in `travel` of [lo, hi] until t_end (default: the last frame), then
    hold still again; positive=True increases."""
    span = hi - lo
    dist = cv.rng.uniform(*travel) * span
    p0 = lo + cv.rng.uniform(0, span - dist)
    t_end = cv.t - 1 if t_end is None else t_end
    frac = np.clip((cv.time - t_start) / max(t_end - t_start, 1e-9), 0.0, 1.0)
    path = p0 + dist * frac if positive else p0 + dist * (1.0 - frac)
    return np.rint(path).astype(np.int64)


def _motion_direction(cv: _Canvas) -> tuple[str, tuple[str, ...]]:
    s, hi = cv.medium, cv.h - cv.medium
    direction = int(cv.rng.integers(0, 4))  # left, right, up, down
    # A long travel (half the frame or more) makes the direction visible between
    # sparse anchors; the start position then hints at it (an object near the
    # left edge can only go right), which anchors-only ablations can exploit.
    along = _linear_path(cv, 0, hi, positive=direction in (1, 3), travel=(0.5, 0.8))
    across = int(cv.rng.integers(0, hi + 1))
    ys, xs = (across, along) if direction < 2 else (along, across)
    colour = int(cv.rng.integers(0, len(COLOR_NAMES)))
    _paint(cv.frames, ys, xs, s, cv.colour(colour))
    return DIRECTIONS[direction], (COLOR_NAMES[colour],)


def _temporal_order(cv: _Canvas) -> tuple[str, tuple[str, ...]]:
    s = cv.medium
    first, second = _two_colours(cv.rng)
    # Two events in sequence: each object moves during its own window of T/4
    # frames and rests otherwise; the first window ends before the second starts.
    move = max(2, round(cv.t / 4))
    gap = max(1, round(cv.t / 16))
    t_first = int(cv.rng.integers(0, cv.t - 2 * move - gap + 1))
    t_second = int(cv.rng.integers(t_first + move + gap, cv.t - move + 1))
    half = cv.h // 2
    top_is_first = bool(cv.rng.integers(0, 2))
    for colour, t_start, top in (
        (first, t_first, top_is_first),
        (second, t_second, not top_is_first),
    ):
        band_lo = 0 if top else half
        y = int(cv.rng.integers(band_lo, band_lo + half - s + 1))
        xs = _linear_path(cv, 0, cv.h - s, positive=bool(cv.rng.integers(0, 2)), t_start=t_start,
                          t_end=t_start + move - 1)
        _paint(cv.frames, y, xs, s, cv.colour(colour))
    # Asked by band, not by colour: the answer set is fixed, so the family
    # measures temporal order rather than copying a colour word from the question.
    return BANDS[0 if top_is_first else 1], (COLOR_NAMES[first],)


def _counting(cv: _Canvas) -> tuple[str, tuple[str, ...]]:
    flash = int(cv.rng.integers(0, len(COLOR_NAMES)))
    cv.drifting_distractor()
    n = int(cv.rng.integers(1, 5))
    durations = cv.rng.integers(1, 3, n)
    min_gap = max(2, cv.t // 10)
    free = cv.t - int(durations.sum()) - (n - 1) * min_gap
    if free < 0:  # very short clips: shortest legal flashes and gaps
        durations[:] = 1
        min_gap = 1
        free = cv.t - n - (n - 1)
    # Random slack before, between and after the flashes (stars and bars).
    slack = cv.rng.multinomial(free, np.full(n + 1, 1.0 / (n + 1)))
    starts = slack[0] + np.concatenate([[0], np.cumsum(durations[:-1] + min_gap + slack[1:n])])
    visible = (
        (cv.time[:, None] >= starts[None]) & (cv.time[:, None] < (starts + durations)[None])
    ).any(axis=1)
    y, x = cv.random_pos(cv.medium)
    _paint(cv.frames, y, x, cv.medium, cv.colour(flash), visible)
    return NUMBERS[n - 1], (COLOR_NAMES[flash],)


_RENDER = {
    "static_detail": _static_detail,
    "brief_event": _brief_event,
    "motion_direction": _motion_direction,
    "temporal_order": _temporal_order,
    "counting": _counting,
}


# ----------------------------------------------------------------------------
# Grain random-access source.
# ----------------------------------------------------------------------------


def family_cycle(families: Sequence[str], weights: Sequence[int] = ()) -> tuple[int, ...]:
    """Family ids (into FAMILIES) in index order: weight w gives a family w slots.

    ``weights`` () means one slot each; otherwise one non-negative int per family, not all 0.
    """
    counts = tuple(weights) or (1,) * len(families)
    if (len(counts) != len(families) or not sum(counts)
            or not all(isinstance(w, int) and w >= 0 for w in counts)):
        raise ValueError(f"family_weights must be {len(families)} non-negative ints (one per"
                         f" family of {tuple(families)}), not all 0; got {tuple(weights)}")
    return tuple(FAMILIES.index(f) for f, w in zip(families, counts) for _ in range(w))


class VideoQASource:
    """Grain random-access source of synthetic video QA examples.

    Example (dict):
      frames      (T, H, W, 3) uint8
      frame_mask  (T,) bool, all True
      question    str, e.g. "which way did the object move"
      answer      str, one word
      followups   tuple of (question, answer): follow-up turns about the
                  same clip (empty with followups=False)
      family      int, index into FAMILIES
      index       int
    """

    def __init__(
        self,
        num_frames: int,
        image_size: int,
        num_examples: int,
        split: str,
        seed: int = 0,
        families: Sequence[str] = ALL_FAMILIES,
        followups: bool = True,
        family_weights: Sequence[int] = (),
        background: str = "frame",
    ):
        if split not in SPLIT_IDS:
            raise ValueError(f"split must be one of {sorted(SPLIT_IDS)}, got {split!r}")
        unknown = [f for f in families if f not in FAMILIES]
        if unknown or not families:
            raise ValueError(
                f"families must be a non-empty subset of {FAMILIES}, got {list(families)}"
            )
        if num_frames < 8:
            raise ValueError(f"num_frames must be >= 8 (events need room), got {num_frames}")
        if image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {image_size}")
        if num_examples <= 0:
            raise ValueError(f"num_examples must be positive, got {num_examples}")
        if background not in BACKGROUNDS:
            raise ValueError(f"background must be one of {BACKGROUNDS}, got {background!r}")
        # Index i renders family _cycle[i % len(_cycle)].
        self._cycle = family_cycle(families, family_weights)
        self.num_frames, self.image_size = int(num_frames), int(image_size)
        self.num_examples, self.split, self.seed = int(num_examples), split, int(seed)
        self.families = tuple(families)
        self.followups = bool(followups)
        self.background = background
        self._split_id = SPLIT_IDS[split]

    def __len__(self) -> int:
        return self.num_examples

    def __repr__(self) -> str:
        return (
            f"VideoQASource(split={self.split!r}, n={self.num_examples}, "
            f"T={self.num_frames}, size={self.image_size}, seed={self.seed}, "
            f"families={self.families}, cycle={self._cycle}, background={self.background!r})"
        )

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not 0 <= index < self.num_examples:
            raise IndexError(f"index {index} out of range [0, {self.num_examples})")
        family = self._cycle[index % len(self._cycle)]
        rng = np.random.default_rng([self.seed, self._split_id, index])
        canvas = _Canvas(rng, self.num_frames, self.image_size, self.background)
        name = FAMILIES[family]
        answer, followup_answers = _RENDER[name](canvas)
        followups = tuple(zip(FOLLOWUPS[name], followup_answers)) if self.followups else ()
        return {
            "frames": canvas.frames,
            "frame_mask": np.ones((self.num_frames,), bool),
            "question": QUESTIONS[name],
            "answer": answer,
            "followups": followups,
            "family": family,
            "index": index,
        }
