"""Segments, spatial anchors and residual trajectories (the Fre-Res split), and its inverse.

Shapes: ``B`` videos, ``T`` frames, ``S = ceil(T/L)`` segments of ``L`` frames,
``N`` tokens per frame, ``D`` embed. All functions are pure ``jnp`` and run per
example (under ``sharding.batch_local``).

Invalid frames (``frame_mask`` False, and the padding that fills the last
segment) are zeroed before anything else, so their content never reaches a
token, and the anchor is always a valid frame of its segment when it has one.

Residual kinds, ``L-1`` trajectory steps per segment and spatial position:

* ``inter_frame``: the ``L-1`` forward differences ``d[t] = z[t+1] - z[t]`` of the
  segment, in time order. The anchor ``a`` rebuilds the segment by cumulative
  sums outward from it: ``z[t] = z[a] + sum(d[a:t])`` after it and
  ``z[t] = z[a] - sum(d[t:a])`` before it. Keeping the forward sign on both sides
  keeps smooth motion smooth across the anchor, which the DCT rewards. A
  difference touching an invalid frame is zero.
* ``anchor_relative``: ``z[t] - z[a]`` for the ``L-1`` non-anchor frames in time
  order; zero for invalid frames.

Anchor ``mean`` is no frame: it is the mean of the segment's valid frames, and the
residual track is then the deviations ``z[t] - mean`` of all ``L`` frames, coded by
their DCT coefficients ``1..L-1`` (``mean_deviation_coeffs``; coefficient 0 of a
deviation from the mean is zero). Anchor plus residual track is then the segment's
own temporal spectrum, with the static content in the anchor.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from frejax.compression import dct as dct_lib

RESIDUAL_KINDS = ("inter_frame", "anchor_relative")
ANCHOR_MODES = ("first", "middle", "energy", "mean")
FRAME_ANCHORS = ("first", "middle", "energy")  # the modes whose anchor is a frame


def segment_frames(latents: jax.Array, frame_mask: jax.Array,
                   segment_len: int) -> tuple[jax.Array, jax.Array]:
    """Zeroes invalid frames, pads ``T`` to ``S*L`` with masked frames, splits into segments.

    Args:
      latents: ``(batch, frames T, tokens N, embed D)``.
      frame_mask: ``(batch, frames T)`` bool.
      segment_len: L.
    Returns:
      segments ``(batch, S, L, N, D)`` and their mask ``(batch, S, L)``.
    """
    b, t, n, d = latents.shape
    s = -(-t // segment_len)
    pad = s * segment_len - t
    frame_mask = frame_mask.astype(bool)
    z = jnp.where(frame_mask[:, :, None, None], latents, jnp.zeros((), latents.dtype))
    z = jnp.pad(z, ((0, 0), (0, pad), (0, 0), (0, 0)))
    mask = jnp.pad(frame_mask, ((0, 0), (0, pad)))
    return z.reshape(b, s, segment_len, n, d), mask.reshape(b, s, segment_len)


def unsegment(segments: jax.Array, frames: int) -> jax.Array:
    """``(batch, S, L, N, D)`` -> ``(batch, frames T, N, D)``, dropping the padding."""
    b, s, l, n, d = segments.shape
    return segments.reshape(b, s * l, n, d)[:, :frames]


def select_anchor(segments: jax.Array, mask: jax.Array, mode: str = "middle") -> jax.Array:
    """Index of each segment's anchor frame, ``(batch, S)`` int32 in ``[0, L)``.

    * ``first``: the first valid frame.
    * ``middle``: the middle valid frame (rank ``(n-1)//2`` of the ``n`` valid
      ones; ``(L-1)//2`` for a full segment).
    * ``energy``: the valid frame farthest (squared L2 over tokens and embed) from
      the segment's mean valid frame: the most distinctive content is kept at full
      fidelity and the rest is coded relative to it. Near-ties (within 1e-5
      relative; always for ``L = 2``) go to the earliest frame, so the choice
      does not hang on float rounding (it must agree sharded and unsharded).
      Not differentiable (``stop_gradient``).
    A segment with no valid frame gets index 0 (its frames are all zero).

    Args:
      segments: ``(batch, S, L, N, D)`` with invalid frames zeroed.
      mask: ``(batch, S, L)`` bool.
    """
    if mode not in FRAME_ANCHORS:
        raise ValueError(f"compressor.fre_res.anchor must be one of {FRAME_ANCHORS} here (a"
                         f" frame), got {mode!r}")
    mask = mask.astype(bool)
    if mode == "first":
        return jnp.argmax(mask, axis=-1).astype(jnp.int32)
    if mode == "middle":
        count = jnp.sum(mask, axis=-1, keepdims=True)
        rank = jnp.cumsum(mask, axis=-1)  # 1-based rank of each valid frame
        hit = mask & (rank == (count - 1) // 2 + 1)
        return jnp.argmax(hit, axis=-1).astype(jnp.int32)
    z = jax.lax.stop_gradient(segments).astype(jnp.float32)
    m = mask[..., None, None].astype(jnp.float32)
    mean = jnp.sum(z * m, axis=2, keepdims=True) / jnp.maximum(jnp.sum(m, axis=2, keepdims=True), 1)
    energy = jnp.where(mask, jnp.sum(jnp.square(z - mean), axis=(-2, -1)), -jnp.inf)
    top = jnp.max(energy, axis=-1, keepdims=True)
    near_top = mask & (energy >= top - 1e-5 * jnp.abs(top))
    return jnp.argmax(near_top, axis=-1).astype(jnp.int32)


def mean_anchor(segments: jax.Array, mask: jax.Array) -> jax.Array:
    """The mean valid frame of each segment ``(batch, S, N, D)`` (zeros for an empty one)."""
    m = mask.astype(segments.dtype)[..., None, None]
    return jnp.sum(segments * m, axis=2) / jnp.maximum(jnp.sum(m, axis=2), 1.0)


def mean_deviation_coeffs(segments: jax.Array, mask: jax.Array, anchors: jax.Array,
                          num_coeffs: int, method: str = "auto") -> jax.Array:
    """DCT coefficients ``1..num_coeffs`` of ``z[t] - mean`` over the ``L`` frames of each segment.

    Invalid frames deviate by zero. Returns ``(batch, S, num_coeffs, N, D)``.
    """
    dev = jnp.where(mask.astype(bool)[..., None, None], segments - anchors[:, :, None], 0.0)
    coeffs = dct_lib.dct(dev, axis=2, num_coeffs=num_coeffs + 1, method=method)
    return coeffs[:, :, 1:]


def gather_anchor(segments: jax.Array, anchor_index: jax.Array) -> jax.Array:
    """``(batch, S, L, N, D)``, ``(batch, S)`` -> anchor frames ``(batch, S, N, D)``."""
    idx = anchor_index[:, :, None, None, None]
    return jnp.take_along_axis(segments, idx, axis=2)[:, :, 0]


def residual_trajectories(segments: jax.Array, mask: jax.Array, anchor_index: jax.Array,
                          kind: str = "inter_frame") -> jax.Array:
    """Per-position residual trajectories ``(batch, S, L-1, N, D)`` (see the module docstring).

    Args:
      segments: ``(batch, S, L, N, D)`` with invalid frames zeroed.
      mask: ``(batch, S, L)`` bool frame validity.
      anchor_index: ``(batch, S)`` from ``select_anchor``.
      kind: ``"inter_frame"`` or ``"anchor_relative"``.
    """
    if kind not in RESIDUAL_KINDS:
        raise ValueError(f"compressor.fre_res.residual must be one of {RESIDUAL_KINDS},"
                         f" got {kind!r}")
    mask = mask.astype(bool)
    if kind == "inter_frame":
        both = (mask[:, :, 1:] & mask[:, :, :-1])[..., None, None]
        diff = segments[:, :, 1:] - segments[:, :, :-1]
        return jnp.where(both, diff, jnp.zeros((), diff.dtype))
    length = segments.shape[2]
    slot = jnp.arange(length - 1)
    frame = slot[None, None, :] + (slot[None, None, :] >= anchor_index[:, :, None])  # (B, S, L-1)
    others = jnp.take_along_axis(segments, frame[..., None, None], axis=2)
    valid = jnp.take_along_axis(mask, frame, axis=2)[..., None, None]
    diff = others - gather_anchor(segments, anchor_index)[:, :, None]
    return jnp.where(valid, diff, jnp.zeros((), diff.dtype))


def integrate_residuals(anchors: jax.Array, anchor_index: jax.Array, residuals: jax.Array | None,
                        kind: str = "inter_frame") -> jax.Array:
    """Inverse of ``residual_trajectories``: anchors + residuals -> segments.

    Args:
      anchors: ``(batch, S, N, D)``.
      anchor_index: ``(batch, S)``.
      residuals: ``(batch, S, L-1, N, D)``, or ``None`` when ``L == 1``.
    Returns:
      ``(batch, S, L, N, D)``; exact on frames the anchor reaches through valid frames.
    """
    if residuals is None or residuals.shape[2] == 0:
        return anchors[:, :, None]
    length = residuals.shape[2] + 1
    t = jnp.arange(length)
    if kind == "inter_frame":
        # offset[t] = sum(d[:t]); z[t] = z[a] + offset[t] - offset[a].
        offset = jnp.concatenate([jnp.zeros_like(residuals[:, :, :1]),
                                  jnp.cumsum(residuals, axis=2)], axis=2)
        at_anchor = jnp.take_along_axis(offset, anchor_index[:, :, None, None, None], axis=2)
        return anchors[:, :, None] + (offset - at_anchor)
    if kind != "anchor_relative":
        raise ValueError(f"compressor.fre_res.residual must be one of {RESIDUAL_KINDS},"
                         f" got {kind!r}")
    a = anchor_index[:, :, None]
    slot = jnp.clip(t[None, None, :] - (t[None, None, :] > a), 0, length - 2)
    delta = jnp.take_along_axis(residuals, slot[..., None, None], axis=2)
    delta = jnp.where((t[None, None, :] == a)[..., None, None], jnp.zeros((), delta.dtype), delta)
    return anchors[:, :, None] + delta


def reconstruct(anchors: jax.Array, anchor_index: jax.Array, coeffs: jax.Array | None, *,
                frames: int, segment_len: int, residual: str = "inter_frame",
                method: str = "auto", frame_mask: jax.Array | None = None,
                time_windows: int = 1, mean_anchors: bool = False) -> jax.Array:
    """Inverts the split: anchors + unpooled DCT coefficients -> latents.

    Exact (up to float error) when all ``L-1`` coefficients were kept without
    pooling; with fewer it is the low-pass approximation of the residual track.

    Args:
      anchors: ``(batch, S, N, D)``.
      anchor_index: ``(batch, S)`` (unused with ``mean_anchors``).
      coeffs: ``(batch, S, W*K, N, D)`` lowest DCT-II coefficients of the residual
        trajectories per time window, in (window, coefficient) order,
        ``K <= ceil((L-1) / W)``; ``None`` when ``L == 1``. With ``mean_anchors``:
        coefficients ``1..K`` of the deviations from the mean (``W = 1``).
      frames: T.
      segment_len: L.
      frame_mask: optional ``(batch, T)``; invalid frames come back as zeros.
      time_windows: W, as in ``residual_freq.residual_freq_tokens``.
      mean_anchors: the anchors are segment means (anchor ``mean``).
    Returns:
      ``(batch, frames T, tokens N, embed D)``.
    """
    if mean_anchors:
        segments = jnp.broadcast_to(anchors.astype(jnp.float32)[:, :, None],
                                    anchors.shape[:2] + (segment_len,) + anchors.shape[2:])
        if coeffs is not None and segment_len > 1:
            c = coeffs.astype(jnp.float32)
            c = jnp.concatenate([jnp.zeros_like(c[:, :, :1]), c], axis=2)  # the zero DC
            segments = segments + dct_lib.idct(c, segment_len, axis=2, method=method)
        out = unsegment(segments, frames)
        if frame_mask is not None:
            out = jnp.where(frame_mask[:, :, None, None], out, 0.0)
        return out
    residuals = None
    if segment_len > 1 and coeffs is not None:
        steps, w = segment_len - 1, time_windows
        b, s = coeffs.shape[:2]
        windows = coeffs.astype(jnp.float32).reshape((b, s, w, -1) + coeffs.shape[3:])
        residuals = dct_lib.idct(windows, -(-steps // w), axis=3, method=method)
        residuals = residuals.reshape((b, s, -1) + coeffs.shape[3:])[:, :, :steps]
    elif segment_len > 1:
        residuals = jnp.zeros(anchors.shape[:2] + (segment_len - 1,) + anchors.shape[2:],
                              jnp.float32)
    segments = integrate_residuals(anchors.astype(jnp.float32), anchor_index, residuals, residual)
    out = unsegment(segments, frames)
    if frame_mask is not None:
        out = jnp.where(frame_mask[:, :, None, None], out, 0.0)
    return out
