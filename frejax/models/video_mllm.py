"""Video MLLM: ViT per frame -> compressor -> projector -> LLM.

Batch contract (a dict of arrays):
  frames      (batch, T, H, W, 3) uint8; or, with ``model.vision.input="latents"``,
  latents     (batch, T, N, D) float: a frozen encoder's per-frame latents computed
              once ahead of training (``frejax.studies.latent_cache``); the model then holds
              no encoder
  frame_mask  (batch, T) bool
  tokens      (batch, L) int32: text with exactly one ``video_token_id`` placeholder
              per row, padded with 0 at the end
  prompt_len  (batch,) int32: text tokens in the prompt, placeholder included
  text_mask   (batch, L) bool: True for real text tokens

The M compressed visual tokens replace the placeholder, giving a sequence of
``L - 1 + M`` places built with static-shape gathers. RoPE positions count valid
places only, so masked visual padding and text padding take no position.
Logits come back TEXT-ALIGNED: ``logits[b, i]`` is the prediction made at text
position ``i`` (at the placeholder: the last valid visual token), so the loss is
plain next-token cross-entropy of ``logits[:, i]`` against ``tokens[:, i + 1]``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from frejax import compression, sharding
from frejax.compression import CompressedTokens, VideoGeometry, resolve_budget
from frejax.nn.grid import bilinear_matrix, resample_grid
from frejax.models import qwen_vl
from frejax.models.llm import LLM
from frejax.models.projector import Projector
from frejax.models.vit import ViT


def splice_indices(tokens: jax.Array, video_token_id: int,
                   num_visual: int) -> tuple[jax.Array, jax.Array]:
    """Static-shape index maps for replacing the placeholder with ``num_visual`` tokens.

    Args:
      tokens: ``(batch, L)`` int with one ``video_token_id`` per row.
    Returns:
      source ``(batch, L - 1 + M)``: index into ``concat([text (L), visual (M)])``
        of each sequence place;
      text_to_seq ``(batch, L)``: sequence place of each text position (the
        placeholder maps to the last visual place).
    """
    length, m = tokens.shape[1], num_visual
    p = jnp.argmax(tokens == video_token_id, axis=1)[:, None]  # (batch, 1)
    j = jnp.arange(length - 1 + m)[None]
    source = jnp.where(j < p, j, jnp.where(j < p + m, length + j - p, j - m + 1))
    i = jnp.arange(length)[None]
    text_to_seq = jnp.where(i < p, i, i + m - 1)
    return source.astype(jnp.int32), text_to_seq.astype(jnp.int32)


def _gather(x: jax.Array, index: jax.Array) -> jax.Array:
    """``x (B, S, ...)``, ``index (B, S')`` -> ``(B, S', ...)``."""
    index = index.reshape(index.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, index, axis=1)


class VideoMLLM(nnx.Module):
    """Encoder, compressor, projector and LLM of a video MLLM."""

    def __init__(self, model_cfg: Any, compressor_cfg: Any, *, num_frames: int, vocab_size: int,
                 video_token_id: int, rngs: nnx.Rngs, dtype: Any = jnp.float32,
                 param_dtype: Any = jnp.float32):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self._vocab_size = vocab_size
        self.video_token_id = int(video_token_id)
        self.dtype = dtype
        vision = model_cfg.vision
        self.reads_latents = str(vision.get("input", "pixels")) == "latents"
        self.family = str(vision.get("family", "vit"))
        # Position steps between temporal patches under multimodal RoPE.
        self.time_step = float(vision.get("mrope_time_step", 1.0))
        self.qwen, self.deepstack = None, 0
        if self.family != "vit":
            # Qwen-VL: the tower merges patches into LLM-width tokens (the merger is its
            # projector); the compressor reads them, one frame per temporal patch.
            self.qwen = qwen_vl.vision_config_from(vision, int(model_cfg.llm.width))
            self.encoder = qwen_vl.QwenVision(self.qwen, **kw)
            side = int(vision.image_size) // self.qwen.patch // self.qwen.merge
            self.latent_grid = (side, side)
            self.project_first, self.pool = True, 1
            # Qwen3-VL's DeepStack features ride with the merged tokens as extra channels
            # through the compressor (qwen_vl.compress_with_deepstack's layout).
            self.deepstack = len(self.qwen.deepstack)
            self.geometry = VideoGeometry(int(num_frames) // self.qwen.temporal_patch,
                                          self.latent_grid,
                                          (1 + self.deepstack) * int(model_cfg.llm.width))
            self._build_rest(model_cfg, compressor_cfg, None, kw)
            return
        if self.reads_latents:
            # A frozen encoder ran ahead of time: no parameters, only its output geometry.
            self.encoder = None
            latent_grid = tuple(int(n) for n in vision.latent_grid)
            latent_width = int(vision.width)
        else:
            self.encoder = ViT(vision, **kw)
            latent_grid, latent_width = self.encoder.grid, self.encoder.width
        projector_cfg = model_cfg.projector
        self.project_first = (
            str(projector_cfg.get("order", "compress_then_project")) == "project_then_compress")
        self.pool = int(projector_cfg.get("pool", 1))
        if self.pool not in (1, 2):
            raise ValueError(f"model.projector.pool must be 1 or 2, got {self.pool}")
        self.latent_grid = latent_grid
        grid, width = latent_grid, latent_width
        if self.project_first:  # the compressor reads pooled LLM-width tokens
            grid = tuple(-(-n // self.pool) for n in grid)
            width = int(model_cfg.llm.width)
        elif self.pool != 1:
            raise ValueError("model.projector.pool needs model.projector.order="
                             "'project_then_compress' (it pools projected tokens)")
        self.geometry = VideoGeometry(int(num_frames), grid, width)
        self._build_rest(model_cfg, compressor_cfg, latent_width, kw)

    def _build_rest(self, model_cfg: Any, compressor_cfg: Any, latent_width: int | None,
                    kw: dict) -> None:
        """The compressor over ``self.geometry``, the LLM and (for a ViT) the projector."""
        budget = resolve_budget(self.geometry, int(compressor_cfg.budget),
                                float(compressor_cfg.ratio))
        self.compressor = compression.build(
            compressor_cfg["name"], self.geometry, budget,
            compression.section_options(compressor_cfg), rngs=kw["rngs"], dtype=kw["dtype"])
        self.llm = LLM(model_cfg.llm, vocab_size=self._vocab_size, **kw)
        self.projector = None if latent_width is None else Projector(
            latent_width, self.llm.width, int(model_cfg.projector.hidden),
            newline=bool(model_cfg.get("newline", False)), **kw)
        self._extra = 0 if self.projector is None or self.projector.newline is None else 1

    @property
    def num_visual_tokens(self) -> int:
        """Static M: visual places in the LLM sequence (the newline included)."""
        return self.compressor.num_tokens + self._extra

    @property
    def full_visual_tokens(self) -> int:
        """T * N (+ the newline): visual places without compression."""
        return self.geometry.full_tokens + self._extra

    @property
    def visual_tokens_used(self) -> int:
        return self.compressor.num_valid_tokens + self._extra

    def frame_tokens(self, frames: jax.Array) -> jax.Array:
        """Frames (or, reading latents, the cached latents) -> what the compressor reads
        ``(batch, T, N, D)``: encoder latents, or with ``project_then_compress`` projected
        (and pooled) LLM-width tokens."""
        if self.qwen is not None:
            grid = (frames.shape[2] // self.qwen.patch, frames.shape[3] // self.qwen.patch)
            patches = qwen_vl.patchify(qwen_vl.normalize(frames), self.qwen)
            x = qwen_vl.join_deepstack(*self.encoder(patches, grid, with_deepstack=True))
            return sharding.constrain(x, ("batch", "frames", "tokens", "embed"))
        if self.reads_latents:
            latents = sharding.constrain(frames.astype(self.dtype),
                                         ("batch", "frames", "tokens", "embed"))
        else:
            latents = self.encoder(frames)
        if not self.project_first:
            return latents
        b, t, n, d = latents.shape
        x = self.projector(latents.reshape(b, t * n, d)).reshape(b, t, n, -1)
        if self.pool != 1:
            (h, w), (h2, w2) = self.latent_grid, self.geometry.grid
            x = resample_grid(x.reshape(b, t, h, w, -1), bilinear_matrix(h, h2),
                              bilinear_matrix(w, w2)).reshape(b, t, h2 * w2, -1)
        return sharding.constrain(x, ("batch", "frames", "tokens", "embed"))

    def encode_video(self, batch: dict[str, jax.Array]) -> CompressedTokens:
        """Frames -> compressed tokens ``(batch, M', D)`` and mask ``(batch, M')``: vision
        width, or LLM width with ``project_then_compress``; the newline is not among them."""
        latents = self.frame_tokens(batch["latents" if self.reads_latents else "frames"])
        frame_mask = batch.get("frame_mask")
        if frame_mask is not None and self.qwen is not None:  # a temporal patch per frame
            b, t = frame_mask.shape
            tp = self.qwen.temporal_patch
            frame_mask = frame_mask.reshape(b, t // tp, tp).any(axis=-1)
        out = self.compressor(latents, frame_mask, places=self.needs_places)
        return CompressedTokens(sharding.constrain(out.tokens, ("batch", "tokens", "embed")),
                                out.mask.astype(bool), out.places)

    @property
    def needs_places(self) -> bool:
        """Whether visual tokens carry places: positions under multimodal RoPE come from them."""
        return self.llm.rope_axes is not None

    def visual_embeds(self, visual: CompressedTokens) -> tuple[jax.Array, jax.Array]:
        """Compressed tokens -> the LLM's visual places ``(batch, M, E)`` and mask ``(batch, M)``."""
        m = visual.tokens.shape[1]
        if m != self.compressor.num_tokens:
            raise ValueError(f"video_mllm: {m} visual tokens, expected {self.compressor.num_tokens}")
        mask = visual.mask.astype(bool)
        x = visual.tokens if self.project_first else self.projector(visual.tokens)
        x = qwen_vl.split_deepstack(x, self.deepstack)[0] if self.deepstack else x
        x = x.astype(self.dtype) * mask[..., None].astype(self.dtype)
        if self._extra:
            b = x.shape[0]
            line = jnp.broadcast_to(self.projector.newline[...].astype(self.dtype),
                                    (b, 1, x.shape[-1]))
            x = jnp.concatenate([x, line], axis=1)
            mask = jnp.concatenate([mask, jnp.ones((b, 1), bool)], axis=1)
        return x, mask

    def _layer_inputs(self, visual: CompressedTokens, text_len: int,
                      source: jax.Array | None = None) -> jax.Array | None:
        """Qwen3-VL's DeepStack features ``(K, B, S, E)`` at the visual places of the
        sequence (``source`` as in the splice; None: text then visual), zero elsewhere."""
        if not self.deepstack:
            return None
        _, deep = qwen_vl.split_deepstack(visual.tokens, self.deepstack)
        deep = deep.astype(self.dtype) * visual.mask.astype(self.dtype)[..., None]
        b, _, e = deep.shape[1:]
        zeros = jnp.zeros((b, text_len, e), self.dtype)
        seqs = [jnp.concatenate([zeros, f], axis=1) for f in deep]
        return jnp.stack([s if source is None else _gather(s, source) for s in seqs])

    def _splice(self, tokens: jax.Array, text_mask: jax.Array, visual: CompressedTokens):
        """Embeds and splices. Returns embeds ``(B, S, E)``, valid ``(B, S)``,
        positions ``(B, S)``, text_to_seq ``(B, L)`` (placeholder -> last valid visual place)
        and the DeepStack layer inputs (``_layer_inputs``; None without DeepStack)."""
        vis, vis_mask = self.visual_embeds(visual)
        m = vis.shape[1]
        text = self.llm.embed(tokens)
        source, text_to_seq = splice_indices(tokens, self.video_token_id, m)
        embeds = _gather(jnp.concatenate([text, vis.astype(text.dtype)], axis=1), source)
        embeds = sharding.constrain(embeds, ("batch", "length", "embed"))
        valid = _gather(jnp.concatenate([text_mask.astype(bool), vis_mask], axis=1), source)
        positions = self._positions(valid, source, tokens.shape[1], visual.places)
        # The placeholder predicts from the last valid place up to the end of the visual block.
        p = jnp.argmax(tokens == self.video_token_id, axis=1)[:, None]
        j = jnp.arange(valid.shape[1])[None]
        last_visual = jnp.max(jnp.where(valid & (j < p + m), j, 0), axis=1, keepdims=True)
        text_to_seq = jnp.where(jnp.arange(tokens.shape[1])[None] == p, last_visual, text_to_seq)
        return (embeds, valid, positions, text_to_seq,
                self._layer_inputs(visual, tokens.shape[1], source))

    def _positions(self, valid: jax.Array, source: jax.Array, text_len: int,
                   places: jax.Array | None) -> jax.Array:
        """RoPE positions of a spliced sequence: ``(B, S)``, counting valid places only;
        or, under multimodal RoPE, ``(B, S, 3)``: text as before the video, each visual
        token at ``start + (time_step * t, row, column)`` from its place, and the text
        after it on from one past the largest position (Qwen2.5-VL's rule).

        ``source``: each place's index into ``concat([text (text_len), visual])``.
        """
        counted = jnp.maximum(jnp.cumsum(valid, axis=1, dtype=jnp.int32) - 1, 0)
        if self.llm.rope_axes is None:
            return counted
        if places is None:
            raise ValueError("video_mllm: multimodal RoPE needs the visual tokens' places")
        places = jnp.concatenate([places, jnp.zeros((places.shape[0], self._extra, 3))], 1)
        visual = source >= text_len
        at = jnp.take_along_axis(places.astype(jnp.float32),
                                 jnp.clip(source - text_len, 0, places.shape[1] - 1)[..., None],
                                 axis=1)
        first = jnp.argmax(visual, axis=1)[:, None]
        start = jnp.sum(valid & (jnp.arange(valid.shape[1])[None] < first), axis=1)
        video = start[:, None, None] + at * jnp.asarray([self.time_step, 1.0, 1.0])
        top = jnp.max(jnp.where((visual & valid)[..., None], video, -1.0), axis=(1, 2))
        after = ~visual & (jnp.arange(valid.shape[1])[None] > first)
        text_after = top[:, None] + jnp.cumsum(valid & after, axis=1)
        text = jnp.where(after, text_after, counted.astype(jnp.float32))
        return jnp.where(visual[..., None], video, text[..., None])

    def __call__(self, batch: dict[str, jax.Array],
                 visual: CompressedTokens | None = None) -> jax.Array:
        """Text-aligned logits ``(batch, L, vocab)`` float32.

        ``visual`` (from ``encode_video``) skips the encoder and compressor.
        """
        if visual is None:
            visual = self.encode_video(batch)
        embeds, valid, positions, text_to_seq, layer_inputs = self._splice(
            batch["tokens"], batch["text_mask"], visual)
        hidden, _ = self.llm(embeds, positions, valid, return_hidden=True,
                             layer_inputs=layer_inputs)
        hidden = sharding.constrain(_gather(hidden, text_to_seq), ("batch", "length", "embed"))
        return self.llm.logits(hidden)

    # ------------------------------------------------------------------ generation
    # One path for evaluation, ``frejax.inference.predict`` and its token cache: the prompt up
    # to the video placeholder and the visual tokens (question-independent, so a
    # cache may keep it), then the rest of the prompt, then greedy decoding.

    def prefill_video(self, visual: CompressedTokens, prefix_tokens: jax.Array,
                      cache_len: int) -> tuple[Any, jax.Array]:
        """Text before the placeholder ``(B, P)`` and the M visual places -> (cache, next position).

        The same embedding, masking and positions as the training splice: masked
        visual padding takes no position. The cache has ``cache_len`` slots.
        """
        vis, vis_mask = self.visual_embeds(visual)
        text = self.llm.embed(prefix_tokens)
        embeds = jnp.concatenate([text, vis.astype(text.dtype)], axis=1)
        valid = jnp.concatenate([jnp.ones(prefix_tokens.shape, bool), vis_mask], axis=1)
        b, p = prefix_tokens.shape
        source = jnp.broadcast_to(jnp.arange(valid.shape[1]), valid.shape)
        positions = self._positions(valid, source, p, visual.places)
        cache = self.llm.init_cache(b, cache_len)
        _, cache = self.llm(embeds, positions, valid, cache, jnp.zeros((b,), jnp.int32),
                            return_hidden=True, layer_inputs=self._layer_inputs(visual, p))
        # Text goes on one past the largest position (the count of valid places in 1D).
        top = jnp.where(valid.reshape(valid.shape + (1,) * (positions.ndim - 2)), positions, -1)
        return cache, (jnp.max(top.reshape(b, -1), axis=1) + 1).astype(jnp.int32)

    def prefill_text(self, cache: Any, next_position: jax.Array, first_slot: jax.Array,
                     tokens: jax.Array, length: jax.Array) -> tuple[Any, jax.Array]:
        """The prompt after the placeholder ``(B, Lq)``, ``length`` valid -> (cache, first token).

        Writes from ``first_slot`` on; returns the greedy token predicted after
        the last valid one.
        """
        lq = tokens.shape[1]
        valid = jnp.arange(lq)[None] < length[:, None]
        positions = next_position[:, None] + jnp.arange(lq, dtype=jnp.int32)[None]
        hidden, cache = self.llm(self.llm.embed(tokens), positions, valid, cache, first_slot,
                                 return_hidden=True)
        last = jnp.maximum(length - 1, 0)
        last_hidden = hidden[jnp.arange(hidden.shape[0]), last][:, None]
        return cache, jnp.argmax(self.llm.logits(last_hidden)[:, 0], axis=-1).astype(jnp.int32)

    def decode(self, cache: Any, token: jax.Array, slot: jax.Array, position: jax.Array,
               max_new_tokens: int, eos_id: int | None = None) -> jax.Array:
        """Greedy decoding from ``token`` ``(B,)`` -> ``(B, max_new_tokens)`` int32.

        ``token`` is the first new token; each step writes at ``slot`` with RoPE
        ``position``. After ``eos_id`` every token is ``eos_id``.
        """
        if max_new_tokens < 1:
            raise ValueError(f"generate: max_new_tokens must be >= 1, got {max_new_tokens}")
        b = token.shape[0]
        done = (token == eos_id) if eos_id is not None else jnp.zeros((b,), bool)
        graphdef, state = nnx.split(self.llm)

        def step(carry, _):
            cache, token, slot, position, done = carry
            llm = nnx.merge(graphdef, state)
            logits, cache = llm(llm.embed(token[:, None]), position[:, None],
                                jnp.ones((b, 1), bool), cache, slot)
            nxt = jnp.argmax(logits[:, 0], axis=-1).astype(jnp.int32)
            if eos_id is not None:
                nxt = jnp.where(done, eos_id, nxt)
                done = done | (nxt == eos_id)
            return (cache, nxt, slot + 1, position + 1, done), nxt

        _, rest = jax.lax.scan(step, (cache, token, slot, position, done), None,
                               length=max_new_tokens - 1)
        return jnp.concatenate([token[:, None], rest.T], axis=1)

    def generate(self, batch: dict[str, jax.Array], max_new_tokens: int, *, prefix_len: int,
                 eos_id: int | None = None,
                 visual: CompressedTokens | None = None) -> jax.Array:
        """Greedy answers to a batch of prompts -> ``(batch, max_new_tokens)`` int32.

        ``prefix_len`` (static): the text tokens before the placeholder, the same
        in every row (the chat template's start: the video sits in the first
        turn). Text at positions >= ``prompt_len`` is not read.
        """
        if visual is None:
            visual = self.encode_video(batch)
        tokens = batch["tokens"]
        p, m = int(prefix_len), self.num_visual_tokens
        rest = tokens[:, p + 1:]  # after the placeholder
        length = jnp.clip(batch["prompt_len"] - p - 1, 0, rest.shape[1])
        cache, next_position = self.prefill_video(visual, tokens[:, :p],
                                                  p + m + rest.shape[1] + max_new_tokens)
        first_slot = jnp.full((tokens.shape[0],), p + m, jnp.int32)
        cache, token = self.prefill_text(cache, next_position, first_slot, rest, length)
        return self.decode(cache, token, first_slot + length, next_position + length,
                           max_new_tokens, eos_id)
