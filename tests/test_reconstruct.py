"""``Compressor.reconstruct``: the latent video each method's kept tokens imply (model-free)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import frejax.compression as compression
from compressor_helpers import QUICK_COMPILE, _build, paper
from frejax.compression import budget as budget_lib
from frejax.compression.base import VideoGeometry
from frejax.studies.kept_information import dct_basis

T, GRID, D = 8, (4, 4), 4
N = GRID[0] * GRID[1]
GEOMETRY = VideoGeometry(T, GRID, D)
PYRAMID = dict(anchor="mean", residual="anchor_relative", coding="pyramid")


def _reconstruct(comp, z):
    return np.asarray(jax.jit(comp.reconstruct, compiler_options=QUICK_COMPILE)(jnp.asarray(z)))


def _video(kind, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "static":
        return np.broadcast_to(rng.normal(size=(1, 1, N, D)), (2, T, N, D)).astype(np.float32)
    if kind == "linear":  # every token moves linearly in time
        a, b = rng.normal(size=(2, 2, 1, N, D))
        return (a + b * np.arange(T)[None, :, None, None]).astype(np.float32)
    return rng.normal(size=(2, T, N, D)).astype(np.float32)


@pytest.mark.parametrize("name", compression.names())
def test_every_compressor_reconstructs_the_video_shape(name):
    budget = GEOMETRY.full_tokens if name == "full" else GEOMETRY.full_tokens // 4
    comp = _build(name, GEOMETRY, budget, None)
    z = _video("random")
    out = _reconstruct(comp, z)
    assert out.shape == z.shape and np.all(np.isfinite(out))


@pytest.mark.parametrize("name,options", [
    ("full", None), ("uniform_frames", None), ("temporal_dct", None), ("temporal_merge", None),
    ("fre_res", paper(pool=1, num_coeffs=T - 1, segment_len=T)),
    ("fre_res", paper(pool=1, num_coeffs=T - 1, segment_len=T, residual="anchor_relative")),
    ("fre_res", paper(pool=1, num_coeffs=T - 1, segment_len=T, anchor="mean",
                      residual="anchor_relative")),
    ("fre_res", dict(segment_len=T)),  # the default coding keeps all (L-1) x N coefficients
])
def test_the_whole_budget_keeps_everything(name, options):
    """At T*N tokens (or T*N with every coefficient unpooled) nothing is lost."""
    comp = _build(name, GEOMETRY, GEOMETRY.full_tokens, options)
    z = _video("random")
    np.testing.assert_allclose(_reconstruct(comp, z), z, atol=2e-4)


@pytest.mark.parametrize("name,options", [
    ("uniform_frames", None), ("temporal_dct", None), ("temporal_merge", None),
    ("anchors_only", None), ("fre_res", None), ("fre_res", PYRAMID),
])
def test_a_static_video_is_kept_exactly(name, options):
    comp = _build(name, GEOMETRY, GEOMETRY.full_tokens // 4, options)
    z = _video("static")
    np.testing.assert_allclose(_reconstruct(comp, z), z, atol=1e-4)


def test_uniform_frames_interpolate_linear_motion_exactly():
    comp = _build("uniform_frames", GEOMETRY, 3 * N, None)
    z = _video("linear")
    out = _reconstruct(comp, z)
    kept = comp.frame_indices
    inside = slice(kept[0], kept[-1] + 1)   # outside the kept span the ends are held
    np.testing.assert_allclose(out[:, inside], z[:, inside], atol=1e-4)


def test_temporal_dct_is_the_low_pass_of_each_trajectory():
    comp = _build("temporal_dct", GEOMETRY, 3 * N, None)
    z = _video("random")
    basis = dct_basis(T)[:3]
    expected = np.einsum("kt,ks,bsnd->btnd", basis, basis, z)
    np.testing.assert_allclose(_reconstruct(comp, z), expected, atol=1e-4)


def test_pyramid_reconstruction_matches_a_direct_computation():
    """Mean anchor + DCT bands of the deviations, each band averaged over its p x p cells."""
    geometry = VideoGeometry(16, (8, 8), D)
    budget = 16 * 64 // 4
    comp = _build("fre_res", geometry, budget, dict(PYRAMID, segment_len=16))
    plan = comp.plan
    assert plan.num_segments == 1 and plan.mean_anchors
    assert [p for _, p in plan.bands] == [1, 2, 4]
    assert plan.total_tokens <= budget
    z = np.random.default_rng(3).normal(size=(1, 16, 64, D))
    mean = z.mean(axis=1, keepdims=True)
    coeffs = np.einsum("kt,btnd->bknd", dct_basis(16)[1:], z - mean)   # (1, 15, 64, D)
    kept = np.zeros_like(coeffs)
    start = 0
    for k, p in plan.bands:
        band = coeffs[:, start:start + k].reshape(1, k, 8 // p, p, 8 // p, p, D)
        band = band.mean(axis=(3, 5), keepdims=True)
        kept[:, start:start + k] = np.broadcast_to(band, (1, k, 8 // p, p, 8 // p, p, D)).reshape(
            1, k, 64, D)
        start += k
    expected = mean + np.einsum("kt,bknd->btnd", dct_basis(16)[1:], kept)
    np.testing.assert_allclose(_reconstruct(comp, z), expected, atol=1e-4)
    # The tokens are the pooled bands: as many as the plan says, all valid.
    out = jax.jit(comp, compiler_options=QUICK_COMPILE)(jnp.asarray(z, jnp.float32))
    assert int(out.mask.sum()) == plan.total_tokens


def test_pyramid_rule():
    """Half the residual room to full resolution, a quarter to 2x2 cells, the rest 4x4."""
    plan = budget_lib.make_plan(VideoGeometry(32, (16, 16), 8), 1024,
                                dict(PYRAMID, segment_len=32))
    assert plan.num_segments == 1 and plan.bands == ((1, 1), (3, 2), (20, 4))
    assert plan.residual_tokens == 256 + 3 * 64 + 20 * 16 == 768
    with pytest.raises(ValueError, match="compressor.fre_res.pool must be 0"):
        budget_lib.make_plan(GEOMETRY, 32, dict(PYRAMID, pool=2))
    with pytest.raises(ValueError, match="compressor.fre_res.residual must be 'anchor_relative'"):
        budget_lib.make_plan(GEOMETRY, 32, dict(anchor="mean", residual="inter_frame"))


ENERGY = dict(anchor="mean", residual="anchor_relative", coding="energy")


def test_energy_coding_spends_the_room_where_the_video_moves():
    """One moving position: every chosen token sits there, and with room for all its
    coefficients the video comes back exactly."""
    z = _video("static").copy()
    z[:, :, 5] += np.random.default_rng(4).normal(size=(2, T, D))      # only token 5 moves
    comp = _build("fre_res", GEOMETRY, N + (T - 1), ENERGY)
    plan = comp.plan
    assert plan.mean_anchors and plan.num_segments == 1 and plan.selected == T - 1
    parts = comp.split(jnp.asarray(z), jnp.ones((2, T), bool))
    assert np.all(np.asarray(parts.selected) % N == 5)
    np.testing.assert_allclose(_reconstruct(comp, z), z, atol=1e-4)
    out = jax.jit(comp, compiler_options=QUICK_COMPILE)(jnp.asarray(z))
    assert out.tokens.shape == (2, N + T - 1, D) and bool(out.mask.all())


def test_energy_coding_keeps_the_largest_coefficients():
    comp = _build("fre_res", GEOMETRY, GEOMETRY.full_tokens // 2, dict(ENERGY, segment_len=T))
    z = _video("random")
    coeffs = np.einsum("kt,btnd->bknd", dct_basis(T)[1:], z - z.mean(axis=1, keepdims=True))
    energy = np.sum(coeffs ** 2, axis=-1).reshape(2, -1)
    parts = comp.split(jnp.asarray(z), jnp.ones((2, T), bool))
    for b in range(2):
        want = np.sort(np.argsort(-energy[b])[:comp.plan.selected])
        np.testing.assert_array_equal(np.asarray(parts.selected)[b, 0], want)
