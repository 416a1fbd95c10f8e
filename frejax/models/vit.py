"""Vision encoder: a SigLIP-layout ViT applied to every frame of a video.

Patch embedding (a linear map on flattened patches, the same as a stride-``p``
convolution), a learned position embedding with no class token, pre-LN blocks
(LayerNorm -> MHA -> LayerNorm -> GELU MLP) and a final LayerNorm.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from frejax import sharding
from frejax.layers import (Dense, LayerNorm, dot_product_attention,
                                  make_param, remat_call)


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
    """``(n, H, W, C)`` -> ``(n, (H/p)*(W/p), p*p*C)``, patches in row-major grid order."""
    n, hh, ww, c = images.shape
    p = patch_size
    x = images.reshape(n, hh // p, p, ww // p, p, c)
    x = x.transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, (hh // p) * (ww // p), p * p * c)


def normalize_pixels(frames: jax.Array) -> jax.Array:
    """uint8 in [0, 255] (or float in [0, 1]) -> float32 in [-1, 1]."""
    x = frames.astype(jnp.float32)
    if jnp.issubdtype(frames.dtype, jnp.integer):
        x = x / 255.0
    return x * 2.0 - 1.0


class MLP(nnx.Module):
    """``embed -> mlp -> GELU -> embed``."""

    def __init__(self, width: int, mlp_dim: int, *, approximate_gelu: bool = True,
                 dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.approximate_gelu = approximate_gelu
        self.fc1 = Dense(width, mlp_dim, ("embed", "mlp"), **kw)
        self.fc2 = Dense(mlp_dim, width, ("mlp", "embed"), **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = jax.nn.gelu(self.fc1(x), approximate=self.approximate_gelu)
        h = sharding.constrain(h, ("batch", "tokens", "mlp"))
        return self.fc2(h)


class SelfAttention(nnx.Module):
    """Bidirectional multi-head self-attention with biases (ViT)."""

    def __init__(self, width: int, heads: int, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
        if width % heads:
            raise ValueError(f"model.vision.width {width} not divisible by model.vision.heads {heads}")
        head_dim = width // heads
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        qkv_names = ("embed", "heads", "head_dim")
        self.query = Dense(width, (heads, head_dim), qkv_names, **kw)
        self.key = Dense(width, (heads, head_dim), qkv_names, **kw)
        self.value = Dense(width, (heads, head_dim), qkv_names, **kw)
        self.out = Dense((heads, head_dim), width, ("heads", "head_dim", "embed"), **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        names = ("batch", "tokens", "heads", "head_dim")
        q = sharding.constrain(self.query(x), names)
        k = sharding.constrain(self.key(x), names)
        v = sharding.constrain(self.value(x), names)
        return self.out(dot_product_attention(q, k, v))


class EncoderBlock(nnx.Module):
    def __init__(self, width: int, heads: int, mlp_dim: int, *, dtype: Any, param_dtype: Any,
                 rngs: nnx.Rngs, norm_eps: float = 1e-6):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm1 = LayerNorm(width, eps=norm_eps, **kw)
        self.attn = SelfAttention(width, heads, **kw)
        self.norm2 = LayerNorm(width, eps=norm_eps, **kw)
        self.mlp = MLP(width, mlp_dim, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return sharding.constrain(x, ("batch", "tokens", "embed"))


class ViT(nnx.Module):
    """Per-frame ViT encoder.

    Config: the whole ``model.vision`` section (``frejax/config_lib.py`` holds
    every key and default).
    """

    def __init__(self, cfg: Any, *, rngs: nnx.Rngs, dtype: Any = jnp.float32,
                 param_dtype: Any = jnp.float32):
        self.image_size = int(cfg.image_size)
        self.patch_size = int(cfg.patch_size)
        self.width = int(cfg.width)
        self.remat = bool(cfg.remat)
        self.encode_chunk = int(cfg.encode_chunk)
        self.dtype = dtype
        if self.image_size % self.patch_size:
            raise ValueError(f"model.vision.image_size {self.image_size} not divisible by"
                             f" model.vision.patch_size {self.patch_size}")
        if self.encode_chunk < 0:
            raise ValueError(f"model.vision.encode_chunk must be >= 0, got {self.encode_chunk}")
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        side = self.image_size // self.patch_size
        self.patch_embed = Dense(self.patch_size ** 2 * 3, self.width, ("patch", "embed"), **kw)
        self.pos_embed = make_param(nnx.initializers.normal(self.width ** -0.5),
                                    ("tokens", "embed"), (side * side, self.width),
                                    param_dtype, rngs)
        norm_eps = float(cfg.norm_eps)
        self.blocks = nnx.List([
            EncoderBlock(self.width, int(cfg.heads), int(cfg.mlp_dim), norm_eps=norm_eps, **kw)
            for _ in range(int(cfg.depth))])
        self.final_norm = LayerNorm(self.width, eps=norm_eps, **kw)

    @property
    def grid(self) -> tuple[int, int]:
        """``(h, w)`` patch grid of one frame."""
        side = self.image_size // self.patch_size
        return (side, side)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def encode_images(self, images: jax.Array) -> jax.Array:
        """``(n, H, W, 3)`` pixels -> ``(n, N, D)`` latents."""
        x = patchify(normalize_pixels(images), self.patch_size)
        x = self.patch_embed(x) + self.pos_embed[...].astype(self.dtype)
        x = sharding.constrain(x, ("batch", "tokens", "embed"))
        for block in self.blocks:
            x = remat_call(block, x) if self.remat else block(x)
        return self.final_norm(x)

    def __call__(self, frames: jax.Array) -> jax.Array:
        """``(batch, frames T, H, W, 3)`` -> latents ``(batch, T, N, D)``."""
        if frames.ndim != 5 or frames.shape[2:] != (self.image_size, self.image_size, 3):
            raise ValueError(f"vit: frames must be (batch, T, {self.image_size},"
                             f" {self.image_size}, 3), got {tuple(frames.shape)}")
        b, t = frames.shape[:2]
        chunk = self.encode_chunk
        if not chunk or chunk >= t:
            latents = self.encode_images(frames.reshape(b * t, *frames.shape[2:]))
            latents = latents.reshape(b, t, *latents.shape[1:])
        else:
            latents = self._encode_chunked(frames, chunk)
        return sharding.constrain(latents, ("batch", "frames", "tokens", "embed"))

    def _encode_chunked(self, frames: jax.Array, chunk: int) -> jax.Array:
        """Encodes ``chunk`` frames of every video at a time (``lax.map``) to bound memory.

        Chunks run along time, so each keeps the whole (sharded) batch.
        """
        b, t = frames.shape[:2]
        num_chunks = -(-t // chunk)
        pad = num_chunks * chunk - t
        frames = jnp.pad(frames, ((0, 0), (0, pad)) + ((0, 0),) * 3)
        chunks = frames.reshape(b, num_chunks, chunk, *frames.shape[2:]).swapaxes(0, 1)
        graphdef, state = nnx.split(self)

        def encode(clip: jax.Array) -> jax.Array:  # (b, chunk, H, W, 3) -> (b, chunk, N, D)
            model = nnx.merge(graphdef, state)
            out = model.encode_images(clip.reshape(b * chunk, *clip.shape[2:]))
            return out.reshape(b, chunk, *out.shape[1:])

        latents = jax.lax.map(encode, chunks)  # (num_chunks, b, chunk, N, D)
        latents = latents.swapaxes(0, 1).reshape(b, num_chunks * chunk, *latents.shape[3:])
        return latents[:, :t]
