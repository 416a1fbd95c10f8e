"""Decoder-only LLM in the Llama / Qwen2 layout with a pure functional KV cache.

Token embedding, pre-RMSNorm blocks (grouped-query attention with RoPE, optional
q/k/v bias as in Qwen2; SwiGLU MLP), final RMSNorm, LM head (optionally tied).

Layers are stacked and scanned (``model.llm.scan_layers``, the default: one
layer compiled whatever the depth, params with a leading ``layers`` axis) or
unrolled in Python; both draw the same random init and compute the same thing.

Cache contract. ``init_cache(batch, max_len)`` returns ``{"k", "v": (layers,
batch, max_len, kv_heads, head_dim), "mask": (batch, max_len) bool}``: keys and
values of every layer and which slots hold a valid key. A call with ``cache``
writes its ``L`` new tokens of example ``b`` at
slots ``cache_index[b] + arange(L)`` (each example at its own slot), marks them
valid per ``attn_mask`` and lets the query at slot ``s`` attend to valid slots
``<= s``. Slots are sequence places; RoPE angles come only from ``positions``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from frejax import sharding
from frejax.nn.attention import AttentionMask, attention, check_implementation
from frejax.nn.layers import (Dense, RMSNorm, check_remat, make_param, remat_call, scan_layers,
                           stack_modules)

Cache = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Llama3RopeScaling:
    """Llama-3.1 frequency-dependent RoPE scaling (``rope_type: llama3`` in HF configs).

    Wavelengths longer than ``original_max_position / low_freq_factor`` are
    divided by ``factor``, shorter than ``original_max_position / high_freq_factor``
    kept, and those in between interpolated smoothly.
    """

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position: int = 8192

    def __call__(self, inv_freq: jax.Array) -> jax.Array:
        low_wavelen = self.original_max_position / self.low_freq_factor
        high_wavelen = self.original_max_position / self.high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = jnp.where(wavelen > low_wavelen, inv_freq / self.factor, inv_freq)
        smooth = ((self.original_max_position / wavelen - self.low_freq_factor)
                  / (self.high_freq_factor - self.low_freq_factor))
        smoothed = (1 - smooth) * scaled / self.factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return jnp.where(medium, smoothed, scaled)


def rope_scaling_from_config(cfg: Any) -> Llama3RopeScaling | None:
    """``model.llm.rope_scaling`` -> a scaling, or None for ``type: none`` (plain RoPE)."""
    scaling = cfg.rope_scaling
    kind = scaling.type
    if kind == "none":
        return None
    if kind != "llama3":
        raise ValueError(f"model.llm.rope_scaling.type must be 'none' or 'llama3', got {kind!r}")
    return Llama3RopeScaling(
        factor=float(scaling.factor), low_freq_factor=float(scaling.low_freq_factor),
        high_freq_factor=float(scaling.high_freq_factor),
        original_max_position=int(scaling.original_max_position))


def mrope_axes(head_dim: int, sections: tuple[int, ...] = (),
               interleaved: bool = False) -> tuple[int, ...] | None:
    """Which position axis (time, height, width) drives each of the ``head_dim / 2``
    rotary frequencies under multimodal RoPE; None for plain 1D RoPE (no sections).

    Qwen2.5-VL gives contiguous blocks of frequencies to t, h, w (``sections`` like
    16, 24, 24); Qwen3-VL interleaves them (t, h, w, t, h, w, ... while h and w last,
    then t), so every axis sees high and low frequencies.
    """
    if not sections:
        return None
    half = head_dim // 2
    if len(sections) != 3 or sum(sections) != half:
        raise ValueError(f"model.llm.mrope_sections {tuple(sections)} must be three sizes that sum"
                         f" to head_dim / 2 = {half}")
    if not interleaved:
        return tuple(axis for axis, n in enumerate(sections) for _ in range(n))
    axes = [0] * half
    for axis in (1, 2):
        for j in range(axis, 3 * sections[axis], 3):
            axes[j] = axis
    return tuple(axes)


def rope_angles(positions: jax.Array, head_dim: int, theta: float,
                scaling: Llama3RopeScaling | None = None,
                axes: tuple[int, ...] | None = None) -> tuple[jax.Array, jax.Array]:
    """Positions -> cos, sin ``(batch, length, 1, head_dim/2)`` float32.

    ``positions``: ``(batch, length)`` int, or ``(batch, length, 3)`` (time, height,
    width) with ``axes`` from ``mrope_axes`` naming the axis of each frequency. A text
    token has three equal coordinates, so it rotates as under plain RoPE.
    """
    inv_freq = theta ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    if scaling is not None:
        inv_freq = scaling(inv_freq)
    positions = positions.astype(jnp.float32)
    if positions.ndim == 3:
        if axes is None:
            raise ValueError("llm: (batch, length, 3) positions need model.llm.mrope_sections")
        positions = jnp.take(positions, jnp.asarray(axes), axis=-1)   # (B, L, head_dim/2)
    else:
        positions = positions[..., None]
    angles = positions * inv_freq
    return jnp.cos(angles)[:, :, None], jnp.sin(angles)[:, :, None]


def rotate(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate-half rotary embedding (HF Llama / Qwen2) of ``x (..., head_dim)`` by angles
    whose cos and sin ``(..., head_dim/2)`` broadcast against ``x``'s halves."""
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


