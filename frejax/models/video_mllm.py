"""Video MLLM: ViT per frame -> compressor -> projector -> LLM.

Batch contract (a dict of arrays):
  frames      (batch, T, H, W, 3) uint8
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
        self.video_token_id = int(video_token_id)
        self.dtype = dtype
        self.encoder = ViT(model_cfg.vision, **kw)
        self.geometry = VideoGeometry(int(num_frames), self.encoder.grid, self.encoder.width)
        budget = resolve_budget(self.geometry, int(compressor_cfg.get("budget", 0) or 0),
                                float(compressor_cfg.get("ratio", 0.0) or 0.0))
        self.compressor = compression.build(
            compressor_cfg["name"], self.geometry, budget,
            compression.section_options(compressor_cfg), rngs=rngs)
        self.llm = LLM(model_cfg.llm, vocab_size=vocab_size, **kw)
        projector_cfg = model_cfg.get("projector", None)
        hidden = int(projector_cfg.get("hidden", 0) or 0) if projector_cfg is not None else 0
        self.projector = Projector(self.encoder.width, self.llm.width, hidden, **kw)

    @property
    def num_visual_tokens(self) -> int:
        """Static M: visual places in the LLM sequence."""
        return self.compressor.num_tokens

    @property
    def full_visual_tokens(self) -> int:
        """T * N: visual tokens without compression."""
        return self.geometry.full_tokens

    @property
    def visual_tokens_used(self) -> int:
        return self.compressor.num_valid_tokens

    def encode_video(self, batch: dict[str, jax.Array]) -> CompressedTokens:
        """Frames -> compressed vision tokens ``(batch, M, vision_width)``, mask ``(batch, M)``."""
        latents = self.encoder(batch["frames"])
        frame_mask = batch.get("frame_mask")
        out = self.compressor(latents, frame_mask)
        return CompressedTokens(sharding.constrain(out.tokens, ("batch", "tokens", "embed")),
                                out.mask.astype(bool))

    def _splice(self, tokens: jax.Array, text_mask: jax.Array, visual: CompressedTokens):
        """Embeds and splices. Returns embeds ``(B, S, E)``, valid ``(B, S)``,
        positions ``(B, S)`` and text_to_seq ``(B, L)`` (placeholder -> last valid visual place)."""
        m = visual.tokens.shape[1]
        if m != self.num_visual_tokens:
            raise ValueError(f"video_mllm: {m} visual tokens, expected {self.num_visual_tokens}")
        vis_mask = visual.mask.astype(bool)
        vis = self.projector(visual.tokens) * vis_mask[..., None].astype(self.dtype)
        text = self.llm.embed(tokens)
        source, text_to_seq = splice_indices(tokens, self.video_token_id, m)
        embeds = _gather(jnp.concatenate([text, vis.astype(text.dtype)], axis=1), source)
        embeds = sharding.constrain(embeds, ("batch", "length", "embed"))
        valid = _gather(jnp.concatenate([text_mask.astype(bool), vis_mask], axis=1), source)
        positions = jnp.maximum(jnp.cumsum(valid, axis=1, dtype=jnp.int32) - 1, 0)
        # The placeholder predicts from the last valid place up to the end of the visual block.
        p = jnp.argmax(tokens == self.video_token_id, axis=1)[:, None]
        j = jnp.arange(valid.shape[1])[None]
        last_visual = jnp.max(jnp.where(valid & (j < p + m), j, 0), axis=1, keepdims=True)
        text_to_seq = jnp.where(jnp.arange(tokens.shape[1])[None] == p, last_visual, text_to_seq)
        return embeds, valid, positions, text_to_seq

    def __call__(self, batch: dict[str, jax.Array],
                 visual: CompressedTokens | None = None) -> jax.Array:
        """Text-aligned logits ``(batch, L, vocab)`` float32.

        ``visual`` (from ``encode_video``) skips the encoder and compressor.
        """
        if visual is None:
            visual = self.encode_video(batch)
        embeds, valid, positions, text_to_seq = self._splice(
            batch["tokens"], batch["text_mask"], visual)
        hidden, _ = self.llm(embeds, positions, valid, return_hidden=True)
        hidden = sharding.constrain(_gather(hidden, text_to_seq), ("batch", "length", "embed"))
        return self.llm.logits(hidden)

    def generate(self, batch: dict[str, jax.Array], max_new_tokens: int, *,
                 eos_id: int | None = None,
                 visual: CompressedTokens | None = None) -> jax.Array:
        """Greedy decoding through the KV cache -> ``(batch, max_new_tokens)`` int32.

        Prefills the spliced prompt (text at positions >= ``prompt_len`` masked
        out), then decodes one token per step; example ``b`` writes at the slot
        after its last valid prompt place. After ``eos_id`` every token is ``eos_id``.
        """
        if max_new_tokens < 1:
            raise ValueError(f"generate: max_new_tokens must be >= 1, got {max_new_tokens}")
        if visual is None:
            visual = self.encode_video(batch)
        tokens = batch["tokens"]
        b, length = tokens.shape
        prompt_mask = (batch["text_mask"].astype(bool)
                       & (jnp.arange(length)[None] < batch["prompt_len"][:, None]))
        embeds, valid, positions, _ = self._splice(tokens, prompt_mask, visual)
        seq_len = embeds.shape[1]
        cache = self.llm.init_cache(b, seq_len + max_new_tokens)
        hidden, cache = self.llm(embeds, positions, valid, cache,
                                 jnp.zeros((b,), jnp.int32), return_hidden=True)
        last = jnp.max(jnp.where(valid, jnp.arange(seq_len)[None], 0), axis=1)  # (batch,)
        last_hidden = hidden[jnp.arange(b), last][:, None]
        token = jnp.argmax(self.llm.logits(last_hidden)[:, 0], axis=-1).astype(jnp.int32)
        done = (token == eos_id) if eos_id is not None else jnp.zeros((b,), bool)
        slot = (last + 1).astype(jnp.int32)
        position = valid.sum(axis=1, dtype=jnp.int32)

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
