"""Matched-budget baselines that choose along time: temporal merging, the temporal DCT,
per-frame budgets (VidCom2). Shapes and conventions as in ``baselines``."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from frejax import sharding
from frejax.compression import dct as dct_lib
from frejax.compression.base import (CompressedTokens, Compressor, VideoGeometry, grid_places,
                                    register, slot_places)
from frejax.compression.baselines import batched, spatial_pool_layout
from frejax.compression.options import Option
from frejax.nn.grid import adaptive_pool_matrix, adaptive_unpool_matrix, resample_grid


# ------------------------------------------------------------- temporal merging


def _cosine(a: jax.Array, b: jax.Array, eps: float = 1e-6) -> jax.Array:
    dot = jnp.sum(a * b, axis=-1)
    return dot / (jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1) + eps)


def frame_order(top: jax.Array, sel: jax.Array, size: int) -> tuple[jax.Array, jax.Array]:
    """``jax.lax.top_k`` output over ``size`` flat ``frame * N + position`` slots ->
    the selected slots in ``(frame, position)`` order and their validity (a ``-inf``
    score, i.e. a masked frame, is invalid and sorts last)."""
    chosen = jnp.isfinite(top)
    key = jnp.sort(jnp.where(chosen, sel, size + sel), axis=1)
    return key % size, key < size


def kept_grid(sel: jax.Array, chosen: jax.Array, frames: int, tokens: int) -> jax.Array:
    """Selected flat slots -> ``(batch, frames, tokens)`` bool: which tokens are kept."""
    rows = jnp.arange(sel.shape[0])[:, None]
    return jnp.zeros((sel.shape[0], frames * tokens), bool).at[rows, sel].set(
        chosen).reshape(-1, frames, tokens)


def selected_tokens(latents: jax.Array, frame_mask: jax.Array, select) -> CompressedTokens:
    """The tokens ``select(latents, frame_mask) -> (flat indices, validity)`` keeps, gathered
    per example on its own shard; invalid slots are zeros."""
    def fn(x, fm):
        b, t, n, d = x.shape
        sel, chosen = select(x, fm)
        tokens = jnp.take_along_axis(x.reshape(b, t * n, d), sel[..., None], axis=1)
        return jnp.where(chosen[..., None], tokens, 0.0), chosen

    return CompressedTokens(*sharding.batch_local(fn)(latents, frame_mask))


def selected_places(latents: jax.Array, frame_mask: jax.Array, select,
                    grid: tuple[int, int]) -> jax.Array:
    """Where the tokens ``select`` keeps sit: their own (frame, row, column); invalid slots
    at zero."""
    def fn(x, fm):
        sel, chosen = select(x, fm)
        return jnp.where(chosen[..., None], slot_places(sel, grid), 0.0)

    return sharding.batch_local(fn)(latents, frame_mask)


def novelty_scores(latents: jax.Array, frame_mask: jax.Array, threshold: float) -> jax.Array:
    """Per-token novelty from a running temporal merge at each spatial position.

    Args:
      latents: ``(batch, frames, tokens, embed)``.
      frame_mask: ``(batch, frames)`` bool.
      threshold: cosine similarity above which a token merges into its group.
    Returns:
      ``(batch, frames, tokens)``: ``3`` for the first valid frame at a position,
      ``1 - cos(token, group mean)`` otherwise (``< 1 - threshold`` exactly when the
      token merges into the running group, which then absorbs it), ``-inf`` for
      masked-off frames.
    """

    def step(carry, inputs):
        group_sum, started = carry            # (B, N, D), (B, N)
        x, valid = inputs                     # (B, N, D), (B,)
        valid = jnp.broadcast_to(valid[:, None], started.shape)
        sim = _cosine(x, group_sum)
        merge = started & valid & (sim > threshold)
        fresh = valid & ~merge
        score = jnp.where(valid, jnp.where(started, 1.0 - sim, 3.0), -jnp.inf)
        group_sum = jnp.where(merge[..., None], group_sum + x,
                              jnp.where(fresh[..., None], x, group_sum))
        return (group_sum, started | valid), score.astype(jnp.float32)

    b, _, n, d = latents.shape
    init = (jnp.zeros((b, n, d), latents.dtype), jnp.zeros((b, n), bool))
    _, scores = jax.lax.scan(step, init, (jnp.swapaxes(latents, 0, 1), frame_mask.T))
    return jnp.swapaxes(scores, 0, 1)


@register
class TemporalMerge(Compressor):
    """Merge each token into its same-position group over time; keep ``budget`` tokens.

    After DyCoke (2411.15024) / STTM (2507.07990). The rule, per video:

    1. At each spatial position walk the valid frames in order; a token whose
       cosine similarity to the running group's mean exceeds the option
       ``compressor.temporal_merge.threshold`` (default 0.9) merges into it,
       otherwise it starts a new group.
       Its novelty is ``1 - that similarity`` (``novelty_scores``); the first
       valid frame scores above every other token, so group heads always rank
       above merged tokens.
    2. Keep the ``budget`` most novel tokens (``jax.lax.top_k``, static ``k``),
       ordered by ``(frame, position)``. Fewer heads than the budget: the most
       novel merged tokens fill it; more heads: the least novel are dropped.
    3. Every valid token is averaged into the latest kept token at or before its
       frame at its position (with all heads kept this is exactly the step-1
       group mean). Tokens before the first kept token at their position (only
       possible when ``budget < N``) are dropped.

    ``(batch, frames, tokens, embed)`` -> ``(batch, budget, embed)``; exactly
    ``min(budget, valid tokens)`` are valid, so ``num_valid_tokens == budget``.
    """

    name = "temporal_merge"
    section = "temporal_merge"
    OPTIONS = dict(threshold=Option(
        0.9, "cosine similarity above which a token merges into an earlier one",
        check=lambda v: -1.0 <= v <= 1.0, requirement="a cosine similarity in [-1, 1]"))

    def __init__(self, geometry: VideoGeometry, budget: int, options: Any = None, *,
                 rngs: nnx.Rngs | None = None, dtype=jnp.float32):
        super().__init__(geometry, budget, options, rngs=rngs, dtype=dtype)
        self.merge_threshold = self.resolve_options(options)["threshold"]

    @property
    def num_valid_tokens(self) -> int:
        return self.budget

    def _groups(self, x: jax.Array, fm: jax.Array):
        """The kept slots ``(B, k)`` in (frame, position) order, their validity, and every
        token's group slot ``(B, T*N)`` (``T*N`` for none)."""
        t, n, k = self.geometry.frames, self.geometry.tokens, self.budget
        b = x.shape[0]
        scores = novelty_scores(x, fm, self.merge_threshold).reshape(b, t * n)
        # (frame, position) order; unused slots (masked frames) go to the end.
        sel, chosen = frame_order(*jax.lax.top_k(scores, k), t * n)
        kept = kept_grid(sel, chosen, t, n)
        frame = jnp.arange(t)[None, :, None]
        owner = jax.lax.cummax(jnp.where(kept, frame, -1), axis=1)   # (B, T, N)
        member = fm[:, :, None] & (owner >= 0)
        target = jnp.where(member, owner * n + jnp.arange(n), t * n).reshape(b, t * n)
        return sel, chosen, target

    @staticmethod
    def _group_means(values: jax.Array, target: jax.Array) -> jax.Array:
        """``values (B, T*N, X)`` averaged per group slot -> ``(B, T*N + 1, X)``."""
        b, tn, _ = values.shape
        rows = jnp.arange(b)[:, None]
        sums = jnp.zeros((b, tn + 1, values.shape[-1]), values.dtype).at[rows, target].add(values)
        counts = jnp.zeros((b, tn + 1), values.dtype).at[rows, target].add(1.0)
        return sums / jnp.maximum(counts, 1.0)[..., None]

    def _merge(self, x: jax.Array, fm: jax.Array):
        """Kept tokens ``(B, k, D)``, their validity, and every token's group slot ``(B, T*N)``
        (``T*N`` for none) with the group means ``(B, T*N + 1, D)``."""
        b, t, n, d = x.shape
        sel, chosen, target = self._groups(x, fm)
        means = self._group_means(x.reshape(b, t * n, d), target)
        rows = jnp.arange(b)[:, None]
        tokens = jnp.where(chosen[..., None], means[rows, sel], 0.0)
        return tokens, chosen, target, means

    def token_places(self, latents: jax.Array, frame_mask: jax.Array) -> jax.Array:
        """A kept token is its group's mean: it sits at the mean frame of its members, at
        their (shared) position."""
        grid = self.geometry.grid

        def fn(x, fm):
            b, t, n, _ = x.shape
            sel, chosen, target = self._groups(x, fm)
            frames = jnp.broadcast_to(jnp.repeat(jnp.arange(t, dtype=jnp.float32), n), (b, t * n))
            mean_t = self._group_means(frames[..., None], target)[jnp.arange(b)[:, None], sel]
            own = slot_places(sel, grid)
            return jnp.where(chosen[..., None], jnp.concatenate([mean_t, own[..., 1:]], -1), 0.0)

        return sharding.batch_local(fn)(latents, frame_mask)

    def compress(self, latents: jax.Array, frame_mask: jax.Array) -> CompressedTokens:
        def fn(x, fm):
            tokens, chosen, _, _ = self._merge(x, fm)
            return tokens, chosen

        return CompressedTokens(*sharding.batch_local(fn)(latents, frame_mask))

    def reconstruct(self, latents: jax.Array) -> jax.Array:
        """Every token replaced by the mean of its group; a token before the first kept one
        at its position (only when ``budget < N``) by the position's first kept group."""
        b, t, n, d = latents.shape
        _, _, target, means = self._merge(latents, jnp.ones((b, t), bool))
        target = target.reshape(b, t, n)
        # Positions whose first frames own no group borrow the first group that follows.
        first = jnp.min(jnp.where(target < t * n, target, t * n), axis=1, keepdims=True)
        target = jnp.where(target < t * n, target, first)
        out = jnp.take_along_axis(means, target.reshape(b, t * n)[..., None], axis=1)
        return out.reshape(b, t, n, d)


