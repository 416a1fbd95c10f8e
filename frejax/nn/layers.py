"""Building blocks of every module with parameters: the encoder, projector, LLM and absorber.

Every parameter is created through ``sharding.param`` so it carries logical axis
names (``out_sharding`` metadata); the mesh mapping lives in the config.
Attention is ``frejax.nn.attention``; stacked (scanned) layers and remat policies are here.
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


# Rematerialisation policies (``model.*.remat``): what the backward pass may keep
# of a layer's forward pass instead of recomputing it.
REMAT_POLICIES = {
    "none": None,                # keep every activation (no jax.checkpoint)
    "full": "nothing_saveable",  # keep only the layer's input
    "save_dots": "dots_saveable",  # keep matmul outputs, recompute the rest
    "save_dots_no_batch": "dots_with_no_batch_dims_saveable",  # matmuls without batch dims
}


def check_remat(name: str, key: str) -> str:
    if name not in REMAT_POLICIES:
        raise ValueError(f"{key} must be one of {tuple(REMAT_POLICIES)}, got {name!r}")
    return name


def rematerialize(fn: Any, policy: str) -> Any:
    """``fn`` under ``jax.checkpoint`` with the named policy (``"none"``: ``fn`` itself)."""
    check_remat(policy, "remat policy")
    if policy == "none":
        return fn
    return jax.checkpoint(fn, policy=getattr(jax.checkpoint_policies, REMAT_POLICIES[policy]))


def remat_call(module: nnx.Module, *args: Any, policy: str = "full") -> Any:
    """``module(*args)`` under ``rematerialize``: pure functional (split -> checkpoint -> merge).

    Nests inside ``lax.map``/``scan``.
    """
    if policy == "none":
        return module(*args)
    graphdef, state = nnx.split(module)

    def run(state: Any, *args: Any) -> Any:
        return nnx.merge(graphdef, state)(*args)

    return rematerialize(run, policy)(state, *args)


# ----------------------------------------------------------------------------
# Stacked layers: one module whose params carry a leading ``layers`` axis.
# ----------------------------------------------------------------------------


def _rename_axes(state: Any, rename: Any) -> None:
    """Rewrites every param's logical axis names (``out_sharding``) in place."""
    for v in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, nnx.Variable)):
        names = v.get_metadata().get("out_sharding")
        if names is not None:
            v.set_metadata(out_sharding=rename(tuple(names)))


def stack_modules(modules: Sequence[nnx.Module]) -> nnx.Module:
    """Identical modules -> one module whose every array has a leading ``layers`` axis.

    The layers are built one by one first, so a stacked model draws exactly the
    random init of the unrolled one (switching ``scan_layers`` changes no number).
    """
    graphdef, _ = nnx.split(modules[0])
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *(nnx.state(m) for m in modules))
    _rename_axes(stacked, lambda names: ("layers",) + names)
    return nnx.merge(graphdef, stacked)


def _take_layer(x: Any, i: int) -> Any:
    if isinstance(x, jax.ShapeDtypeStruct):  # an abstract module (nnx.eval_shape)
        return jax.ShapeDtypeStruct(x.shape[1:], x.dtype)
    return x[i]


def unstack_module(module: nnx.Module) -> list[nnx.Module]:
    """The inverse of ``stack_modules``."""
    graphdef, state = nnx.split(module)
    depth = jax.tree.leaves(state)[0].shape[0]
    out = []
    for i in range(depth):
        layer = jax.tree.map(lambda x, i=i: _take_layer(x, i), state)
        _rename_axes(layer, lambda names: names[1:])
        out.append(nnx.merge(graphdef, layer))
    return out


def scan_layers(layers: nnx.Module, step: Any, carry: Any, xs: Any = None, *,
                remat: str = "none") -> tuple[Any, Any]:
    """``lax.scan`` of ``step(layer, carry, x) -> (carry, y)`` over stacked ``layers``.

    ``xs`` (or None) carries per-layer inputs with a leading ``layers`` axis, such
    as a KV cache; each layer's body is rematerialised by the named policy. One
    layer is traced and compiled, whatever the depth.
    """
    graphdef, state = nnx.split(layers)

    def body(carry: Any, inputs: Any) -> tuple[Any, Any]:
        layer_state, x = inputs
        return step(nnx.merge(graphdef, layer_state), carry, x)

    return jax.lax.scan(rematerialize(body, remat), carry, (state, xs))

