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
def test_gradients_match_the_explicit_basis(method):
    """Autodiff through each path equals the gradient through scipy's DCT matrix."""
    x = jax.random.normal(jax.random.key(0), (4, 12))
    basis = jnp.asarray(scipy.fft.dct(np.eye(12), type=2, norm="ortho", axis=0)[:5],
                        jnp.float32)  # (K, T): rows are the kept basis vectors

    def loss(v, transform, inverse):
        c = transform(v)
        return jnp.sum(inverse(c) ** 2) + jnp.sum(jnp.sin(c))

    got = jax.jit(jax.grad(lambda v: loss(
        v, lambda u: dct_lib.dct(u, num_coeffs=5, method=method),
        lambda c: dct_lib.idct(c, 12, method=method))))(x)
    want = jax.grad(lambda v: loss(v, lambda u: u @ basis.T, lambda c: c @ basis))(x)
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("backend, limit", [("cpu", 128 * 1024), ("gpu", 512 * 1024),
                                            ("tpu", 4096 * 4096), ("other", 128 * 1024)])
def test_choose_method_switches_to_fft_above_the_backends_work_limit(backend, limit):
    assert dct_lib.choose_method(limit // 64, 64, backend) == "matmul"
    assert dct_lib.choose_method(limit // 64 + 1, 64, backend) == "fft"
    assert dct_lib.choose_method(8, 1, backend) == "matmul"


def test_auto_runs_the_chosen_method():
    x = jax.random.normal(jax.random.key(1), (3, 40))
    chosen = dct_lib.choose_method(40, 6)
    np.testing.assert_array_equal(dct(x, num_coeffs=6, method="auto"),
                                  dct(x, num_coeffs=6, method=chosen))


def test_errors():
    with pytest.raises(ValueError, match="num_coeffs must be in"):
        dct_lib.dct(jnp.ones(4), num_coeffs=5)
    with pytest.raises(ValueError, match="method"):
        dct_lib.dct(jnp.ones(4), method="wavelet")
