"""Orthonormal DCT: parity with scipy, inverse, Parseval, gradients, method choice."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.fft
from hypothesis import given, settings
from hypothesis import strategies as st

from frejax.compression import dct as dct_lib

METHODS = ("fft", "matmul")

# One compile per shape instead of one per primitive: keeps the file fast on shared CPUs.
dct = jax.jit(dct_lib.dct, static_argnames=("axis", "num_coeffs", "method"))
idct = jax.jit(dct_lib.idct, static_argnames=("length", "axis", "method"))


@st.composite
def arrays_and_axis(draw):
    shape = tuple(draw(st.lists(st.integers(1, 12), min_size=1, max_size=3)))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    keep = draw(st.integers(1, shape[axis]))
    seed = draw(st.integers(0, 2**16))
    x = np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)
    return x, axis, keep


@settings(max_examples=25, deadline=None)
@given(arrays_and_axis(), st.sampled_from(METHODS))
def test_dct_matches_scipy(case, method):
    x, axis, keep = case
    want = scipy.fft.dct(x.astype(np.float64), type=2, norm="ortho", axis=axis)
    want = np.take(want, np.arange(keep), axis=axis)
    got = dct(jnp.asarray(x), axis=axis, num_coeffs=keep, method=method)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=1e-5)


@settings(max_examples=25, deadline=None)
@given(arrays_and_axis(), st.sampled_from(METHODS))
def test_idct_matches_scipy(case, method):
    x, axis, keep = case
    length = x.shape[axis]
    coeffs = np.take(x, np.arange(keep), axis=axis)
    pad = [(0, 0)] * x.ndim
    pad[axis % x.ndim] = (0, length - keep)
    want = scipy.fft.idct(np.pad(coeffs, pad).astype(np.float64), type=2, norm="ortho", axis=axis)
    got = idct(jnp.asarray(coeffs), length, axis=axis, method=method)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("length", [1, 2, 7, 33])
def test_inverse_and_parseval(method, length):
    x = jax.random.normal(jax.random.key(length), (5, length, 3))
    c = dct(x, axis=1, method=method)
    np.testing.assert_allclose(idct(c, length, axis=1, method=method), x, atol=1e-5)
    np.testing.assert_allclose(jnp.sum(c**2, axis=1), jnp.sum(x**2, axis=1), rtol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_gradients_finite_and_methods_agree(method):
    x = jax.random.normal(jax.random.key(0), (4, 12))

    def loss(v, m):
        c = dct_lib.dct(v, num_coeffs=5, method=m)
        return jnp.sum(dct_lib.idct(c, 12, method=m) ** 2) + jnp.sum(jnp.sin(c))

    grad = jax.jit(jax.grad(loss), static_argnums=1)
    g = grad(x, method)
    assert bool(jnp.all(jnp.isfinite(g)))
    np.testing.assert_allclose(g, grad(x, "matmul"), atol=1e-5)


def test_choose_method_and_errors():
    for backend in ("cpu", "gpu", "tpu", "other", None):
        for length, keep in [(8, 1), (32, 8), (4096, 4096)]:
            assert dct_lib.choose_method(length, keep, backend) in ("fft", "matmul")
    assert dct_lib.choose_method(32, 8, "cpu") == "matmul"
    assert dct_lib.choose_method(4096, 4096, "cpu") == "fft"
    with pytest.raises(ValueError, match="num_coeffs must be in"):
        dct_lib.dct(jnp.ones(4), num_coeffs=5)
    with pytest.raises(ValueError, match="method"):
        dct_lib.dct(jnp.ones(4), method="wavelet")