def apply_rope(x: jax.Array, positions: jax.Array, theta: float,
               scaling: Llama3RopeScaling | None = None,
               axes: tuple[int, ...] | None = None) -> jax.Array:
    """Rotary embedding of ``x (batch, length, heads, head_dim)`` at ``positions``
    (``(batch, length)``, or ``(batch, length, 3)`` with ``axes``: see ``rope_angles``)."""
    return rotate(x, *rope_angles(positions, x.shape[-1], theta, scaling, axes))


class Attention(nnx.Module):
    """Grouped-query causal self-attention with RoPE."""

    def __init__(self, width: int, heads: int, kv_heads: int, head_dim: int, *, qkv_bias: bool,
                 rope_theta: float, dtype: Any, param_dtype: Any, rngs: nnx.Rngs,
                 rope_scaling: Llama3RopeScaling | None = None, implementation: str = "auto",
                 rope_axes: tuple[int, ...] | None = None, qk_norm: bool = False,
                 norm_eps: float = 1e-6):
        if heads % kv_heads:
            raise ValueError(f"model.llm.heads {heads} not divisible by model.llm.kv_heads {kv_heads}")
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.rope_theta = float(rope_theta)
        self.rope_scaling = rope_scaling
        self.rope_axes = rope_axes
        self.head_dim = head_dim
        self.implementation = implementation
        self.query = Dense(width, (heads, head_dim), ("embed", "heads", "head_dim"),
                           use_bias=qkv_bias, **kw)
        self.key = Dense(width, (kv_heads, head_dim), ("embed", "kv_heads", "head_dim"),
                         use_bias=qkv_bias, **kw)
        self.value = Dense(width, (kv_heads, head_dim), ("embed", "kv_heads", "head_dim"),
                           use_bias=qkv_bias, **kw)
        self.out = Dense((heads, head_dim), width, ("heads", "head_dim", "embed"),
                         use_bias=False, **kw)
        # Qwen3: RMSNorm over each head's query and key before the rotation.
        self.query_norm = RMSNorm(head_dim, eps=norm_eps, **kw) if qk_norm else None
        self.key_norm = RMSNorm(head_dim, eps=norm_eps, **kw) if qk_norm else None

    def __call__(self, x: jax.Array, positions: jax.Array, mask: AttentionMask,
                 kv_cache: dict[str, jax.Array] | None = None,
                 slots: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array] | None]:
        """``x (B, L, E)``; ``mask`` over the S keys; with a cache, ``slots (B, L)``."""
        cos, sin = rope_angles(positions, self.head_dim, self.rope_theta,
                               self.rope_scaling, self.rope_axes)
        q, k = self.query(x), self.key(x)
        if self.query_norm is not None:
            q, k = self.query_norm(q), self.key_norm(k)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        v = self.value(x)
        q = sharding.constrain(q, ("batch", "length", "heads", "head_dim"))
        kv_names = ("batch", "length", "kv_heads", "head_dim")
        if kv_cache is not None:
            rows = jnp.arange(x.shape[0])[:, None]
            k = kv_cache["k"].at[rows, slots].set(k.astype(kv_cache["k"].dtype), mode="drop")
            v = kv_cache["v"].at[rows, slots].set(v.astype(kv_cache["v"].dtype), mode="drop")
            k, v = sharding.constrain(k, kv_names), sharding.constrain(v, kv_names)
            kv_cache = {"k": k, "v": v}
        else:
            k, v = sharding.constrain(k, kv_names), sharding.constrain(v, kv_names)
        out = attention(q, k.astype(q.dtype), v.astype(q.dtype), mask,
                        implementation=self.implementation)
        return self.out(out), kv_cache


