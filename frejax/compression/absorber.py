"""The Spatial-Guided Absorber: anchors attend to the residual-frequency tokens nearby.

Each anchor token (segment ``s``, grid cell ``(i, j)``) attends, multi-head, to
the residual-frequency tokens of the same segment at its own pooled cell
``(i // p, j // p)`` and the ``window x window`` pooled cells around it, every
coefficient slot of each: ``C * window**2`` keys per query, never global
attention. Keys and values are never gathered or shifted: for each window offset
the *queries* are shifted onto the key cells they read, scored there, and the
scores shifted back (and the weighted values likewise). A shift moves a tensor
without the ``C x head_dim`` product of the keys, and all offsets go through one
contraction with the unshifted keys, so the backward pass sums the offsets inside
that contraction instead of materialising a key-sized gradient per offset.
Out-of-grid neighbours (``neighbour_table``) and invalid slots are masked.

Keys and values are ``LayerNorm(residual) + freq_embedding[k] + offset_embedding[w]``
(which coefficient, which relative cell); queries are ``LayerNorm(anchor)``.
The result enters through a per-channel ``tanh(gate)`` initialised at zero, so
at initialisation the absorber returns the anchors exactly.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from frejax import sharding
from frejax.nn.layers import LayerNorm
from frejax.compression.budget import pooled_grid


@functools.lru_cache(maxsize=64)
def neighbour_table(grid: tuple[int, int], pool: int, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Pooled-cell neighbours of every grid cell.

    Returns:
      index ``(N, window**2)`` int32 into the ``P`` pooled cells (0 where invalid)
      and valid ``(N, window**2)`` bool (False outside the pooled grid). Column
      ``w`` is the relative offset ``(w // window - r, w % window - r)``, ``r = window // 2``.
    """
    h, w = grid
    hp, wp = pooled_grid(grid, pool)
    r = window // 2
    i, j = np.divmod(np.arange(h * w), w)
    ci, cj = (i // pool)[:, None], (j // pool)[:, None]
    di, dj = np.divmod(np.arange(window * window), window)
    ni, nj = ci + (di - r)[None, :], cj + (dj - r)[None, :]
    valid = (ni >= 0) & (ni < hp) & (nj >= 0) & (nj < wp)
    index = np.where(valid, ni * wp + nj, 0).astype(np.int32)
    return index, valid


def _shift(x: jax.Array, dy: int, dx: int) -> jax.Array:
    """``out[y, x] = x[y + dy, x + dx]`` on the pooled-grid axes 2 and 4, zero outside."""
    def along(x, axis, d):
        if d == 0:
            return x
        n = x.shape[axis]
        pad = [(0, 0)] * x.ndim
        pad[axis] = (0, d) if d > 0 else (-d, 0)
        start = d if d > 0 else 0
        return jax.lax.slice_in_dim(jnp.pad(x, pad), start, start + n, axis=axis)

    return along(along(x, 2, dy), 4, dx)


class SpatialGuidedAbsorber(nnx.Module):
    """Injects each segment's residual track into its spatially matching anchor tokens.

    Args:
      embed: D.
      grid: ``(h, w)`` of the anchor tokens.
      pool: p of the residual-frequency tokens.
      window: odd neighbourhood size on the pooled grid.
      heads: attention heads, dividing D.
      dtype: compute dtype of the projections and attention.
      param_dtype: parameter dtype.
    """

    def __init__(self, embed: int, *, grid: tuple[int, int], pool: int = 1, window: int = 3,
                 heads: int = 4, dtype=jnp.float32, param_dtype=jnp.float32, rngs: nnx.Rngs):
        if window < 1 or window % 2 == 0:
            raise ValueError(f"compressor.fre_res.absorber.window must be an odd int >= 1,"
                             f" got {window}")
        if heads < 1 or embed % heads:
            raise ValueError(f"compressor.fre_res.absorber.heads must divide the embed width"
                             f" {embed}, got {heads}")
        self.grid, self.pool, self.window, self.heads = tuple(grid), pool, window, heads
        self.head_dim = embed // heads
        self.dtype = dtype
        dense = nnx.initializers.lecun_normal(in_axis=0, out_axis=(1, 2))
        out_dense = nnx.initializers.lecun_normal(in_axis=(0, 1), out_axis=2)
        qkv = ("embed", "heads", "head_dim")
        shape = (embed, heads, self.head_dim)
        # float32 out, as the attention below reads it.
        self.query_norm = LayerNorm(embed, param_dtype=param_dtype, rngs=rngs)
        self.key_norm = LayerNorm(embed, param_dtype=param_dtype, rngs=rngs)
        self.query = nnx.Param(sharding.param(dense, qkv)(rngs.params(), shape, param_dtype))
        self.key = nnx.Param(sharding.param(dense, qkv)(rngs.params(), shape, param_dtype))
        self.value = nnx.Param(sharding.param(dense, qkv)(rngs.params(), shape, param_dtype))
        self.out = nnx.Param(sharding.param(out_dense, ("heads", "head_dim", "embed"))(
            rngs.params(), (heads, self.head_dim, embed), param_dtype))
        self.offset_embedding = nnx.Param(sharding.param(
            nnx.initializers.normal(0.02), (None, "embed"))(
                rngs.params(), (window * window, embed), param_dtype))
        self.gate = nnx.Param(sharding.param(nnx.initializers.zeros, ("embed",))(
            rngs.params(), (embed,), param_dtype))

    def __call__(self, anchors: jax.Array, residual_tokens: jax.Array, slot_mask: jax.Array,
                 freq_embedding: jax.Array) -> jax.Array:
        """Anchors plus the gated residual information of their neighbourhood.

        Args:
          anchors: ``(batch, S, N, D)``.
          residual_tokens: ``(batch, S, C, P, D)`` residual-frequency tokens on the pooled grid.
          slot_mask: ``(batch, S, C)`` bool, False for slots to ignore.
          freq_embedding: ``(C, D)``: embedding of the coefficient each slot carries.
        Returns:
          ``(batch, S, N, D)`` in the dtype of ``anchors``.
        """
        _, valid = neighbour_table(self.grid, self.pool, self.window)
        cdt = self.dtype
        (h, w), p, r = self.grid, self.pool, self.window // 2
        hp, wp = pooled_grid(self.grid, p)
        b, s, n, d = anchors.shape
        c = residual_tokens.shape[2]
        q_in = self.query_norm(anchors).astype(cdt)
        k_in = (self.key_norm(residual_tokens)
                + freq_embedding.astype(jnp.float32)[None, None, :, None, :]).astype(cdt)
        q = jnp.einsum("bsnd,dhk->bsnhk", q_in, self.query[...].astype(cdt))
        k = jnp.einsum("bscpd,dhk->bscphk", k_in, self.key[...].astype(cdt))
        v = jnp.einsum("bscpd,dhk->bscphk", k_in, self.value[...].astype(cdt))
        offset = self.offset_embedding[...].astype(cdt)
        k_off = jnp.einsum("wd,dhk->whk", offset, self.key[...].astype(cdt))
        v_off = jnp.einsum("wd,dhk->whk", offset, self.value[...].astype(cdt))
        # Queries on the pooled grid: (b, s, hp, p, wp, p, heads, head_dim), the border
        # cells padded; keys and values as the pooled grid (b, s, C, hp, wp, heads, head_dim).
        qg = jnp.pad(q.reshape(b, s, h, w, *q.shape[-2:]),
                     ((0, 0), (0, 0), (0, hp * p - h), (0, wp * p - w), (0, 0), (0, 0)))
        qg = qg.reshape(b, s, hp, p, wp, p, *q.shape[-2:])
        kg = k.reshape(b, s, c, hp, wp, *k.shape[-2:])
        vg = v.reshape(b, s, c, hp, wp, *v.shape[-2:])
        offsets = [(di - r, dj - r) for di, dj in
                   (divmod(o, self.window) for o in range(self.window ** 2))]
        # The query at pooled cell y reads the key at y + dy: shift the queries by -dy
        # onto their key cells, score all offsets against the keys at once, shift back.
        q_at_keys = jnp.stack([_shift(qg, -dy, -dx) for dy, dx in offsets])
        scores = jnp.einsum("wbsyixjhk,bscyxhk->wbsyixjhc", q_at_keys, kg,
                            preferred_element_type=jnp.float32)
        logits = jnp.stack([_shift(scores[o], dy, dx) for o, (dy, dx) in enumerate(offsets)],
                           axis=-1)                                    # (.., heads, C, W)
        logits = logits + jnp.einsum("bsyixjhk,whk->bsyixjhw", qg, k_off,
                                     preferred_element_type=jnp.float32)[..., None, :]
        logits = logits / math.sqrt(self.head_dim)
        cell_valid = jnp.asarray(valid.reshape(h, w, -1))       # (h, w, W), static
        cell_valid = jnp.pad(cell_valid, ((0, hp * p - h), (0, wp * p - w), (0, 0)))
        cell_valid = cell_valid.reshape(hp, p, wp, p, 1, 1, -1)
        allowed = (slot_mask.astype(bool)[:, :, None, None, None, None, None, :, None]
                   & cell_valid[None, None])
        logits = jnp.where(allowed, logits, -1e30)
        logits = logits - jax.lax.stop_gradient(jnp.max(logits, axis=(-2, -1), keepdims=True))
        weights = jnp.where(allowed, jnp.exp(logits), 0.0)
        weights = weights / jnp.maximum(jnp.sum(weights, axis=(-2, -1), keepdims=True), 1e-30)
        weights = weights.astype(cdt)
        # The same in reverse: weights to the key cells, one contraction with the values,
        # each offset's share shifted back to its queries.
        w_at_keys = jnp.stack([_shift(weights[..., o], -dy, -dx)
                               for o, (dy, dx) in enumerate(offsets)])
        shares = jnp.einsum("wbsyixjhc,bscyxhk->wbsyixjhk", w_at_keys, vg)
        attended = sum(_shift(shares[o], dy, dx) for o, (dy, dx) in enumerate(offsets))
        attended = attended + jnp.einsum("bsyixjhw,whk->bsyixjhk", weights.sum(-2), v_off)
        attended = attended.reshape(b, s, hp * p, wp * p, *q.shape[-2:])[:, :, :h, :w]
        attended = attended.reshape(b, s, n, *q.shape[-2:])
        update = jnp.einsum("bsnhk,hkd->bsnd", attended, self.out[...].astype(cdt))
        gate = jnp.tanh(self.gate[...].astype(jnp.float32))
        out = anchors.astype(jnp.float32) + gate * update.astype(jnp.float32)
        return out.astype(anchors.dtype)
