"""Orthonormal DCT-II / DCT-III along one axis, two ways, one entry point.

``dct`` computes the first ``num_coeffs`` orthonormal DCT-II coefficients and
``idct`` inverts them (missing high coefficients are taken as zero). Both run
under ``jit``, ``vmap``, ``grad`` and ``shard_map``.

Two implementations agree with ``scipy.fft.dct(..., norm="ortho")``:

* ``"fft"``: Makhoul's reordering + one complex FFT, O(T log T) per trajectory;
  it computes all T coefficients and slices.
* ``"matmul"``: a constant ``(K, T)`` cosine matrix, O(K T); it computes only
  the kept coefficients and maps to the MXU / tensor cores as a plain matmul.

``choose_method`` picks one by backend and size. On CPU the truncated matmul
measured ~4x faster than the FFT at T=32 (``frejax/benchmarks/dct_and_compressor.py``).
"""

from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

Method = Literal["auto", "fft", "matmul"]
METHODS: tuple[str, ...] = ("auto", "fft", "matmul")

# Largest K*T for which the cosine matmul is chosen, per backend. Above it the
# FFT's O(T log T) wins. TPUs have a slow FFT and a fast MXU, hence the larger bound.
_MATMUL_MAX_WORK = {"cpu": 128 * 1024, "gpu": 512 * 1024, "cuda": 512 * 1024,
                    "rocm": 512 * 1024, "tpu": 4096 * 4096}


def choose_method(length: int, num_coeffs: int, backend: str | None = None) -> str:
    """Returns ``"matmul"`` or ``"fft"`` for a length-T transform keeping K coefficients."""
    backend = backend or jax.default_backend()
    limit = _MATMUL_MAX_WORK.get(backend, 128 * 1024)
    return "matmul" if length * num_coeffs <= limit else "fft"


@functools.lru_cache(maxsize=256)
def dct_matrix(length: int, num_coeffs: int) -> np.ndarray:
    """Orthonormal DCT-II basis, shape ``(num_coeffs, length)``, float64."""
    n = np.arange(length)
    k = np.arange(num_coeffs)[:, None]
    basis = np.cos(np.pi * k * (2 * n + 1) / (2 * length))
    scale = np.full((num_coeffs, 1), np.sqrt(2.0 / length))
    scale[0] = np.sqrt(1.0 / length)
    return basis * scale


def _check(length: int, num_coeffs: int, what: str) -> None:
    if length < 1:
        raise ValueError(f"{what}: transform length must be >= 1, got {length}")
    if not 1 <= num_coeffs <= length:
        raise ValueError(f"{what}: num_coeffs must be in [1, {length}], got {num_coeffs}")


def _resolve(method: Method, length: int, num_coeffs: int) -> str:
    if method == "auto":
        return choose_method(length, num_coeffs)
    if method not in METHODS:
        raise ValueError(f"dct method must be one of {METHODS}, got {method!r}")
    return method


def dct(x: jax.Array, axis: int = -1, num_coeffs: int | None = None,
        method: Method = "auto") -> jax.Array:
    """First ``num_coeffs`` orthonormal DCT-II coefficients of ``x`` along ``axis``.

    Args:
      x: real array; ``x.shape[axis] = T``.
      axis: transform axis.
      num_coeffs: K, kept lowest coefficients (default T).
      method: ``"auto"``, ``"fft"`` or ``"matmul"``.
    Returns:
      Array like ``x`` with ``shape[axis] = K``.
    """
    axis = axis % x.ndim
    length = x.shape[axis]
    num_coeffs = length if num_coeffs is None else int(num_coeffs)
    _check(length, num_coeffs, "dct")
    x = jnp.moveaxis(x, axis, -1)
    if _resolve(method, length, num_coeffs) == "matmul":
        basis = jnp.asarray(dct_matrix(length, num_coeffs), x.dtype)
        y = jnp.einsum("...t,kt->...k", x, basis, precision=jax.lax.Precision.HIGHEST)
    else:
        y = _dct_fft(x)[..., :num_coeffs]
    return jnp.moveaxis(y, -1, axis)


def idct(coeffs: jax.Array, length: int | None = None, axis: int = -1,
         method: Method = "auto") -> jax.Array:
    """Inverse of ``dct``: orthonormal DCT-III of zero-padded coefficients.

    Args:
      coeffs: ``coeffs.shape[axis] = K``.
      length: T of the output (default K); coefficients K..T-1 are zero.
    Returns:
      Array like ``coeffs`` with ``shape[axis] = T``.
    """
    axis = axis % coeffs.ndim
    num_coeffs = coeffs.shape[axis]
    length = num_coeffs if length is None else int(length)
    _check(length, num_coeffs, "idct")
    c = jnp.moveaxis(coeffs, axis, -1)
    if _resolve(method, length, num_coeffs) == "matmul":
        basis = jnp.asarray(dct_matrix(length, num_coeffs), c.dtype)
        y = jnp.einsum("...k,kt->...t", c, basis, precision=jax.lax.Precision.HIGHEST)
    else:
        pad = [(0, 0)] * (c.ndim - 1) + [(0, length - num_coeffs)]
        y = _idct_fft(jnp.pad(c, pad))
    return jnp.moveaxis(y, -1, axis)


def _dct_fft(x: jax.Array) -> jax.Array:
    """Full orthonormal DCT-II on the last axis via one FFT of the reordered input."""
    n = x.shape[-1]
    v = jnp.concatenate([x[..., ::2], jnp.flip(x[..., 1::2], axis=-1)], axis=-1)
    spectrum = jnp.fft.fft(v, axis=-1)
    k = jnp.arange(n)
    twiddle = jnp.exp(-1j * jnp.pi * k / (2 * n)).astype(spectrum.dtype)
    y = jnp.real(spectrum * twiddle)
    scale = jnp.where(k == 0, jnp.sqrt(1.0 / n), jnp.sqrt(2.0 / n)).astype(x.dtype)
    return (y * scale).astype(x.dtype)


def _idct_fft(c: jax.Array) -> jax.Array:
    """Full orthonormal DCT-III on the last axis (inverse of ``_dct_fft``)."""
    n = c.shape[-1]
    k = jnp.arange(n)
    scale = jnp.where(k == 0, jnp.sqrt(1.0 / n), jnp.sqrt(2.0 / n)).astype(c.dtype)
    y = c / scale  # back to Makhoul's unnormalised coefficients
    # V_k = exp(i pi k / 2n) (y_k - i y_{n-k}), with y_n = 0.
    y_rev = jnp.concatenate([jnp.zeros_like(y[..., :1]), jnp.flip(y[..., 1:], axis=-1)], axis=-1)
    twiddle = jnp.exp(1j * jnp.pi * k / (2 * n))
    spectrum = twiddle * (y - 1j * y_rev)
    v = jnp.real(jnp.fft.ifft(spectrum, axis=-1)).astype(c.dtype)
    half = (n + 1) // 2
    out = jnp.zeros_like(v)
    out = out.at[..., ::2].set(v[..., :half])
    out = out.at[..., 1::2].set(jnp.flip(v[..., half:], axis=-1))
    return out
