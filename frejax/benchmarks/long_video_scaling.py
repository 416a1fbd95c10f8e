"""Long-video scaling: encoder + compressor cost and device memory from 64 to 4,096 frames.

Three ways to turn a T-frame video into Fre-Res tokens, side by side in one process:

  streamed  ``frejax.inference.streaming``: chunks of the model's clip length, one jitted
            program per chunk, each chunk's tokens copied to the host while the
            next one runs. The device holds one chunk's working set.
  whole     one program over all T frames (the model built for T frames).
  whole+ec  the same with ``model.vision.encode_chunk``: the encoder maps over
            chunks (``lax.map``) inside the one program, but the frames and the
            latents of the whole video are still on the device.

Device memory of the one-program paths is XLA's accounting of each compiled
program (arguments + outputs + temporaries, ``program_memory``): the bytes one
call holds on the accelerator. ``streamed`` is measured while it runs, at every
length: the largest total of live device arrays seen between chunks (params,
frames and tokens in flight; arrays alive before the video started are not
counted) plus the chunk program's temporaries, so a chunk
kept on the device by mistake shows up as growth. The tokens accumulate on the
host (the ``host tokens`` column), at ``1/ratio`` of the latents. With
``--compile_only`` nothing runs and the streamed column is the chunk program's
accounting, the same program at every length. On a GPU or TPU the allocator's own peak is printed
too. Times are wall-clock medians (compile excluded), random frames.

    python -m frejax.benchmarks.long_video_scaling                  # the main job's model (runs)
    python -m frejax.benchmarks.long_video_scaling --config_arg=scale=pod --compile_only \\
        --lengths=512,4096                                   # SigLIP-So400m-sized encoder

Target: the 4,096-frame compressor path's peak device memory within 2x of the
512-frame one.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc


import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from frejax.benchmarks.dct_and_compressor import median_seconds
from configs import long_video
from frejax import config_lib
from data_pipelines import datasets as data_lib
from frejax.inference import streaming
from frejax.training import train_state

PATHS = ("streamed", "whole", "whole+ec")


def _model_for(config, frames: int, tokenizer, encode_chunk: int = 0, abstract: bool = True):
    c = config.copy_and_resolve_references()
    c.data.num_frames = frames
    c.model.vision.encode_chunk = encode_chunk
    make = functools.partial(train_state.create_model, c, tokenizer, seed=0)
    return nnx.eval_shape(make) if abstract else make()


def _frames(rng: np.random.Generator, num: int, size: int):
    """Random frames one at a time (a decoder's stream): the video is never held whole."""
    for _ in range(num):
        yield rng.integers(0, 256, (size, size, 3), np.uint8)


def _allocator_peak() -> int | None:
    stats = jax.devices()[0].memory_stats()
    return None if not stats else int(stats.get("peak_bytes_in_use", 0)) or None


def _live_device_bytes() -> int:
    return sum(a.nbytes for a in jax.live_arrays())


def _streamed_live_peak(chunked, chunks) -> int:
    """The most device bytes one streamed video holds between chunks (measured): its params
    plus what the run keeps alive above the arrays that were alive before it started."""
    gc.collect()
    before = peak = _live_device_bytes()
    for _ in chunked.iter_tokens(chunks):
        peak = max(peak, _live_device_bytes())
    params = sum(x.nbytes for x in jax.tree.leaves(chunked.params))
    return params + peak - before


def _layout(model, params) -> tuple:
    """The compressor's plan (Fre-Res) and parameter shapes: equal layouts compute one method."""
    plan = getattr(model.compressor, "plan", None)
    layout = None if plan is None else dataclasses.replace(plan, frames=0, budget=0,
                                                           num_segments=0)
    return layout, jax.tree.map(jnp.shape, params["compressor"])


def measure(config, lengths: list[int], compile_only: bool, repeats: int,
            max_whole_run: int) -> list[dict]:
    tokenizer = data_lib.make_tokenizer(config)
    clip = config.data.num_frames
    size = config.model.vision.image_size
    chunk_model = _model_for(config, clip, tokenizer, abstract=compile_only)
    graphdefs, params = streaming.split_stages(chunk_model)
    chunked = streaming.ChunkedVideoCompressor(graphdefs, params, clip)
    chunk_memory = chunked.memory_analysis(size)
    rows = []
    for t in lengths:
        if t % clip:
            raise ValueError(f"--lengths: {t} is not a multiple of the clip length {clip}")
        row = {"frames": t}
        whole_models = {path: _model_for(config, t, tokenizer, encode_chunk)
                        for path, encode_chunk in (("whole", 0), ("whole+ec", clip))}
        whole_model = whole_models["whole"]
        row["tokens"] = whole_model.compressor.num_tokens
        row["full_tokens"] = whole_model.full_visual_tokens
        row["token_bytes"] = row["tokens"] * whole_model.geometry.embed * 4
        row["streamed"] = dict(chunk_memory)
        if not compile_only:
            rng = np.random.default_rng(0)
            run = lambda: chunked(streaming.chunk_frames(_frames(rng, t, size), clip))  # noqa: E731
            out = run()  # warm-up (compiles once, on the first length)
            assert out.tokens.shape[0] == row["tokens"], (out.tokens.shape, row["tokens"])
            live = _streamed_live_peak(chunked, streaming.chunk_frames(_frames(rng, t, size),
                                                                       clip))
            row["streamed"] = dict(live_peak=live, temporaries=chunk_memory["temporaries"],
                                   peak=live + chunk_memory["temporaries"])
            row["streamed"]["seconds"] = median_seconds(run, repeats=repeats, warmup=0)
        frames = jax.ShapeDtypeStruct((1, t, size, size, 3), jnp.uint8)
        mask = jax.ShapeDtypeStruct((1, t), jnp.bool_)
        for path, model in whole_models.items():
            defs, whole_params = streaming.split_stages(model)
            if _layout(model, whole_params) != _layout(chunk_model, params):
                raise ValueError(
                    f"--lengths {t}: the budget gives {t} frames another compressor layout"
                    f" (other parameters) than the {clip}-frame clip the chunks use, so the"
                    f" paths would not compute the same method; use a longer clip"
                    f" (data.num_frames) or a lower compressor.ratio")
            fn = jax.jit(functools.partial(streaming.encode_and_compress, defs))
            compiled = fn.lower(params, frames, mask).compile()
            row[path] = streaming.program_memory(compiled)
            if not compile_only and t <= max_whole_run:
                video = jnp.asarray(np.random.default_rng(0).integers(
                    0, 256, (1, t, size, size, 3), np.uint8))
                ones = jnp.ones((1, t), bool)
                row[path]["seconds"] = median_seconds(compiled, params, video, ones,
                                                      repeats=repeats)
        row["allocator_peak"] = _allocator_peak()
        rows.append(row)
        print(_format_row(row), flush=True)
    return rows


def _mib(n: float) -> str:
    return f"{n / 2**20:9.1f}"


def _format_row(row: dict) -> str:
    cells = [f"{row['frames']:>6} {row['tokens']:>7} {_mib(row['token_bytes'])}"]
    for path in PATHS:
        r = row[path]
        secs = f"{r['seconds'] * 1e3:9.1f}" if "seconds" in r else f"{'-':>9}"
        cells.append(f"{_mib(r['peak'])} {secs}")
    return " | ".join(cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config_arg", default="", help="arg of configs/long_video.py")
    parser.add_argument("--lengths", default="64,128,256,512,1024,2048,4096")
    parser.add_argument("--compile_only", action="store_true",
                        help="XLA memory accounting only (abstract params, nothing runs)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max_whole_run", type=int, default=4096,
                        help="longest video the one-program paths are also timed on")
    args = parser.parse_args()
    config = long_video.get_config(args.config_arg or None)
    config_lib.validate(config)
    lengths = [int(x) for x in args.lengths.split(",")]
    v = config.model.vision
    print(f"{jax.devices()[0].platform}; encoder {v.image_size}px / patch {v.patch_size},"
          f" width {v.width} x {v.depth}; {config.compressor.name} at"
          f" {config.compressor.ratio:g}x; clip (chunk) {config.data.num_frames} frames")
    print(f"{'frames':>6} {'tokens':>7} {'host MiB':>9} | "
          + " | ".join(f"{p + ' MiB':>9} {'ms':>9}" for p in PATHS))
    rows = measure(config, lengths, args.compile_only, args.repeats, args.max_whole_run)
    by_len = {r["frames"]: r for r in rows}
    if 512 in by_len and 4096 in by_len:
        a, b = by_len[512], by_len[4096]
        print("4096 / 512 frames, peak device memory: " + ", ".join(
            f"{p} {b[p]['peak'] / a[p]['peak']:.2f}x" for p in PATHS)
              + f"; host tokens {b['token_bytes'] / a['token_bytes']:.1f}x (target: streamed <= 2x)")
    if any(r["allocator_peak"] for r in rows):
        print("allocator peak (whole process): "
              + ", ".join(f"{r['frames']}: {_mib(r['allocator_peak']).strip()} MiB" for r in rows))


if __name__ == "__main__":
    main()
