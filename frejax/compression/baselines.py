"""Matched-budget baseline compressors: parameter-free, static-shape, frame-mask aware.

Every baseline maps vision latents ``(batch, frames T, tokens N, embed D)`` on an
``(h, w)`` grid to at most ``budget`` tokens ``(batch, M', embed)`` plus a mask
``(batch, M')``; ``Compressor.__call__`` pads to exactly ``budget``. The math runs
per example under ``sharding.batch_local`` (no collectives), inside ``jit``.

Token counts for a fully valid video (``num_valid_tokens``):

* ``full``:            ``T*N`` (needs ``budget == T*N``).
* ``uniform_frames``:  ``F*N`` with ``F = budget // N`` (needs ``budget >= N``).
* ``spatial_pool``:    ``F*h'*w'``; ``F = min(T, budget)``, ``h'*w'`` the largest
                       pooled grid with ``F*h'*w' <= budget``.
* ``fourier_2d``:      ``F*c``; ``F = min(T, budget)``, ``c = min(N, budget // F)``.
* ``temporal_merge``:  ``budget``.
* ``temporal_dct``:    ``K*h'*w'``; ``K = min(T, budget // N)`` lowest temporal DCT
                       coefficients per position, the grid pooled only when ``budget < N``.
* ``frame_budgets``:   ``budget``, shared among frames by how distinct each is.

Every baseline also implements ``reconstruct``: the latent video implied by what it
keeps (linear interpolation between kept frames, unpooling, zero-filled
inverse DCTs, group means), for ``frejax.analyze``.

Frames dropped by ``frame_mask`` never contribute a valid token.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from frejax import sharding
from frejax.compression import dct as dct_lib
from frejax.compression.base import CompressedTokens, Compressor, VideoGeometry, register
from frejax.compression.options import Option


@functools.lru_cache(maxsize=256)
def uniform_frame_indices(frames: int, keep: int) -> tuple[int, ...]:
    """Indices of ``keep`` frames out of ``frames``: the centres of ``keep`` equal bins."""
    if not 1 <= keep <= frames:
        raise ValueError(f"uniform_frame_indices: keep must be in [1, {frames}], got {keep}")
    return tuple(int(math.floor((i + 0.5) * frames / keep)) for i in range(keep))


@functools.lru_cache(maxsize=256)
def frame_interpolation_matrix(frames: int, kept: tuple[int, ...]) -> np.ndarray:
    """``(T, F)``: each frame linearly interpolated from the kept frames ``kept`` (sorted);
    frames before the first kept one or after the last hold its value."""
    mat = np.zeros((frames, len(kept)))
    for t in range(frames):
        j = int(np.searchsorted(kept, t, side="right"))  # kept[j-1] <= t < kept[j]
        if j == 0 or j == len(kept):
            mat[t, min(j, len(kept) - 1) if j else 0] = 1.0
        else:
            lo, hi = kept[j - 1], kept[j]
            w = (t - lo) / (hi - lo)
            mat[t, j - 1], mat[t, j] = 1.0 - w, w
    return mat


def interpolate_frames(kept: jax.Array, frames: int, index: tuple[int, ...]) -> jax.Array:
    """``(B, F, ...)`` kept frames at ``index`` -> ``(B, T, ...)`` by linear interpolation."""
    mat = jnp.asarray(frame_interpolation_matrix(frames, tuple(index)), kept.dtype)
    return jnp.einsum("tf,bf...->bt...", mat, kept, precision=jax.lax.Precision.HIGHEST)


def _frame_tokens_mask(frame_mask: jax.Array, per_frame: int) -> jax.Array:
    """``(B, F)`` frame validity -> ``(B, F*per_frame)`` token validity (frame-major)."""
    return jnp.repeat(frame_mask, per_frame, axis=1)


# --------------------------------------------------------------------------- full


@register
class Full(Compressor):
    """Every token of every frame: the accuracy ceiling and the cost to beat.

    ``(batch, frames, tokens, embed)`` -> ``(batch, frames * tokens, embed)``,
    frame-major. Needs ``budget == T*N`` (the config resolves budget 0 to that).
    """

    name = "full"

    def __init__(self, geometry: VideoGeometry, budget: int, options: Any = None, *,
                 rngs: nnx.Rngs | None = None, dtype=jnp.float32):
        super().__init__(geometry, budget, options, rngs=rngs, dtype=dtype)
        if self.budget != geometry.full_tokens:
            raise ValueError(
                f"compressor.budget: `full` needs budget T*N = {geometry.frames}*"
                f"{geometry.tokens} = {geometry.full_tokens}, got {budget}"
                " (set compressor.budget = 0 for the full budget)")

    @property
    def num_valid_tokens(self) -> int:
        return self.geometry.full_tokens

    def compress(self, latents: jax.Array, frame_mask: jax.Array) -> CompressedTokens:
        n = self.geometry.tokens

        def fn(x, fm):
            b, t, _, d = x.shape
            return x.reshape(b, t * n, d), _frame_tokens_mask(fm, n)

        return CompressedTokens(*sharding.batch_local(fn)(latents, frame_mask))

    def reconstruct(self, latents: jax.Array) -> jax.Array:
        return latents


# ---------------------------------------------------------------- uniform frames


@register
class UniformFrames(Compressor):
    """Keep ``F = budget // N`` frames at full resolution, evenly spread over time.

    After common practice (uniform frame sampling, e.g. LLaVA-Video 2410.02713).
    Frame ``i`` of the kept ``F`` is ``floor((i + 0.5) * T / F)``, the centre of
    the ``i``-th of ``F`` equal bins. ``(batch, frames, tokens, embed)`` ->
    ``(batch, F * tokens, embed)``; tokens of masked-off frames are invalid.
    """

    name = "uniform_frames"

    def __init__(self, geometry: VideoGeometry, budget: int, options: Any = None, *,
                 rngs: nnx.Rngs | None = None, dtype=jnp.float32):
        super().__init__(geometry, budget, options, rngs=rngs, dtype=dtype)
        if self.budget < geometry.tokens:
            raise ValueError(
                f"compressor.budget: `uniform_frames` keeps whole frames and needs budget"
                f" >= N = {geometry.tokens} tokens per frame, got {budget}")
        self.kept_frames = self.budget // geometry.tokens

    @property
    def frame_indices(self) -> tuple[int, ...]:
        return uniform_frame_indices(self.geometry.frames, self.kept_frames)

    @property
    def num_valid_tokens(self) -> int:
        return self.kept_frames * self.geometry.tokens

    def compress(self, latents: jax.Array, frame_mask: jax.Array) -> CompressedTokens:
        idx = np.asarray(self.frame_indices)
        n = self.geometry.tokens

        def fn(x, fm):
            b, _, _, d = x.shape
            kept = x[:, idx].reshape(b, len(idx) * n, d)
            return kept, _frame_tokens_mask(fm[:, idx], n)

        return CompressedTokens(*sharding.batch_local(fn)(latents, frame_mask))

    def reconstruct(self, latents: jax.Array) -> jax.Array:
        idx = self.frame_indices
        return interpolate_frames(latents[:, np.asarray(idx)], self.geometry.frames, idx)


# ---------------------------------------------------------------- spatial pooling


@functools.lru_cache(maxsize=256)
def spatial_pool_layout(frames: int, grid: tuple[int, int],
                        budget: int) -> tuple[int, int, int]:
    """``(F, h', w')`` for pooling: ``F*h'*w' <= budget``, ``h'*w'`` as large as possible.

    All ``h' <= h``, ``w' <= w`` are searched; ties go to the aspect ratio closest
    to the grid's (in log space), then to the larger ``h'``. When even ``1x1`` per
    frame exceeds the budget (``budget < T``), ``F = budget`` frames are kept.
    """
    h, w = grid
    keep = min(frames, budget)
    per_frame = budget // keep
    target = math.log(h / w)
    best = min(((hh, ww) for hh in range(1, h + 1) for ww in range(1, w + 1)
                if hh * ww <= per_frame),
               key=lambda s: (-s[0] * s[1], abs(math.log(s[0] / s[1]) - target), -s[0]))
    return keep, best[0], best[1]


@functools.lru_cache(maxsize=256)
def adaptive_pool_matrix(size: int, out: int) -> np.ndarray:
    """``(out, size)`` averaging matrix; row ``i`` averages the adaptive bin
    ``[floor(i*size/out), ceil((i+1)*size/out))``.

    The adaptive bins of PyTorch's ``adaptive_avg_pool``; bins overlap when ``out``
    does not divide ``size``. Rows sum to 1, so constants stay constant.
    """
    mat = np.zeros((out, size))
    for i in range(out):
        lo = (i * size) // out
        hi = -((-(i + 1) * size) // out)
        mat[i, lo:hi] = 1.0 / (hi - lo)
    return mat


def resample_grid(x: jax.Array, rows: np.ndarray, cols: np.ndarray) -> jax.Array:
    """``(..., h, w, D)`` -> ``(..., h', w', D)`` by the ``(h', h)`` and ``(w', w)`` matrices."""
    return jnp.einsum("ay,bx,...yxd->...abd", jnp.asarray(rows, x.dtype),
                      jnp.asarray(cols, x.dtype), x, precision=jax.lax.Precision.HIGHEST)


@functools.lru_cache(maxsize=256)
def adaptive_unpool_matrix(size: int, out: int) -> np.ndarray:
    """``(size, out)``: each cell takes the mean of the adaptive bins that cover it (the
    transpose of ``adaptive_pool_matrix``, rows renormalised); for disjoint bins this is the
    least-squares inverse, and unlike the pseudo-inverse it never overshoots."""
    up = adaptive_pool_matrix(size, out).T > 0
    return up / up.sum(axis=1, keepdims=True)


@register
class SpatialPool(Compressor):
    """Per-frame pooling of the ``(h, w)`` grid to ``(h', w')`` with ``T*h'*w' <= budget``.

    After LLaVA-Video (2410.02713) / LLaVA-OneVision (2408.03326).
    ``(batch, frames, tokens, embed)`` -> ``(batch, F * h' * w', embed)``,
    frame-major then row-major. Option ``compressor.spatial_pool.mode``:
    ``'average'`` (area pooling over adaptive bins, default) or ``'bilinear'``
    (``jax.image.resize`` with antialiasing). If ``budget < T`` even ``1x1`` per
    frame is too many, so ``F = budget`` frames are kept (centres of equal bins),
    each pooled to ``1x1``.
    """

    name = "spatial_pool"
    section = "spatial_pool"
    OPTIONS = dict(mode=Option("average", "area pooling over adaptive bins, or bilinear resizing",
                               ("average", "bilinear")))

    def __init__(self, geometry: VideoGeometry, budget: int, options: Any = None, *,
                 rngs: nnx.Rngs | None = None, dtype=jnp.float32):
        super().__init__(geometry, budget, options, rngs=rngs, dtype=dtype)
        self.pool_mode = self.resolve_options(options)["mode"]
        self.kept_frames, self.out_h, self.out_w = spatial_pool_layout(
            geometry.frames, tuple(geometry.grid), self.budget)

    @property
    def num_valid_tokens(self) -> int:
        return self.kept_frames * self.out_h * self.out_w

    def compress(self, latents: jax.Array, frame_mask: jax.Array) -> CompressedTokens:
        (h, w), (oh, ow) = self.geometry.grid, (self.out_h, self.out_w)
        idx = np.asarray(uniform_frame_indices(self.geometry.frames, self.kept_frames))
        mode = self.pool_mode

        def fn(x, fm):
            b, _, _, d = x.shape
            f = len(idx)
            grid = x[:, idx].reshape(b, f, h, w, d)
            if mode == "average":
                pooled = resample_grid(grid, adaptive_pool_matrix(h, oh),
                                       adaptive_pool_matrix(w, ow))
            else:
                pooled = jax.image.resize(grid, (b, f, oh, ow, d), method="bilinear",
                                          antialias=True)
            return pooled.reshape(b, f * oh * ow, d), _frame_tokens_mask(fm[:, idx], oh * ow)

        return CompressedTokens(*sharding.batch_local(fn)(latents, frame_mask))

    def reconstruct(self, latents: jax.Array) -> jax.Array:
        """Unpooling (``adaptive_unpool_matrix``) or bilinear upsampling, then linear
        interpolation between kept frames."""
        (h, w), (oh, ow) = self.geometry.grid, (self.out_h, self.out_w)
        idx = uniform_frame_indices(self.geometry.frames, self.kept_frames)
        b, d, f = latents.shape[0], latents.shape[-1], len(idx)
        pooled = self(latents).tokens[:, :f * oh * ow].reshape(b, f, oh, ow, d)
        if self.pool_mode == "average":
            grid = resample_grid(pooled, adaptive_unpool_matrix(h, oh),
                                 adaptive_unpool_matrix(w, ow))
        else:
            grid = jax.image.resize(pooled, (b, f, h, w, d), method="bilinear")
        return interpolate_frames(grid.reshape(b, f, h * w, d), self.geometry.frames, idx)


# ------------------------------------------------------------------- Fourier 2D


@functools.lru_cache(maxsize=256)
def zigzag_order(h: int, w: int) -> tuple[tuple[int, int], ...]:
    """All ``(i, j)`` of an ``h x w`` DCT grid, lowest frequency first (JPEG zig-zag).

    Sorted by ``i + j`` (anti-diagonal); along an even diagonal ``i`` decreases,
    along an odd one it increases, as in JPEG.
    """
    cells = [(i, j) for i in range(h) for j in range(w)]
    return tuple(sorted(cells, key=lambda c: (c[0] + c[1],
                                              c[0] if (c[0] + c[1]) % 2 else -c[0])))


@register
class Fourier2D(Compressor):
    """Per-frame 2D orthonormal DCT of the token grid; keep the ``c`` lowest frequencies.

    After Fourier-VLM (2508.06038). For each frame, ``dct`` along ``h`` then ``w``
    (orthonormal DCT-II, so the DC coefficient is ``sqrt(N)`` times the frame's
    mean token); the first ``c`` coefficients in zig-zag order (``zigzag_order``)
    are the output tokens, in the frequency domain as in the paper.
    ``(batch, frames, tokens, embed)`` -> ``(batch, F * c, embed)`` with
    ``F = min(T, budget)`` (frames centred in equal bins when ``budget < T``) and
    ``c = min(N, budget // F)``.
    """

    name = "fourier_2d"

    def __init__(self, geometry: VideoGeometry, budget: int, options: Any = None, *,
                 rngs: nnx.Rngs | None = None, dtype=jnp.float32):
        super().__init__(geometry, budget, options, rngs=rngs, dtype=dtype)
        self.kept_frames = min(geometry.frames, self.budget)
        self.coeffs_per_frame = min(geometry.tokens, self.budget // self.kept_frames)

    @property
    def num_valid_tokens(self) -> int:
        return self.kept_frames * self.coeffs_per_frame

    @property
    def coefficient_order(self) -> tuple[tuple[int, int], ...]:
        """The ``(i, j)`` DCT frequency of each output token within a frame."""
        return zigzag_order(*self.geometry.grid)[:self.coeffs_per_frame]

    def compress(self, latents: jax.Array, frame_mask: jax.Array) -> CompressedTokens:
        h, w = self.geometry.grid
        idx = np.asarray(uniform_frame_indices(self.geometry.frames, self.kept_frames))
        order = np.asarray(self.coefficient_order)
        kh, kw = int(order[:, 0].max()) + 1, int(order[:, 1].max()) + 1
        flat = order[:, 0] * kw + order[:, 1]
        c = len(order)

        def fn(x, fm):
            b, _, _, d = x.shape
            f = len(idx)
            grid = x[:, idx].reshape(b, f, h, w, d)
            # Only the kh x kw low block is ever needed.
            freq = dct_lib.dct(dct_lib.dct(grid, axis=2, num_coeffs=kh), axis=3, num_coeffs=kw)
            tokens = freq.reshape(b, f, kh * kw, d)[:, :, flat]
            return tokens.reshape(b, f * c, d), _frame_tokens_mask(fm[:, idx], c)

        return CompressedTokens(*sharding.batch_local(fn)(latents, frame_mask))

    def reconstruct(self, latents: jax.Array) -> jax.Array:
        """Zero-filled inverse 2D DCT per kept frame, then linear interpolation in time."""
        h, w = self.geometry.grid
        idx = uniform_frame_indices(self.geometry.frames, self.kept_frames)
        order = np.asarray(self.coefficient_order)
        kh, kw = int(order[:, 0].max()) + 1, int(order[:, 1].max()) + 1
        b, d, f, c = latents.shape[0], latents.shape[-1], len(idx), len(order)
        tokens = self(latents).tokens[:, :f * c].reshape(b, f, c, d)
        block = jnp.zeros((b, f, kh * kw, d), tokens.dtype).at[
            :, :, order[:, 0] * kw + order[:, 1]].set(tokens).reshape(b, f, kh, kw, d)
        grid = dct_lib.idct(dct_lib.idct(block, h, axis=2), w, axis=3)
        return interpolate_frames(grid.reshape(b, f, h * w, d), self.geometry.frames, idx)


# ------------------------------------------------------------- temporal merging


def _cosine(a: jax.Array, b: jax.Array, eps: float = 1e-6) -> jax.Array:
    dot = jnp.sum(a * b, axis=-1)
    return dot / (jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1) + eps)


def frame_order(top: jax.Array, sel: jax.Array, size: int) -> tuple[jax.Array, jax.Array]:
    """``jax.lax.top_k`` output over ``size`` flat ``frame * N + position`` slots ->
    the selected slots in ``(frame, position)`` order and their validity (a ``-inf``
    score, i.e. a masked frame, is invalid and sorts last)."""
    chosen = jnp.isfinite(top)
    key = jnp.sort(jnp.where(chosen, sel, size + sel), axis=1)
    return key % size, key < size


def kept_grid(sel: jax.Array, chosen: jax.Array, frames: int, tokens: int) -> jax.Array:
    """Selected flat slots -> ``(batch, frames, tokens)`` bool: which tokens are kept."""
    rows = jnp.arange(sel.shape[0])[:, None]
    return jnp.zeros((sel.shape[0], frames * tokens), bool).at[rows, sel].set(
        chosen).reshape(-1, frames, tokens)


def novelty_scores(latents: jax.Array, frame_mask: jax.Array, threshold: float) -> jax.Array:
    """Per-token novelty from a running temporal merge at each spatial position.

    Args:
      latents: ``(batch, frames, tokens, embed)``.
      frame_mask: ``(batch, frames)`` bool.
      threshold: cosine similarity above which a token merges into its group.
    Returns:
      ``(batch, frames, tokens)``: ``3`` for the first valid frame at a position,
      ``1 - cos(token, group mean)`` otherwise (``< 1 - threshold`` exactly when the
      token merges into the running group, which then absorbs it), ``-inf`` for
      masked-off frames.
    """

    def step(carry, inputs):
        group_sum, started = carry            # (B, N, D), (B, N)
        x, valid = inputs                     # (B, N, D), (B,)
        valid = jnp.broadcast_to(valid[:, None], started.shape)
        sim = _cosine(x, group_sum)
        merge = started & valid & (sim > threshold)
        fresh = valid & ~merge
        score = jnp.where(valid, jnp.where(started, 1.0 - sim, 3.0), -jnp.inf)
        group_sum = jnp.where(merge[..., None], group_sum + x,
                              jnp.where(fresh[..., None], x, group_sum))
        return (group_sum, started | valid), score.astype(jnp.float32)

    b, _, n, d = latents.shape
    init = (jnp.zeros((b, n, d), latents.dtype), jnp.zeros((b, n), bool))
    _, scores = jax.lax.scan(step, init, (jnp.swapaxes(latents, 0, 1), frame_mask.T))
    return jnp.swapaxes(scores, 0, 1)


@register
class TemporalMerge(Compressor):
    """Merge each token into its same-position group over time; keep ``budget`` tokens.

    After DyCoke (2411.15024) / STTM (2507.07990). The rule, per video:

    1. At each spatial position walk the valid frames in order; a token whose
       cosine similarity to the running group's mean exceeds the option
       ``compressor.temporal_merge.threshold`` (default 0.9) merges into it,
       otherwise it starts a new group.
       Its novelty is ``1 - that similarity`` (``novelty_scores``); the first
       valid frame scores above every other token, so group heads always rank
       above merged tokens.
    2. Keep the ``budget`` most novel tokens (``jax.lax.top_k``, static ``k``),
       ordered by ``(frame, position)``. Fewer heads than the budget: the most
       novel merged tokens fill it; more heads: the least novel are dropped.
    3. Every valid token is averaged into the latest kept token at or before its
       frame at its position (with all heads kept this is exactly the step-1
       group mean). Tokens before the first kept token at their position (only
       possible when ``budget < N``) are dropped.

    ``(batch, frames, tokens, embed)`` -> ``(batch, budget, embed)``; exactly
    ``min(budget, valid tokens)`` are valid, so ``num_valid_tokens == budget``.
    """

    name = "temporal_merge"
    section = "temporal_merge"
    OPTIONS = dict(threshold=Option(
        0.9, "cosine similarity above which a token merges into an earlier one",
        check=lambda v: -1.0 <= v <= 1.0, requirement="a cosine similarity in [-1, 1]"))

    def __init__(self, geometry: VideoGeometry, budget: int, options: Any = None, *,
                 rngs: nnx.Rngs | None = None, dtype=jnp.float32):
        super().__init__(geometry, budget, options, rngs=rngs, dtype=dtype)
        self.merge_threshold = self.resolve_options(options)["threshold"]

    @property
    def num_valid_tokens(self) -> int:
        return self.budget

    def _merge(self, x: jax.Array, fm: jax.Array):
        """Kept tokens ``(B, k, D)``, their validity, and every token's group slot ``(B, T*N)``
        (``T*N`` for none) with the group means ``(B, T*N + 1, D)``."""
        t, n, k = self.geometry.frames, self.geometry.tokens, self.budget
        b, _, _, d = x.shape
        scores = novelty_scores(x, fm, self.merge_threshold).reshape(b, t * n)
        # (frame, position) order; unused slots (masked frames) go to the end.
        sel, chosen = frame_order(*jax.lax.top_k(scores, k), t * n)
        rows = jnp.arange(b)[:, None]
        kept = kept_grid(sel, chosen, t, n)
        frame = jnp.arange(t)[None, :, None]
        owner = jax.lax.cummax(jnp.where(kept, frame, -1), axis=1)   # (B, T, N)
        member = fm[:, :, None] & (owner >= 0)
        target = jnp.where(member, owner * n + jnp.arange(n), t * n).reshape(b, t * n)
        sums = jnp.zeros((b, t * n + 1, d), x.dtype).at[rows, target].add(
            x.reshape(b, t * n, d))
        counts = jnp.zeros((b, t * n + 1), x.dtype).at[rows, target].add(1.0)
        means = sums / jnp.maximum(counts, 1.0)[..., None]
        tokens = jnp.where(chosen[..., None], means[rows, sel], 0.0)
        return tokens, chosen, target, means

    def compress(self, latents: jax.Array, frame_mask: jax.Array) -> CompressedTokens:
        def fn(x, fm):
            tokens, chosen, _, _ = self._merge(x, fm)
            return tokens, chosen

        return CompressedTokens(*sharding.batch_local(fn)(latents, frame_mask))

    def reconstruct(self, latents: jax.Array) -> jax.Array:
        """Every token replaced by the mean of its group; a token before the first kept one
        at its position (only when ``budget < N``) by the position's first kept group."""
        b, t, n, d = latents.shape
        _, _, target, means = self._merge(latents, jnp.ones((b, t), bool))
        target = target.reshape(b, t, n)
        # Positions whose first frames own no group borrow the first group that follows.
        first = jnp.min(jnp.where(target < t * n, target, t * n), axis=1, keepdims=True)
        target = jnp.where(target < t * n, target, first)
        out = jnp.take_along_axis(means, target.reshape(b, t * n)[..., None], axis=1)
        return out.reshape(b, t, n, d)


# ------------------------------------------------------------- temporal DCT


@register
class TemporalDct(Compressor):
    """The lowest ``K`` orthonormal temporal DCT-II coefficients of every position's trajectory.

    The latents' own temporal spectrum (no anchor, no residual): coefficient 0 is
    ``sqrt(T)`` times the position's temporal mean, so the static content sits in the
    first ``N`` tokens at full resolution and slow change in the next ones. ``K = min(T,
    budget // N)``; when ``budget < N`` one coefficient is kept on a pooled grid
    (``spatial_pool_layout``). ``(batch, frames, tokens, embed)`` -> ``(batch, K*h'*w',
    embed)``, coefficient-major. A masked frame counts as zero in the transform.
    """

    name = "temporal_dct"

    def __init__(self, geometry: VideoGeometry, budget: int, options: Any = None, *,
                 rngs: nnx.Rngs | None = None, dtype=jnp.float32):
        super().__init__(geometry, budget, options, rngs=rngs, dtype=dtype)
        self.num_coeffs = max(1, min(geometry.frames, self.budget // geometry.tokens))
        if self.budget >= geometry.tokens:
            self.out_h, self.out_w = geometry.grid
        else:
            _, self.out_h, self.out_w = spatial_pool_layout(1, tuple(geometry.grid), self.budget)

    @property
    def num_valid_tokens(self) -> int:
        return self.num_coeffs * self.out_h * self.out_w

    def _coefficients(self, x: jax.Array, fm: jax.Array) -> jax.Array:
        """``(B, K, h', w', D)``."""
        (h, w), (oh, ow) = self.geometry.grid, (self.out_h, self.out_w)
        b, t, _, d = x.shape
        x = jnp.where(fm[:, :, None, None], x, 0.0)
        coeffs = dct_lib.dct(x, axis=1, num_coeffs=self.num_coeffs).reshape(b, -1, h, w, d)
        if (oh, ow) != (h, w):
            coeffs = resample_grid(coeffs, adaptive_pool_matrix(h, oh),
                                   adaptive_pool_matrix(w, ow))
        return coeffs

    def compress(self, latents: jax.Array, frame_mask: jax.Array) -> CompressedTokens:
        def fn(x, fm):
            coeffs = self._coefficients(x, fm)
            b, d = x.shape[0], x.shape[-1]
            valid = jnp.broadcast_to(jnp.any(fm, axis=1, keepdims=True),
                                     (b, self.num_valid_tokens))
            return coeffs.reshape(b, -1, d), valid

        return CompressedTokens(*sharding.batch_local(fn)(latents, frame_mask))

    def reconstruct(self, latents: jax.Array) -> jax.Array:
        """Zero-filled inverse DCT in time (``adaptive_unpool_matrix`` when pooled)."""
        (h, w), (oh, ow) = self.geometry.grid, (self.out_h, self.out_w)
        b, t, _, d = latents.shape
        coeffs = self._coefficients(latents, jnp.ones((b, t), bool))
        if (oh, ow) != (h, w):
            coeffs = resample_grid(coeffs, adaptive_unpool_matrix(h, oh),
                                   adaptive_unpool_matrix(w, ow))
        return dct_lib.idct(coeffs.reshape(b, -1, h * w, d), t, axis=1)


# ------------------------------------------------- per-frame budgets (VidCom2)


def frame_token_selection(latents: jax.Array, frame_mask: jax.Array, budget: int,
                          temperature: float) -> tuple[jax.Array, jax.Array]:
    """Which ``budget`` tokens to keep: per-frame shares by distinctiveness, then the most
    distinct tokens of each frame.

    Args:
      latents: ``(batch, frames, tokens, embed)``.
      frame_mask: ``(batch, frames)`` bool.
      budget: tokens to keep per video (static).
      temperature: softmax temperature of the frame shares.
    Returns:
      ``(batch, budget)`` flat indices ``frame * N + position`` in ``(frame, position)``
      order, and their validity (False past the video's valid tokens).

    A frame's distinctiveness is ``1 - cos(frame mean, video mean)``; its share
    ``w_t`` is the softmax of distinctiveness / ``temperature`` over valid frames.
    A token's distinctiveness is ``1 - (cos(token, frame mean) + cos(token, video
    mean)) / 2``, ranked within its frame (rank 0 = most distinct). Token ``(t, i)``
    has priority ``w_t / (rank + 0.5)`` and the ``budget`` highest are kept: the
    Sainte-Lague apportionment of the budget to frames in proportion to ``w_t``, so
    the total is exact, no frame gives more tokens than it has, and each frame keeps
    its most distinct ones, with one static ``top_k``.
    """
    b, t, n, _ = latents.shape
    x = latents.astype(jnp.float32)
    frames = x.mean(axis=2)                                              # (B, T, D)
    weight = frame_mask.astype(jnp.float32)
    video = (frames * weight[..., None]).sum(1) / jnp.maximum(weight.sum(1), 1.0)[:, None]
    frame_novelty = 1.0 - _cosine(frames, video[:, None])                # (B, T)
    # In logs: a frame whose share underflows still ranks its tokens after all others.
    log_share = jax.nn.log_softmax(
        jnp.where(frame_mask, frame_novelty / temperature, -jnp.inf), axis=1)
    token_novelty = 1.0 - 0.5 * (_cosine(x, frames[:, :, None]) + _cosine(x, video[:, None, None]))
    rank = jnp.argsort(jnp.argsort(-token_novelty, axis=2), axis=2)       # (B, T, N)
    priority = log_share[..., None] - jnp.log(rank + 0.5)
    priority = jnp.where(frame_mask[..., None], priority, -jnp.inf).reshape(b, t * n)
    return frame_order(*jax.lax.top_k(priority, budget), t * n)


@register
class FrameBudgets(Compressor):
    """Per-frame token budgets by how distinct each frame is; the most distinct tokens kept.

    After VidCom2 (2505.14454): frames that differ more from the video as a whole get
    a larger share of the budget, and inside each frame the tokens that differ most
    from their frame and from the video are kept (``frame_token_selection``).
    Training-free and query-agnostic. ``(batch, frames, tokens, embed)`` ->
    ``(batch, budget, embed)`` in ``(frame, position)`` order; exactly ``min(budget,
    valid tokens)`` are valid.
    """

    name = "frame_budgets"
    section = "frame_budgets"
    OPTIONS = dict(temperature=Option(
        0.05, "softmax temperature of the frame shares (large: equal shares)",
        check=lambda v: v > 0, requirement="a positive number"))

    def __init__(self, geometry: VideoGeometry, budget: int, options: Any = None, *,
                 rngs: nnx.Rngs | None = None, dtype=jnp.float32):
        super().__init__(geometry, budget, options, rngs=rngs, dtype=dtype)
        self.temperature = self.resolve_options(options)["temperature"]

    @property
    def num_valid_tokens(self) -> int:
        return self.budget

    def compress(self, latents: jax.Array, frame_mask: jax.Array) -> CompressedTokens:
        def fn(x, fm):
            b, t, n, d = x.shape
            sel, chosen = frame_token_selection(x, fm, self.budget, self.temperature)
            tokens = jnp.take_along_axis(x.reshape(b, t * n, d), sel[..., None], axis=1)
            return jnp.where(chosen[..., None], tokens, 0.0), chosen

        return CompressedTokens(*sharding.batch_local(fn)(latents, frame_mask))

    def reconstruct(self, latents: jax.Array) -> jax.Array:
        """Kept tokens exact; a dropped one takes the kept token at its position in the
        nearest frame (earlier on a tie), else the mean of its frame's kept tokens (of all
        kept tokens where its frame kept none)."""
        b, t, n, d = latents.shape
        sel, chosen = frame_token_selection(latents, jnp.ones((b, t), bool), self.budget,
                                            self.temperature)
        kept = kept_grid(sel, chosen, t, n)
        frame = jnp.arange(t)[None, :, None]
        before = jax.lax.cummax(jnp.where(kept, frame, -t), axis=1)             # (B, T, N)
        after = jax.lax.cummin(jnp.where(kept, frame, 2 * t), axis=1, reverse=True)
        source = jnp.where(frame - before <= after - frame, before, after)
        found = (source >= 0) & (source < t)
        same_position = jnp.take_along_axis(latents, jnp.clip(source, 0, t - 1)[..., None],
                                            axis=1)
        w = kept.astype(latents.dtype)[..., None]
        frame_sum, frame_count = (latents * w).sum(2), w.sum(2)          # (B, T, D), (B, T, 1)
        overall = frame_sum.sum(1, keepdims=True) / jnp.maximum(frame_count.sum(1, keepdims=True), 1)
        frame_mean = jnp.where(frame_count > 0, frame_sum / jnp.maximum(frame_count, 1), overall)
        fill = jnp.where(found[..., None], same_position, frame_mean[:, :, None])
        return jnp.where(kept[..., None], latents, fill)
