"""frejax.compression.anchors: exact split into anchors and residuals, and back; anchor modes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from frejax.compression import anchors as anchors_lib
from frejax.compression import budget as budget_lib
from frejax.compression import fre_res
from frejax.compression.base import VideoGeometry

from compressor_helpers import QUICK_COMPILE, _latents, paper


# ----------------------------------------------------------------- exact split / reconstruct


@functools.partial(jax.jit, static_argnames=("plan", "residual"), compiler_options=QUICK_COMPILE)
def _roundtrip(latents, frame_mask, *, plan, residual):
    """Split + reconstruct for every anchor mode: ``(3, B, T, N, D)``."""
    out = []
    method = "fft" if residual == "inter_frame" else "matmul"  # both paths, half the compiles
    for anchor in anchors_lib.FRAME_ANCHORS:
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
    options = paper(output="absorbed", segment_len=segment_len, time_windows=windows,
                   num_coeffs=-(-(segment_len - 1) // windows), pool=1)
    plan = budget_lib.make_plan(geometry, geometry.full_tokens, options)
    x = _latents(frames, 2, frames, 6, 4)
    got = _roundtrip(x, jnp.ones((2, frames), bool), plan=plan, residual=residual)
    np.testing.assert_allclose(got, jnp.broadcast_to(x, got.shape), atol=1e-5)


@pytest.mark.parametrize("residual", anchors_lib.RESIDUAL_KINDS)
def test_reconstructs_valid_frames_of_a_masked_video(residual):
    geometry = VideoGeometry(9, (2, 2), 3)
    plan = budget_lib.make_plan(geometry, geometry.full_tokens,
                                paper(output="absorbed", segment_len=4, num_coeffs=3, pool=1))
    x = _latents(1, 2, 9, 4, 3)
    mask = jnp.array([[True] * 9, [True] * 6 + [False] * 3])
    got = _roundtrip(x, mask, plan=plan, residual=residual)
    want = jnp.where(mask[:, :, None, None], x, 0)
    np.testing.assert_allclose(got, jnp.broadcast_to(want, got.shape), atol=1e-5)
    # The anchor is a valid frame of its segment whenever the segment has one.
    seg_mask = jnp.pad(mask, ((0, 0), (0, 3))).reshape(2, 3, 4)
    for anchor in anchors_lib.FRAME_ANCHORS:
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
