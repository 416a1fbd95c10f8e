"""Times the temporal DCT (fft vs matmul) and the Fre-Res split against a ViT-S/16 encoder.

The claim checked: the parameter-free Fre-Res split (segments, anchors,
residuals, pooling, DCT) costs a few percent of the vision encoder that
produced its latents (target < 3%). Both run jitted on the same frames;
times are medians after a warmup, with ``block_until_ready``.

    python -m frejax.benchmarks.dct_and_compressor [--frames 16] [--repeats 5]
    python -m frejax.benchmarks.dct_and_compressor
"""

from __future__ import annotations

import argparse
import math
import statistics
import time


import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from frejax import reporting
from frejax.compression import build
from frejax.compression import dct as dct_lib
from frejax.compression.base import VideoGeometry, resolve_budget
from frejax.compression.budget import make_plan, resolve_options
from frejax.compression.fre_res import fre_res_parts


def median_seconds(fn, *args, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn(*args)`` (already jitted), compile and warmup excluded."""
    return reporting.timed_median(lambda: fn(*args), repeats, warmup)[1]


def median_step_seconds(step, state, batch, *, repeats: int = 5) -> float:
    """Median wall time of a train step that donates its state, after one warm-up step."""
    state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        state, metrics = step(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# --------------------------------------------------------------------------- ViT-S/16 stand-in


def vit_params(rng: np.random.Generator, *, image: int = 224, patch: int = 16, width: int = 384,
               depth: int = 12, mlp: int = 1536) -> dict:
    """Random ViT-S/16 weights (numpy; the values do not matter for timing)."""
    def w(*shape):
        return jnp.asarray(rng.normal(0, 1 / math.sqrt(shape[0]), shape), jnp.float32)

    tokens = (image // patch) ** 2
    layers = [dict(qkv=w(width, 3 * width), out=w(width, width), fc1=w(width, mlp),
                   fc2=w(mlp, width)) for _ in range(depth)]
    return dict(patch=w(patch * patch * 3, width), pos=w(tokens, width), layers=layers)


def vit_forward(params: dict, frames: jax.Array, *, patch: int = 16, heads: int = 6) -> jax.Array:
    """``(frames, H, W, 3)`` -> latents ``(frames, tokens, width)``; pre-LN, no class token."""
    f, h, w, c = frames.shape
    x = frames.reshape(f, h // patch, patch, w // patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
    x = x.reshape(f, (h // patch) * (w // patch), patch * patch * c) @ params["patch"]
    x = x + params["pos"]
    width = x.shape[-1]

    def norm(v):
        mean = v.mean(-1, keepdims=True)
        return (v - mean) * jax.lax.rsqrt(((v - mean) ** 2).mean(-1, keepdims=True) + 1e-6)

    for layer in params["layers"]:
        q, k, v = jnp.split(norm(x) @ layer["qkv"], 3, axis=-1)
        q, k, v = (a.reshape(f, -1, heads, width // heads) for a in (q, k, v))
        att = jax.nn.softmax(jnp.einsum("fqhd,fkhd->fhqk", q, k) / math.sqrt(width // heads))
        x = x + jnp.einsum("fhqk,fkhd->fqhd", att, v).reshape(f, -1, width) @ layer["out"]
        x = x + jax.nn.gelu(norm(x) @ layer["fc1"]) @ layer["fc2"]
    return norm(x)


# --------------------------------------------------------------------------- benchmarks


def bench_dct(repeats: int) -> None:
    print("Temporal DCT of ViT-S/16 latents (1 video, 196 tokens x 384), jitted, median ms")
    print(f"{'T':>4} {'K':>4} {'fft':>9} {'matmul':>9} {'fft/matmul':>11}  auto")
    rng = np.random.default_rng(0)
    for length, keep in [(7, 2), (15, 4), (31, 8), (63, 16), (127, 32)]:
        x = jnp.asarray(rng.normal(size=(1, length, 196, 384)), jnp.float32)
        ms = {}
        for method in ("fft", "matmul"):
            fn = jax.jit(lambda v, m=method: dct_lib.dct(v, axis=1, num_coeffs=keep, method=m))
            ms[method] = 1e3 * median_seconds(fn, x, repeats=repeats)
        auto = dct_lib.choose_method(length, keep)
        print(f"{length:>4} {keep:>4} {ms['fft']:>9.2f} {ms['matmul']:>9.2f}"
              f" {ms['fft'] / ms['matmul']:>11.2f}  {auto}")


def bench_compressor(frames: int, repeats: int) -> None:
    rng = np.random.default_rng(1)
    params = vit_params(rng)
    video = jnp.asarray(rng.uniform(size=(frames, 224, 224, 3)), jnp.float32)
    encoder = jax.jit(vit_forward)
    latents = encoder(params, video)[None]  # (1, T, 196, 384)
    mask = jnp.ones((1, frames), bool)
    geometry = VideoGeometry(frames, (14, 14), 384)
    encoder_s = median_seconds(encoder, params, video, repeats=repeats)
    print(f"\nViT-S/16 encoder on {frames} frames of 224x224 (12 layers, width 384, 6 heads):"
          f" {1e3 * encoder_s:.1f} ms median")
    print(f"{'compressor (parameter-free split)':<44} {'plan':<30} {'ms':>8} {'/ encoder':>10}")
    cases = [("fre_res absorbed, ratio 4", 4.0, dict(output="absorbed")),
             ("fre_res absorbed, ratio 8", 8.0, dict(output="absorbed")),
             ("fre_res dual, ratio 8", 8.0, dict(output="dual")),
             ("fre_res dual energy-alloc, ratio 8", 8.0, dict(output="dual", allocation="energy")),
             ("fre_res absorbed energy anchor, ratio 8", 8.0,
              dict(output="absorbed", anchor="energy"))]
    for label, ratio, options in cases:
        options = resolve_options(options)  # every option, at its default where not given
        plan = make_plan(geometry, resolve_budget(geometry, ratio=ratio), options)
        fn = jax.jit(lambda z, m, p=plan, o=options: fre_res_parts(
            z, m, plan=p, anchor=o["anchor"]))
        seconds = median_seconds(fn, latents, mask, repeats=repeats)
        desc = f"L={plan.segment_len} K={plan.num_coeffs} p={plan.pool} M={plan.total_tokens}"
        print(f"{label:<44} {desc:<30} {1e3 * seconds:>8.2f} {100 * seconds / encoder_s:>9.2f}%")
    # For reference: the whole module, absorber included (not parameter-free).
    model = build("fre_res", geometry, resolve_budget(geometry, ratio=8.0), None, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    fn = jax.jit(lambda s, z, m: nnx.merge(graphdef, s)(z, m))
    seconds = median_seconds(fn, state, latents, mask, repeats=repeats)
    plan = model.plan
    desc = f"L={plan.segment_len} K={plan.num_coeffs} p={plan.pool} M={plan.total_tokens}"
    label = "fre_res absorbed + absorber, ratio 8 (full)"
    print(f"{label:<44} {desc:<30} {1e3 * seconds:>8.2f} {100 * seconds / encoder_s:>9.2f}%")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16, help="video frames T")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs (median)")
    args = parser.parse_args(argv)
    print(f"backend: {jax.default_backend()}, devices: {jax.device_count()},"
          f" jax {jax.__version__}\n")
    bench_dct(args.repeats)
    bench_compressor(args.frames, args.repeats)


if __name__ == "__main__":
    main()