# ------------------------------------------------------------- temporal DCT


@register
class TemporalDct(Compressor):
    """The lowest ``K`` orthonormal temporal DCT-II coefficients of every position's trajectory.

    The latents' own temporal spectrum (no anchor, no residual): coefficient 0 is
    ``sqrt(T)`` times the position's temporal mean, so the static content sits in the
    first ``N`` tokens at full resolution and slow change in the next ones. ``K = min(T,
    budget // N)``; when ``budget < N`` one coefficient is kept on a pooled grid
    (``spatial_pool_layout``). ``(batch, frames, tokens, embed)`` -> ``(batch, K*h'*w',
    embed)``, coefficient-major. A masked frame counts as zero in the transform.
    """

    name = "temporal_dct"

    def __init__(self, geometry: VideoGeometry, budget: int, options: Any = None, *,
                 rngs: nnx.Rngs | None = None, dtype=jnp.float32):
        super().__init__(geometry, budget, options, rngs=rngs, dtype=dtype)
        self.num_coeffs = max(1, min(geometry.frames, self.budget // geometry.tokens))
        if self.budget >= geometry.tokens:
            self.out_h, self.out_w = geometry.grid
        else:
            _, self.out_h, self.out_w = spatial_pool_layout(1, tuple(geometry.grid), self.budget)

    @property
    def num_valid_tokens(self) -> int:
        return self.num_coeffs * self.out_h * self.out_w

    def _coefficients(self, x: jax.Array, fm: jax.Array) -> jax.Array:
        """``(B, K, h', w', D)``."""
        (h, w), (oh, ow) = self.geometry.grid, (self.out_h, self.out_w)
        b, t, _, d = x.shape
        x = jnp.where(fm[:, :, None, None], x, 0.0)
        coeffs = dct_lib.dct(x, axis=1, num_coeffs=self.num_coeffs).reshape(b, -1, h, w, d)
        if (oh, ow) != (h, w):
            coeffs = resample_grid(coeffs, adaptive_pool_matrix(h, oh),
                                   adaptive_pool_matrix(w, ow))
        return coeffs

    def compress(self, latents: jax.Array, frame_mask: jax.Array) -> CompressedTokens:
        def fn(x, fm):
            coeffs = self._coefficients(x, fm)
            b, d = x.shape[0], x.shape[-1]
            valid = jnp.broadcast_to(jnp.any(fm, axis=1, keepdims=True),
                                     (b, self.num_valid_tokens))
            return coeffs.reshape(b, -1, d), valid

        return CompressedTokens(*sharding.batch_local(fn)(latents, frame_mask))

    def token_places(self, latents: jax.Array, frame_mask: jax.Array) -> jax.Array:
        """A coefficient transforms its position's whole trajectory: at the clip's centre
        frame, at the position (a pooled cell's centroid)."""
        (h, w), (oh, ow) = self.geometry.grid, (self.out_h, self.out_w)
        cells = jnp.asarray(grid_places((h, w))).reshape(1, 1, h, w, 2)
        if (oh, ow) != (h, w):
            cells = resample_grid(cells, adaptive_pool_matrix(h, oh), adaptive_pool_matrix(w, ow))
        cells = jnp.tile(cells.reshape(-1, 2), (self.num_coeffs, 1))
        t = jnp.full((len(cells), 1), (self.geometry.frames - 1) / 2, jnp.float32)
        return batched(jnp.concatenate([t, cells], axis=-1), latents.shape[0])

    def reconstruct(self, latents: jax.Array) -> jax.Array:
        """Zero-filled inverse DCT in time (``adaptive_unpool_matrix`` when pooled)."""
        (h, w), (oh, ow) = self.geometry.grid, (self.out_h, self.out_w)
        b, t, _, d = latents.shape
        coeffs = self._coefficients(latents, jnp.ones((b, t), bool))
        if (oh, ow) != (h, w):
            coeffs = resample_grid(coeffs, adaptive_unpool_matrix(h, oh),
                                   adaptive_unpool_matrix(w, ow))
        return dct_lib.idct(coeffs.reshape(b, -1, h * w, d), t, axis=1)


# ------------------------------------------------- per-frame budgets (VidCom2)


def frame_token_selection(latents: jax.Array, frame_mask: jax.Array, budget: int,
                          temperature: float) -> tuple[jax.Array, jax.Array]:
    """Which ``budget`` tokens to keep: per-frame shares by distinctiveness, then the most
    distinct tokens of each frame.

    Args:
      latents: ``(batch, frames, tokens, embed)``.
      frame_mask: ``(batch, frames)`` bool.
      budget: tokens to keep per video (static).
      temperature: softmax temperature of the frame shares.
    Returns:
      ``(batch, budget)`` flat indices ``frame * N + position`` in ``(frame, position)``
      order, and their validity (False past the video's valid tokens).

    A frame's distinctiveness is ``1 - cos(frame mean, video mean)``; its share
    ``w_t`` is the softmax of distinctiveness / ``temperature`` over valid frames.
    A token's distinctiveness is ``1 - (cos(token, frame mean) + cos(token, video
    mean)) / 2``, ranked within its frame (rank 0 = most distinct). Token ``(t, i)``
    has priority ``w_t / (rank + 0.5)`` and the ``budget`` highest are kept: the
    Sainte-Lague apportionment of the budget to frames in proportion to ``w_t``, so
    the total is exact, no frame gives more tokens than it has, and each frame keeps
    its most distinct ones, with one static ``top_k``.
    """
    b, t, n, _ = latents.shape
    x = latents.astype(jnp.float32)
    frames = x.mean(axis=2)                                              # (B, T, D)
    weight = frame_mask.astype(jnp.float32)
    video = (frames * weight[..., None]).sum(1) / jnp.maximum(weight.sum(1), 1.0)[:, None]
    frame_novelty = 1.0 - _cosine(frames, video[:, None])                # (B, T)
    # In logs: a frame whose share underflows still ranks its tokens after all others.
    log_share = jax.nn.log_softmax(
        jnp.where(frame_mask, frame_novelty / temperature, -jnp.inf), axis=1)
    token_novelty = 1.0 - 0.5 * (_cosine(x, frames[:, :, None]) + _cosine(x, video[:, None, None]))
    rank = jnp.argsort(jnp.argsort(-token_novelty, axis=2), axis=2)       # (B, T, N)
    priority = log_share[..., None] - jnp.log(rank + 0.5)
    priority = jnp.where(frame_mask[..., None], priority, -jnp.inf).reshape(b, t * n)
    return frame_order(*jax.lax.top_k(priority, budget), t * n)


@register
class FrameBudgets(Compressor):
    """Per-frame token budgets by how distinct each frame is; the most distinct tokens kept.

    After VidCom2 (2505.14454): frames that differ more from the video as a whole get
    a larger share of the budget, and inside each frame the tokens that differ most
    from their frame and from the video are kept (``frame_token_selection``).
    Training-free and query-agnostic. ``(batch, frames, tokens, embed)`` ->
    ``(batch, budget, embed)`` in ``(frame, position)`` order; exactly ``min(budget,
    valid tokens)`` are valid.
    """

    name = "frame_budgets"
    section = "frame_budgets"
    OPTIONS = dict(temperature=Option(
        0.05, "softmax temperature of the frame shares (large: equal shares)",
        check=lambda v: v > 0, requirement="a positive number"))

    def __init__(self, geometry: VideoGeometry, budget: int, options: Any = None, *,
                 rngs: nnx.Rngs | None = None, dtype=jnp.float32):
        super().__init__(geometry, budget, options, rngs=rngs, dtype=dtype)
        self.temperature = self.resolve_options(options)["temperature"]

    @property
    def num_valid_tokens(self) -> int:
        return self.budget

    def _select(self, x: jax.Array, fm: jax.Array):
        return frame_token_selection(x, fm, self.budget, self.temperature)

    def compress(self, latents: jax.Array, frame_mask: jax.Array) -> CompressedTokens:
        return selected_tokens(latents, frame_mask, self._select)

    def token_places(self, latents: jax.Array, frame_mask: jax.Array) -> jax.Array:
        return selected_places(latents, frame_mask, self._select, self.geometry.grid)

    def reconstruct(self, latents: jax.Array) -> jax.Array:
        """Kept tokens exact; a dropped one takes the kept token at its position in the
        nearest frame (earlier on a tie), else the mean of its frame's kept tokens (of all
        kept tokens where its frame kept none)."""
        b, t, n, d = latents.shape
        sel, chosen = frame_token_selection(latents, jnp.ones((b, t), bool), self.budget,
                                            self.temperature)
        kept = kept_grid(sel, chosen, t, n)
        frame = jnp.arange(t)[None, :, None]
        before = jax.lax.cummax(jnp.where(kept, frame, -t), axis=1)             # (B, T, N)
        after = jax.lax.cummin(jnp.where(kept, frame, 2 * t), axis=1, reverse=True)
        source = jnp.where(frame - before <= after - frame, before, after)
        found = (source >= 0) & (source < t)
        same_position = jnp.take_along_axis(latents, jnp.clip(source, 0, t - 1)[..., None],
                                            axis=1)
        w = kept.astype(latents.dtype)[..., None]
        frame_sum, frame_count = (latents * w).sum(2), w.sum(2)          # (B, T, D), (B, T, 1)
        overall = frame_sum.sum(1, keepdims=True) / jnp.maximum(frame_count.sum(1, keepdims=True), 1)
        frame_mean = jnp.where(frame_count > 0, frame_sum / jnp.maximum(frame_count, 1), overall)
        fill = jnp.where(found[..., None], same_position, frame_mean[:, :, None])
        return jnp.where(kept[..., None], latents, fill)


# ------------------------------------------------- EVS (vLLM / SGLang's pruning)


def evs_selection(latents: jax.Array, frame_mask: jax.Array,
                  budget: int) -> tuple[jax.Array, jax.Array]:
    """Which ``budget`` tokens EVS keeps: those that changed most since the previous frame.

    A token's score is ``1 - cos(token, same position in the previous frame)``; every
    token of the first valid frame scores above all others (nothing precedes it), and
    masked frames score ``-inf``. Returns ``(batch, budget)`` flat indices
    ``frame * N + position`` in ``(frame, position)`` order and their validity.
    """
    b, t, n, _ = latents.shape
    x = latents.astype(jnp.float32)
    change = 1.0 - _cosine(x[:, 1:], x[:, :-1])                           # (B, T-1, N)
    # The previous *valid* frame: masked frames are padding at the end, so a valid
    # frame's predecessor is valid whenever it is not the first frame.
    first = jnp.cumsum(frame_mask, axis=1) == 1                          # (B, T)
    score = jnp.concatenate([jnp.full((b, 1, n), 3.0), change], axis=1)
    score = jnp.where(first[..., None], 3.0, score)
    score = jnp.where(frame_mask[..., None], score, -jnp.inf).reshape(b, t * n)
    return frame_order(*jax.lax.top_k(score, budget), t * n)


@register
class Evs(Compressor):
    """Efficient Video Sampling: drop the tokens that changed least since the previous frame.

    The pruning vLLM and SGLang ship for video MLLMs (EVS, 2510.14624): per token, the
    cosine dissimilarity to the same position one frame earlier; the first frame is
    kept whole, then the ``budget`` most changed tokens over the whole video, in
    ``(frame, position)`` order. Training-free, query-agnostic, no parameters.
    ``(batch, frames, tokens, embed)`` -> ``(batch, budget, embed)``; exactly
    ``min(budget, valid tokens)`` are valid.
    """

    name = "evs"

    @property
    def num_valid_tokens(self) -> int:
        return self.budget

    def _select(self, x: jax.Array, fm: jax.Array):
        return evs_selection(x, fm, self.budget)

    def compress(self, latents: jax.Array, frame_mask: jax.Array) -> CompressedTokens:
        return selected_tokens(latents, frame_mask, self._select)

    def token_places(self, latents: jax.Array, frame_mask: jax.Array) -> jax.Array:
        """Each surviving token keeps its own place, as vLLM's EVS keeps its position."""
        return selected_places(latents, frame_mask, self._select, self.geometry.grid)

    def reconstruct(self, latents: jax.Array) -> jax.Array:
        """Kept tokens exact; a dropped token repeats the latest kept token at its
        position (a dropped token is one that barely changed, so the last kept state
        is EVS's own assumption about it)."""
        b, t, n, d = latents.shape
        sel, chosen = evs_selection(latents, jnp.ones((b, t), bool), self.budget)
        kept = kept_grid(sel, chosen, t, n)
        frame = jnp.arange(t)[None, :, None]
        source = jax.lax.cummax(jnp.where(kept, frame, 0), axis=1)         # frame 0 is kept
        held = jnp.take_along_axis(latents, source[..., None], axis=1)
        return jnp.where(kept[..., None], latents, held)
