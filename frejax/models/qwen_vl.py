"""Qwen2.5-VL in JAX: its vision tower, its video layout and multimodal RoPE positions.

The tower (``QwenVision``) embeds patches of ``temporal_patch`` frames by
``patch x patch`` pixels, runs blocks of RMSNorm, attention with 2D rotary positions
(height and width) and a gated SiLU MLP, and merges each ``merge x merge`` block of
patches into one LLM token (``merger``: RMSNorm, then a GELU MLP). Attention stays
inside one temporal patch: full over the frame in the blocks ``full_blocks`` names,
within windows of ``window`` pixels in the others.

Patches are laid out as Qwen's processor lays them out (``patchify``): per temporal
patch, merge block by merge block, so that the ``merge**2`` patches of one LLM token
are consecutive. The tower sees ``(batch, groups, patches, channels * temporal_patch
* patch * patch)`` and returns ``(batch, groups, tokens, out_width)``; the LLM is
``frejax.models.llm.LLM`` with ``mrope_sections``, at the ``(time, height, width)``
positions ``rope_index`` gives.

Attention within a temporal patch is what Qwen's ``cu_seqlens`` express; here the
groups are a batch axis, and windows a dense mask inside a group, so the result is the
same without reordering tokens by window.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from frejax import sharding
from frejax.models.llm import LLM, rotate
from frejax.nn.attention import AttentionMask, attention
from frejax.nn.layers import Dense, LayerNorm, RMSNorm, make_param

# Qwen's processor normalises pixels with CLIP's statistics.
PIXEL_MEAN = (0.48145466, 0.4578275, 0.40821073)
PIXEL_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """The tower's shape (``frejax.models.convert.qwen_vl_import.vision_config`` reads it
    from a ``config.json``)."""

    width: int = 1280
    depth: int = 32
    heads: int = 16
    mlp_dim: int = 3420
    out_width: int = 3584
    patch: int = 14
    temporal_patch: int = 2
    merge: int = 2
    window: int = 112
    full_blocks: tuple[int, ...] = (7, 15, 23, 31)
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-6
    # Qwen3-VL: LayerNorm blocks with a GELU MLP and full attention, a learned position
    # table of side x side (resampled bilinearly to the frame's grid), and DeepStack:
    # the outputs of the ``deepstack`` blocks, merged by their own mergers, are added to
    # the LLM's hidden states at the video places after its first layers.
    family: str = "qwen2_5_vl"          # qwen2_5_vl | qwen3_vl
    position_table: int = 0             # side of the learned table (0: none)
    deepstack: tuple[int, ...] = ()

    @property
    def patch_dim(self) -> int:
        return 3 * self.temporal_patch * self.patch * self.patch


def vision_config_from(vision: Any, out_width: int) -> VisionConfig:
    """A ``model.vision`` config section (``family`` qwen2_5_vl | qwen3_vl) -> the tower's
    shape; ``out_width``: the LLM's width."""
    return VisionConfig(
        width=int(vision.width), depth=int(vision.depth), heads=int(vision.heads),
        mlp_dim=int(vision.mlp_dim), out_width=int(out_width), patch=int(vision.patch_size),
        temporal_patch=int(vision.temporal_patch), merge=int(vision.merge),
        window=int(vision.window), full_blocks=tuple(int(i) for i in vision.full_blocks),
        norm_eps=float(vision.norm_eps), family=str(vision.family),
        position_table=int(vision.position_table),
        deepstack=tuple(int(i) for i in vision.deepstack))


# ----------------------------------------------------------------------------- layout


