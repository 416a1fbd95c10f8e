"""Residual-frequency tokens: pooling, temporal DCT, and energy-driven coefficient allocation.

Shapes: ``B`` videos, ``S`` segments, ``L-1`` residual steps, ``N = h*w`` tokens
on the frame grid, ``P = ceil(h/p) * ceil(w/p)`` pooled cells, ``C`` coefficient
slots per segment, ``D`` embed. Pure ``jnp``, per example.

Pooling and the DCT are both linear, so pooling first (fewer trajectories to
transform) gives the same tokens as transforming first.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from frejax.compression import dct as dct_lib
from frejax.compression.budget import pooled_grid


@functools.lru_cache(maxsize=64)
def _pool_counts(grid: tuple[int, int], pool: int) -> np.ndarray:
    """Real (in-grid) cells per pooled window, ``(hp, wp)``: border windows hold fewer."""
    h, w = grid
    hp, wp = pooled_grid(grid, pool)
    rows = np.minimum(pool, h - pool * np.arange(hp))
    cols = np.minimum(pool, w - pool * np.arange(wp))
    return (rows[:, None] * cols[None, :]).astype(np.float32)


def pool_tokens(x: jax.Array, grid: tuple[int, int], pool: int) -> jax.Array:
    """p x p average pooling over the token grid.

    A grid not divisible by ``p`` gets ``ceil`` windows; a border window averages
    only the real cells it covers (zero padding is not counted).

    Args:
      x: ``(..., tokens N, embed D)`` with ``N = h*w`` row-major.
    Returns:
      ``(..., P, D)`` with ``P = ceil(h/p) * ceil(w/p)``, row-major.
    """
    if pool == 1:
        return x
    h, w = grid
    hp, wp = pooled_grid(grid, pool)
    lead, d = x.shape[:-2], x.shape[-1]
    x = x.reshape(lead + (h, w, d))
    pad = [(0, 0)] * len(lead) + [(0, hp * pool - h), (0, wp * pool - w), (0, 0)]
    x = jnp.pad(x, pad).reshape(lead + (hp, pool, wp, pool, d))
    total = jnp.sum(x, axis=(-4, -2))
    counts = jnp.asarray(_pool_counts(tuple(grid), pool), x.dtype)
    return (total / counts[:, :, None]).reshape(lead + (hp * wp, d))


@functools.lru_cache(maxsize=64)
def cell_of_token(grid: tuple[int, int], pool: int) -> np.ndarray:
    """``(N,)`` index of the pooled cell each token of the ``(h, w)`` grid falls in."""
    h, w = grid
    _, wp = pooled_grid(grid, pool)
    i, j = np.divmod(np.arange(h * w), w)
    return ((i // pool) * wp + j // pool).astype(np.int32)


def unpool_tokens(x: jax.Array, grid: tuple[int, int], pool: int) -> jax.Array:
    """Inverse of ``pool_tokens`` on its range: ``(..., P, D)`` -> ``(..., N, D)``, each token
    taking its cell's value (the least-squares inverse of cell averaging)."""
    if pool == 1:
        return x
    return jnp.take(x, jnp.asarray(cell_of_token(tuple(grid), pool)), axis=-2)


def residual_freq_tokens(residuals: jax.Array, num_coeffs: int, method: str = "auto",
                         time_windows: int = 1) -> jax.Array:
    """Lowest ``K`` orthonormal DCT-II coefficients of each residual trajectory, per time window.

    Args:
      residuals: ``(batch, S, L-1, cells, D)``.
      num_coeffs: K in ``[1, l]``, ``l = ceil((L-1) / W)`` steps per window.
      time_windows: W; the ``L-1`` steps are cut into W windows of ``l`` steps
        (the last zero-padded), each transformed on its own.
    Returns:
      ``(batch, S, W*K, cells, D)`` float32, in (window, coefficient) order.
    """
    x = split_windows(residuals.astype(jnp.float32), time_windows)
    coeffs = dct_lib.dct(x, axis=3, num_coeffs=num_coeffs, method=method)
    return coeffs.reshape(coeffs.shape[:2] + (-1,) + coeffs.shape[4:])


def split_windows(residuals: jax.Array, time_windows: int) -> jax.Array:
    """``(batch, S, L-1, ...)`` -> ``(batch, S, W, l, ...)``, the tail zero-padded."""
    b, s, steps = residuals.shape[:3]
    length = -(-steps // time_windows)
    pad = [(0, 0)] * residuals.ndim
    pad[2] = (0, time_windows * length - steps)
    return jnp.pad(residuals, pad).reshape((b, s, time_windows, length) + residuals.shape[3:])


def allocate_coefficients(coeffs: jax.Array, segment_valid: jax.Array, total: int) -> jax.Array:
    """Energy-driven allocation of ``total`` coefficient slots over segments (D'Hondt).

    Segment ``s`` with residual energy ``E_s`` bids ``E_s / (k + 1)`` for its
    ``k``-th coefficient; the ``total`` highest bids win. Bids fall with ``k``, so
    every segment keeps a prefix of its lowest frequencies, and high-energy
    segments keep more. Segments without a valid frame bid below zero.
    Discrete: the scores are ``stop_gradient``-ed.

    Args:
      coeffs: ``(batch, S, C, cells, D)``, all ``C = L-1`` coefficients.
      segment_valid: ``(batch, S)`` bool.
      total: slots to keep, ``S*K`` (at most ``S*C``).
    Returns:
      ``(batch, S, C)`` bool, True on kept slots; each row a prefix; ``total`` True per video.
    """
    b, s, c = coeffs.shape[:3]
    energy = jnp.sum(jnp.square(jax.lax.stop_gradient(coeffs).astype(jnp.float32)), axis=(2, 3, 4))
    energy = jnp.where(segment_valid, energy, -1.0)
    bids = energy[:, :, None] / jnp.arange(1, c + 1, dtype=jnp.float32)
    _, winners = jax.lax.top_k(bids.reshape(b, s * c), total)
    kept = jnp.sum(jax.nn.one_hot(winners // c, s, dtype=jnp.int32), axis=1)  # (B, S)
    return jnp.arange(c)[None, None, :] < kept[:, :, None]


def compact_slots(slot_mask: jax.Array, total: int) -> jax.Array:
    """Flat indices ``s*C + k`` of the ``total`` kept slots in (segment, coefficient) order.

    Args:
      slot_mask: ``(batch, S, C)`` bool with exactly ``total`` True per video.
    Returns:
      ``(batch, total)`` int32.
    """
    flat = slot_mask.reshape(slot_mask.shape[0], -1)
    order = jnp.argsort(~flat, axis=-1, stable=True)
    return order[:, :total].astype(jnp.int32)
