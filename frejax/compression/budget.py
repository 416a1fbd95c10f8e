"""The budget-adaptive Fre-Res plan: how many anchors, coefficients and cells.

Pure python and static: the plan depends only on the geometry, the token budget
and the options, never on a video, so one compiled program serves every video.

Token counts (``N = h*w`` tokens per frame, ``S = ceil(T / L)`` segments,
``W`` time windows per segment, ``P = ceil(h/p) * ceil(w/p)`` pooled cells):

* ``dual`` (fre_res default): ``S*N + S*W*K*P``: absorbed anchors, then
  residual-frequency tokens.
* ``absorbed``: ``S*N`` anchor tokens; the residual track is absorbed into them
  and costs no tokens.
* ``residual`` (``temporal_dct_only``): ``S*W*K*P``, no anchors.
* ``anchors`` (``anchors_only``): ``S*N``, no residual track.

Time windows: a segment's ``L-1`` residual steps are cut into ``W`` windows of
``ceil((L-1) / W)`` steps (the last one zero-padded), each transformed on its
own, so a coefficient says *when* in the segment a change happened as well as
how fast (the short-block switch of transform audio coders, for transients).

Rule for options left at 0 ("chosen by the budget"):

1. Segments. ``absorbed`` / ``anchors``: as many anchors as fit,
   ``S = min(T, budget // N)``. ``dual`` / ``residual``: about half of the
   budget buys anchors, ``S = clip(budget // (2N), 1, T)`` (``residual`` keeps
   the segmentation ``dual`` would use, so the ablation only removes anchors).
   Then ``L = ceil(T / S)`` and ``S = ceil(T / L)`` (padding, never dropping,
   frames).
2. Time windows: at least two per clip, ``W = ceil(2 / S)`` (so ``W = 2`` for
   one segment, else 1), at most ``L-1`` and, with an explicit ``K``, at most
   ``(L-1) // K``; 1 with energy allocation (it keeps a prefix of each
   segment's spectrum) or when two windows leave no room for a coefficient.
   With one window over the whole clip and the few coefficients left after
   the anchor, event times live only in coefficient phases; on the embedded
   benchmark Fre-Res then did not learn temporal order, and two windows at the
   same token count did (README, "Every method at matched budgets").
3. Coefficients and pooling, given the residual room ``R`` (the budget left
   after anchors) and the window length ``l = ceil((L-1) / W)``: the target is
   the lowest quarter of the spectrum, ``K* = ceil(l / 4)``. ``p`` is the
   finest pooling with ``S * W * K* * P(p) <= R``; ``K = min(l, R // (S*W*P(p)))``
   then fills what is left at that ``p``. If no ``p`` reaches ``K*``, the
   coarsest (``P = 1``) is used with as many coefficients as fit. ``dual`` with
   no room left (``R < S*W``) drops the residual track (``K = 0``).
   ``absorbed``: ``p = 1`` and ``K = ceil(l / 2)`` (no token cost; the
   absorber reads the lower half of the spectrum).

Coding of the residual track (``coding``). ``single``: the rule above, one ``K`` and
one ``p``. ``pyramid`` (one time window): the residual track is coded in bands
of rising temporal frequency whose spatial pooling doubles, ``p = 1, 2, 4``
(``PYRAMID_POOLS``). With the residual room ``R`` the full-resolution band takes
``K1 = floor(R/2 / P(1))`` coefficients, the 2x2 band ``K2 = floor(R/4 / P(2))``, the
4x4 band what is left, ``K4 = floor((R - K1 P(1) - K2 P(2)) / P(4))`` (each capped so
that ``K1 + K2 + K4 <= L-1``): fine cells for the low frequencies, coarse ones for
the high (``docs/natural_video.md`` measures it beside the other codings).
``energy`` (one time window): all ``L-1`` coefficients
are computed at full resolution and each segment keeps its ``M = R // S``
highest-energy (coefficient, position) pairs, chosen per video (``top_k``, a static
count); each token carries a learned embedding of its coefficient and one of its
position. Segments follow step 1 whatever the anchor: with one window per segment,
segments are what tells the LLM *when* a change happened.

Explicit values are honoured and checked; impossible ones raise ``ValueError``
naming ``compressor.fre_res.<field>`` and the allowed range.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

from frejax.compression import options as options_lib
from frejax.compression.anchors import ANCHOR_MODES, RESIDUAL_KINDS
from frejax.compression.base import VideoGeometry
from frejax.compression.dct import METHODS as DCT_METHODS
from frejax.compression.options import Option

VARIANTS = ("fre_res", "temporal_dct_only", "anchors_only")
SECTION = "fre_res"  # config section: compressor.fre_res, shared by the ablations

# Every Fre-Res option (0 = chosen by the budget, see the module docstring).
OPTIONS: options_lib.Schema = dict(
    segment_len=options_lib.non_negative("L frames per segment (one anchor each)"),
    num_coeffs=options_lib.non_negative("K kept temporal DCT coefficients per time window"),
    time_windows=options_lib.non_negative("W residual time windows per segment"),
    pool=options_lib.non_negative("p x p pooling of residual-frequency tokens"),
    # Defaults chosen from natural-video measurements with a pretrained encoder
    # (docs/natural_video.md): segment-mean anchors and the highest-energy deviation
    # coefficients. The paper's split is anchor='middle', residual='inter_frame',
    # coding='single'.
    residual=Option("anchor_relative", "residual trajectories", RESIDUAL_KINDS),
    anchor=Option("mean", "anchor of a segment: a frame, or the segment's mean ('mean')",
                  ANCHOR_MODES),
    coding=Option("energy", "residual track as tokens: one pooling, a pyramid of bands pooled"
                  " 1, 2, 4 as frequency rises, or the highest-energy (coefficient, position)"
                  " pairs per video", ("single", "pyramid", "energy")),
    allocation=Option("uniform", "coefficients per segment: equal, or by residual energy",
                      ("uniform", "energy")),
    # dual by default: on the embedded benchmark it learns motion in far fewer steps.
    output=Option("dual", "absorbed anchors + residual-frequency tokens, or the anchors alone",
                  ("dual", "absorbed")),
    dct_method=Option("auto", "temporal DCT path", DCT_METHODS),
    # Where multimodal RoPE places a residual-frequency token in time (Compressor.places).
    residual_place=Option("centre", "a residual-frequency token's time: the centre of its"
                          " window, its anchor's, or spread over its window by coefficient",
                          ("centre", "anchor", "spread")),
    absorber=dict(
        window=Option(3, "neighbourhood of an anchor token (odd)",
                      check=lambda v: v >= 1 and v % 2 == 1, requirement="an odd int >= 1"),
        heads=Option(4, "attention heads (must divide the encoder width)",
                     check=lambda v: v >= 1, requirement="an int >= 1"),
        enabled=Option(True, "absorb the residual track into the anchors")),
)


PYRAMID_POOLS = (1, 2, 4)


def resolve_options(options: Any = None) -> dict[str, Any]:
    """Fre-Res options over their defaults, checked (errors name ``compressor.fre_res.<key>``)."""
    opts = options_lib.resolve(f"compressor.{SECTION}", OPTIONS, options)
    key = f"compressor.{SECTION}"
    if opts["anchor"] == "mean" and opts["residual"] != "anchor_relative":
        raise ValueError(f"{key}.residual must be 'anchor_relative' with anchor='mean' (the"
                         f" deviations from the mean), got {opts['residual']!r}")
    if opts["anchor"] == "mean" and opts["time_windows"] > 1:
        raise ValueError(f"{key}.time_windows must be 1 with anchor='mean', got"
                         f" {opts['time_windows']}")
    coding = opts["coding"]
    if coding != "single":
        for field in ("num_coeffs", "pool"):
            if opts[field]:
                raise ValueError(f"{key}.{field} must be 0 with coding={coding!r} (the coding"
                                 f" sets it), got {opts[field]}")
        if opts["time_windows"] > 1 or opts["allocation"] != "uniform":
            raise ValueError(f"{key}.coding: {coding!r} needs time_windows 0 or 1 and allocation"
                             f" 'uniform', got {opts['time_windows']} and"
                             f" {opts['allocation']!r}")
        if opts["output"] != "dual":
            raise ValueError(f"{key}.output must be 'dual' with coding={coding!r} (the residual"
                             f" track is tokens), got {opts['output']!r}")
    return opts


def pooled_grid(grid: tuple[int, int], pool: int) -> tuple[int, int]:
    """``(ceil(h/p), ceil(w/p))``: a partial border window is its own cell."""
    return (-(-grid[0] // pool), -(-grid[1] // pool))


@dataclasses.dataclass(frozen=True)
class FreResPlan:
    """Static layout of one Fre-Res output sequence."""

    frames: int              # T
    grid: tuple[int, int]    # (h, w)
    budget: int              # M, the static output length
    output: str              # "absorbed" | "dual" | "residual" | "anchors"
    segment_len: int         # L frames per segment, one anchor each
    num_segments: int        # S = ceil(T / L)
    num_coeffs: int          # K lowest DCT coefficients per window (0: no residual track)
    pool: int                # p: residual tokens are averaged over p x p cells
    allocation: str          # "uniform" | "energy"
    absorb: bool             # the absorber injects the residual track into the anchors
    time_windows: int = 1    # W residual windows per segment, each with its own K coefficients
    # bands='pyramid': ((K_j, p_j), ...) coefficient bands in rising frequency; K = sum K_j,
    # and ``pool`` is 1 (the absorber reads the bands unpooled). Empty: one band (K, pool).
    bands: tuple[tuple[int, int], ...] = ()
    mean_anchors: bool = False  # anchors are segment means (anchor='mean')
    selected: int = 0  # coding='energy': M tokens per segment out of K = L-1 coefficients x N

    @property
    def tokens(self) -> int:  # N
        return self.grid[0] * self.grid[1]

    @property
    def padded_frames(self) -> int:  # S * L
        return self.num_segments * self.segment_len

    @property
    def window_len(self) -> int:
        """Residual steps per time window, ``ceil((L-1) / W)``."""
        return -(-(self.segment_len - 1) // self.time_windows)

    @property
    def pooled_grid(self) -> tuple[int, int]:
        return pooled_grid(self.grid, self.pool)

    @property
    def pooled_tokens(self) -> int:  # P
        hp, wp = self.pooled_grid
        return hp * wp

    @property
    def residual_slots(self) -> int:
        """C, coefficient slots per segment: W*K in (window, coefficient) order, or all
        L-1 when energy allocation picks (one window)."""
        if not self.num_coeffs:
            return 0
        if self.allocation == "energy":
            return self.segment_len - 1
        return self.time_windows * self.num_coeffs

    @property
    def computes_residual(self) -> bool:
        """Whether the residual track is computed at all."""
        if not self.num_coeffs:
            return False
        return self.output in ("dual", "residual") or (self.output == "absorbed" and self.absorb)

    @property
    def anchor_tokens(self) -> int:
        return 0 if self.output == "residual" else self.num_segments * self.tokens

    @property
    def residual_tokens(self) -> int:
        if self.output not in ("dual", "residual"):
            return 0
        if self.bands:
            return self.num_segments * sum(k * math.prod(pooled_grid(self.grid, p))
                                           for k, p in self.bands)
        if self.selected:
            return self.num_segments * self.selected
        return self.num_segments * self.time_windows * self.num_coeffs * self.pooled_tokens

    @property
    def total_tokens(self) -> int:
        return self.anchor_tokens + self.residual_tokens

    def describe(self) -> str:
        coding = (f"bands={'+'.join(f'{k}@p{p}' for k, p in self.bands)}" if self.bands
                  else f"top {self.selected} of K={self.num_coeffs} x N" if self.selected
                  else f"K={self.num_coeffs}, p={self.pool}")
        anchor = "mean anchors, " if self.mean_anchors else ""
        return (f"FreResPlan({self.output}, {self.allocation}: {anchor}L={self.segment_len},"
                f" S={self.num_segments}, W={self.time_windows}, {coding}"
                f" -> {self.anchor_tokens} anchor + {self.residual_tokens} residual"
                f" = {self.total_tokens} / {self.budget} tokens)")


def make_plan(geometry: VideoGeometry, budget: int, options: Any = None,
              variant: str = "fre_res") -> FreResPlan:
    """The plan for ``variant`` in ``VARIANTS`` (see the module docstring for the rule)."""
    if variant not in VARIANTS:
        raise ValueError(f"make_plan: variant must be one of {VARIANTS}, got {variant!r}")
    frames, grid, n = geometry.frames, tuple(geometry.grid), geometry.tokens
    budget = int(budget)
    if not 1 <= budget <= geometry.full_tokens:
        raise ValueError(f"compressor.budget must be in [1, {geometry.full_tokens}], got {budget}")
    opts = resolve_options(options)
    seg_opt, k_opt = opts["segment_len"], opts["num_coeffs"]
    p_opt, w_opt = opts["pool"], opts["time_windows"]
    allocation = opts["allocation"]
    absorb = opts["absorber"]["enabled"]
    pyramid = opts["coding"] == "pyramid"
    chosen = opts["coding"] == "energy"
    if variant == "fre_res":
        output = opts["output"]
    else:
        output = "residual" if variant == "temporal_dct_only" else "anchors"
        absorb = False
    if p_opt > max(grid):
        raise ValueError(f"compressor.fre_res.pool must be in [1, {max(grid)}] for grid {grid}"
                         f" (0 = chosen by the budget), got {p_opt}")

    # 1. Segments.
    if output != "residual" and budget < n:
        raise ValueError(f"compressor.budget {budget} is below one anchor frame ({n} tokens)")
    if seg_opt:
        seg_len = seg_opt
    else:
        wanted = budget // n if output in ("absorbed", "anchors") else budget // (2 * n)
        seg_len = -(-frames // min(frames, max(1, wanted)))
    segments = -(-frames // seg_len)
    anchor_tokens = 0 if output == "residual" else segments * n
    if anchor_tokens > budget:
        raise ValueError(
            f"compressor.fre_res.segment_len {seg_len} gives {segments} segments = {anchor_tokens}"
            f" anchor tokens, over the budget {budget}; segment_len must be >="
            f" {-(-frames // (budget // n))} for T={frames}, N={n}")

    # 2. Time windows.
    steps = seg_len - 1
    if k_opt and steps < 1:
        raise ValueError(f"compressor.fre_res.num_coeffs must be 0 for segment_len 1 (no residual"
                         f" track), got {k_opt}")
    if k_opt > steps:
        raise ValueError(f"compressor.fre_res.num_coeffs must be in [1, {steps}] for segment_len"
                         f" {seg_len}, got {k_opt}")
    if output == "residual" and steps < 1:
        raise ValueError(f"compressor.fre_res.segment_len must be >= 2 for temporal_dct_only (a"
                         f" residual track needs two frames per segment), got {seg_len} for"
                         f" T={frames}")
    if w_opt and w_opt > max(steps, 1):
        raise ValueError(f"compressor.fre_res.time_windows must be in [1, {max(steps, 1)}] for"
                         f" segment_len {seg_len} (one residual step per window at least),"
                         f" got {w_opt}")
    if w_opt > 1 and allocation == "energy":
        raise ValueError(f"compressor.fre_res.time_windows must be 1 with allocation='energy'"
                         f" (it keeps a prefix of each segment's spectrum), got {w_opt}")
    if w_opt:
        windows = w_opt
    elif allocation == "energy" or steps < 1 or opts["anchor"] == "mean" or pyramid or chosen:
        windows = 1
    else:
        windows = min(-(-2 // segments), steps // k_opt if k_opt else steps)
    max_k = -(-steps // windows) if steps else 0  # window length
    if k_opt > max_k:
        raise ValueError(f"compressor.fre_res.num_coeffs must be in [1, {max_k}] for {windows} time"
                         f" windows of segment_len {seg_len}, got {k_opt}")

    # 3. Coefficients and pooling (back to one window if two leave no room).
    bands: tuple[tuple[int, int], ...] = ()
    selected = 0
    if output == "anchors" or max_k < 1:
        num_coeffs, pool = 0, 1
    elif chosen:
        selected = min(steps * n, (budget - anchor_tokens) // segments)
        num_coeffs, pool = (steps, 1) if selected else (0, 1)
        if not selected and output == "residual":
            raise ValueError(f"compressor.budget: no room for one residual token per segment"
                             f" ({segments} segments) in {budget - anchor_tokens}")
    elif pyramid:
        bands = _pyramid_bands(budget - anchor_tokens, segments, steps, grid)
        num_coeffs, pool = sum(k for k, _ in bands), 1
        if not num_coeffs and output == "residual":
            raise ValueError(f"compressor.budget: no room for one 4x4-pooled band coefficient"
                             f" ({math.prod(pooled_grid(grid, PYRAMID_POOLS[-1]))} tokens per"
                             f" segment, {segments} segments) in {budget - anchor_tokens}")
    elif output == "absorbed":
        num_coeffs, pool = (k_opt or -(-max_k // 2)), (p_opt or 1)
    else:
        room = budget - anchor_tokens
        fit = functools.partial(_fit_residual, room, grid=grid, k_opt=k_opt, p_opt=p_opt,
                                required=output == "residual")
        try:
            num_coeffs, pool = fit(segments * windows, max_k)
        except ValueError:
            if w_opt or windows == 1:
                raise
            num_coeffs = 0
        if not num_coeffs and windows > 1 and not w_opt:
            windows, max_k = 1, steps
            num_coeffs, pool = fit(segments, max_k)
    if not num_coeffs:
        windows = 1
    plan = FreResPlan(frames=frames, grid=grid, budget=budget, output=output,
                      segment_len=seg_len, num_segments=segments, num_coeffs=num_coeffs,
                      pool=pool, allocation=allocation, absorb=absorb, time_windows=windows,
                      bands=bands, mean_anchors=opts["anchor"] == "mean", selected=selected)
    assert plan.total_tokens <= budget, plan
    return plan


def _pyramid_bands(room: int, segments: int, steps: int,
                   grid: tuple[int, int]) -> tuple[tuple[int, int], ...]:
    """``((K_j, p_j), ...)`` for ``PYRAMID_POOLS`` by the module docstring's rule (nonzero K)."""
    room //= max(segments, 1)  # per segment
    shares = (room // 2, room // 4)  # the last band takes what is left
    left, used, out = steps, 0, []
    for j, p in enumerate(PYRAMID_POOLS):
        cells = math.prod(pooled_grid(grid, p))
        k = min(left, (shares[j] if j < len(shares) else room - used) // cells)
        if k:
            out.append((k, p))
        used += k * cells
        left -= k
    return tuple(out)


def _fit_residual(room: int, blocks: int, max_k: int, grid: tuple[int, int], k_opt: int,
                  p_opt: int, required: bool) -> tuple[int, int]:
    """(K, p) with ``blocks * K * P(p) <= room`` (``blocks = S*W`` windows) by the module
    docstring's step 3."""
    pools = [p_opt] if p_opt else list(range(1, max(grid) + 1))
    cells = {p: math.prod(pooled_grid(grid, p)) for p in pools}
    if k_opt:
        for p in pools:
            if blocks * k_opt * cells[p] <= room:
                return k_opt, p
        p = pools[-1]
        raise ValueError(
            f"compressor.fre_res.num_coeffs {k_opt} with pool {p} needs {blocks}*{k_opt}*{cells[p]}"
            f" = {blocks * k_opt * cells[p]} residual tokens, over the {room} left in the"
            f" budget; lower num_coeffs or raise pool / budget")
    target = -(-max_k // 4)
    for p in pools:
        k = min(max_k, room // (blocks * cells[p]))
        if k >= target:
            return k, p
    p = pools[-1]
    k = min(max_k, room // (blocks * cells[p]))
    if k >= 1:
        return k, p
    if p_opt or required:
        raise ValueError(
            f"compressor.budget: no room for residual-frequency tokens: {blocks} time windows"
            f" x {cells[p]} cells (pool {p}) need {blocks * cells[p]} tokens for one"
            f" coefficient, {room} left; raise compressor.budget or compressor.fre_res.pool")
    return 0, 1
