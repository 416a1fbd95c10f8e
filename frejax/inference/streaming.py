"""Videos of any length in bounded memory: encode and compress chunk by chunk.

A model is built for clips of ``T`` frames (``data.num_frames``): its encoder
and compressor have static shapes. A longer video is cut into chunks of ``T``
frames (the last one padded, its padding masked); each chunk goes through the
encoder and the compressor in one jitted call, and its compressed tokens are
copied to the host while the next chunk runs. The device holds one chunk's
working set, never the whole video's frames or latents, so its memory does not
grow with the video's length; the host holds the compressed tokens, ``1/ratio``
of the latents.

    compressor = ChunkedVideoCompressor.from_model(model)
    frames = video_decode.iter_frames(data, image_size=64)   # one frame at a time
    visual = compressor(chunk_frames(frames, compressor.chunk_frames))

Fre-Res is segment-local (anchors, residual trajectories, the DCT and the
absorber never look across a segment), so when the segment length divides the
chunk and the allocation is ``uniform``, the chunks' tokens are exactly the
tokens of the whole video compressed at once, in chunk-major order (each
chunk's anchors, then its residual-frequency tokens) instead of track-major
order. ``tests/test_streaming.py`` checks this. Methods that look across the
whole clip (uniform frame sampling, energy allocation, temporal merging)
become chunk-local.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from frejax.compression import CompressedTokens, concat_chunks

__all__ = ["ChunkedVideoCompressor", "chunk_frames", "encode_and_compress", "program_memory",
           "split_stages"]


STAGES = ("encoder", "compressor")


def encode_and_compress(graphdefs: dict[str, Any], params: dict[str, Any], frames: jax.Array,
                        frame_mask: jax.Array, places: bool = False) -> CompressedTokens:
    """``(batch, T, H, W, 3)`` uint8, ``(batch, T)`` bool -> compressed ``(batch, M, D)``
    (with ``places``, each token's place for multimodal RoPE).

    ``graphdefs`` and ``params`` hold the model's ``encoder`` and ``compressor``
    only, so the LLM's weights are no argument of this program.
    """
    encoder = nnx.merge(graphdefs["encoder"], params["encoder"])
    compressor = nnx.merge(graphdefs["compressor"], params["compressor"])
    return compressor(encoder(frames), frame_mask, places=places)


def split_stages(model: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """A ``VideoMLLM`` (real or ``nnx.eval_shape``) -> graphdefs and pure params by stage."""
    graphdefs, params = {}, {}
    for stage in STAGES:  # frejax models hold only Params
        graphdefs[stage], state = nnx.split(getattr(model, stage), nnx.Param)
        params[stage] = nnx.to_pure_dict(state)
    return graphdefs, params


def chunk_frames(frames: Iterable[np.ndarray],
                 chunk: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Frames one at a time ``(H, W, 3)`` -> chunks ``(chunk, H, W, 3)``, masks ``(chunk,)``.

    The last chunk is padded with zero frames whose mask is False; a video of
    no frames raises, since it has nothing to compress.
    """
    if chunk < 1:
        raise ValueError(f"chunk_frames: chunk must be >= 1, got {chunk}")
    buffer: np.ndarray | None = None
    filled = 0
    for frame in frames:
        if buffer is None:
            buffer = np.zeros((chunk, *frame.shape), frame.dtype)
        buffer[filled] = frame
        filled += 1
        if filled == chunk:
            yield buffer.copy(), np.ones((chunk,), bool)
            filled = 0
    if buffer is None:
        raise ValueError("chunk_frames: the video has no frames")
    if filled:
        buffer[filled:] = 0
        yield buffer, np.arange(chunk) < filled


class ChunkedVideoCompressor:
    """A trained model's encoder + compressor over videos longer than its clip.

    Args:
      graphdefs: ``{"encoder": ..., "compressor": ...}`` graph definitions.
      params: the same keys, each stage's params (pure states, possibly sharded over ``mesh``).
      chunk_frames: the model's clip length ``T`` (``model.geometry.frames``).
      scope: the run (``frejax.training.run.Run``) whose mesh ``params`` live on,
        entered around every call; None: no mesh.
      places: also give each token's place (a model under multimodal RoPE); a chunk's
        places are moved on by the frames of the chunks before it.
    """

    def __init__(self, graphdefs: dict[str, Any], params: dict[str, Any], chunk_frames: int,
                 scope: Any = None, places: bool = False):
        self.params, self.chunk_frames = params, int(chunk_frames)
        self.scope = scope if scope is not None else contextlib.nullcontext()
        self._step = jax.jit(functools.partial(encode_and_compress, graphdefs, places=places))

    @classmethod
    def from_model(cls, model: Any, scope: Any = None) -> ChunkedVideoCompressor:
        """From a ``VideoMLLM`` (e.g. ``nnx.merge(graphdef, restored_params)``)."""
        return cls(*split_stages(model), model.geometry.frames, scope, model.needs_places)

    def _call(self, fn, *args):
        with self.scope:
            return fn(*args)

    def _device_chunk(self, frames: np.ndarray, mask: np.ndarray) -> CompressedTokens:
        if frames.shape[0] != self.chunk_frames or mask.shape != (self.chunk_frames,):
            raise ValueError(f"chunked compressor: chunks must hold {self.chunk_frames} frames"
                             f" and a mask of that length, got {frames.shape} and {mask.shape}")
        return self._call(self._step, self.params, jnp.asarray(frames[None]),
                          jnp.asarray(mask[None], bool))

    def iter_tokens(self, chunks: Iterable[tuple[np.ndarray, np.ndarray]]
                    ) -> Iterator[CompressedTokens]:
        """Each chunk's tokens ``(M, D)`` and mask ``(M,)`` as host numpy, in order.

        Chunk ``i + 1`` is dispatched before chunk ``i``'s tokens are fetched, so
        the host's decoding and the copy overlap the device's work.
        """
        pending: CompressedTokens | None = None
        for frames, mask in chunks:
            out = self._device_chunk(frames, mask)
            for leaf in jax.tree.leaves(out):
                leaf.copy_to_host_async()
            if pending is not None:
                yield jax.tree.map(lambda x: np.asarray(x)[0], pending)
            pending = out
        if pending is not None:
            yield jax.tree.map(lambda x: np.asarray(x)[0], pending)

    def __call__(self, chunks: Iterable[tuple[np.ndarray, np.ndarray]]) -> CompressedTokens:
        """All chunks' tokens, concatenated chunk-major: host ``(M_total, D)``, ``(M_total,)``."""
        parts = list(self.iter_tokens(chunks))
        if not parts:
            raise ValueError("chunked compressor: no chunks")
        return concat_chunks(parts, self.chunk_frames)

    def memory_analysis(self, image_size: int) -> dict[str, int]:
        """XLA's byte counts for one chunk's program: arguments, outputs, temporaries, peak.

        ``peak`` is their sum: an upper bound on what one call holds on the device.
        It is the same for every video length, since every chunk runs this program.
        """
        frames = jax.ShapeDtypeStruct((1, self.chunk_frames, image_size, image_size, 3),
                                      jnp.uint8)
        mask = jax.ShapeDtypeStruct((1, self.chunk_frames), jnp.bool_)
        compiled = self._call(lambda: self._step.lower(self.params, frames, mask).compile())
        return program_memory(compiled)


def program_memory(compiled: Any) -> dict[str, int]:
    """``compiled.memory_analysis()`` as a dict; ``peak`` = arguments + outputs + temporaries."""
    m = compiled.memory_analysis()
    out = {"arguments": int(m.argument_size_in_bytes), "outputs": int(m.output_size_in_bytes),
           "temporaries": int(m.temp_size_in_bytes)}
    out["peak"] = out["arguments"] + out["outputs"] + out["temporaries"]
    return out
