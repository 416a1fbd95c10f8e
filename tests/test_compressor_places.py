"""Where every compressor's tokens sit (``Compressor.places``), for multimodal RoPE."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from frejax.compression import base

G = base.VideoGeometry(frames=16, grid=(4, 4), embed=32)
SELECTING = ("full", "uniform_frames", "evs", "frame_budgets")


def _video():
    x = jax.random.normal(jax.random.key(0), (2, G.frames, G.tokens, G.embed))
    fm = jnp.ones((2, G.frames), bool).at[1, 11:].set(False)      # a video of 11 frames
    return x, fm


def _build(name, options=None, ratio=8):
    budget = G.full_tokens if name == "full" else G.full_tokens // ratio
    return base.build(name, G, budget, options, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("name", base.names())
def test_every_compressor_places_each_token_inside_the_video(name):
    x, fm = _video()
    c = _build(name)
    out, places = c(x, fm), np.asarray(c.places(x, fm))
    assert places.shape == (2, c.num_tokens, 3)                   # budgets match
    valid = np.asarray(out.mask)
    p = places[valid]
    assert np.isfinite(p).all() and (p >= 0).all()
    assert (p[:, 1] <= G.grid[0] - 1).all() and (p[:, 2] <= G.grid[1] - 1).all()
    # Nothing valid sits on a frame the second video does not have.
    assert (places[1][valid[1]][:, 0] <= 10).all(), name


@pytest.mark.parametrize("name", SELECTING)
def test_a_kept_token_sits_at_its_source(name):
    x, fm = _video()
    c = _build(name)
    out, places = c(x, fm), np.asarray(c.places(x, fm))
    t, r, col = (places[..., i].astype(int) for i in range(3))
    assert (places == np.round(places)).all()
    src = np.asarray(x)[np.arange(2)[:, None], t, r * G.grid[1] + col]
    valid = np.asarray(out.mask)
    np.testing.assert_array_equal(np.asarray(out.tokens)[valid], src[valid])


def test_fre_res_places_anchors_and_residual_tokens_by_the_stated_rule():
    x, fm = _video()
    # The default: one segment-mean anchor over the video's valid frames, then the
    # highest-energy residual tokens at the centre of the frames they transform.
    c = _build("fre_res")
    assert c.plan.mean_anchors and c.plan.num_segments == 1
    places = np.asarray(c.places(x, fm))
    mask = np.asarray(c(x, fm).mask)
    np.testing.assert_allclose(places[0][mask[0]][:, 0], 7.5)      # frames 0..15
    np.testing.assert_allclose(places[1][mask[1]][:, 0], 5.0)      # frames 0..10
    anchors = places[:, :G.tokens]
    np.testing.assert_array_equal(anchors[0, :, 1:], base.grid_places(G.grid))
    # The paper's split: a middle-frame anchor per segment; residual tokens at the centre
    # of their window, at their anchor, or one per equal part of the window.
    paper = dict(anchor="middle", residual="inter_frame", coding="single", segment_len=8,
                 time_windows=2, num_coeffs=1, pool=2)
    times = {}
    for rule in ("centre", "anchor", "spread"):
        c = _build("fre_res", dict(paper, residual_place=rule), ratio=4)
        places = np.asarray(c.places(x, fm))[0]
        n_anchor = c.plan.num_segments * G.tokens
        np.testing.assert_array_equal(places[:n_anchor:G.tokens, 0], [3, 11])   # middles
        times[rule] = places[n_anchor:c.plan.total_tokens, 0]
    # Segment 0 of frames 0..7: 7 steps in 2 windows of 4 (frames 0..4, 4..7).
    assert sorted(set(times["centre"][:8])) == [2.0, 5.5]
    assert set(times["anchor"][:8]) == {3.0}
    assert sorted(set(times["spread"][:8])) == [2.0, 5.5]          # K = 1: the centre
    # Pooled 2 x 2 cells at their centroids.
    assert sorted({tuple(p) for p in np.asarray(_build("fre_res", paper, 4).places(x, fm))[
        0, 32:36, 1:].tolist()}) == [(0.5, 0.5), (0.5, 2.5), (2.5, 0.5), (2.5, 2.5)]


def test_temporal_merge_places_a_group_at_its_members_mean_frame():
    # A still video: every later frame merges into its position's first token, so the
    # budget's N heads stand for all 16 frames.
    x = jnp.broadcast_to(jax.random.normal(jax.random.key(1), (1, 1, G.tokens, G.embed)),
                         (1, G.frames, G.tokens, G.embed))
    c = base.build("temporal_merge", G, G.tokens, rngs=nnx.Rngs(0))
    places = np.asarray(c.places(x))
    np.testing.assert_allclose(places[0, :, 0], 7.5)
    np.testing.assert_array_equal(places[0, :, 1:], base.grid_places(G.grid))


@pytest.mark.parametrize("name", ["full", "uniform_frames", "evs"])
def test_streamed_chunks_sit_where_the_whole_videos_tokens_do(name):
    """Chunk by chunk (the streaming path), each chunk's places move on by the frames
    before it: a per-frame method's streamed places equal those of the whole video."""
    x, _ = _video()
    half = base.VideoGeometry(frames=G.frames // 2, grid=G.grid, embed=G.embed)
    ratio = 1 if name == "full" else 4

    def build(geometry):
        budget = geometry.full_tokens // ratio
        return base.build(name, geometry, budget, rngs=nnx.Rngs(0))

    whole = build(G)(x, places=True)
    chunk = build(half)
    parts = [chunk(x[:, k * half.frames:(k + 1) * half.frames], places=True) for k in range(2)]
    streamed = base.concat_chunks(parts, half.frames)
    assert streamed.places.shape == whole.places.shape
    second = np.asarray(streamed.places[:, parts[0].places.shape[1]:])
    valid = np.asarray(parts[1].mask)
    assert (second[valid][:, 0] >= half.frames).all()        # the second chunk's frames
    np.testing.assert_array_equal(second - np.asarray([half.frames, 0, 0]),
                                  np.asarray(parts[1].places))
    if name != "evs":   # per-frame choices that do not depend on the chunking
        np.testing.assert_array_equal(np.asarray(streamed.places), np.asarray(whole.places))
    # Without places the chunks concatenate as before.
    plain = base.concat_chunks([p._replace(places=None) for p in parts], half.frames)
    assert plain.places is None and plain.tokens.shape == streamed.tokens.shape
