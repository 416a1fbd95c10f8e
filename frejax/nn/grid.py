"""Resampling a token grid: adaptive pooling and its inverse, bilinear resizing.

Parameter-free matrices over one axis of an ``(h, w)`` grid, applied to both
axes at once by ``resample_grid``; compressors pool and unpool with them, and the
video MLLM pools LLaVA-OneVision's video tokens bilinearly.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


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


@functools.lru_cache(maxsize=32)
def bilinear_matrix(size: int, out: int) -> np.ndarray:
    """``(out, size)`` weights of ``torch.nn.functional.interpolate(mode="bilinear")`` along one
    axis (``align_corners=False``, no antialiasing): LLaVA-OneVision's video pooling."""
    src = np.maximum((np.arange(out) + 0.5) * (size / out) - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(int), size - 1)
    hi = np.minimum(lo + 1, size - 1)
    frac = src - lo
    m = np.zeros((out, size))
    np.add.at(m, (np.arange(out), lo), 1 - frac)
    np.add.at(m, (np.arange(out), hi), frac)
    return m
