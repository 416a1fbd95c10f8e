"""LLaVA-style projector: vision width -> LLM width through a 2-layer GELU MLP.

With ``newline`` it also holds LLaVA-OneVision's video newline: one learned LLM-width
embedding placed after a video's tokens (trained with the projector).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from frejax import sharding
from frejax.nn.layers import Dense, make_param


class Projector(nnx.Module):
    """``(batch, tokens, vision_width) -> (batch, tokens, llm_width)``; hidden 0 = llm_width."""

    def __init__(self, in_features: int, out_features: int, hidden: int = 0, *, rngs: nnx.Rngs,
                 dtype: Any = jnp.float32, param_dtype: Any = jnp.float32, newline: bool = False):
        hidden = int(hidden) or int(out_features)
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        # The input is the vision width and the output the LLM width: both are "embed".
        self.fc1 = Dense(in_features, hidden, ("embed", "mlp"), **kw)
        self.fc2 = Dense(hidden, out_features, ("mlp", "embed"), **kw)
        self.newline = (make_param(nnx.initializers.normal(out_features ** -0.5), ("embed",),
                                   (out_features,), param_dtype, rngs) if newline else None)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = jax.nn.gelu(self.fc1(x), approximate=False)
        h = sharding.constrain(h, ("batch", "tokens", "mlp"))
        return sharding.constrain(self.fc2(h), ("batch", "tokens", "embed"))
