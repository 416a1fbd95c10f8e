"""Building blocks of every module with parameters: the encoder, projector, LLM and absorber.

Every parameter is created through ``sharding.param`` so it carries logical axis
names (``out_sharding`` metadata); the mesh mapping lives in the config.
Attention math is a pure function so tests can check it against plain ``jnp``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from frejax import sharding

Initializer = Any
Shape = tuple[int, ...]

# Finite "minus infinity": a fully masked row softmaxes to uniform, never NaN.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def make_param(init: Initializer, names: Sequence[str | None], shape: Shape,
               param_dtype: Any, rngs: nnx.Rngs) -> nnx.Param:
    """An ``nnx.Param`` of ``shape`` whose metadata names its logical axes."""
    if len(names) != len(shape):
        raise ValueError(f"make_param: {len(names)} names {tuple(names)} for shape {shape}")
    return nnx.Param(sharding.param(init, names)(rngs.params(), shape, param_dtype))


def fan_in_init(num_in_axes: int, num_out_axes: int, scale: float = 1.0) -> Initializer:
    """LeCun-normal over a kernel whose first ``num_in_axes`` axes are contracted."""
    return nnx.initializers.variance_scaling(
        scale, "fan_in", "truncated_normal",
        in_axis=tuple(range(num_in_axes)),
        out_axis=tuple(range(num_in_axes, num_in_axes + num_out_axes)))


class Dense(nnx.Module):
    """``y = x W + b`` contracting the trailing ``in_shape`` axes of ``x`` into ``out_shape``.

    ``names`` gives the logical axes of the kernel ``in_shape + out_shape``; the
    bias takes the output names. Multi-axis shapes let attention projections keep
    ``(heads, head_dim)`` as separate, separately shardable axes.
    """

    def __init__(self, in_shape: int | Shape, out_shape: int | Shape,
                 names: Sequence[str | None], *, use_bias: bool = True,
                 kernel_init: Initializer | None = None, dtype: Any = jnp.float32,
                 param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
        in_shape = (in_shape,) if isinstance(in_shape, int) else tuple(in_shape)
        out_shape = (out_shape,) if isinstance(out_shape, int) else tuple(out_shape)
        self.num_in = len(in_shape)
        self.dtype = dtype
        init = kernel_init or fan_in_init(len(in_shape), len(out_shape))
        self.kernel = make_param(init, names, in_shape + out_shape, param_dtype, rngs)
        self.bias = (make_param(nnx.initializers.zeros_init(), names[len(in_shape):], out_shape,
                                param_dtype, rngs) if use_bias else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(self.dtype)
        kernel = self.kernel[...].astype(self.dtype)
        contract = tuple(range(x.ndim - self.num_in, x.ndim))
        y = jax.lax.dot_general(x, kernel, ((contract, tuple(range(self.num_in))), ((), ())))
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class LayerNorm(nnx.Module):
    """LayerNorm over the last axis; statistics in float32."""

    def __init__(self, features: int, *, eps: float = 1e-6, dtype: Any = jnp.float32,
                 param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self.eps = eps
        self.dtype = dtype
        self.scale = make_param(nnx.initializers.ones_init(), ("embed",), (features,),
                                param_dtype, rngs)
        self.bias = make_param(nnx.initializers.zeros_init(), ("embed",), (features,),
                               param_dtype, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(jnp.float32)
        mean = x.mean(-1, keepdims=True)
        var = jnp.square(x - mean).mean(-1, keepdims=True)
        y = (x - mean) * jax.lax.rsqrt(var + self.eps)
        y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
        return y.astype(self.dtype)


class RMSNorm(nnx.Module):
    """RMSNorm over the last axis (Llama/Qwen2); statistics in float32."""

    def __init__(self, features: int, *, eps: float = 1e-6, dtype: Any = jnp.float32,
                 param_dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self.eps = eps
        self.dtype = dtype
        self.scale = make_param(nnx.initializers.ones_init(), ("embed",), (features,),
                                param_dtype, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(jnp.float32)
        y = x * jax.lax.rsqrt(jnp.square(x).mean(-1, keepdims=True) + self.eps)
        return (y * self.scale[...].astype(jnp.float32)).astype(self.dtype)


def remat_call(module: nnx.Module, *args: Any) -> Any:
    """``module(*args)`` under ``jax.checkpoint``: activations are recomputed in the backward pass.

    Pure functional (split -> checkpoint -> merge), so it nests inside ``lax.map``/``scan``.
    """
    graphdef, state = nnx.split(module)

    @jax.checkpoint
    def run(state: Any, *args: Any) -> Any:
        return nnx.merge(graphdef, state)(*args)

    return run(state, *args)


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                          mask: jax.Array | None = None) -> jax.Array:
    """Grouped-query attention with a float32 softmax.

    Args:
      q: ``(batch, length L, heads H, head_dim)``.
      k, v: ``(batch, keys S, kv_heads K, head_dim)``; ``H % K == 0``, query head
        ``h`` reads key/value head ``h // (H // K)``.
      mask: bool, broadcastable to ``(batch, L, S)``; True where a query may
        attend to a key.
    Returns:
      ``(batch, L, H, head_dim)`` in ``v.dtype``.
    """
    b, l, h, d = q.shape
    kv_heads = k.shape[2]
    if h % kv_heads:
        raise ValueError(f"attention: heads {h} not divisible by kv_heads {kv_heads}")
    q = q.reshape(b, l, kv_heads, h // kv_heads, d)
    scores = jnp.einsum("blkgd,bskd->bkgls", q, k,
                        preferred_element_type=jnp.float32) * (d ** -0.5)
    if mask is not None:
        mask = jnp.broadcast_to(mask, (b, l, k.shape[1]))
        scores = jnp.where(mask[:, None, None], scores, MASK_VALUE)
    probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgls,bskd->blkgd", probs, v)
    return out.reshape(b, l, h, d)
