"""Grouped-query attention with interchangeable backends, chosen by config.

One function, ``attention``, and one description of what a query may see,
``AttentionMask``:

  * ``key_valid (batch, S)``: keys that exist (padding is False);
  * ``causal``: a query sees keys at sequence places ``<=`` its own;
    ``q_places (batch, L)`` / ``kv_places (batch, S)`` give those places when
    they are not ``arange`` (a KV cache written at per-example slots);
  * ``dense (batch, L, S)``: any other bool mask, ANDed with the above.

Backends (``model.llm.attention`` / ``model.vision.attention``):

  ``xla``        the reference: float32 scores ``(batch, kv_heads, groups, L, S)``
                 materialised, then softmax. Exact, memory ``O(L S)``.
  ``dot_product`` ``jax.nn.dot_product_attention``: cuDNN flash attention on GPU
                 where cuDNN supports the shapes, XLA's own otherwise.
  ``splash``     the Pallas TPU splash-attention kernel (block-sparse causal
                 mask, padding as segment ids, grouped-query as one MQA kernel
                 per key/value head), per device over the batch shard. On other
                 platforms it runs in Pallas interpret mode (tests only).
  ``blockwise``  online softmax over key blocks inside query blocks
                 (``lax.map`` of a ``lax.scan``, each rematerialised): memory
                 ``O(block_q * block_kv)`` per head in the forward and the
                 backward pass; for CPU and very long sequences.
  ``auto``       splash on TPU, dot_product on GPU, and on CPU xla below
                 ``BLOCKWISE_MIN_KEYS`` keys, blockwise above; a backend that
                 cannot express a call's mask (splash with a cache or a dense
                 mask) falls back to xla.

Every backend returns ``(batch, L, heads, head_dim)`` in ``v.dtype``; scores and
softmax are float32 in all of them. A query row with no visible key is never
NaN; its value is backend-specific (it is padding).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from frejax import sharding

IMPLEMENTATIONS = ("auto", "xla", "dot_product", "splash", "blockwise")
# Finite "minus infinity": a fully masked row softmaxes to uniform, never NaN.
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)
# ``auto`` on CPU switches from the reference to the blockwise path at this many keys.
BLOCKWISE_MIN_KEYS = 4096
BLOCK_Q = 512   # blockwise query block
BLOCK_KV = 512  # blockwise key block
SPLASH_BLOCK = 512  # splash kernel block (sequences are padded to a multiple of 128)


def check_implementation(name: str, key: str) -> str:
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"{key} must be one of {IMPLEMENTATIONS}, got {name!r}")
    return name


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=("key_valid", "q_places", "kv_places", "dense"),
                   meta_fields=("causal",))
@dataclasses.dataclass(frozen=True)
class AttentionMask:
    """What each query may see, in the form each backend wants (see the module doc).

    ``key_valid (batch, S)`` bool; ``causal``; ``q_places (batch, L)`` and
    ``kv_places (batch, S)`` int (None: ``arange``); ``dense`` bool broadcastable
    to ``(batch, L, S)``, ANDed with the rest.
    """

    key_valid: jax.Array | None = None
    causal: bool = False
    q_places: jax.Array | None = None
    kv_places: jax.Array | None = None
    dense: jax.Array | None = None

    @property
    def structured(self) -> bool:
        """Padding and plain causality only: what block-sparse kernels can express."""
        return self.dense is None and self.q_places is None and self.kv_places is None

    def as_dense(self, b: int, l: int, s: int) -> jax.Array | None:
        """The ``(batch, L, S)`` bool mask, or None when every key is visible."""
        out = None

        def both(a, c):
            return c if a is None else a & c

        if self.key_valid is not None:
            out = jnp.broadcast_to(self.key_valid.astype(bool)[:, None, :], (b, l, s))
        if self.causal:
            qp = jnp.arange(l)[None] if self.q_places is None else self.q_places
            kp = jnp.arange(s)[None] if self.kv_places is None else self.kv_places
            out = both(out, jnp.broadcast_to(kp[:, None, :] <= qp[:, :, None], (b, l, s)))
        if self.dense is not None:
            out = both(out, jnp.broadcast_to(self.dense.astype(bool), (b, l, s)))
        return out


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: AttentionMask | None = None, *,
              implementation: str = "auto") -> jax.Array:
    """Grouped-query attention.

    Args:
      q: ``(batch, L, heads H, head_dim)``.
      k, v: ``(batch, S, kv_heads K, head_dim)``; ``H % K == 0``, query head
        ``h`` reads key/value head ``h // (H // K)``.
      mask: what each query may see; None = everything.
      implementation: one of ``IMPLEMENTATIONS``.
    Returns:
      ``(batch, L, H, head_dim)`` in ``v.dtype``.
    """
    b, l, h, d = q.shape
    s, kv_heads = k.shape[1], k.shape[2]
    if h % kv_heads:
        raise ValueError(f"attention: heads {h} not divisible by kv_heads {kv_heads}")
    mask = mask or AttentionMask()
    name = resolve(implementation, l, s, structured=mask.structured and l == s)
    if name == "splash":
        return _splash(q, k, v, mask.key_valid, mask.causal)
    if name == "dot_product":
        dense = mask.as_dense(b, l, s)
        out = jax.nn.dot_product_attention(
            q, k, v, mask=None if dense is None else dense[:, None])
        return out.astype(v.dtype)
    if name == "blockwise":
        return _blockwise(q, k, v, mask, BLOCK_Q, BLOCK_KV)
    return _reference(q, k, v, mask.as_dense(b, l, s))


def resolve(implementation: str, length: int, keys: int, *, structured: bool) -> str:
    """The backend ``implementation`` means for this platform and call."""
    name = check_implementation(implementation, "attention implementation")
    if name == "auto":
        platform = jax.default_backend()
        if platform == "tpu":
            name = "splash"
        elif platform == "gpu":
            name = "dot_product"
        else:
            name = "blockwise" if keys >= BLOCKWISE_MIN_KEYS else "xla"
    if name == "splash" and not structured:
        name = "xla" if implementation == "auto" else _unsupported(
            "splash attention needs self-attention without a cache or dense mask")
    return name


def _unsupported(why: str):
    raise ValueError(f"attention: {why}; use implementation 'auto' or 'xla' here")


def _reference(q, k, v, mask) -> jax.Array:
    b, l, h, d = q.shape
    kv_heads = k.shape[2]
    q = q.reshape(b, l, kv_heads, h // kv_heads, d)
    scores = jnp.einsum("blkgd,bskd->bkgls", q, k,
                        preferred_element_type=jnp.float32) * (d ** -0.5)
    if mask is not None:
        scores = jnp.where(mask[:, None, None], scores, MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgls,bskd->blkgd", probs, v)
    return out.reshape(b, l, h, d)


# ----------------------------------------------------------------------------
# Blockwise (online softmax).
# ----------------------------------------------------------------------------


def _pad_to(x: jax.Array, axis: int, size: int, value=0) -> jax.Array:
    pad = size - x.shape[axis]
    if not pad:
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, pad)
    return jnp.pad(x, widths, constant_values=value)


def _blockwise(q, k, v, mask: AttentionMask, block_q: int, block_kv: int) -> jax.Array:
    b, l, h, d = q.shape
    s, kv_heads = k.shape[1], k.shape[2]
    g = h // kv_heads
    bq, bk = min(block_q, l), min(block_kv, s)
    nq, nk = -(-l // bq), -(-s // bk)
    lp, sp = nq * bq, nk * bk
    causal = mask.causal
    valid = (jnp.ones((b, s), bool) if mask.key_valid is None
             else mask.key_valid.astype(bool))
    qp = jnp.broadcast_to(jnp.arange(l)[None] if mask.q_places is None else mask.q_places,
                          (b, l))
    kp = jnp.broadcast_to(jnp.arange(s)[None] if mask.kv_places is None else mask.kv_places,
                          (b, s))
    extra = (None if mask.dense is None
             else jnp.broadcast_to(mask.dense.astype(bool), (b, l, s)))
    # Padded keys are invalid; padded queries are cut off at the end.
    q = _pad_to(q, 1, lp).reshape(b, nq, bq, kv_heads, g, d) * (d ** -0.5)
    k = _pad_to(k, 1, sp).reshape(b, nk, bk, kv_heads, d)
    v = _pad_to(v, 1, sp).reshape(b, nk, bk, kv_heads, d)
    valid = _pad_to(valid, 1, sp, False).reshape(b, nk, bk)
    qp = _pad_to(qp, 1, lp).reshape(b, nq, bq)
    kp = _pad_to(kp, 1, sp).reshape(b, nk, bk)
    if extra is not None:
        extra = _pad_to(_pad_to(extra, 1, lp, False), 2, sp, False).reshape(b, nq, bq, nk, bk)

    @jax.checkpoint
    def kv_step(carry, j, q_blk, qp_blk, extra_blk):
        m, den, acc = carry  # (b, K, g, bq), (b, K, g, bq), (b, K, g, bq, d) float32
        k_blk, v_blk = k[:, j], v[:, j]
        scores = jnp.einsum("bqkgd,bskd->bkgqs", q_blk, k_blk,
                            preferred_element_type=jnp.float32)
        allowed = jnp.broadcast_to(valid[:, j][:, None, :], (b, bq, bk))
        if causal:
            allowed = allowed & (kp[:, j][:, None, :] <= qp_blk[:, :, None])
        if extra_blk is not None:
            allowed = allowed & extra_blk[:, :, j]
        scores = jnp.where(allowed[:, None, None], scores, MASK_VALUE)
        m_new = jnp.maximum(m, scores.max(-1))
        correction = jnp.exp(m - m_new)
        p = jnp.exp(scores - m_new[..., None])
        den = den * correction + p.sum(-1)
        acc = acc * correction[..., None] + jnp.einsum(
            "bkgqs,bskd->bkgqd", p.astype(v_blk.dtype), v_blk,
            preferred_element_type=jnp.float32)
        return (m_new, den, acc), None

    @jax.checkpoint
    def q_block(i):
        q_blk, qp_blk = q[:, i], qp[:, i]
        extra_blk = None if extra is None else extra[:, i]
        init = (jnp.full((b, kv_heads, g, bq), -jnp.inf, jnp.float32),
                jnp.zeros((b, kv_heads, g, bq), jnp.float32),
                jnp.zeros((b, kv_heads, g, bq, d), jnp.float32))
        (m, den, acc), _ = jax.lax.scan(
            lambda c, j: kv_step(c, j, q_blk, qp_blk, extra_blk), init, jnp.arange(nk))
        out = acc / jnp.maximum(den, 1e-30)[..., None]   # (b, K, g, bq, d)
        return out.transpose(0, 3, 1, 2, 4).reshape(b, bq, h, d)

    out = jax.lax.map(q_block, jnp.arange(nq))          # (nq, b, bq, h, d)
    out = out.transpose(1, 0, 2, 3, 4).reshape(b, lp, h, d)[:, :l]
    return out.astype(v.dtype)


# ----------------------------------------------------------------------------
# Splash (Pallas, TPU).
# ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _splash_kernel(length: int, groups: int, causal: bool, block: int, interpret: bool):
    from jax.experimental.pallas.ops.tpu.splash_attention import (  # noqa: PLC0415
        splash_attention_kernel as kernel_lib, splash_attention_mask as mask_lib)

    shape = (length, length)
    one = mask_lib.CausalMask(shape) if causal else mask_lib.FullMask(shape)
    sizes = kernel_lib.BlockSizes(
        block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
        block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    return kernel_lib.make_splash_mqa_single_device(
        mask_lib.MultiHeadMask([one] * groups), block_sizes=sizes, interpret=interpret)


def _splash(q, k, v, key_valid, causal) -> jax.Array:
    b, l, h, d = q.shape
    kv_heads = k.shape[2]
    g = h // kv_heads
    block = min(SPLASH_BLOCK, 128 * -(-l // 128))
    lp = block * -(-l // block)
    interpret = jax.default_backend() != "tpu"
    from jax.experimental.pallas.ops.tpu.splash_attention.splash_attention_kernel import (  # noqa: PLC0415
        SegmentIds)

    kernel = _splash_kernel(lp, g, bool(causal), block, interpret)
    valid = jnp.ones((b, l), bool) if key_valid is None else key_valid.astype(bool)
    # Queries are segment 1 and see keys of segment 1: padding (0) is never read.
    kv_seg = _pad_to(valid.astype(jnp.int32), 1, lp)
    q_seg = jnp.ones_like(kv_seg)
    qs = _pad_to(q * (d ** -0.5), 1, lp).reshape(b, lp, kv_heads, g, d).transpose(0, 2, 3, 1, 4)
    ks = _pad_to(k, 1, lp).transpose(0, 2, 1, 3)   # (b, K, lp, d)
    vs = _pad_to(v, 1, lp).transpose(0, 2, 1, 3)

    def per_device(qs, ks, vs, q_seg, kv_seg):
        def one(qe, ke, ve, qseg, kvseg):  # one example: (K, g, lp, d), (K, lp, d)
            ids = SegmentIds(qseg, kvseg)
            return jax.vmap(lambda a, b_, c: kernel(a, b_, c, segment_ids=ids))(qe, ke, ve)
        return jax.vmap(one)(qs, ks, vs, q_seg, kv_seg)

    out = sharding.batch_local(per_device)(qs, ks, vs, q_seg, kv_seg)  # (b, K, g, lp, d)
    out = out.transpose(0, 3, 1, 2, 4).reshape(b, lp, h, d)[:, :l]
    return out.astype(v.dtype)

