"""frejax.compression.absorber: identity at init, a local window, logical parameter names."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import frejax.compression as compression
from frejax import sharding
from frejax.compression import budget as budget_lib
from frejax.compression.absorber import SpatialGuidedAbsorber, neighbour_table
from frejax.compression.base import VideoGeometry

from compressor_helpers import _jit_apply


# ----------------------------------------------------------------- absorber


def _absorber_inputs(grid=(5, 6), pool=1, slots=3, seed=0, b=2, s=2, d=8):
    hp, wp = budget_lib.pooled_grid(grid, pool)
    rng = np.random.default_rng(seed)
    anchors = rng.normal(size=(b, s, grid[0] * grid[1], d)).astype(np.float32)
    coeffs = jnp.asarray(rng.normal(size=(b, s, slots, hp * wp, d)), jnp.float32)
    freq = rng.normal(size=(slots, d)).astype(np.float32)
    return anchors, coeffs, np.ones((b, s, slots), bool), freq


def test_absorber_is_identity_at_init_and_gate_opens_it():
    anchors, coeffs, slot_mask, freq = _absorber_inputs()
    absorber = SpatialGuidedAbsorber(8, grid=(5, 6), window=3, heads=2, rngs=nnx.Rngs(0))
    apply = _jit_apply(absorber)
    out = apply(anchors, coeffs, slot_mask, freq)
    assert np.array_equal(np.asarray(out), np.asarray(anchors))
    absorber.gate[...] = jnp.full((8,), 0.5)
    out = apply(anchors, coeffs, slot_mask, freq)
    assert bool(jnp.all(jnp.isfinite(out)))
    assert float(jnp.max(jnp.abs(out - anchors))) > 1e-3
    # Every slot masked: nothing to absorb, anchors come back unchanged.
    none = apply(anchors, coeffs, jnp.zeros_like(slot_mask), freq)
    np.testing.assert_allclose(none, anchors, atol=1e-6)


def _gathered_reference(absorber, anchors, coeffs, slot_mask, freq):
    """The absorber written the plain way: every query's neighbourhood gathered, 7-D."""
    index, valid = neighbour_table(absorber.grid, absorber.pool, absorber.window)
    q = jnp.einsum("bsnd,dhk->bsnhk", absorber.query_norm(anchors), absorber.query[...])
    k_in = absorber.key_norm(coeffs) + freq[None, None, :, None, :]
    k = jnp.einsum("bscpd,dhk->bscphk", k_in, absorber.key[...])
    v = jnp.einsum("bscpd,dhk->bscphk", k_in, absorber.value[...])
    off = absorber.offset_embedding[...]
    k = k[:, :, :, index] + jnp.einsum("wd,dhk->whk", off, absorber.key[...])
    v = v[:, :, :, index] + jnp.einsum("wd,dhk->whk", off, absorber.value[...])
    logits = jnp.einsum("bsnhk,bscnwhk->bsnhcw", q, k) / np.sqrt(absorber.head_dim)
    allowed = slot_mask[:, :, None, None, :, None] & valid[None, None, :, None, None, :]
    b, s, n, h = logits.shape[:4]
    probs = jax.nn.softmax(jnp.where(allowed, logits, -1e30).reshape(b, s, n, h, -1), -1)
    probs = jnp.where(allowed.reshape(*allowed.shape[:4], -1), probs, 0.0).reshape(logits.shape)
    update = jnp.einsum("bsnhk,hkd->bsnd", jnp.einsum("bsnhcw,bscnwhk->bsnhk", probs, v),
                        absorber.out[...])
    return anchors + jnp.tanh(absorber.gate[...]) * update


@pytest.mark.parametrize("grid,pool,window", [((5, 6), 1, 3), ((5, 6), 2, 3), ((4, 4), 2, 1),
                                              ((5, 6), 2, 5)])
def test_shifted_windows_equal_the_gathered_neighbourhoods(grid, pool, window):
    anchors, coeffs, slot_mask, freq = _absorber_inputs(grid, pool, slots=3)
    slot_mask = slot_mask.copy()
    slot_mask[0, 1, 1:] = False
    absorber = SpatialGuidedAbsorber(8, grid=grid, pool=pool, window=window, heads=2,
                                     rngs=nnx.Rngs(3))
    absorber.gate[...] = jnp.full((8,), 0.7)
    got = _jit_apply(absorber)(anchors, coeffs, slot_mask, freq)
    want = _gathered_reference(absorber, anchors, coeffs, jnp.asarray(slot_mask), freq)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_shifted_windows_have_the_gathered_neighbourhoods_gradients():
    """The backward pass too: the shifts and the one contraction over all offsets give the
    plain gather's gradients for every parameter and input."""
    grid, pool = (5, 6), 2
    anchors, coeffs, slot_mask, freq = _absorber_inputs(grid, pool, slots=3, seed=1)
    slot_mask[1, 0, 2] = False
    absorber = SpatialGuidedAbsorber(8, grid=grid, pool=pool, window=3, heads=2,
                                     rngs=nnx.Rngs(4))
    absorber.gate[...] = jnp.full((8,), 0.7)
    graphdef, params = nnx.split(absorber)
    weights = jnp.asarray(np.random.default_rng(2).normal(size=anchors.shape), jnp.float32)

    def loss(fn):
        def value(params, anchors, coeffs):
            out = fn(nnx.merge(graphdef, params), anchors, coeffs, jnp.asarray(slot_mask), freq)
            return jnp.sum(out * weights)
        return jax.jit(jax.grad(value, argnums=(0, 1, 2)))(params, anchors, coeffs)

    got = loss(lambda m, *a: m(*a))
    want = loss(_gathered_reference)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pool,window", [(1, 3), (2, 1), (2, 3)])
def test_absorber_window_is_local(pool, window):
    grid = (5, 6)
    anchors, coeffs, slot_mask, freq = _absorber_inputs(grid, pool)
    absorber = SpatialGuidedAbsorber(8, grid=grid, pool=pool, window=window, heads=2,
                                     rngs=nnx.Rngs(1))
    absorber.gate[...] = jnp.ones((8,))
    apply = _jit_apply(absorber)
    hp, wp = budget_lib.pooled_grid(grid, pool)
    far = hp * wp - 1  # the last pooled cell
    changed = coeffs.at[:, :, :, far].add(5.0)
    delta = jnp.max(jnp.abs(apply(anchors, changed, slot_mask, freq)
                            - apply(anchors, coeffs, slot_mask, freq)), axis=(0, 1, 3))
    index, valid = neighbour_table(grid, pool, window)
    sees_far = np.any((index == far) & valid, axis=1)  # (N,)
    assert sees_far.any() and not sees_far.all()
    assert float(jnp.max(delta[~sees_far])) == 0.0
    assert float(jnp.min(delta[sees_far])) > 0.0
    # The anchor at cell (0, 0) is outside the window of the far corner.
    assert float(delta[0]) == 0.0


def test_params_carry_logical_names():
    model = compression.build("fre_res", VideoGeometry(8, (3, 3), 8), 36,
                              dict(output="dual", absorber=dict(heads=2)), rngs=nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    leaves = jax.tree.leaves(params, is_leaf=lambda v: isinstance(v, nnx.Variable))
    assert len(leaves) >= 10
    for v in leaves:
        names = v.get_metadata().get("out_sharding")
        assert names is not None and len(names) == v[...].ndim
        assert all(n is None or n in sharding.LOGICAL_AXES for n in names)