def patchify(frames: jax.Array, cfg: VisionConfig) -> jax.Array:
    """Normalised frames ``(B, T, H, W, 3)`` -> patches ``(B, T / tp, h * w, 3 * tp * p * p)``.

    Per temporal patch, merge block by merge block (row-major over blocks, then over
    the patches of a block); each patch flattened as (channel, time, row, column), the
    order of Qwen's processor and of its ``Conv3d`` kernel.
    """
    b, t, hh, ww, c = frames.shape
    p, tp, m = cfg.patch, cfg.temporal_patch, cfg.merge
    if t % tp or hh % (p * m) or ww % (p * m):
        raise ValueError(f"qwen_vl: frames {t} x {hh} x {ww} must be multiples of"
                         f" {tp} frames and {p * m} pixels")
    x = frames.reshape(b, t // tp, tp, hh // (p * m), m, p, ww // (p * m), m, p, c)
    # -> (b, groups, block row, block col, row in block, col in block, c, tp, p, p)
    x = x.transpose(0, 1, 3, 6, 4, 7, 9, 2, 5, 8)
    return x.reshape(b, t // tp, (hh // p) * (ww // p), c * tp * p * p)


def normalize(frames: jax.Array) -> jax.Array:
    """uint8 or [0, 1] float RGB -> Qwen's normalised pixels."""
    x = frames.astype(jnp.float32)
    if frames.dtype == jnp.uint8:
        x = x / 255.0
    return (x - jnp.asarray(PIXEL_MEAN)) / jnp.asarray(PIXEL_STD)


def patch_positions(grid: tuple[int, int], merge: int) -> np.ndarray:
    """``(h * w, 2)`` (row, column) of every patch in ``patchify``'s block-major order."""
    h, w = grid
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")

    def blocks(a):
        return a.reshape(h // merge, merge, w // merge, merge).transpose(0, 2, 1, 3).reshape(-1)

    return np.stack([blocks(rows), blocks(cols)], axis=-1)


def window_ids(grid: tuple[int, int], cfg: VisionConfig) -> np.ndarray:
    """``(h * w,)`` the attention window of every patch: squares of ``window`` pixels
    (``window / patch / merge`` LLM tokens a side), the last ones cut by the frame."""
    side = cfg.window // cfg.merge // cfg.patch
    pos = patch_positions(grid, cfg.merge) // cfg.merge          # merge-block coordinates
    across = -(-(grid[1] // cfg.merge) // side)
    return (pos[:, 0] // side) * across + pos[:, 1] // side


# ----------------------------------------------------------------------------- tower


class VisionBlock(nnx.Module):
    def __init__(self, cfg: VisionConfig, *, dtype: Any, param_dtype: Any, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        d, hd = cfg.width, cfg.width // cfg.heads
        self.gated = cfg.family == "qwen2_5_vl"      # RMSNorm + SiLU-gated MLP, else LN + GELU
        norm = RMSNorm if self.gated else LayerNorm
        self.norm1 = norm(d, eps=cfg.norm_eps, **kw)
        self.norm2 = norm(d, eps=cfg.norm_eps, **kw)
        # q, k and v in one projection, as the checkpoint holds them.
        self.qkv = Dense(d, (3, cfg.heads, hd), ("embed", None, "heads", "head_dim"), **kw)
        self.out = Dense((cfg.heads, hd), d, ("heads", "head_dim", "embed"), **kw)
        self.gate = Dense(d, cfg.mlp_dim, ("embed", "mlp"), **kw) if self.gated else None
        self.up = Dense(d, cfg.mlp_dim, ("embed", "mlp"), **kw)
        self.down = Dense(cfg.mlp_dim, d, ("mlp", "embed"), **kw)

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array,
                 mask: AttentionMask | None) -> jax.Array:
        q, k, v = jnp.moveaxis(self.qkv(self.norm1(x)), -3, 0)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        x = x + self.out(attention(q, k, v.astype(q.dtype), mask))
        h = self.norm2(x)
        if self.gated:
            h = jax.nn.silu(self.gate(h)) * self.up(h)
        else:
            h = jax.nn.gelu(self.up(h), approximate=True)
        return sharding.constrain(x + self.down(h), ("batch", "length", "activation_embed"))


class Merger(nnx.Module):
    """Each ``merge x merge`` block of patches -> one token of the LLM's width.

    The norm runs per patch before the blocks are joined (RMSNorm in Qwen2.5-VL,
    LayerNorm in Qwen3-VL), or over the joined block (``after_join``: Qwen3-VL's
    DeepStack mergers)."""

    def __init__(self, cfg: VisionConfig, *, after_join: bool = False, dtype: Any,
                 param_dtype: Any, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        hidden = cfg.width * cfg.merge ** 2
        norm = RMSNorm if cfg.family == "qwen2_5_vl" else LayerNorm
        self.after_join = after_join
        self.norm = norm(hidden if after_join else cfg.width, eps=1e-6, **kw)
        self.fc1 = Dense(hidden, hidden, ("embed", "mlp"), **kw)
        self.fc2 = Dense(hidden, cfg.out_width, ("mlp", "embed"), **kw)
        self.group = cfg.merge ** 2

    def __call__(self, x: jax.Array) -> jax.Array:
        if not self.after_join:
            x = self.norm(x)
        x = x.reshape(x.shape[:-2] + (x.shape[-2] // self.group, self.group * x.shape[-1]))
        if self.after_join:
            x = self.norm(x)
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


def bilinear_corners(size: int, side: int) -> np.ndarray:
    """``(size, side)``: bilinear resampling of ``side`` samples to ``size`` with aligned
    corners (the ends map to the ends), as Qwen3-VL resamples its position table."""
    src = np.arange(size) * (side - 1) / max(size - 1, 1)
    low = np.clip(np.floor(src).astype(int), 0, side - 1)
    frac = src - np.floor(src)
    out = np.zeros((size, side), np.float32)
    out[np.arange(size), low] += 1 - frac
    out[np.arange(size), np.minimum(low + 1, side - 1)] += frac
    return out


class QwenVision(nnx.Module):
    """Qwen2.5-VL's vision tower with its patch merger."""

    def __init__(self, cfg: VisionConfig, *, rngs: nnx.Rngs, dtype: Any = jnp.float32,
                 param_dtype: Any = jnp.float32):
        self.cfg = cfg
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        qwen3 = cfg.family == "qwen3_vl"
        self.patch_embed = Dense(cfg.patch_dim, cfg.width, (None, "embed"), use_bias=qwen3, **kw)
        self.positions = (make_param(nnx.initializers.normal(0.02), (None, "embed"),
                                     (cfg.position_table ** 2, cfg.width), param_dtype, rngs)
                          if cfg.position_table else None)
        self.blocks = nnx.List([VisionBlock(cfg, **kw) for _ in range(cfg.depth)])
        self.merger = Merger(cfg, **kw)
        self.deepstack = nnx.List([Merger(cfg, after_join=True, **kw) for _ in cfg.deepstack])

    def rope(self, grid: tuple[int, int]) -> tuple[jax.Array, jax.Array]:
        """2D rotary angles per patch: the first half of the frequencies follow the row,
        the second the column (one frequency set of ``head_dim / 4`` for both)."""
        hd = self.cfg.width // self.cfg.heads
        inv = self.cfg.rope_theta ** (-np.arange(0, hd // 2, 2, dtype=np.float32) / (hd // 2))
        pos = patch_positions(grid, self.cfg.merge).astype(np.float32)
        angles = np.concatenate([pos[:, :1] * inv, pos[:, 1:] * inv], axis=-1)
        return jnp.asarray(np.cos(angles))[:, None], jnp.asarray(np.sin(angles))[:, None]

    def position_embeddings(self, grid: tuple[int, int]) -> jax.Array:
        """Qwen3-VL's learned table resampled to ``grid``, per patch in block-major order."""
        side = self.cfg.position_table
        table = self.positions[...].reshape(side, side, -1)
        rows, cols = bilinear_corners(grid[0], side), bilinear_corners(grid[1], side)
        full = jnp.einsum("hi,ijd,wj->hwd", rows, table.astype(jnp.float32), cols)
        pos = patch_positions(grid, self.cfg.merge)
        return full[pos[:, 0], pos[:, 1]]

    def __call__(self, patches: jax.Array, grid: tuple[int, int], *,
                 with_deepstack: bool = False):
        """``(B, G, h * w, patch_dim)`` -> ``(B, G, h * w / merge**2, out_width)``;
        ``grid``: ``(h, w)`` patches per frame. ``with_deepstack``: also the DeepStack
        features, ``(k, B, G, tokens, out_width)`` (``k = 0`` for Qwen2.5-VL)."""
        b, g, n, _ = patches.shape
        if n != grid[0] * grid[1]:
            raise ValueError(f"qwen_vl: {n} patches per group for a {grid} grid")
        x = self.patch_embed(patches.reshape(b * g, n, -1))
        if self.positions is not None:
            x = x + self.position_embeddings(grid).astype(x.dtype)
        cos, sin = self.rope(grid)
        ids = jnp.asarray(window_ids(grid, self.cfg))
        windowed = AttentionMask(dense=(ids[:, None] == ids[None, :])[None])
        full = self.cfg.family == "qwen3_vl"
        stacked = []
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, None if full or i in self.cfg.full_blocks else windowed)
            if i in self.cfg.deepstack:
                stacked.append(self.deepstack[self.cfg.deepstack.index(i)](x))
        x = self.merger(x)
        out = x.reshape(b, g, x.shape[1], x.shape[2])
        if not with_deepstack:
            return out
        deep = (jnp.stack(stacked).reshape((len(stacked),) + out.shape) if stacked
                else jnp.zeros((0,) + out.shape, out.dtype))
        return out, deep


# ----------------------------------------------------------------------------- positions


@dataclasses.dataclass(frozen=True)
class VideoSpan:
    """A video's tokens in a prompt: ``groups`` temporal patches of ``rows x cols`` LLM
    tokens; ``interval``: position steps between consecutive groups (Qwen2.5-VL:
    ``tokens_per_second * seconds per temporal patch``)."""

    groups: int
    rows: int
    cols: int
    interval: float = 1.0

    @property
    def tokens(self) -> int:
        return self.groups * self.rows * self.cols


def rope_index(segments: Sequence[int | VideoSpan]) -> np.ndarray:
    """``(length, 3)`` (time, height, width) positions of a prompt of text runs (ints:
    their token counts) and videos, by Qwen2.5-VL's rule as released: text counts on
    from one past the largest position so far; a video's tokens sit at (start +
    floor(group * interval), start + row, start + column)."""
    out, start = [], 0
    for seg in segments:
        if isinstance(seg, VideoSpan):
            t = np.floor(np.arange(seg.groups) * seg.interval).astype(np.int64)
            tt, rr, cc = np.meshgrid(t, np.arange(seg.rows), np.arange(seg.cols), indexing="ij")
            block = np.stack([tt, rr, cc], axis=-1).reshape(-1, 3) + start
        else:
            block = np.repeat(np.arange(start, start + int(seg))[:, None], 3, axis=1)
        if len(block):
            out.append(block)
            start = int(block.max()) + 1
    return np.concatenate(out) if out else np.zeros((0, 3), np.int64)


def video_spans(tokens: np.ndarray, video_token: int,
                videos: Sequence[VideoSpan]) -> list[int | VideoSpan]:
    """A prompt's token ids -> the segments ``rope_index`` takes: each run of
    ``video_token`` is the next of ``videos`` (its token count must match)."""
    segments: list[int | VideoSpan] = []
    queue, i, n = list(videos), 0, len(tokens)
    while i < n:
        j = i
        is_video = tokens[i] == video_token
        while j < n and (tokens[j] == video_token) == is_video:
            j += 1
        if is_video:
            if not queue:
                raise ValueError(f"qwen_vl: a run of video tokens at {i} with no video left")
            span = queue.pop(0)
            if span.tokens != j - i:
                raise ValueError(f"qwen_vl: {j - i} video tokens at {i}, the video has"
                                 f" {span.tokens} ({span.groups} x {span.rows} x {span.cols})")
            segments.append(span)
        else:
            segments.append(j - i)
        i = j
    if queue:
        raise ValueError(f"qwen_vl: {len(queue)} video(s) without their tokens in the prompt")
    return segments


def prompt_positions(tokens: jax.Array, video_token: int, places: jax.Array,
                     interval: float) -> jax.Array:
    """``(B, L, 3)`` float32 positions of prompts holding one video each, under jit.

    ``places (B, M, 3)``: where each of the prompt's ``M`` video tokens sits in the
    video (``Compressor.places``: temporal patch, row, column; every token of every
    group for an uncompressed video). Text before the video counts 0, 1, ...; video
    token ``j`` sits at ``start + (interval * t, row, column)`` from its place; text after
    the video counts on from one past the video's largest position, the released rule
    (``rope_index`` on the same prompt, uncompressed, gives the same positions).
    """
    is_video = tokens == video_token
    index = jnp.arange(tokens.shape[1])
    start = jnp.argmax(is_video, axis=1)[:, None]                               # (B, 1)
    slot = jnp.clip(jnp.cumsum(is_video, axis=1) - 1, 0, places.shape[1] - 1)
    scale = jnp.asarray([interval, 1.0, 1.0], jnp.float32)
    video = start[..., None] + jnp.take_along_axis(
        places.astype(jnp.float32), slot[..., None], axis=1) * scale           # (B, L, 3)
    last = jnp.max(jnp.where(is_video, index, -1), axis=1, keepdims=True)
    top = jnp.max(jnp.where(is_video[..., None], video, -jnp.inf), axis=(1, 2))[:, None]
    after = (index > last) & ~is_video
    text = jnp.where(after, top + jnp.cumsum(after, axis=1), index).astype(jnp.float32)
    return jnp.where(is_video[..., None], video, text[..., None])


# ----------------------------------------------------------------------------- model


class QwenVL(nnx.Module):
    """Qwen2.5-VL or Qwen3-VL: the tower, then the multimodal-RoPE LLM; video tokens
    replace the prompt's ``video_token`` placeholders in order."""

    def __init__(self, vision: VisionConfig, llm_cfg: Any, video_token: int, *,
                 rngs: nnx.Rngs, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32):
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.encoder = QwenVision(vision, rngs=rngs, **kw)
        self.llm = LLM(llm_cfg, rngs=rngs, **kw)
        self.video_token = int(video_token)

    def _at_placeholders(self, tokens: jax.Array, video: jax.Array, base: jax.Array) -> jax.Array:
        """``base (B, L, E)`` with ``video (B, M, E)`` written over the placeholders, in order."""
        is_video = tokens == self.video_token
        slot = jnp.clip(jnp.cumsum(is_video, axis=1) - 1, 0, video.shape[1] - 1)
        picked = jnp.take_along_axis(video.astype(base.dtype), slot[..., None], axis=1)
        return jnp.where(is_video[..., None], picked, base)

    def embed(self, tokens: jax.Array, video: jax.Array) -> jax.Array:
        """Token embeddings with ``video (B, M, width)`` written over the placeholders
        (each example's ``M`` placeholders, in order: one run or several, such as
        Qwen3-VL's frames between their timestamps)."""
        return self._at_placeholders(tokens, video, self.llm.embed(tokens))

    def __call__(self, tokens: jax.Array, patches: jax.Array, grid: tuple[int, int], *,
                 interval: float = 1.0, compressor: Any = None,
                 positions: jax.Array | None = None,
                 attn_mask: jax.Array | None = None) -> jax.Array:
        """Logits ``(B, L, V)`` of a prompt ``tokens (B, L)`` around one video per example
        (``patches`` as ``QwenVision`` takes them).

        ``compressor`` (a ``frejax.compression`` compressor over the merged tokens,
        ``(groups, (rows, cols), out_width)``): the prompt then holds its ``num_tokens``
        placeholders, its padding is masked, and each token sits where its ``places``
        say. ``positions``: ``(B, L, 3)`` given instead of computed (``interval``: position
        steps between temporal patches).
        """
        video, deep = self.encoder(patches, grid, with_deepstack=True)  # (B, G, rows*cols, D)
        b, g, n, d = video.shape
        k = deep.shape[0]
        if compressor is None:
            rows, cols = grid[0] // self.encoder.cfg.merge, grid[1] // self.encoder.cfg.merge
            places = jnp.broadcast_to(
                jnp.asarray(rope_index([VideoSpan(g, rows, cols)]), jnp.float32), (b, g * n, 3))
            valid = jnp.ones((b, g * n), bool)
            video = video.reshape(b, g * n, d)
            deep = deep.reshape(k, b, g * n, d)
        else:
            video, deep, places, valid = compress_with_deepstack(compressor, video, deep)
        if positions is None:
            positions = prompt_positions(tokens, self.video_token, places, interval)
        is_video = tokens == self.video_token
        slot = jnp.clip(jnp.cumsum(is_video, axis=1) - 1, 0, valid.shape[1] - 1)
        keep = ~is_video | jnp.take_along_axis(valid, slot, axis=1)
        attn_mask = keep if attn_mask is None else attn_mask & keep
        layer_inputs = None
        if k:   # DeepStack: zero off the video places
            zeros = jnp.zeros(tokens.shape + (d,), video.dtype)
            layer_inputs = jnp.stack([self._at_placeholders(tokens, f, zeros) for f in deep])
        logits, _ = self.llm(self.embed(tokens, video), positions, attn_mask,
                             layer_inputs=layer_inputs)
        return logits


def join_deepstack(video: jax.Array, deep: jax.Array) -> jax.Array:
    """Merged tokens ``(..., D)`` and DeepStack features ``(K, ..., D)`` -> ``(..., (1+K) D)``:
    the features as extra channels (the layout vLLM gives Qwen3-VL's visual embeddings)."""
    return jnp.concatenate([video, *deep], axis=-1) if deep.shape[0] else video


def split_deepstack(tokens: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """``join_deepstack``'s inverse: ``(..., (1+K) D)`` -> tokens ``(..., D)`` and
    DeepStack features ``(K, ..., D)``."""
    d = tokens.shape[-1] // (1 + k)
    main = tokens[..., :d]
    if not k:
        return main, jnp.zeros((0,) + main.shape, main.dtype)
    return main, jnp.stack([tokens[..., (i + 1) * d:(i + 2) * d] for i in range(k)])


def compress_with_deepstack(compressor: Any, video: jax.Array, deep: jax.Array
                            ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Merged tokens ``(B, G, N, D)`` and DeepStack features ``(K, B, G, N, D)`` through one
    compressor -> tokens ``(B, M, D)``, DeepStack features ``(K, B, M, D)``, places, mask.

    The DeepStack features ride along as extra channels (``join_deepstack``), so a kept
    token keeps its own DeepStack features, an average averages theirs, and a frequency
    token holds their coefficients: each LLM token and what DeepStack adds to it at the
    first layers describe the same tokens. The compressor is built for ``(1 + K) * D``
    channels; its choices (EVS's change between frames, an energy ranking) read all of them.
    """
    out = compressor(join_deepstack(video, deep), places=True)
    tokens, deep = split_deepstack(out.tokens, deep.shape[0])
    return tokens, deep, out.places, out.mask


def frames_to_grid(frames_shape: tuple[int, ...], cfg: VisionConfig) -> tuple[int, int]:
    """``(..., H, W, 3)`` -> the patch grid ``(H / patch, W / patch)``."""
    return (frames_shape[-3] // cfg.patch, frames_shape[-2] // cfg.patch)


def llm_tokens(groups: int, grid: tuple[int, int], merge: int) -> int:
    """How many LLM tokens a video of ``groups`` temporal patches on ``grid`` becomes."""
    return groups * math.prod(grid) // merge ** 2
