"""Fre-Res: spatial anchors + residual-frequency tokens, and its two ablations.

Registry entries:

* ``fre_res``: per segment of ``L`` frames one full-resolution anchor frame; the
  other frames become per-position residual trajectories, cut into ``W`` time
  windows each coded by its lowest ``K`` temporal DCT coefficients (optionally
  ``p x p`` pooled). The Spatial-Guided Absorber injects them into the anchors.
  ``output='dual'`` (the default) emits the ``S*N`` absorbed anchors followed by
  the ``S*W*K*P`` residual-frequency tokens; ``output='absorbed'`` the absorbed anchors alone.
* ``temporal_dct_only``: the residual-frequency tokens alone (no anchors).
* ``anchors_only``: the anchors alone (no residual track), ``S = budget // N``.

Layout of the output (before ``Compressor.__call__`` pads to the budget):
anchors in (segment, cell) order, then residual tokens in (segment, window,
coefficient, pooled cell) order. A token is valid when its segment has a valid
frame. Every residual token carries the learned embedding of its (window,
coefficient) slot. The token plan (``budget.FreResPlan``) is static; see ``budget.py`` for
the rule that fills the budget.

The parameter-free split (``fre_res_parts``) runs per device under
``sharding.batch_local``; only the absorber and the frequency embedding hold
parameters.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from frejax import sharding
from frejax.compression import anchors as anchors_lib
from frejax.compression import budget as budget_lib
from frejax.compression import residual_freq
from frejax.compression.absorber import SpatialGuidedAbsorber
from frejax.compression.anchors import reconstruct
from frejax.compression.base import (
    CompressedTokens,
    Compressor,
    VideoGeometry,
    frame_places,
    grid_places,
    register,
)
from frejax.compression.baselines import batched, interpolate_frames
from frejax.compression.budget import FreResPlan, make_plan

__all__ = ["AnchorsOnly", "FreRes", "FreResParts", "TemporalDctOnly", "fre_res_parts",
           "reconstruct"]


class FreResParts(NamedTuple):
    """The parameter-free split of a batch of videos."""

    anchors: jax.Array        # (batch, S, N, D) float32
    anchor_index: jax.Array   # (batch, S) int32, frame inside each segment
    segment_valid: jax.Array  # (batch, S) bool: the segment has a valid frame
    coeffs: jax.Array | None  # (batch, S, C, P, D) float32 residual-frequency tokens
    slot_mask: jax.Array | None     # (batch, S, C) bool
    compact_index: jax.Array | None  # (batch, S*K) int32 kept slots s*C+k (energy allocation)
    selected: jax.Array | None = None  # (batch, S, M) int32 kept k*N+n (coding='energy')


def fre_res_parts(latents: jax.Array, frame_mask: jax.Array, *, plan: FreResPlan,
                  residual: str = "inter_frame", anchor: str = "middle",
                  method: str = "auto") -> FreResParts:
    """Segments, anchors, residual trajectories, pooling and DCT: the Fre-Res split.

    Args:
      latents: ``(batch, frames T, tokens N, embed D)``.
      frame_mask: ``(batch, frames T)`` bool.
      plan: the static plan.
    Returns:
      ``FreResParts``; the residual fields are ``None`` when ``plan`` computes no
      residual track, ``compact_index`` is ``None`` unless energy allocation
      emits residual tokens.
    """
    segments, mask = anchors_lib.segment_frames(latents.astype(jnp.float32), frame_mask,
                                                plan.segment_len)
    segment_valid = jnp.any(mask, axis=-1)
    if plan.mean_anchors:
        anchors = anchors_lib.mean_anchor(segments, mask)
        anchor_index = jnp.full(segment_valid.shape, -1, jnp.int32)
    else:
        anchor_index = anchors_lib.select_anchor(segments, mask, anchor)
        anchors = anchors_lib.gather_anchor(segments, anchor_index)
    if not plan.computes_residual:
        return FreResParts(anchors, anchor_index, segment_valid, None, None, None)
    slots = plan.residual_slots // plan.time_windows  # K per window, or all L-1 for energy
    if plan.mean_anchors:
        coeffs = anchors_lib.mean_deviation_coeffs(segments, mask, anchors, slots, method)
        coeffs = residual_freq.pool_tokens(coeffs, plan.grid, plan.pool)
    else:
        residuals = anchors_lib.residual_trajectories(segments, mask, anchor_index, residual)
        residuals = residual_freq.pool_tokens(residuals, plan.grid, plan.pool)
        coeffs = residual_freq.residual_freq_tokens(residuals, slots, method, plan.time_windows)
    if plan.bands:  # each band keeps only its pooled cells (shown to the absorber unpooled)
        coeffs = jnp.concatenate(
            [residual_freq.unpool_tokens(residual_freq.pool_tokens(band, plan.grid, p),
                                         plan.grid, p)
             for band, p in zip(_band_slices(coeffs, plan.bands), (p for _, p in plan.bands))],
            axis=2)
    selected = None
    if plan.selected:  # the M highest-energy (coefficient, position) pairs per segment
        b, s_, c, n, d = coeffs.shape
        energy = jnp.sum(jnp.square(jax.lax.stop_gradient(coeffs)), axis=-1).reshape(b, s_, c * n)
        # Ranked on energy in steps of 1/1024 of the segment's largest: pairs equal in exact
        # arithmetic (a segment of few valid frames has such ties) must not be ordered by
        # rounding noise, which differs between a sharded and an unsharded program; among
        # equals top_k keeps the lower index (the lower frequency).
        top = jnp.maximum(jnp.max(energy, axis=-1, keepdims=True), jnp.finfo(energy.dtype).tiny)
        ranked = jnp.round(energy / top * 1024.0)
        selected = jnp.sort(jax.lax.top_k(ranked, plan.selected)[1], axis=-1).astype(jnp.int32)
        keep = jnp.zeros((b, s_, c * n), bool).at[
            jnp.arange(b)[:, None, None], jnp.arange(s_)[None, :, None], selected].set(True)
        coeffs = jnp.where(keep.reshape(b, s_, c, n)[..., None], coeffs, 0.0)
        slot_mask = jnp.broadcast_to(segment_valid[:, :, None], (b, s_, c))
        return FreResParts(anchors, anchor_index, segment_valid, coeffs, slot_mask, None,
                           selected)
    b, s, c = coeffs.shape[:3]
    total = plan.num_segments * plan.num_coeffs
    compact_index = None
    if plan.allocation == "energy":
        slot_mask = residual_freq.allocate_coefficients(coeffs, segment_valid, total)
        if plan.output in ("dual", "residual"):
            compact_index = residual_freq.compact_slots(slot_mask, total)
    else:
        slot_mask = jnp.ones((b, s, c), bool)
    slot_mask = slot_mask & segment_valid[:, :, None]
    return FreResParts(anchors, anchor_index, segment_valid, coeffs, slot_mask, compact_index)


def _band_slices(coeffs: jax.Array, bands: tuple[tuple[int, int], ...]) -> list[jax.Array]:
    """``(batch, S, sum K_j, ...)`` -> one ``(batch, S, K_j, ...)`` slice per band."""
    starts = [0]
    for k, _ in bands:
        starts.append(starts[-1] + k)
    return [coeffs[:, :, a:b] for a, b in zip(starts[:-1], starts[1:])]


@register
class FreRes(Compressor):
    """Fre-Res compressor (see the module docstring).

    Args:
      geometry: static video shape.
      budget: output tokens M.
      options: the ``compressor.fre_res`` config section (``budget.OPTIONS`` declares
        each option, its default and allowed values): ``segment_len``, ``num_coeffs``,
        ``time_windows``, ``pool``, ``residual``, ``anchor``, ``allocation``,
        ``output``, ``dct_method``, ``absorber.{window, heads, enabled}``.
      rngs: parameter RNGs (``nnx.Rngs(0)`` when omitted).
      dtype: compute dtype of the absorber and of the tokens it returns. The
        parameter-free split (residuals, DCT, energy ranking) stays float32: it is
        elementwise-cheap, and bf16 would round away small residual coefficients.
      param_dtype: parameter dtype.
    """

    name = "fre_res"
    variant = "fre_res"
    section = budget_lib.SECTION
    OPTIONS = budget_lib.OPTIONS

    def __init__(self, geometry: VideoGeometry, budget: int, options: Any = None, *,
                 rngs: nnx.Rngs | None = None, dtype=jnp.float32, param_dtype=jnp.float32):
        super().__init__(geometry, budget, options, rngs=rngs, dtype=dtype)
        opts = self.resolve_options(options)
        self.plan = make_plan(geometry, self.budget, opts, variant=self.variant)
        self.residual, self.anchor = opts["residual"], opts["anchor"]
        self.dct_method = opts["dct_method"]
        self.residual_place = opts["residual_place"]
        # Heads against the width are checked by the absorber, where one is built.
        window, heads = opts["absorber"]["window"], opts["absorber"]["heads"]
        rngs = nnx.Rngs(0) if rngs is None else rngs
        plan = self.plan
        freq_embedding, absorber = None, None
        if plan.computes_residual:
            freq_embedding = nnx.Param(sharding.param(
                nnx.initializers.normal(0.02), ("coeffs", "embed"))(
                    rngs.params(), (plan.residual_slots, geometry.embed), param_dtype))
            if plan.absorb and plan.output in ("absorbed", "dual"):
                absorber = SpatialGuidedAbsorber(
                    geometry.embed, grid=geometry.grid, pool=plan.pool, window=window,
                    heads=heads, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.freq_embedding = freq_embedding  # (C, D), the coefficient each slot carries
        # coding='energy': a chosen token also says where it is.
        self.cell_embedding = (nnx.Param(sharding.param(
            nnx.initializers.normal(0.02), ("tokens", "embed"))(
                rngs.params(), (geometry.tokens, geometry.embed), param_dtype))
            if plan.selected else None)
        self.absorber = absorber

    @property
    def num_valid_tokens(self) -> int:
        return self.plan.total_tokens

    def split(self, latents: jax.Array, frame_mask: jax.Array) -> FreResParts:
        """The parameter-free split, per device under ``sharding.batch_local``."""
        fn = functools.partial(fre_res_parts, plan=self.plan, residual=self.residual,
                               anchor=self.anchor, method=self.dct_method)
        return sharding.batch_local(fn)(latents, frame_mask.astype(bool))

    def compress(self, latents: jax.Array, frame_mask: jax.Array) -> CompressedTokens:
        """``(batch, T, N, D)``, ``(batch, T)`` -> tokens ``(batch, M', D)``, mask ``(batch, M')``.

        ``M' = plan.total_tokens``: anchors ``(S*N)`` then residual tokens ``(S*K*P)``.
        """
        g, plan = self.geometry, self.plan
        if tuple(latents.shape[1:]) != (g.frames, g.tokens, g.embed):
            raise ValueError(
                f"{self.name}: latents must be (batch, {g.frames}, {g.tokens}, {g.embed}) for"
                f" grid {g.grid}, got {tuple(latents.shape)}")
        parts = self.split(latents, frame_mask)
        b, d = latents.shape[0], g.embed
        pieces, masks = [], []
        if plan.output != "residual":
            anchors = parts.anchors
            if self.absorber is not None:
                anchors = self.absorber(anchors, parts.coeffs, parts.slot_mask,
                                        self.freq_embedding[...])
            pieces.append(anchors.reshape(b, -1, d))
            masks.append(jnp.repeat(parts.segment_valid, g.tokens, axis=1))
        if plan.output in ("dual", "residual") and plan.num_coeffs:
            tokens, mask = self._residual_tokens(parts)
            pieces.append(tokens)
            masks.append(mask)
        tokens = jnp.concatenate(pieces, axis=1).astype(self.dtype)
        tokens = sharding.constrain(tokens, ("batch", "length", "embed"))
        return CompressedTokens(tokens, jnp.concatenate(masks, axis=1))

    def _residual_tokens(self, parts: FreResParts) -> tuple[jax.Array, jax.Array]:
        """Residual-frequency tokens ``(batch, S*K*P, D)`` with their frequency embedding
        (and, with ``coding='energy'``, the embedding of their position)."""
        values = parts.coeffs + self.freq_embedding[...].astype(jnp.float32)[None, None, :, None]
        if parts.selected is not None:
            values = values + self.cell_embedding[...].astype(jnp.float32)[None, None, None]
        return self._residual_layout(parts, values)

    def _residual_layout(self, parts: FreResParts, values: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Per-slot values ``(batch, S, C, cells, X)`` laid out as the residual tokens are:
        ``(batch, S*K*P, X)`` and their validity; the same gathers and pooling serve the
        tokens and their places.

        Bands: ``(batch, S * sum K_j P_j, X)`` in (segment, band, coefficient, cell) order.
        """
        b, s, c, p, x = values.shape
        if parts.selected is not None:  # (coefficient, position) pairs chosen per video
            flat = values.reshape(b, s, c * p, x)
            out = jnp.take_along_axis(flat, parts.selected[..., None], axis=2)
            mask = jnp.repeat(parts.segment_valid, parts.selected.shape[2], axis=1)
            return out.reshape(b, -1, x), mask
        if self.plan.bands:
            grid = self.geometry.grid
            pieces = [residual_freq.pool_tokens(band, grid, pool).reshape(b, s, -1, x)
                      for band, (_, pool) in zip(_band_slices(values, self.plan.bands),
                                                 self.plan.bands)]
            out = jnp.concatenate(pieces, axis=2)
            mask = jnp.repeat(parts.segment_valid, out.shape[2], axis=1)
            return out.reshape(b, -1, x), mask
        mask = parts.slot_mask
        if parts.compact_index is not None:
            values = jnp.take_along_axis(values.reshape(b, s * c, p, x),
                                         parts.compact_index[:, :, None, None], axis=1)
            mask = jnp.take_along_axis(mask.reshape(b, s * c), parts.compact_index, axis=1)
        return values.reshape(b, -1, x), jnp.repeat(mask.reshape(b, -1), p, axis=1)

    def token_places(self, latents: jax.Array, frame_mask: jax.Array) -> jax.Array:
        """Anchors at their frame (a segment-mean anchor at the centre of the frames it
        averages), at their own cell; residual-frequency tokens at their cell's centroid,
        in time by ``residual_place``: ``centre`` (default) the centre of the valid frames
        their window spans (a coefficient describes that whole stretch of trajectory),
        ``anchor`` their segment's anchor, ``spread`` coefficient ``k`` of ``K`` at the
        ``k``-th of ``K`` equal parts of the window."""
        g, plan = self.geometry, self.plan
        parts = self.split(latents, frame_mask)
        b, s, seg = latents.shape[0], plan.num_segments, plan.segment_len
        fm = jnp.pad(frame_mask.astype(bool), ((0, 0), (0, s * seg - g.frames)))
        fm = fm.reshape(b, s, seg)
        start = jnp.arange(s, dtype=jnp.float32)[None, :] * seg                # (1, S)
        offsets = jnp.arange(seg, dtype=jnp.float32)

        def centre(spans: jax.Array) -> jax.Array:
            """``(W, L)`` bool spans of a segment's frames -> ``(B, S, W)``: the mean time
            of each span's valid frames."""
            w = fm[:, :, None, :] & spans
            return start[..., None] + (w * offsets).sum(-1) / jnp.maximum(w.sum(-1), 1)

        if plan.mean_anchors:
            anchor_t = centre(jnp.ones((1, seg), bool))[..., 0]
        else:
            anchor_t = start + parts.anchor_index.astype(jnp.float32)
        cells = jnp.asarray(grid_places(g.grid))
        pieces = []
        if plan.output != "residual":
            t = jnp.broadcast_to(anchor_t[..., None, None], (b, s, g.tokens, 1))
            pieces.append(jnp.concatenate(
                [t, jnp.broadcast_to(cells, (b, s, g.tokens, 2))], -1).reshape(b, -1, 3))
        if plan.output in ("dual", "residual") and plan.num_coeffs:
            c, p = parts.coeffs.shape[2], parts.coeffs.shape[3]
            if p != g.tokens:
                cells = residual_freq.pool_tokens(cells, g.grid, plan.pool)
            times = self._slot_times(anchor_t, centre, c)                        # (B, S, C)
            table = jnp.concatenate(
                [jnp.broadcast_to(times[..., None, None], (b, s, c, p, 1)),
                 jnp.broadcast_to(cells, (b, s, c, p, 2))], -1)
            pieces.append(self._residual_layout(parts, table)[0])
        return jnp.concatenate(pieces, axis=1)

    def _slot_times(self, anchor_t: jax.Array, centre, slots: int) -> jax.Array:
        """``(B, S, C)``: the time of each residual slot of each segment."""
        plan, seg = self.plan, self.plan.segment_len
        if self.residual_place == "anchor":
            return jnp.broadcast_to(anchor_t[..., None], anchor_t.shape + (slots,))
        windows = 1 if (plan.mean_anchors or plan.selected or plan.bands) else plan.time_windows
        per_window = slots // windows
        if plan.mean_anchors:
            spans = [(0, seg - 1)]                       # deviations over the whole segment
        else:                                            # steps w*l .. touch frames up to +1
            steps = -(-(seg - 1) // windows)
            spans = [(w * steps, min((w + 1) * steps, seg - 1)) for w in range(windows)]
        if self.residual_place == "centre":
            masks = jnp.asarray([[a <= f <= z for f in range(seg)] for a, z in spans])
            per_span = centre(masks)                                             # (B, S, W)
            return jnp.repeat(per_span, per_window, axis=-1)
        rel = np.concatenate([a + (np.arange(per_window) + 0.5) * (z - a + 1) / per_window
                              for a, z in spans]) - 0.5
        start = jnp.arange(anchor_t.shape[1], dtype=jnp.float32)[None, :, None] * seg
        return jnp.broadcast_to(start + jnp.asarray(rel, jnp.float32), anchor_t.shape + (slots,))

    def reconstruct(self, latents: jax.Array) -> jax.Array:
        """Anchors plus the kept residual-frequency tokens, unpooled and inverted.

        The absorber is learned and left out: ``output='absorbed'`` keeps only its
        anchors' worth of tokens and reconstructs as ``anchors_only`` does; without
        anchors (``temporal_dct_only``) they are zero.
        """
        plan = self.plan
        b, t = latents.shape[:2]
        parts = self.split(latents, jnp.ones((b, t), bool))
        anchors = parts.anchors
        if plan.output == "residual":
            anchors = jnp.zeros_like(anchors)
        coeffs = None
        if parts.coeffs is not None and plan.output in ("dual", "residual"):
            coeffs = jnp.where(parts.slot_mask[..., None, None], parts.coeffs, 0.0)
            coeffs = residual_freq.unpool_tokens(coeffs, self.geometry.grid, plan.pool)
        return reconstruct(anchors, parts.anchor_index, coeffs, frames=t,
                           segment_len=plan.segment_len, residual=self.residual,
                           method=self.dct_method, time_windows=plan.time_windows,
                           mean_anchors=plan.mean_anchors)


@register
class TemporalDctOnly(FreRes):
    """Ablation: residual-frequency tokens only, the whole budget spent on them."""

    name = "temporal_dct_only"
    variant = "temporal_dct_only"


@register
class AnchorsOnly(FreRes):
    """Ablation: anchors only (``S = budget // N``), no residual track."""

    name = "anchors_only"
    variant = "anchors_only"


@register
class FreResFrames(Compressor):
    """Training-free Fre-Res: what the split keeps, handed back as latent frames.

    A pretrained projector and LLM read frame tokens, not DCT coefficients or a learned
    absorber's output. This variant keeps exactly what a Fre-Res split of the same budget
    keeps (``S`` anchors of ``N`` tokens and ``K`` unpooled residual coefficients per
    position and segment, ``S * (1 + K) * N <= budget``), inverts the split
    (``anchors.reconstruct``: the low-pass latent video) and emits ``F = S * (1 + K)``
    frames of it at the centres of equal time bins, ``1 + K`` per segment. Within a
    segment the ``1 + K`` frames are a linear, generally invertible image of the anchor
    and its ``K`` coefficients, so the LLM receives the kept information and nothing
    else, as tokens of the kind it was trained on. No parameters.

    Half the frames buy anchors (``S = max(1, F // 2)``, ``K = F // S - 1``); the anchor
    and residual kinds and the DCT path come from ``compressor.fre_res``
    (``anchor``, ``residual``, ``dct_method``); the segment-mean anchor with its
    deviations is the latents' own low-pass DCT per segment.
    """

    name = "fre_res_frames"
    section = budget_lib.SECTION
    OPTIONS = budget_lib.OPTIONS

    def __init__(self, geometry: VideoGeometry, budget: int, options: Any = None, *,
                 rngs: nnx.Rngs | None = None, dtype=jnp.float32, param_dtype=jnp.float32):
        super().__init__(geometry, budget, options, rngs=rngs, dtype=dtype)
        del param_dtype
        n, t = geometry.tokens, geometry.frames
        frames = self.budget // n
        if frames < 1:
            raise ValueError(f"compressor.budget: {self.name} emits whole frames and needs budget"
                             f" >= N = {n} tokens per frame, got {budget}")
        opts = self.resolve_options(options)
        segments = max(1, min(t, frames // 2))
        seg_len = -(-t // segments)
        segments = -(-t // seg_len)
        k = min(frames // segments - 1, seg_len - 1)
        split = dict(opts, segment_len=seg_len, num_coeffs=k, time_windows=1 if k else 0,
                     pool=1 if k else 0, coding="single", allocation="uniform", output="dual",
                     absorber=dict(opts["absorber"], enabled=False))
        kept = segments * n * (1 + k)
        self.plan = make_plan(geometry, kept, split, variant="fre_res" if k else "anchors_only")
        self.residual, self.anchor = opts["residual"], opts["anchor"]
        self.dct_method = opts["dct_method"]
        self.segments, self.num_coeffs = segments, k
        # 1 + K frames per segment at the centres of equal bins of its frames.
        idx = []
        for s in range(segments):
            start, stop = s * seg_len, min(t, (s + 1) * seg_len)
            idx += [start + int((i + 0.5) * (stop - start) / (1 + k)) for i in range(1 + k)]
        self.frame_indices = tuple(idx)

    # The same split as FreRes (it reads plan, residual, anchor and dct_method).
    split = FreRes.split

    @property
    def num_valid_tokens(self) -> int:
        return len(self.frame_indices) * self.geometry.tokens

    def compress(self, latents: jax.Array, frame_mask: jax.Array) -> CompressedTokens:
        plan, n = self.plan, self.geometry.tokens
        parts = self.split(latents, frame_mask)
        coeffs = None
        if parts.coeffs is not None:
            coeffs = jnp.where(parts.slot_mask[..., None, None], parts.coeffs, 0.0)
        video = reconstruct(parts.anchors, parts.anchor_index, coeffs, frames=latents.shape[1],
                            segment_len=plan.segment_len, residual=self.residual,
                            method=self.dct_method, frame_mask=frame_mask.astype(bool),
                            time_windows=plan.time_windows, mean_anchors=plan.mean_anchors)
        idx = jnp.asarray(self.frame_indices)
        b, d = latents.shape[0], latents.shape[-1]
        tokens = video[:, idx].reshape(b, -1, d).astype(self.dtype)
        mask = jnp.repeat(frame_mask.astype(bool)[:, idx], n, axis=1)
        return CompressedTokens(sharding.constrain(tokens, ("batch", "length", "embed")), mask)

    def token_places(self, latents: jax.Array, frame_mask: jax.Array) -> jax.Array:
        """The emitted frames are the low-pass video at their own times: each at its frame."""
        return batched(frame_places(np.asarray(self.frame_indices), self.geometry.grid),
                       latents.shape[0])

    def reconstruct(self, latents: jax.Array) -> jax.Array:
        b, t = latents.shape[:2]
        tokens = self.compress(latents, jnp.ones((b, t), bool)).tokens
        kept = tokens.reshape(b, len(self.frame_indices), *latents.shape[2:])
        return interpolate_frames(kept.astype(jnp.float32), t, self.frame_indices)
