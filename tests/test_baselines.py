"""Behaviour of each matched-budget baseline compressor."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from frejax import compression
from frejax.compression import baselines, dct, temporal_baselines

GEOM = compression.VideoGeometry(frames=8, grid=(4, 4), embed=6)


def _build(name, budget, options=None, geometry=GEOM):
    return compression.build(name, geometry, budget, options, rngs=nnx.Rngs(0))


def _video(key=0, batch=2, geometry=GEOM):
    g = geometry
    return jax.random.normal(jax.random.key(key), (batch, g.frames, g.tokens, g.embed))


def _run(comp, x, frame_mask=None):
    out = jax.jit(lambda x, m: comp(x, m))(x, frame_mask)
    return np.asarray(out.tokens), np.asarray(out.mask)


# ---------------------------------------------------------------------------- full

def test_full_is_identity():
    x = _video()
    tokens, mask = _run(_build("full", GEOM.full_tokens), x)
    np.testing.assert_array_equal(tokens, np.asarray(x).reshape(2, -1, GEOM.embed))
    assert mask.all()


def test_full_needs_full_budget():
    with pytest.raises(ValueError, match=r"compressor\.budget.*`full` needs budget T\*N = 8\*16"):
        _build("full", 64)


# ------------------------------------------------------------------ uniform frames

@pytest.mark.parametrize("budget, frames", [(16, (4,)), (32, (2, 6)), (40, (2, 6)),
                                            (64, (1, 3, 5, 7)), (128, tuple(range(8)))])
def test_uniform_frames_picks_bin_centres(budget, frames):
    comp = _build("uniform_frames", budget)
    assert comp.frame_indices == frames
    x = _video()
    tokens, mask = _run(comp, x)
    expect = np.asarray(x)[:, list(frames)].reshape(2, -1, GEOM.embed)
    np.testing.assert_array_equal(tokens[:, :expect.shape[1]], expect)
    assert mask.sum(1).tolist() == [comp.num_valid_tokens] * 2 == [len(frames) * 16] * 2


def test_uniform_frames_budget_below_one_frame():
    with pytest.raises(ValueError, match=r"compressor\.budget"):
        _build("uniform_frames", 15)


# ------------------------------------------------------------------- spatial pool

def test_spatial_pool_layout_choice():
    assert baselines.spatial_pool_layout(8, (4, 4), 32) == (8, 2, 2)
    assert baselines.spatial_pool_layout(8, (4, 4), 128) == (8, 4, 4)
    assert baselines.spatial_pool_layout(2, (6, 6), 35) == (2, 4, 4)   # 17 per frame: 16 = 4x4
    assert baselines.spatial_pool_layout(1, (3, 6), 8) == (1, 2, 4)    # 2x4 is 1:2 like 3:6
    assert baselines.spatial_pool_layout(8, (4, 4), 5) == (5, 1, 1)    # budget < T: frames subsampled


@pytest.mark.parametrize("mode", ["average", "bilinear"])
def test_spatial_pool_constant_video_stays_constant(mode):
    x = jnp.broadcast_to(jnp.arange(GEOM.embed, dtype=jnp.float32), (2, 8, 16, GEOM.embed))
    comp = _build("spatial_pool", 24, {"mode": mode})
    tokens, mask = _run(comp, x)
    assert mask.sum(1).tolist() == [comp.num_valid_tokens] * 2
    expect = np.broadcast_to(np.arange(GEOM.embed), (mask.sum(), GEOM.embed))
    np.testing.assert_allclose(tokens[mask], expect, atol=1e-5)


def test_spatial_pool_2x2_is_block_mean():
    x = _video()
    comp = _build("spatial_pool", 32)
    assert (comp.out_h, comp.out_w) == (2, 2)
    tokens, _ = _run(comp, x)
    grid = np.asarray(x).reshape(2, 8, 2, 2, 2, 2, 6)   # (b, t, a, y, c, x, d)
    expect = grid.mean(axis=(3, 5)).reshape(2, 32, 6)
    np.testing.assert_allclose(tokens, expect, atol=1e-5)


def test_spatial_pool_bad_mode():
    with pytest.raises(ValueError, match=r"compressor\.spatial_pool\.mode"):
        _build("spatial_pool", 32, {"mode": "max"})


# --------------------------------------------------------------------- fourier 2d

def test_zigzag_order_is_jpeg():
    assert baselines.zigzag_order(3, 3) == ((0, 0), (0, 1), (1, 0), (2, 0), (1, 1), (0, 2),
                                            (1, 2), (2, 1), (2, 2))


def test_fourier_constant_frame_has_only_dc():
    x = jnp.ones((1, 8, 16, GEOM.embed)) * 2.0
    comp = _build("fourier_2d", GEOM.full_tokens)
    tokens, _ = _run(comp, x)
    coeffs = tokens.reshape(1, 8, 16, 6)
    np.testing.assert_allclose(coeffs[:, :, 0], 2.0 * 4.0, atol=1e-5)   # sqrt(N) * value
    np.testing.assert_allclose(coeffs[:, :, 1:], 0.0, atol=1e-5)


def test_fourier_all_coefficients_invert():
    x = _video()
    comp = _build("fourier_2d", GEOM.full_tokens)
    tokens, mask = _run(comp, x)
    assert mask.all()
    grid = np.zeros((2, 8, 4, 4, 6), np.float32)
    for slot, (i, j) in enumerate(comp.coefficient_order):
        grid[:, :, i, j] = tokens.reshape(2, 8, 16, 6)[:, :, slot]
    back = dct.idct(dct.idct(jnp.asarray(grid), axis=2), axis=3)
    np.testing.assert_allclose(np.asarray(back).reshape(x.shape), x, atol=1e-5)


def test_fourier_budget_counts():
    comp = _build("fourier_2d", 50)
    assert (comp.kept_frames, comp.coeffs_per_frame, comp.num_valid_tokens) == (8, 6, 48)
    assert _build("fourier_2d", 3).num_valid_tokens == 3   # budget < T: 3 frames, DC only


# ------------------------------------------------------------------ temporal merge

def test_temporal_merge_static_video_keeps_first_frame():
    frame = jax.random.normal(jax.random.key(1), (1, 1, 16, 6))
    x = jnp.broadcast_to(frame, (1, 8, 16, 6))
    comp = _build("temporal_merge", 24)
    tokens, mask = _run(comp, x)
    assert mask.sum() == 24 == comp.num_valid_tokens
    np.testing.assert_allclose(tokens[0, :16], frame[0, 0], atol=1e-5)
    # The other kept tokens are the (unchanged) static frame's tokens at their positions.
    dist = np.abs(tokens[0, 16:, None] - np.asarray(frame)[0, 0][None]).max(-1)
    assert (dist.min(1) < 1e-5).all()


def test_temporal_merge_groups_scenes():
    a, b = jax.random.normal(jax.random.key(2), (2, 1, 1, 16, 6))
    x = jnp.concatenate([jnp.broadcast_to(a, (1, 3, 16, 6)), jnp.broadcast_to(b, (1, 5, 16, 6))], 1)
    x = x + 0.01 * jax.random.normal(jax.random.key(3), x.shape)   # merges at threshold 0.9
    tokens, mask = _run(_build("temporal_merge", 32), x)
    assert mask.all()
    np.testing.assert_allclose(tokens[0, :16], np.asarray(x)[0, :3].mean(0), atol=1e-5)
    np.testing.assert_allclose(tokens[0, 16:], np.asarray(x)[0, 3:].mean(0), atol=1e-5)


def test_temporal_merge_noise_keeps_budget():
    x = _video(4)
    comp = _build("temporal_merge", 40)
    tokens, mask = _run(comp, x)
    assert mask.sum(1).tolist() == [40, 40]
    # First-frame tokens are always kept, unmerged at first (noise never merges).
    scores = temporal_baselines.novelty_scores(x, jnp.ones((2, 8), bool), 0.9)
    assert (np.asarray(scores)[:, 0] == 3.0).all()
    assert np.isfinite(tokens).all()


def test_temporal_merge_bad_threshold():
    with pytest.raises(ValueError, match=r"compressor\.temporal_merge\.threshold"):
        _build("temporal_merge", 32, {"threshold": 1.5})


# ------------------------------------------------------------- frame budgets

def _frames_kept(comp, x, frame_mask=None):
    """Tokens kept per frame, from the selection the compressor makes."""
    b, t = x.shape[:2]
    frame_mask = jnp.ones((b, t), bool) if frame_mask is None else frame_mask
    sel, chosen = temporal_baselines.frame_token_selection(x, frame_mask, comp.budget, comp.temperature)
    n = x.shape[2]
    return np.stack([np.bincount(np.asarray(s)[np.asarray(c)] // n, minlength=t)
                     for s, c in zip(sel, chosen)])


def test_frame_budgets_give_a_distinct_frame_more_tokens():
    base = np.asarray(_video(1, batch=1))[:, :1]
    x = np.repeat(base, GEOM.frames, axis=1) + 0.05 * np.asarray(_video(2, batch=1))
    x[:, 5] = np.asarray(_video(3, batch=1))[:, 5]          # a cut: frame 5 is another scene
    x = jnp.asarray(x)
    per_frame = _frames_kept(_build("frame_budgets", 40), x)[0]
    assert per_frame.sum() == 40 and per_frame[5] == per_frame.max() > 40 // GEOM.frames
    # A large temperature gives equal shares: the budget split evenly over the frames.
    even = _frames_kept(_build("frame_budgets", 40, {"temperature": 1e6}), x)[0]
    np.testing.assert_array_equal(even, [5] * GEOM.frames)


def test_frame_budgets_keep_each_frames_most_distinct_tokens():
    x = np.repeat(np.ones((1, 1, GEOM.tokens, GEOM.embed)), GEOM.frames, axis=1)
    x = x + 0.01 * np.asarray(_video(4, batch=1))
    x[0, :, 6] = -1.0                                          # one odd token in every frame
    comp = _build("frame_budgets", GEOM.frames, {"temperature": 1e6})  # one token per frame
    tokens, mask = _run(comp, jnp.asarray(x))
    assert mask.all()
    np.testing.assert_allclose(tokens[0], x[0, :, 6], rtol=1e-6)


def test_frame_budgets_count_masked_frames_and_reconstruct_kept_tokens():
    x = _video(6)
    frame_mask = jnp.array([[True] * 8, [True, False, False, False, False, False, False, True]])
    comp = _build("frame_budgets", 40)
    tokens, mask = _run(comp, x, frame_mask)
    assert mask[0].sum() == 40 and mask[1].sum() == 32       # video 1 has 2 frames = 32 tokens
    per_frame = _frames_kept(comp, x, frame_mask)[1]
    assert per_frame[1:7].sum() == 0
    out = np.asarray(comp.reconstruct(x))
    kept = _frames_kept(comp, x)[0]
    assert kept.sum() == 40
    same = np.isclose(out[0], np.asarray(x)[0]).all(-1)      # (T, N): tokens kept exactly
    assert same.sum() >= 40 and (same.sum(1) >= kept).all()
    # A dropped token takes the kept token at its position in the nearest frame.
    sel, chosen = temporal_baselines.frame_token_selection(x, jnp.ones((2, 8), bool), 40, comp.temperature)
    mask = np.zeros(8 * 16, bool)
    mask[np.asarray(sel[0])[np.asarray(chosen[0])]] = True
    mask = mask.reshape(8, 16)
    for f, i in zip(*np.nonzero(~mask)):
        frames = np.flatnonzero(mask[:, i])
        if frames.size:
            src = frames[np.argmin(np.abs(frames - f) * 2 + (frames > f))]  # nearest, earlier on ties
            np.testing.assert_allclose(out[0, f, i], np.asarray(x)[0, src, i], rtol=1e-6)


def test_frame_budgets_bad_temperature():
    with pytest.raises(ValueError, match=r"compressor\.frame_budgets\.temperature"):
        _build("frame_budgets", 32, {"temperature": 0.0})


# ----------------------------------------------------------------------------- EVS

def test_evs_keeps_the_first_frame_and_the_tokens_that_changed():
    still = np.repeat(np.asarray(_video(7, batch=1))[:, :1], GEOM.frames, axis=1)
    x = still + 1e-3 * np.asarray(_video(8, batch=1))
    x[0, 3, 5] = -still[0, 0, 5]          # one token flips at frame 3 (and back at 4) ...
    x[0, 6, 9] = -still[0, 0, 9]          # ... another at frame 6 (and back at 7)
    comp = _build("evs", GEOM.tokens + 4)
    tokens, mask = _run(comp, jnp.asarray(x))
    assert mask.all()
    kept = [(int(s) // 16, int(s) % 16) for s in
            np.asarray(temporal_baselines.evs_selection(jnp.asarray(x), jnp.ones((1, 8), bool),
                                                        GEOM.tokens + 4)[0][0])]
    assert kept[:16] == [(0, i) for i in range(16)]           # the first frame, whole
    assert kept[16:] == [(3, 5), (4, 5), (6, 9), (7, 9)]       # the changes, in time order
    np.testing.assert_allclose(tokens[0, 16], x[0, 3, 5], rtol=1e-6)
    # Reconstruction holds the latest kept token at each position.
    out = np.asarray(comp.reconstruct(jnp.asarray(x)))
    np.testing.assert_allclose(out[0, 3, 5], x[0, 3, 5], rtol=1e-6)
    np.testing.assert_allclose(out[0, 5, 5], x[0, 4, 5], rtol=1e-6)
    np.testing.assert_allclose(out[0, 2, 5], x[0, 0, 5], rtol=1e-6)
    np.testing.assert_allclose(out[0, 7, 9], x[0, 7, 9], rtol=1e-6)


def test_evs_never_keeps_masked_frames():
    x = _video(9)
    frame_mask = jnp.array([[True] * 8, [True, True, False, False, False, False, False, False]])
    tokens, mask = _run(_build("evs", 40), x, frame_mask)
    assert mask[0].sum() == 40 and mask[1].sum() == 32       # video 1 has 2 frames = 32 tokens
    np.testing.assert_array_equal(tokens[1, 32:], 0.0)


# ----------------------------------------------------------------- frame masks

@pytest.mark.parametrize("name, budget", [("full", 128), ("uniform_frames", 64),
                                          ("spatial_pool", 32), ("fourier_2d", 40),
                                          ("temporal_merge", 40), ("temporal_merge", 120),
                                          ("frame_budgets", 40), ("frame_budgets", 120)])
def test_masked_frames_never_valid(name, budget):
    x = _video(5)
    frame_mask = jnp.array([[True] * 8, [True, False, True, False, False, True, False, False]])
    comp = _build(name, budget)
    marked = x.at[1, ~np.asarray(frame_mask[1])].set(1e6)   # masked frames carry a marker
    tokens, mask = _run(comp, marked, frame_mask)
    assert mask[0].sum() == comp.num_valid_tokens
    assert mask[1].sum() <= mask[0].sum()
    assert np.abs(tokens[1][mask[1]]).max() < 1e3   # no masked frame leaks into a valid token
    # Video 1 keeps 3 valid frames (48 tokens).
    expect = {"full": 48, "uniform_frames": 16, "spatial_pool": 12, "fourier_2d": 15,
              "temporal_merge": min(budget, 48), "frame_budgets": min(budget, 48)}[name]
    assert mask[1].sum() == expect
