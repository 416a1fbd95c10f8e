"""LoRA adapters for the LLM's attention and MLP projections.

``LoRADense`` is a ``Dense`` (same ``kernel`` / ``bias`` params at the same
paths, so pretrained imports and checkpoints line up) plus a low-rank update

    y = x W + b + (alpha / rank) * (x A) B,   A: in_shape + (rank,),  B: (rank,) + out_shape

with ``B`` initialised to zero, so an adapted model starts out computing exactly
what the base model computes. The adapters are the params named ``lora_a`` /
``lora_b``: the optimiser's ``lora`` group (``optim.freeze``, ``optim.lr_multipliers``).
"""

from __future__ import annotations

import jax
from flax import nnx

from frejax.nn.layers import Dense, fan_in_init, make_param, stack_modules, unstack_module

# The projections adapted in every decoder layer.
ATTENTION_TARGETS = ("query", "key", "value", "out")
MLP_TARGETS = ("gate", "up", "down")


class LoRADense(Dense):
    """A ``Dense`` that takes over ``base``'s params and adds rank-``rank`` adapters."""

    def __init__(self, base: Dense, rank: int, alpha: float, *, rngs: nnx.Rngs):
        if rank < 1:
            raise ValueError(f"model.llm.lora.rank must be >= 1 to adapt a layer, got {rank}")
        self.num_in, self.dtype = base.num_in, base.dtype
        self.kernel, self.bias = base.kernel, base.bias
        shape = tuple(base.kernel.shape)
        names = tuple(base.kernel.get_metadata().get("out_sharding") or (None,) * len(shape))
        in_shape, out_shape = shape[:self.num_in], shape[self.num_in:]
        in_names, out_names = names[:self.num_in], names[self.num_in:]
        param_dtype = base.kernel.dtype
        self.scale = float(alpha) / rank
        # The rank axis is tiny: replicated (logical name None).
        self.lora_a = make_param(fan_in_init(self.num_in, 1), in_names + (None,),
                                 in_shape + (rank,), param_dtype, rngs)
        self.lora_b = make_param(nnx.initializers.zeros_init(), (None,) + out_names,
                                 (rank,) + out_shape, param_dtype, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = super().__call__(x)
        x = x.astype(self.dtype)
        contract = tuple(range(x.ndim - self.num_in, x.ndim))
        h = jax.lax.dot_general(x, self.lora_a[...].astype(self.dtype),
                                ((contract, tuple(range(self.num_in))), ((), ())))
        delta = jax.lax.dot_general(h, self.lora_b[...].astype(self.dtype),
                                    (((h.ndim - 1,), (0,)), ((), ())))
        return y + self.scale * delta


def apply_lora(llm: nnx.Module, rank: int, alpha: float, *, rngs: nnx.Rngs) -> nnx.Module:
    """Replaces the attention and MLP projections of every decoder layer with ``LoRADense``.

    Works in place on an ``LLM`` (also under ``nnx.eval_shape``); returns it.
    Stacked layers are adapted one by one and restacked: the same adapters,
    drawn in the same order, as on unrolled layers.
    """
    layers = unstack_module(llm.layers) if llm.scan_layers else llm.layers
    for layer in layers:
        for module, targets in ((layer.attn, ATTENTION_TARGETS), (layer.mlp, MLP_TARGETS)):
            for name in targets:
                base = getattr(module, name)
                if not isinstance(base, LoRADense):
                    setattr(module, name, LoRADense(base, rank, alpha, rngs=rngs))
    if llm.scan_layers:
        llm.layers = stack_modules(layers)
    return llm