class SwiGLU(nnx.Module):
    def __init__(self, width: int, mlp_dim: int, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs, use_bias=False)
        self.gate = Dense(width, mlp_dim, ("embed", "mlp"), **kw)
        self.up = Dense(width, mlp_dim, ("embed", "mlp"), **kw)
        self.down = Dense(mlp_dim, width, ("mlp", "embed"), **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = jax.nn.silu(self.gate(x)) * self.up(x)
        return self.down(sharding.constrain(h, ("batch", "length", "mlp")))


class DecoderLayer(nnx.Module):
    def __init__(self, width: int, heads: int, kv_heads: int, head_dim: int, mlp_dim: int, *,
                 qkv_bias: bool, rope_theta: float, norm_eps: float, dtype: Any,
                 param_dtype: Any, rngs: nnx.Rngs,
                 rope_scaling: Llama3RopeScaling | None = None, implementation: str = "auto",
                 rope_axes: tuple[int, ...] | None = None, qk_norm: bool = False):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.attn_norm = RMSNorm(width, eps=norm_eps, **kw)
        self.attn = Attention(width, heads, kv_heads, head_dim, qkv_bias=qkv_bias,
                              rope_theta=rope_theta, rope_scaling=rope_scaling,
                              implementation=implementation, rope_axes=rope_axes,
                              qk_norm=qk_norm, norm_eps=norm_eps, **kw)
        self.mlp_norm = RMSNorm(width, eps=norm_eps, **kw)
        self.mlp = SwiGLU(width, mlp_dim, **kw)

    def __call__(self, x, positions, mask, kv_cache=None, slots=None):
        h, kv_cache = self.attn(self.attn_norm(x), positions, mask, kv_cache, slots)
        x = x + h
        x = x + self.mlp(self.mlp_norm(x))
        return sharding.constrain(x, ("batch", "length", "activation_embed")), kv_cache


class LLM(nnx.Module):
    """Decoder-only LM.

    Config: the whole ``model.llm`` section (``frejax/config_lib.py`` holds every
    key and default; kv_heads 0 = heads, head_dim 0 = width / heads).
    ``vocab_size`` passed here overrides the config.
    """

    def __init__(self, cfg: Any, *, rngs: nnx.Rngs, vocab_size: int | None = None,
                 dtype: Any = jnp.float32, param_dtype: Any = jnp.float32):
        self.vocab_size = int(vocab_size or cfg.vocab_size)
        self.width = int(cfg.width)
        self.heads = int(cfg.heads)
        self.kv_heads = int(cfg.kv_heads or cfg.heads)  # 0: one per query head
        self.head_dim = int(cfg.head_dim or self.width // self.heads)  # 0: width / heads
        self.tie_embeddings = bool(cfg.tie_embeddings)
        self.depth = int(cfg.depth)
        self.remat = check_remat(str(cfg.remat), "model.llm.remat")
        self.scan_layers = bool(cfg.scan_layers)
        self.dtype = dtype
        if self.head_dim % 2:
            raise ValueError(f"model.llm.head_dim must be even for RoPE, got {self.head_dim}")
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.embedding = make_param(nnx.initializers.normal(0.02), ("vocab", "embed"),
                                    (self.vocab_size, self.width), param_dtype, rngs)
        implementation = check_implementation(str(cfg.attention), "model.llm.attention")
        # Multimodal RoPE (Qwen2.5-VL, Qwen3-VL): positions become (time, height, width).
        self.rope_axes = mrope_axes(self.head_dim, tuple(cfg.get("mrope_sections", ())),
                                    bool(cfg.get("mrope_interleaved", False)))
        layers = [DecoderLayer(self.width, self.heads, self.kv_heads, self.head_dim,
                               int(cfg.mlp_dim), qkv_bias=bool(cfg.qkv_bias),
                               rope_theta=float(cfg.rope_theta), norm_eps=float(cfg.norm_eps),
                               rope_scaling=rope_scaling_from_config(cfg),
                               implementation=implementation, rope_axes=self.rope_axes,
                               qk_norm=bool(cfg.get("qk_norm", False)), **kw)
                  for _ in range(self.depth)]
        self.layers = stack_modules(layers) if self.scan_layers else nnx.List(layers)
        self.final_norm = RMSNorm(self.width, eps=float(cfg.norm_eps), **kw)
        self.lm_head = (None if self.tie_embeddings else
                        Dense(self.width, self.vocab_size, ("embed", "vocab"),
                              use_bias=False, **kw))

    def embed(self, tokens: jax.Array) -> jax.Array:
        """``(B, L)`` int -> ``(B, L, E)`` in the compute dtype."""
        x = jnp.take(self.embedding[...], tokens, axis=0).astype(self.dtype)
        return sharding.constrain(x, ("batch", "length", "embed"))

    def logits(self, hidden: jax.Array) -> jax.Array:
        """Final-normed hidden ``(B, L, E)`` -> float32 logits ``(B, L, V)``."""
        # float32 straight out of the matmul: bf16 logits would round the loss.
        if self.tie_embeddings:
            out = jnp.einsum("ble,ve->blv", hidden, self.embedding[...].astype(self.dtype),
                             preferred_element_type=jnp.float32)
        else:
            out = jnp.einsum("ble,ev->blv", hidden.astype(self.dtype),
                             self.lm_head.kernel[...].astype(self.dtype),
                             preferred_element_type=jnp.float32)
        return sharding.constrain(out, ("batch", "length", "vocab"))

    def init_cache(self, batch: int, max_len: int, dtype: Any = None) -> Cache:
        """Empty cache: k/v ``(layers, batch, max_len, kv_heads, head_dim)``, slot mask."""
        dtype = dtype or self.dtype
        shape = (self.depth, batch, max_len, self.kv_heads, self.head_dim)
        return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype),
                "mask": jnp.zeros((batch, max_len), bool)}

    def __call__(self, embeds: jax.Array, positions: jax.Array, attn_mask: jax.Array | None = None,
                 cache: Cache | None = None, cache_index: jax.Array | None = None, *,
                 return_hidden: bool = False,
                 layer_inputs: jax.Array | None = None) -> tuple[jax.Array, Cache | None]:
        """Runs the decoder.

        Args:
          embeds: ``(B, L, E)`` input embeddings.
          positions: ``(B, L)`` int32 RoPE positions; ``(B, L, 3)`` (time, height,
            width) under multimodal RoPE (``model.llm.mrope_sections``).
          attn_mask: bool. ``(B, L)`` marks valid tokens (keys); combined with a
            causal mask over sequence order. ``(B, L, S)`` is used as given
            (no cache only). None = all valid.
          cache: from ``init_cache``; None for a plain full-sequence pass.
          cache_index: ``(B,)`` int32 slot of each example's first new token.
          return_hidden: return final-normed hidden states instead of logits.
          layer_inputs: ``(k, B, L, E)`` added to the hidden states after each of the
            first ``k`` layers (Qwen3-VL's DeepStack: visual features of earlier
            vision layers, zero off the visual places).
        Returns:
          ``(logits (B, L, V) float32 or hidden (B, L, E), new cache or None)``.
        """
        b, l, _ = embeds.shape
        x = sharding.constrain(embeds.astype(self.dtype),
                               ("batch", "length", "activation_embed"))
        if attn_mask is None:
            attn_mask = jnp.ones((b, l), bool)
        attn_mask = attn_mask.astype(bool)
        if cache is None:
            mask = (AttentionMask(key_valid=attn_mask, causal=True) if attn_mask.ndim == 2
                    else AttentionMask(dense=attn_mask))
            x, _ = self._run_layers(x, positions, mask, remat=self.remat,
                                    layer_inputs=layer_inputs)
            new_cache = None
        else:
            if attn_mask.ndim != 2:
                raise ValueError("llm: with a cache, attn_mask must be (batch, length)")
            if cache_index is None:
                cache_index = jnp.zeros((b,), jnp.int32)
            max_len = cache["mask"].shape[1]
            slots = cache_index.astype(jnp.int32)[:, None] + jnp.arange(l, dtype=jnp.int32)
            rows = jnp.arange(b)[:, None]
            key_valid = cache["mask"].at[rows, slots].set(attn_mask, mode="drop")
            mask = AttentionMask(key_valid=key_valid, causal=True, q_places=slots,
                                 kv_places=jnp.arange(max_len, dtype=jnp.int32)[None])
            x, (k, v) = self._run_layers(x, positions, mask, (cache["k"], cache["v"]), slots,
                                         layer_inputs=layer_inputs)
            new_cache = {"k": k, "v": v, "mask": key_valid}
        hidden = self.final_norm(x)
        return (hidden if return_hidden else self.logits(hidden)), new_cache

    def _run_layers(self, x: jax.Array, positions: jax.Array, mask: AttentionMask,
                    kv: tuple[jax.Array, jax.Array] | None = None,
                    slots: jax.Array | None = None, *, remat: str = "none",
                    layer_inputs: jax.Array | None = None):
        """Every decoder layer over ``x``; with ``kv`` (stacked k, v) the updated cache too;
        ``layer_inputs`` added after the first layers."""
        extra = 0 if layer_inputs is None else layer_inputs.shape[0]

        def add(x, i):
            if not extra:
                return x
            piece = layer_inputs[jnp.minimum(i, extra - 1)].astype(x.dtype)
            return x + jnp.where(i < extra, piece, jnp.zeros((), x.dtype))

        def step(layer, x, inputs):
            kv_layer, i = inputs
            cache = None if kv_layer is None else {"k": kv_layer[0], "v": kv_layer[1]}
            x, cache = layer(x, positions, mask, cache, slots)
            return add(x, i), (None if cache is None else (cache["k"], cache["v"]))

        index = jnp.arange(self.depth)
        if self.scan_layers:
            return scan_layers(self.layers, step, x, (kv, index), remat=remat)
        if kv is None:
            for i, layer in enumerate(self.layers):
                x = add(remat_call(layer, x, positions, mask, policy=remat)[0], i)
            return x, None
        new_kv = []
        for i, layer in enumerate(self.layers):
            x, out = step(layer, x, ((kv[0][i], kv[1][i]), i))
            new_kv.append(out)
        return x, (jnp.stack([k for k, _ in new_kv]), jnp.stack([v for _, v in new_kv]))
