"""Vision encoder: a pre-LN ViT applied to every frame of a video (SigLIP or DINOv2 layout).

Patch embedding (a linear map on flattened patches, the same as a stride-``p``
convolution), a learned position embedding, pre-LN blocks (LayerNorm -> MHA ->
LayerNorm -> GELU MLP) and a final LayerNorm. The SigLIP layout has no class
token; the DINOv2 layout adds a class token (with its own position), optional
register tokens (no position), LayerScale on both residual branches, exact GELU
and ImageNet pixel statistics. Only the patch tokens leave the encoder: the
compressors work on the ``(h, w)`` patch grid.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from frejax import sharding
from frejax.nn.attention import attention, check_implementation
from frejax.nn.layers import (Dense, LayerNorm, check_remat, make_param, remat_call, scan_layers,
                           stack_modules)


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
    """``(n, H, W, C)`` -> ``(n, (H/p)*(W/p), p*p*C)``, patches in row-major grid order."""
    n, hh, ww, c = images.shape
    p = patch_size
    x = images.reshape(n, hh // p, p, ww // p, p, c)
    x = x.transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, (hh // p) * (ww // p), p * p * c)


# Per-channel (mean, std) of the pixels in [0, 1] each encoder family was trained on.
PIXEL_NORMS = {
    "symmetric": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),                  # SigLIP: [-1, 1]
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),       # DINOv2
}


def normalize_pixels(frames: jax.Array, norm: str = "symmetric") -> jax.Array:
    """uint8 in [0, 255] (or float in [0, 1]) -> float32, standardised by ``PIXEL_NORMS[norm]``.

    ``symmetric`` maps to [-1, 1].
    """
    if norm not in PIXEL_NORMS:
        raise ValueError(f"model.vision.pixel_norm must be one of {tuple(PIXEL_NORMS)},"
                         f" got {norm!r}")
    x = frames.astype(jnp.float32)
    if jnp.issubdtype(frames.dtype, jnp.integer):
        x = x / 255.0
    mean, std = (jnp.asarray(v, jnp.float32) for v in PIXEL_NORMS[norm])
    return (x - mean) / std


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

    def __init__(self, width: int, heads: int, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs,
                 implementation: str = "auto"):
        if width % heads:
            raise ValueError(f"model.vision.width {width} not divisible by model.vision.heads {heads}")
        head_dim = width // heads
        self.implementation = implementation
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
        return self.out(attention(q, k, v, implementation=self.implementation))


class LayerScale(nnx.Module):
    """Per-channel scale of a residual branch (CaiT; DINOv2's ``layer_scale``)."""

    def __init__(self, width: int, *, param_dtype: Any, rngs: nnx.Rngs):
        self.scale = make_param(nnx.initializers.ones_init(), ("embed",), (width,),
                                param_dtype, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return x * self.scale[...].astype(x.dtype)


class EncoderBlock(nnx.Module):
    def __init__(self, width: int, heads: int, mlp_dim: int, *, dtype: Any, param_dtype: Any,
                 rngs: nnx.Rngs, norm_eps: float = 1e-6, layer_scale: bool = False,
                 approximate_gelu: bool = True, attention_implementation: str = "auto"):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm1 = LayerNorm(width, eps=norm_eps, **kw)
        self.attn = SelfAttention(width, heads, implementation=attention_implementation, **kw)
        self.norm2 = LayerNorm(width, eps=norm_eps, **kw)
        self.mlp = MLP(width, mlp_dim, approximate_gelu=approximate_gelu, **kw)
        self.scale1 = LayerScale(width, param_dtype=param_dtype, rngs=rngs) if layer_scale else None
        self.scale2 = LayerScale(width, param_dtype=param_dtype, rngs=rngs) if layer_scale else None

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.attn(self.norm1(x))
        x = x + (self.scale1(h) if self.scale1 is not None else h)
        h = self.mlp(self.norm2(x))
        x = x + (self.scale2(h) if self.scale2 is not None else h)
        return sharding.constrain(x, ("batch", "tokens", "activation_embed"))


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
        self.remat = check_remat(str(cfg.remat), "model.vision.remat")
        self.scan_layers = bool(cfg.scan_layers)
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
        self.pixel_norm = str(cfg.pixel_norm)  # checked by normalize_pixels
        self.num_registers = int(cfg.registers)
        if self.num_registers < 0:
            raise ValueError(f"model.vision.registers must be >= 0, got {self.num_registers}")
        zeros = nnx.initializers.zeros_init()
        # The class token and its position (DINOv2); registers take no position.
        self.cls_token = (make_param(zeros, (None, "embed"), (1, self.width), param_dtype, rngs)
                          if cfg.cls_token else None)
        self.cls_pos = (make_param(zeros, (None, "embed"), (1, self.width), param_dtype, rngs)
                        if cfg.cls_token else None)
        self.registers = (make_param(zeros, (None, "embed"), (self.num_registers, self.width),
                                     param_dtype, rngs) if self.num_registers else None)
        norm_eps = float(cfg.norm_eps)
        implementation = check_implementation(str(cfg.attention), "model.vision.attention")
        blocks = [EncoderBlock(self.width, int(cfg.heads), int(cfg.mlp_dim), norm_eps=norm_eps,
                               layer_scale=bool(cfg.layer_scale),
                               approximate_gelu=bool(cfg.gelu_approximate),
                               attention_implementation=implementation, **kw)
                  for _ in range(int(cfg.depth))]
        # Stacked and scanned (one block compiled) or unrolled; the same init either way.
        self.blocks = stack_modules(blocks) if self.scan_layers else nnx.List(blocks)
        # LLaVA reads the last block's output before the tower's final norm.
        self.final_norm = (LayerNorm(self.width, eps=norm_eps, **kw)
                           if cfg.get("final_norm", True) else None)

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
        x = patchify(normalize_pixels(images, self.pixel_norm), self.patch_size)
        x = self.patch_embed(x) + self.pos_embed[...].astype(self.dtype)
        n = images.shape[0]
        prefix = []  # DINOv2 order: class token, registers, patches
        if self.cls_token is not None:
            cls = (self.cls_token[...] + self.cls_pos[...]).astype(self.dtype)
            prefix.append(jnp.broadcast_to(cls[None], (n, 1, self.width)))
        if self.registers is not None:
            regs = self.registers[...].astype(self.dtype)
            prefix.append(jnp.broadcast_to(regs[None], (n,) + regs.shape))
        extra = sum(p.shape[1] for p in prefix)
        if prefix:
            x = jnp.concatenate(prefix + [x], axis=1)
        x = sharding.constrain(x, ("batch", "tokens", "activation_embed"))
        if self.scan_layers:
            x, _ = scan_layers(self.blocks, lambda block, x, _: (block(x), None), x,
                               remat=self.remat)
        else:
            for block in self.blocks:
                x = remat_call(block, x, policy=self.remat)
        x = x[:, extra:]
        return x if self.final_norm is None else self.final_norm(x)

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

        if self.remat != "none":
            # Under a remat policy a chunk is recomputed in the backward pass too, so the
            # map keeps each chunk's frames, not every chunk's per-layer activations: the
            # training memory of one chunk, which is what chunking is for.
            encode = jax.checkpoint(encode, prevent_cse=False)
        latents = jax.lax.map(encode, chunks)  # (num_chunks, b, chunk, N, D)
        latents = latents.swapaxes(0, 1).reshape(b, num_chunks * chunk, *latents.shape[3:])
        return latents[:, :t]
