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
inverse DCTs, group means), for ``frejax.studies.analyze``.

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
from frejax.compression.base import (CompressedTokens, Compressor, VideoGeometry, frame_places,
                                    grid_places, register)
from frejax.compression.options import Option
from frejax.nn.grid import adaptive_pool_matrix, adaptive_unpool_matrix, resample_grid


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


def batched(places: jax.Array, batch: int) -> jax.Array:
    """One video's ``(M, 3)`` places for every example of a batch."""
    return jnp.broadcast_to(places, (batch,) + places.shape)


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

    def token_places(self, latents: jax.Array, frame_mask: jax.Array) -> jax.Array:
        g = self.geometry
        return batched(frame_places(np.arange(g.frames), g.grid), latents.shape[0])

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

    def token_places(self, latents: jax.Array, frame_mask: jax.Array) -> jax.Array:
        return batched(frame_places(np.asarray(self.frame_indices), self.geometry.grid),
                       latents.shape[0])

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

        def fn(x, fm):
            b, _, _, d = x.shape
            f = len(idx)
            pooled = self._pool(x[:, idx].reshape(b, f, h, w, d))
            return pooled.reshape(b, f * oh * ow, d), _frame_tokens_mask(fm[:, idx], oh * ow)

        return CompressedTokens(*sharding.batch_local(fn)(latents, frame_mask))

    def _pool(self, grid: jax.Array) -> jax.Array:
        """``(B, F, h, w, D)`` -> ``(B, F, h', w', D)``: weights that sum to one per cell."""
        (h, w), (oh, ow) = self.geometry.grid, (self.out_h, self.out_w)
        if self.pool_mode == "average":
            return resample_grid(grid, adaptive_pool_matrix(h, oh), adaptive_pool_matrix(w, ow))
        return jax.image.resize(grid, grid.shape[:2] + (oh, ow, grid.shape[-1]),
                                method="bilinear", antialias=True)

    def token_places(self, latents: jax.Array, frame_mask: jax.Array) -> jax.Array:
        """Each pooled cell at the centroid of the cells it averages (the pooling itself
        applied to the cells' coordinates)."""
        g = self.geometry
        cells = self._pool(jnp.asarray(grid_places(g.grid)).reshape(1, 1, *g.grid, 2))
        idx = uniform_frame_indices(g.frames, self.kept_frames)
        return batched(frame_places(np.asarray(idx), g.grid, cells.reshape(-1, 2)),
                       latents.shape[0])

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

    def token_places(self, latents: jax.Array, frame_mask: jax.Array) -> jax.Array:
        """A frame's coefficients transform the whole frame: each at the frame's centre."""
        g = self.geometry
        centre = np.tile([[(g.grid[0] - 1) / 2, (g.grid[1] - 1) / 2]], (self.coeffs_per_frame, 1))
        idx = uniform_frame_indices(g.frames, self.kept_frames)
        return batched(frame_places(np.asarray(idx), g.grid, centre.astype(np.float32)),
                       latents.shape[0])

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
