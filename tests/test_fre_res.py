"""frejax.compression.fre_res: every entry returns exactly the budget, masks, sharding, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import HealthCheck, event, given, reject, settings
from hypothesis import strategies as st

import frejax.compression as compression
from frejax import sharding
from frejax.compression import anchors as anchors_lib
from frejax.compression.base import VideoGeometry

from compressor_helpers import MODES, _build, _jit_apply, _latents, _open_gate, paper


def test_absorbed_at_init_equals_anchors_only():
    geometry = VideoGeometry(10, (3, 3), 8)
    x = _latents(3, 2, 10, 9, 8)
    opts = paper(output="absorbed", absorber=dict(heads=2))
    absorbed = compression.build("fre_res", geometry, 30, opts, rngs=nnx.Rngs(0))
    anchors_only = compression.build("anchors_only", geometry, 30, opts, rngs=nnx.Rngs(0))
    assert absorbed.plan.segment_len == anchors_only.plan.segment_len
    run = _jit_apply(absorbed)
    a, b = run(x), _jit_apply(anchors_only)(x)
    assert np.array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    _open_gate(absorbed)
    assert not np.allclose(run(x).tokens, b.tokens)


# ----------------------------------------------------------------- static token counts


@st.composite
def video_cases(draw, name):
    """Geometry, budget and settings; explicit values mostly possible, sometimes not."""
    frames = draw(st.integers(1, 9))
    grid = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    n = grid[0] * grid[1]
    segment_len = draw(st.sampled_from([0, 0, draw(st.integers(1, frames + 2))]))
    least = 1 if name == "temporal_dct_only" else n * -(-frames // (segment_len or frames))
    budget = draw(st.integers(min(least, frames * n), frames * n))
    max_k = max(1, (segment_len or frames) - 1)
    options = dict(
        anchor=draw(st.sampled_from(anchors_lib.ANCHOR_MODES)),
        residual=draw(st.sampled_from(anchors_lib.RESIDUAL_KINDS)),
        coding=draw(st.sampled_from(["single", "single", "pyramid", "energy"])),
        segment_len=segment_len,
        num_coeffs=draw(st.sampled_from([0, 0, draw(st.integers(1, max_k))])),
        pool=draw(st.sampled_from([0, 0, draw(st.integers(1, max(grid)))])),
        time_windows=draw(st.sampled_from([0, 0, draw(st.integers(1, max_k))])),
        absorber=dict(heads=2, window=draw(st.sampled_from([1, 3])),
                      enabled=draw(st.booleans())),
    )
    return frames, grid, budget, options


@pytest.mark.parametrize("name,mode", MODES)
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_entry_returns_exactly_the_budget(name, mode, data):
    """42 videos in all (6 per mode): T in [1, 9] (T < L, T = 1, T % L != 0), grids up to 4x4."""
    frames, grid, budget, options = data.draw(video_cases(name))
    geometry = VideoGeometry(frames, grid, 8)
    try:
        model = _build(name, geometry, budget, paper(options, **mode))
    except ValueError as e:  # an impossible explicit setting: must name the field
        assert str(e).startswith("compressor.fre_res.") or str(e).startswith(
            "compressor.budget"), e
        event("rejected setting")
        reject()  # counts no example: each run checks max_examples buildable ones
    plan = model.plan
    assert plan.total_tokens == model.num_valid_tokens <= budget == model.num_tokens
    assert plan.num_segments == -(-frames // plan.segment_len)
    if plan.num_coeffs:
        assert 1 <= plan.num_coeffs <= plan.window_len <= plan.segment_len - 1
        assert plan.time_windows * plan.window_len >= plan.segment_len - 1
    x = np.random.default_rng(frames).normal(size=(2, frames, geometry.tokens, 8))
    out = _jit_apply(model)(x.astype(np.float32))
    tokens, mask = np.asarray(out.tokens), np.asarray(out.mask)
    assert tokens.shape == (2, budget, 8) and mask.shape == (2, budget)
    assert mask.sum(axis=1).tolist() == [model.num_valid_tokens] * 2
    assert np.isfinite(tokens).all()
    assert not tokens[~mask].any()  # padding is zero


# ----------------------------------------------------------------- masks and sharding


@pytest.mark.parametrize("name,options", [
    ("fre_res", dict(output="dual", allocation="energy", anchor="energy", segment_len=3)),
    ("fre_res", dict(output="absorbed", anchor="middle", residual="anchor_relative")),
    ("temporal_dct_only", dict(allocation="energy")),
])
def test_masked_frames_do_not_leak(name, options):
    geometry = VideoGeometry(7, (3, 3), 8)
    model = _build(name, geometry, 36, paper(options, absorber=dict(heads=2)))
    mask = jnp.array([[True] * 5 + [False] * 2, [True] * 7])
    x = _latents(0, 2, 7, 9, 8)
    garbage = x.at[0, 5:].set(100.0 * _latents(1, 1, 2, 9, 8)[0])
    run = _jit_apply(model)
    a, b = run(x, mask), run(garbage, mask)
    assert np.array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    assert np.array_equal(np.asarray(a.mask), np.asarray(b.mask))


@pytest.mark.parametrize("name,options", [
    ("fre_res", dict(output="dual", allocation="energy", anchor="energy", segment_len=3)),
    ("fre_res", dict(output="absorbed")),
    ("temporal_dct_only", dict()),
    ("anchors_only", dict(anchor="energy")),
])
def test_same_result_on_one_device_and_on_a_mesh(name, options):
    geometry = VideoGeometry(6, (3, 4), 8)
    model = _build(name, geometry, 36, paper(options, absorber=dict(heads=2)))
    graphdef, state = nnx.split(model)
    x = _latents(5, 8, 6, 12, 8)
    mask = jnp.ones((8, 6), bool).at[3, 4:].set(False)

    def run(state, v, m):
        return nnx.merge(graphdef, state)(v, m)

    single = jax.jit(run)(state, x, mask)
    rules = [(a, None) for a in sharding.LOGICAL_AXES if a != "batch"]
    rules.append(("batch", ("data", "fsdp")))
    mesh = sharding.make_mesh((4, 2, 1))
    with jax.set_mesh(mesh), sharding.axis_rules(rules):
        sharded_fn = jax.jit(run)
        assert "shard_map" in str(jax.make_jaxpr(run)(state, x, mask))
        sharded = sharded_fn(state, x, mask)
    np.testing.assert_allclose(sharded.tokens, single.tokens, atol=1e-6, rtol=1e-6)
    assert np.array_equal(np.asarray(sharded.mask), np.asarray(single.mask))


# ----------------------------------------------------------------- errors


def test_error_messages():
    g = VideoGeometry(16, (4, 4), 8)
    with pytest.raises(ValueError, match=r"compressor\.fre_res\.num_coeffs must be in \[1, 7\] for"
                                         r" segment_len 8, got 8"):
        compression.build("fre_res", g, 64, paper(segment_len=8, num_coeffs=8), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"compressor\.budget 10 is below one anchor frame"
                                         r" \(16 tokens\)"):
        compression.build("fre_res", g, 10, paper(), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"compressor\.fre_res\.segment_len 2 gives 8 segments"):
        compression.build("anchors_only", g, 64, paper(segment_len=2), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"compressor\.fre_res\.pool must be in \[1, 4\]"):
        compression.build("fre_res", g, 64, paper(pool=5), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"compressor\.fre_res\.residual must be one of"):
        compression.build("fre_res", g, 64, paper(residual="optical_flow"), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"compressor\.fre_res\.absorber\.heads must divide"):
        compression.build("fre_res", g, 64, paper(absorber=dict(heads=3)), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"compressor\.fre_res\.absorber\.window must be an odd"):
        compression.build("fre_res", g, 64, paper(absorber=dict(window=2)), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"compressor\.fre_res\.segment_len must be >= 2"):
        compression.build("temporal_dct_only", VideoGeometry(1, (4, 4), 8), 16, paper(),
                          rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"compressor\.fre_res\.num_coeffs .* over the"):
        compression.build("fre_res", g, 64, paper(output="dual", num_coeffs=7, pool=1),
                          rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"compressor\.fre_res\.time_windows must be in \[1, 7\] for"
                                         r" segment_len 8"):
        compression.build("fre_res", g, 64, paper(segment_len=8, time_windows=8),
                          rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"compressor\.fre_res\.time_windows must be 1 with"
                                         r" allocation='energy'"):
        compression.build("fre_res", g, 64, paper(allocation="energy", time_windows=2),
                          rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"compressor\.fre_res\.num_coeffs must be in \[1, 4\] for 2"
                                         r" time windows of segment_len 8"):
        compression.build("fre_res", g, 64, paper(segment_len=8, time_windows=2, num_coeffs=5),
                          rngs=nnx.Rngs(0))
    model = _build("fre_res", g, 64, paper(absorber=dict(heads=2)))
    with pytest.raises(ValueError, match=r"latents must be \(batch, 16, 16, 8\)"):
        model(jnp.zeros((1, 16, 15, 8)))


def test_fre_res_frames_is_parameter_free_and_emits_the_split_it_keeps():
    """Training-free Fre-Res: frames of the low-pass video that anchors + K coefficients give."""
    from flax import nnx  # noqa: PLC0415

    from frejax import compression  # noqa: PLC0415
    from frejax.compression import VideoGeometry  # noqa: PLC0415

    g = VideoGeometry(12, (2, 3), 5)
    x = jax.random.normal(jax.random.key(3), (2, 12, 6, 5))
    full = jnp.ones((2, 12), bool)
    # Every coefficient kept (budget = T*N): the frames come back exactly.
    exact = compression.build("fre_res_frames", g, g.full_tokens, {}, rngs=nnx.Rngs(0))
    out = exact(x, full)
    np.testing.assert_allclose(np.asarray(out.tokens).reshape(2, 12, 6, 5),
                               np.asarray(x)[:, list(exact.frame_indices)], atol=1e-5)
    # 4 frames of budget: 2 segments of 6 frames, mean anchor + 1 coefficient each.
    c = compression.build("fre_res_frames", g, 4 * 6, {}, rngs=nnx.Rngs(0))
    assert (c.segments, c.num_coeffs, c.frame_indices) == (2, 1, (1, 4, 7, 10))
    assert not jax.tree.leaves(nnx.state(c, nnx.Param))
    mean = x.reshape(2, 2, 6, 6, 5).mean(axis=2)
    dev = x.reshape(2, 2, 6, 6, 5) - mean[:, :, None]
    basis = np.cos(np.pi * (np.arange(6) + 0.5) / 6) * np.sqrt(2 / 6)  # DCT-II k=1, orthonormal
    coeff = jnp.einsum("l,bslnd->bsnd", basis, dev)
    want = mean[:, :, None] + basis[None, None, :, None, None] * coeff[:, :, None]
    want = np.asarray(want).reshape(2, 12, 6, 5)[:, [1, 4, 7, 10]]
    got = np.asarray(c(x, full).tokens).reshape(2, 4, 6, 5)
    np.testing.assert_allclose(got, want, atol=1e-5)
    # A masked-off frame's tokens are invalid.
    mask = full.at[1, 7].set(False)
    assert not bool(c(x, mask).mask[1, 2 * 6:3 * 6].any())
