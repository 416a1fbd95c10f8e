"""Fre-Res: exact split, absorber, static token counts, masks, sharding, plan, energy."""

import functools

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
from frejax.compression import budget as budget_lib
from frejax.compression import energy, fre_res, residual_freq
from frejax.compression.absorber import SpatialGuidedAbsorber, neighbour_table
from frejax.compression.base import VideoGeometry

FRE_RES_NAMES = ("fre_res", "temporal_dct_only", "anchors_only")


def _latents(seed, b, t, n, d):
    # numpy, not jax.random: every new jax.random shape is a multi-second compile on CPU.
    return jnp.asarray(np.random.default_rng(seed).normal(size=(b, t, n, d)), jnp.float32)


def _build(name, geometry, budget, options, seed=0):
    """A compressor with random numpy params (gate open), skipping per-shape init compiles."""
    abstract = nnx.eval_shape(lambda: compression.build(name, geometry, budget, options,
                                                        rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    rng = np.random.default_rng(seed)
    state = jax.tree.map(lambda a: (0.3 * rng.normal(size=a.shape)).astype(a.dtype), state)
    return nnx.merge(graphdef, state)


# Faster CPU compiles for the many small one-off programs here (the mesh test uses defaults).
QUICK_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def _jit_apply(module, compiler_options=QUICK_COMPILE):
    """``module(*args)`` jitted with the module state as an input (gate edits need no retrace)."""
    graphdef, _ = nnx.split(module)
    fn = jax.jit(lambda state, *args: nnx.merge(graphdef, state)(*args),
                 compiler_options=compiler_options)
    return lambda *args: fn(jax.tree.map(np.asarray, nnx.state(module)), *args)


def _open_gate(model, value=0.7):
    """Turns the absorber on (its gate starts closed)."""
    if model.absorber is not None:
        model.absorber.gate[...] = jnp.full_like(model.absorber.gate[...], value)


# ----------------------------------------------------------------- exact split / reconstruct


@functools.partial(jax.jit, static_argnames=("plan", "residual"), compiler_options=QUICK_COMPILE)
def _roundtrip(latents, frame_mask, *, plan, residual):
    """Split + reconstruct for every anchor mode: ``(3, B, T, N, D)``."""
    out = []
    method = "fft" if residual == "inter_frame" else "matmul"  # both paths, half the compiles
    for anchor in anchors_lib.ANCHOR_MODES:
        parts = fre_res.fre_res_parts(latents, frame_mask, plan=plan, residual=residual,
                                      anchor=anchor, method=method)
        assert parts.coeffs is None or parts.coeffs.shape[2] == plan.residual_slots
        out.append(anchors_lib.reconstruct(
            parts.anchors, parts.anchor_index, parts.coeffs, frames=plan.frames,
            segment_len=plan.segment_len, residual=residual, method=method,
            frame_mask=frame_mask, time_windows=plan.time_windows))
    return jnp.stack(out)


@pytest.mark.parametrize("residual", anchors_lib.RESIDUAL_KINDS)
@pytest.mark.parametrize("frames,segment_len,windows", [(10, 4, 1), (3, 5, 1), (1, 4, 1),
                                                        (5, 1, 1), (9, 9, 3), (8, 8, 2)])
def test_split_reconstructs_exactly(residual, frames, segment_len, windows):
    """Every coefficient of every time window, no pooling: anchors + coefficients give
    back the latents, every anchor mode (7 steps in 2 windows: a zero-padded tail)."""
    geometry = VideoGeometry(frames, (2, 3), 4)
    # Absorbed: the residual track is complete whatever the budget.
    options = dict(output="absorbed", segment_len=segment_len, time_windows=windows,
                   num_coeffs=-(-(segment_len - 1) // windows), pool=1)
    plan = budget_lib.make_plan(geometry, geometry.full_tokens, options)
    x = _latents(frames, 2, frames, 6, 4)
    got = _roundtrip(x, jnp.ones((2, frames), bool), plan=plan, residual=residual)
    np.testing.assert_allclose(got, jnp.broadcast_to(x, got.shape), atol=1e-5)


@pytest.mark.parametrize("residual", anchors_lib.RESIDUAL_KINDS)
def test_reconstructs_valid_frames_of_a_masked_video(residual):
    geometry = VideoGeometry(9, (2, 2), 3)
    plan = budget_lib.make_plan(geometry, geometry.full_tokens,
                                dict(output="absorbed", segment_len=4, num_coeffs=3, pool=1))
    x = _latents(1, 2, 9, 4, 3)
    mask = jnp.array([[True] * 9, [True] * 6 + [False] * 3])
    got = _roundtrip(x, mask, plan=plan, residual=residual)
    want = jnp.where(mask[:, :, None, None], x, 0)
    np.testing.assert_allclose(got, jnp.broadcast_to(want, got.shape), atol=1e-5)
    # The anchor is a valid frame of its segment whenever the segment has one.
    seg_mask = jnp.pad(mask, ((0, 0), (0, 3))).reshape(2, 3, 4)
    for anchor in anchors_lib.ANCHOR_MODES:
        segments, _ = anchors_lib.segment_frames(x, mask, 4)
        index = anchors_lib.select_anchor(segments, seg_mask, anchor)
        picked = jnp.take_along_axis(seg_mask, index[..., None], 2)[..., 0]
        assert bool(jnp.all(picked == jnp.any(seg_mask, -1))), anchor


def test_anchor_modes():
    seg = jnp.zeros((1, 2, 5, 1, 1)).at[0, 0, 3].set(9.0).at[0, 1, 1].set(-4.0)
    mask = jnp.array([[[True] * 5, [False, True, True, True, False]]])
    first = anchors_lib.select_anchor(seg, mask, "first")
    middle = anchors_lib.select_anchor(seg, mask, "middle")
    energy_idx = anchors_lib.select_anchor(seg, mask, "energy")
    assert first.tolist() == [[0, 1]]
    assert middle.tolist() == [[2, 2]]
    assert energy_idx.tolist() == [[3, 1]]
    # Two frames are always tied in energy: the earliest wins, whatever the rounding.
    pair = jnp.array([[[[[0.1]], [[0.3]]], [[[0.3]], [[0.1]]]]])
    tied = anchors_lib.select_anchor(pair, jnp.ones((1, 2, 2), bool), "energy")
    assert tied.tolist() == [[0, 0]]


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


def test_absorbed_at_init_equals_anchors_only():
    geometry = VideoGeometry(10, (3, 3), 8)
    x = _latents(3, 2, 10, 9, 8)
    opts = dict(output="absorbed", absorber=dict(heads=2))
    absorbed = compression.build("fre_res", geometry, 30, opts, rngs=nnx.Rngs(0))
    anchors_only = compression.build("anchors_only", geometry, 30, opts, rngs=nnx.Rngs(0))
    assert absorbed.plan.segment_len == anchors_only.plan.segment_len
    run = _jit_apply(absorbed)
    a, b = run(x), _jit_apply(anchors_only)(x)
    assert np.array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    _open_gate(absorbed)
    assert not np.allclose(run(x).tokens, b.tokens)


# ----------------------------------------------------------------- static token counts


MODES = [  # (entry, options): every output and allocation mode
    ("fre_res", dict(output="absorbed", allocation="uniform")),
    ("fre_res", dict(output="absorbed", allocation="energy")),
    ("fre_res", dict(output="dual", allocation="uniform")),
    ("fre_res", dict(output="dual", allocation="energy")),
    ("temporal_dct_only", dict(allocation="uniform")),
    ("temporal_dct_only", dict(allocation="energy")),
    ("anchors_only", dict()),
]


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
        model = _build(name, geometry, budget, dict(options, **mode))
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


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 64), st.integers(1, 16), st.integers(1, 16), st.data())
def test_plan_never_exceeds_the_budget(frames, h, w, data):
    """Pure python, so many cases: auto plans fit, and fill the budget in absorbed mode."""
    geometry = VideoGeometry(frames, (h, w), 8)
    budget = data.draw(st.integers(h * w, geometry.full_tokens))
    for name, mode in MODES:
        if name == "temporal_dct_only" and frames == 1:
            continue  # no residual track in a one-frame video (an error, tested below)
        plan = budget_lib.make_plan(geometry, budget, mode, variant=name)
        assert plan.total_tokens <= budget
        s, seg_len = plan.num_segments, plan.segment_len
        assert s * seg_len >= frames > (s - 1) * seg_len  # pads, never drops, frames
        if name == "anchors_only" or mode.get("output") == "absorbed":
            assert plan.num_segments == -(-frames // -(-frames // min(frames, budget // (h * w))))
        if mode.get("output") == "dual" and plan.num_coeffs:
            # Filling rule: one more coefficient row would not fit (or K is at L-1).
            room = budget - plan.anchor_tokens
            assert (plan.num_coeffs == plan.window_len or room - plan.residual_tokens
                    < plan.num_segments * plan.time_windows * plan.pooled_tokens)
        if mode.get("allocation") == "uniform" and plan.num_coeffs:
            # Two time windows per clip, unless two leave no room for a coefficient.
            fits = mode.get("output") == "absorbed" or budget - plan.anchor_tokens >= 2
            two = plan.num_segments == 1 and plan.segment_len >= 3 and fits
            assert plan.time_windows == (2 if two else 1)


def test_auto_plan_rule():
    g = VideoGeometry(32, (16, 16), 64)
    absorbed = budget_lib.make_plan(g, 1024, dict(output="absorbed"))
    assert (absorbed.segment_len, absorbed.num_segments, absorbed.num_coeffs) == (8, 4, 4)
    assert absorbed.total_tokens == 1024
    dual = budget_lib.make_plan(g, 1024, None)  # the default
    assert (dual.num_segments, dual.segment_len, dual.num_coeffs, dual.pool) == (2, 16, 4, 2)
    assert dual.time_windows == 1  # two segments: already two windows per clip
    assert dual.anchor_tokens == 512 and dual.total_tokens == 1024
    only = budget_lib.make_plan(g, 1024, None, variant="temporal_dct_only")
    assert only.anchor_tokens == 0 and only.residual_tokens == 1024
    # Explicit values are honoured.
    plan = budget_lib.make_plan(g, 2048, dict(output="dual", segment_len=8, num_coeffs=3))
    assert (plan.segment_len, plan.num_coeffs, plan.pool) == (8, 3, 2)
    assert plan.total_tokens == 1024 + 4 * 3 * 64
    # One segment: its residual track is cut into two time windows of 8 steps.
    one = budget_lib.make_plan(VideoGeometry(16, (4, 4), 8), 32, None)
    assert (one.num_segments, one.time_windows, one.window_len, one.num_coeffs, one.pool) == (
        1, 2, 8, 2, 2)
    assert one.residual_tokens == 16 and one.residual_slots == 4
    one = budget_lib.make_plan(VideoGeometry(16, (4, 4), 8), 32, dict(time_windows=1))
    assert (one.time_windows, one.num_coeffs, one.pool) == (1, 4, 2)
    # Two windows that leave no room for a coefficient fall back to one.
    tight = budget_lib.make_plan(VideoGeometry(16, (1, 1), 8), 2, None)
    assert (tight.time_windows, tight.num_coeffs) == (1, 1)
    # Full budget in dual mode: L=2, K=1, p=1 uses every token.
    full = budget_lib.make_plan(g, g.full_tokens, dict(output="dual"))
    assert (full.segment_len, full.num_coeffs, full.pool) == (2, 1, 1)
    assert full.total_tokens == g.full_tokens


def test_energy_allocation_keeps_prefixes_and_total():
    energies = jnp.array([[4.0, 0.0, 1.0, 9.0]])
    coeffs = jnp.sqrt(energies)[:, :, None, None, None] * jnp.ones((1, 4, 5, 1, 1)) / jnp.sqrt(5.0)
    valid = jnp.array([[True, True, True, True]])
    kept = residual_freq.allocate_coefficients(coeffs, valid, 8)
    counts = kept.sum(-1)[0].tolist()
    assert sum(counts) == 8 and counts[3] >= counts[0] >= counts[2] >= counts[1]
    assert bool(jnp.all(kept[..., 1:] <= kept[..., :-1]))  # prefixes
    idx = residual_freq.compact_slots(kept, 8)
    assert np.all(np.diff(np.asarray(idx[0])) > 0)


def test_pool_tokens_ceil_grid():
    x = jnp.arange(15.0).reshape(1, 15, 1)  # 3 x 5 grid
    got = residual_freq.pool_tokens(x, (3, 5), 2)[0, :, 0]
    g = np.arange(15.0).reshape(3, 5)
    want = [g[0:2, 0:2].mean(), g[0:2, 2:4].mean(), g[0:2, 4:].mean(),
            g[2:, 0:2].mean(), g[2:, 2:4].mean(), g[2:, 4:].mean()]
    np.testing.assert_allclose(got, want, rtol=1e-6)


# ----------------------------------------------------------------- masks and sharding


@pytest.mark.parametrize("name,options", [
    ("fre_res", dict(output="dual", allocation="energy", anchor="energy", segment_len=3)),
    ("fre_res", dict(output="absorbed", anchor="middle", residual="anchor_relative")),
    ("temporal_dct_only", dict(allocation="energy")),
])
def test_masked_frames_do_not_leak(name, options):
    geometry = VideoGeometry(7, (3, 3), 8)
    model = _build(name, geometry, 36, dict(options, absorber=dict(heads=2)))
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
    model = _build(name, geometry, 36, dict(options, absorber=dict(heads=2)))
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
        compression.build("fre_res", g, 64, dict(segment_len=8, num_coeffs=8), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"compressor\.budget 10 is below one anchor frame"
                                         r" \(16 tokens\)"):
        compression.build("fre_res", g, 10, None, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"compressor\.fre_res\.segment_len 2 gives 8 segments"):
        compression.build("anchors_only", g, 64, dict(segment_len=2), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"compressor\.fre_res\.pool must be in \[1, 4\]"):
        compression.build("fre_res", g, 64, dict(pool=5), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"compressor\.fre_res\.residual must be one of"):
        compression.build("fre_res", g, 64, dict(residual="optical_flow"), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"compressor\.fre_res\.absorber\.heads must divide"):
        compression.build("fre_res", g, 64, dict(absorber=dict(heads=3)), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"compressor\.fre_res\.absorber\.window must be an odd"):
        compression.build("fre_res", g, 64, dict(absorber=dict(window=2)), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"compressor\.fre_res\.segment_len must be >= 2"):
        compression.build("temporal_dct_only", VideoGeometry(1, (4, 4), 8), 16, None,
                          rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"compressor\.fre_res\.num_coeffs .* over the"):
        compression.build("fre_res", g, 64, dict(output="dual", num_coeffs=7, pool=1),
                          rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"compressor\.fre_res\.time_windows must be in \[1, 7\] for"
                                         r" segment_len 8"):
        compression.build("fre_res", g, 64, dict(segment_len=8, time_windows=8),
                          rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"compressor\.fre_res\.time_windows must be 1 with"
                                         r" allocation='energy'"):
        compression.build("fre_res", g, 64, dict(allocation="energy", time_windows=2),
                          rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"compressor\.fre_res\.num_coeffs must be in \[1, 4\] for 2"
                                         r" time windows of segment_len 8"):
        compression.build("fre_res", g, 64, dict(segment_len=8, time_windows=2, num_coeffs=5),
                          rngs=nnx.Rngs(0))
    model = _build("fre_res", g, 64, dict(absorber=dict(heads=2)))
    with pytest.raises(ValueError, match=r"latents must be \(batch, 16, 16, 8\)"):
        model(jnp.zeros((1, 16, 15, 8)))


# ----------------------------------------------------------------- energy analysis


def test_energy_concentrates_in_low_frequencies_for_smooth_latents():
    t = np.arange(32.0)[None, :, None, None]
    rng = np.random.default_rng(0)
    phase = rng.uniform(0, 6, (4, 1, 6, 8))
    smooth = jnp.asarray(np.sin(2 * np.pi * t / 64.0 + phase) + 0.05 * t * np.cos(phase),
                         jnp.float32)
    noise = jnp.asarray(rng.normal(size=smooth.shape), jnp.float32)
    capture = jax.jit(energy.energy_capture, compiler_options=QUICK_COMPILE,
                      static_argnames=("num_coeffs", "segment_len", "residual"))
    for residual in anchors_lib.RESIDUAL_KINDS:
        rep = capture(smooth, num_coeffs=2, segment_len=16, residual=residual)
        assert float(jnp.min(rep.fraction)) > 0.9, (residual, rep.fraction)
        assert rep.spectrum.shape == (4, 15)
        # 2 of 15 coefficients of white noise: about 2/15 of its energy for differences
        # (high-pass), more for anchor-relative residuals (the anchor's noise is a DC term).
        white = capture(noise, num_coeffs=2, segment_len=16, residual=residual)
        limit = 0.3 if residual == "inter_frame" else 0.7
        assert float(jnp.max(white.fraction)) < limit, (residual, white.fraction)
    # Masked frames contribute nothing, whatever they hold.
    spectrum = jax.jit(energy.residual_energy_spectrum, static_argnames=("segment_len",),
                       compiler_options=QUICK_COMPILE)
    mask = jnp.ones((4, 32), bool).at[:, 20:].set(False)
    a = spectrum(smooth, mask, segment_len=16)
    b = spectrum(smooth.at[:, 20:].set(1e3), mask, segment_len=16)
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_time_windows_localise_events():
    """Two windows: an early and a late event reach disjoint coefficient slots. One
    window: both give the same DC coefficient; their times live only in the phases."""
    early = jnp.zeros((1, 1, 15, 1, 2)).at[0, 0, 3].set(1.0)  # (B, S, L-1, cells, D)
    late = jnp.zeros((1, 1, 15, 1, 2)).at[0, 0, 11].set(1.0)
    two = [residual_freq.residual_freq_tokens(x, 2, "matmul", time_windows=2)[0, 0, :, 0, 0]
           for x in (early, late)]
    assert two[0].shape == (4,)
    assert bool(jnp.all(two[0][:2] != 0)) and not jnp.any(two[0][2:])
    assert bool(jnp.all(two[1][2:] != 0)) and not jnp.any(two[1][:2])
    one = [residual_freq.residual_freq_tokens(x, 4, "fft")[0, 0, :, 0, 0] for x in (early, late)]
    np.testing.assert_allclose(one[0][0], one[1][0], rtol=1e-6)
