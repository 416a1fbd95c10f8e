"""The inference engine: a model's encode, compress, prefill and decode on a run's mesh.

Every tool that answers questions about videos (``predict``, ``benchmark_eval``,
the token cache, streaming) runs the model through one ``Engine``:

    run = Run(config, devices=FIT)
    restored = run.restore(checkpoint, params_only=True)
    engine = Engine(run, restored.params, max_new_tokens=16)
    visual, seconds = engine.call(engine.encode, frames, frame_mask)

Each stage is a pure function of ``(params, arrays)`` jitted once (per static
length), called inside the run's scope (mesh and axis rules) and timed to
completion. Work that does not depend on the question (compressed tokens, the
LLM cache of the prompt up to the video) is kept per video in ``self.cache``.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from frejax.compression import CompressedTokens
from frejax.inference import streaming
from frejax.inference import token_cache
from frejax.training import train_state
from frejax.training.run import Run


class Engine:
    """A model's inference stages, jitted once, on ``run``'s mesh.

    Args:
      run: the run context (mesh, axis rules, tokenizer, config).
      params: the model's params (pure dict), placed on ``run.mesh``.
      max_new_tokens: answer length limit; 0: ``config.eval.max_new_tokens``.
      cache: the per-video cache (a new one by default).
    """

    def __init__(self, run: Run, params: Any, *, max_new_tokens: int = 0,
                 cache: token_cache.VideoTokenCache | None = None):
        self.run, self.params = run, params
        self.config, self.tokenizer, self.mesh = run.config, run.tokenizer, run.mesh
        self.max_new_tokens = int(max_new_tokens or self.config.eval.max_new_tokens)
        self.cache = cache if cache is not None else token_cache.VideoTokenCache()
        model = nnx.eval_shape(
            lambda: train_state.create_model(self.config, self.tokenizer, seed=0))
        self.graphdef = nnx.graphdef(model)
        self.num_visual = model.num_visual_tokens        # M, the LLM's visual length
        self.full_visual = model.full_visual_tokens      # T * N
        self.tokens_used = model.visual_tokens_used      # tokens the compressor fills
        self.chunk_frames = model.geometry.frames
        eos = self.tokenizer.eos_id
        self.frame_tokens = jax.jit(functools.partial(_frame_tokens, self.graphdef))
        self.compress = jax.jit(functools.partial(_compress, self.graphdef))
        self.encode = jax.jit(functools.partial(_encode, self.graphdef))
        self.prefill_video = jax.jit(functools.partial(_prefill_video, self.graphdef),
                                     static_argnames="max_len")
        self.prefill_text = jax.jit(functools.partial(_prefill_text, self.graphdef))
        self.prefill = jax.jit(functools.partial(_prefill, self.graphdef),
                               static_argnames="max_len")
        self.decode = jax.jit(functools.partial(_decode, self.graphdef, self.max_new_tokens,
                                                eos))

    def call(self, stage, *args, **kwargs) -> tuple[Any, float]:
        """Runs ``stage(self.params, *args)`` in the run's scope -> (its output, seconds)."""
        start = time.perf_counter()
        with self.run:
            out = jax.block_until_ready(stage(self.params, *args, **kwargs))
        return out, time.perf_counter() - start

    def chunked_compressor(self) -> streaming.ChunkedVideoCompressor:
        """Encoder and compressor over videos longer than the model's clip, chunk by chunk."""
        model = nnx.merge(self.graphdef, self.params)
        return streaming.ChunkedVideoCompressor.from_model(model, scope=self.run)


# ----------------------------------------------------------------------------
# The stages as pure functions of (params, arrays).
# ----------------------------------------------------------------------------


def _frame_tokens(graphdef, params, frames):
    """``(B, T, H, W, 3)`` uint8 (or cached latents) -> what the compressor reads ``(B, T, N, D)``."""
    return nnx.merge(graphdef, params).frame_tokens(frames)


def _compress(graphdef, params, latents, frame_mask):
    """Latents ``(B, T, N, D)`` -> ``CompressedTokens`` ``(B, M, D)``."""
    model = nnx.merge(graphdef, params)
    return model.compressor(latents, frame_mask, places=model.needs_places)


def _encode(graphdef, params, frames, frame_mask):
    """Frames and mask -> ``CompressedTokens`` in one program (``VideoMLLM.encode_video``)."""
    return nnx.merge(graphdef, params).encode_video(dict(frames=frames, frame_mask=frame_mask))


def _prefill_video(graphdef, params, visual, prefix_tokens, *, max_len):
    """``VideoMLLM.prefill_video``: the question-independent start, cacheable per video."""
    return nnx.merge(graphdef, params).prefill_video(visual, prefix_tokens, max_len)


def _prefill_text(graphdef, params, cache, next_position, first_slot, tokens, length):
    """``VideoMLLM.prefill_text`` on the prompt after the placeholder -> (cache, first token)."""
    return nnx.merge(graphdef, params).prefill_text(cache, next_position, first_slot, tokens,
                                                    length)


def _prefill(graphdef, params, visual: CompressedTokens, prefix, rest, length, *, max_len):
    """Both prefills in one program for a batch sharing ``prefix`` ``(B, P)``.

    -> (cache, first token, next slot, next position).
    """
    model = nnx.merge(graphdef, params)
    cache, next_position = model.prefill_video(visual, prefix, max_len)
    b, p = prefix.shape
    first_slot = jnp.full((b,), p + model.num_visual_tokens, jnp.int32)
    cache, token = model.prefill_text(cache, next_position, first_slot, rest, length)
    return cache, token, first_slot + length, next_position + length


def _decode(graphdef, max_new, eos_id, params, cache, token, slot, position):
    """``VideoMLLM.decode``: greedy decoding through the cache -> ``(B, max_new)``."""
    return nnx.merge(graphdef, params).decode(cache, token, slot, position, max_new, eos_id)
