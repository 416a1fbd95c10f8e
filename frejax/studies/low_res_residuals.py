r"""Less encoder time for the frames Fre-Res keeps only as residuals: ``python -m frejax.studies.low_res_residuals``.

    python -m frejax.studies.low_res_residuals --out=docs/low_res_residuals
    python -m frejax.studies.low_res_residuals --videos=/data/clips --image_size=224 --out=/tmp/x

A post-encoder compressor pays the encoder for every frame, though Fre-Res keeps most
frames only as residuals against an anchor. The mechanism measured here encodes every
frame at ``--image_size / --factor`` pixels (``factor**2`` fewer patches) and only each
segment's anchor frame (its middle, one per ``--segment_len`` frames) at full
resolution too, then rebuilds every frame's full-grid latents as

    z_hat[t] = z[a] + up(y[t] - y[a])

with ``z`` the full-resolution latents, ``y`` the reduced ones, ``a`` the frame's
anchor and ``up`` nearest-neighbour upsampling to the full grid: static detail from the
full-resolution anchor, the change over time from the cheap frames (the split Fre-Res
itself makes). Beside it, ``low only`` is ``up(y[t])`` (no full-resolution frame at all).

Checked against the full encoder by the model-free analysis's measure
(``kept_information.relative_errors``: error over the window's temporal variation), on
windows of ``--frames`` frames at each clip's own rate, inside shots:

* the rebuilt latents themselves, on the full grid and pooled to the dense-video
  benchmark's 2 x 2 tokens per frame;
* Fre-Res at ``--ratio`` fed the rebuilt latents, against Fre-Res fed the full
  encoder's (both scored against the full encoder's latents).

Cost: XLA's FLOPs per frame of each resolution, and the encoder's measured seconds per
frame on this machine (median of ``--repeats`` batches), scaled to a one-minute 30 fps
clip (1,800 frames). Writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from flax import nnx

from data_pipelines import natural_footage, package_assets
from frejax import cli, compression, reporting
from frejax.studies import kept_information as info
from frejax.studies import latent_cache
from frejax.studies.analyze import load_clip
from frejax.studies.frozen_encoder import Encoder, find_videos

MINUTE_FRAMES = 1800  # one minute at 30 fps, the paper's long-video setting


def anchors(frames: int, segment_len: int) -> np.ndarray:
    """Each frame's anchor: the middle frame of its segment of ``segment_len`` frames (the
    last segment may be shorter)."""
    starts = (np.arange(frames) // segment_len) * segment_len
    lengths = np.minimum(segment_len, frames - starts)
    return starts + (lengths - 1) // 2


def upsample(latents: np.ndarray, grid: tuple[int, int], full: tuple[int, int]) -> np.ndarray:
    """``(..., gh*gw, D)`` tokens on ``grid`` -> ``(..., fh*fw, D)`` by nearest neighbour."""
    gh, gw = grid
    fh, fw = full
    if fh % gh or fw % gw:
        raise ValueError(f"low_res_residuals: grid {grid} does not divide the full grid {full}")
    x = latents.reshape(latents.shape[:-2] + (gh, gw, latents.shape[-1]))
    x = np.repeat(np.repeat(x, fh // gh, axis=-3), fw // gw, axis=-2)
    return x.reshape(latents.shape[:-2] + (fh * fw, latents.shape[-1]))


def rebuild(full: np.ndarray, low: np.ndarray, grid: tuple[int, int], full_grid: tuple[int, int],
            segment_len: int) -> np.ndarray:
    """``z[a] + up(y[t] - y[a])`` for one window: ``full (T, N, D)`` (only the anchor frames
    are read), ``low (T, n, D)``."""
    a = anchors(len(full), segment_len)
    return full[a] + upsample(low - low[a], grid, full_grid)


def seconds_per_frame(encoder: Encoder, batch: int, repeats: int) -> float:
    """Median wall seconds per frame of ``encoder`` over ``repeats`` batches (compiled first)."""
    frames = np.random.default_rng(0).integers(
        0, 256, (batch, encoder.image_size, encoder.image_size, 3), dtype=np.uint8)
    return reporting.timed_median(lambda: encoder(frames, batch=batch), repeats)[1] / batch


def measure(pairs, frames: int, segment_len: int, ratio: float, pooled: tuple[int, int],
            grid: tuple[int, int], low_grid: tuple[int, int]) -> dict:
    """Per-window relative errors of every representation (see the module docstring);
    ``pooled``: the grid the latents are also scored at, area-averaged as the dense-video
    cache pools them (``latent_cache.pool_latents``)."""

    def pool(x):
        return latent_cache.pool_latents(x, grid, grid[0] // pooled[0], "area")

    embed = pairs[0][0].latents.shape[-1]
    geometry = compression.VideoGeometry(frames, grid, embed)
    budget = compression.resolve_budget(geometry, ratio=ratio)
    fre_res = compression.build("fre_res", geometry, budget, None, rngs=nnx.Rngs(0))
    reconstruct = jax.jit(fre_res.reconstruct)
    errors: dict[str, list[float]] = {k: [] for k in (
        "mixed", "low_only", "mixed_pooled", "low_only_pooled", "fre_res_full",
        "fre_res_mixed")}
    windows = []
    for full, low in pairs:
        for idx in info.windows(full.shots, frames, 1):
            z, y = full.latents[idx], low.latents[idx]
            mixed = rebuild(z, y, low_grid, grid, segment_len)
            low_only = upsample(y, low_grid, grid)
            windows.append(dict(clip=full.name, first=int(idx[0])))
            errors["mixed"] += info.relative_errors(z[None], mixed[None]).tolist()
            errors["low_only"] += info.relative_errors(z[None], low_only[None]).tolist()
            zp = pool(z)[None]
            errors["mixed_pooled"] += info.relative_errors(zp, pool(mixed)[None]).tolist()
            errors["low_only_pooled"] += info.relative_errors(zp, pool(low_only)[None]).tolist()
            for key, fed in (("fre_res_full", z), ("fre_res_mixed", mixed)):
                out = np.asarray(reconstruct(jnp.asarray(fed[None], jnp.float32)))
                errors[key] += info.relative_errors(z[None], out).tolist()
    return dict(windows=windows, errors=errors, budget=int(budget))


def run(videos: str, image_size: int, factor: int, frames: int, segment_len: int, ratio: float,
        repeats: int, out: str, command: str) -> list[str]:
    start = time.time()
    if image_size % factor or (image_size // factor) % 14:
        raise ValueError(f"--image_size {image_size} / --factor {factor} must be a multiple of"
                         " DINOv2's 14-pixel patch")
    if not videos:
        videos = package_assets.asset_dir("natural_footage")
        natural_footage.install(videos)
    full_enc, low_enc = Encoder("dinov2_small", image_size), Encoder("dinov2_small",
                                                                     image_size // factor)
    grid, low_grid = tuple(full_enc.grid), tuple(low_enc.grid)
    cache = package_assets.asset_dir("latents")
    os.makedirs(cache, exist_ok=True)
    pairs = []
    for path in find_videos(videos):
        pairs.append((load_clip(path, full_enc, cache), load_clip(path, low_enc, cache)))
    measured = measure(pairs, frames, segment_len, ratio, (2, 2), grid, low_grid)
    if not measured["windows"]:
        raise ValueError(f"no shot of {videos} holds a window of {frames} frames")
    cost = {}
    for name, enc in (("full", full_enc), ("low", low_enc)):
        cost[name] = dict(image_size=enc.image_size, grid=list(enc.grid),
                          gflops_per_frame=enc.flops_per_frame() / 1e9,
                          seconds_per_frame=seconds_per_frame(enc, 32, repeats))
    anchors_per_minute = -(-MINUTE_FRAMES // segment_len)
    minute = dict(
        full=MINUTE_FRAMES * cost["full"]["seconds_per_frame"],
        mixed=MINUTE_FRAMES * cost["low"]["seconds_per_frame"]
        + anchors_per_minute * cost["full"]["seconds_per_frame"],
        low_only=MINUTE_FRAMES * cost["low"]["seconds_per_frame"])
    minute_gflops = dict(
        full=MINUTE_FRAMES * cost["full"]["gflops_per_frame"],
        mixed=MINUTE_FRAMES * cost["low"]["gflops_per_frame"]
        + anchors_per_minute * cost["full"]["gflops_per_frame"],
        low_only=MINUTE_FRAMES * cost["low"]["gflops_per_frame"])
    report = dict(command=command, image_size=image_size, factor=factor, frames=frames,
                  segment_len=segment_len, ratio=ratio, budget=measured["budget"],
                  grid=list(grid), low_grid=list(low_grid),
                  clips={full.name: round(full.fps, 2) for full, _ in pairs},
                  windows=measured["windows"], errors=measured["errors"],
                  median={k: float(np.median(v)) for k, v in measured["errors"].items()},
                  cost=cost, minute_seconds=minute, minute_gflops=minute_gflops,
                  machine=f"{os.cpu_count()} CPU cores ({platform.processor() or 'cpu'})",
                  seconds=round(time.time() - start, 1))
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out + ".json", "w") as f:
        json.dump(report, f, indent=1)
    with open(out + ".md", "w") as f:
        f.write(markdown(report))
    return [out + ".json", out + ".md"]


def markdown(r: dict) -> str:
    med = r["median"]
    n = len(r["windows"])

    def q(key):
        v = np.asarray(r["errors"][key])
        return f"{np.median(v):.3f} ({np.quantile(v, 0.25):.3f} - {np.quantile(v, 0.75):.3f})"

    full, low = r["cost"]["full"], r["cost"]["low"]
    lines = [
        "# Non-anchor frames at reduced resolution: encoder time against information kept", "",
        f"Written by `{r['command']}` ({r['seconds']} s on {r['machine']}).", "",
        f"Frozen DINOv2-S/14. Every frame at {low['image_size']} px ({low['grid'][0]} x"
        f" {low['grid'][1]} patches); each segment's middle frame (one per"
        f" {r['segment_len']} frames) also at {full['image_size']} px ({full['grid'][0]} x"
        f" {full['grid'][1]} patches). Rebuilt: `z[a] + up(y[t] - y[a])`; low only:"
        " `up(y[t])`. Relative error against the full encoder's latents over the window's"
        f" temporal variation (1 = only the temporal mean kept); median (quartiles) over {n}"
        f" windows of {r['frames']} frames at each clip's own rate"
        f" ({', '.join(f'{k} {v} fps' for k, v in r['clips'].items())}).", "",
        "## Information kept", "",
        "| representation | relative error |", "|---|---|",
        f"| rebuilt, {full['grid'][0]} x {full['grid'][1]} tokens per frame | {q('mixed')} |",
        f"| low only, {full['grid'][0]} x {full['grid'][1]} | {q('low_only')} |",
        f"| rebuilt, pooled to 2 x 2 (the dense-video tokens) | {q('mixed_pooled')} |",
        f"| low only, pooled to 2 x 2 | {q('low_only_pooled')} |",
        f"| Fre-Res at {r['ratio']:g}x ({r['budget']} tokens) fed the full encoder | {q('fre_res_full')} |",
        f"| Fre-Res at {r['ratio']:g}x fed the rebuilt latents | {q('fre_res_mixed')} |", "",
        f"Fre-Res's own loss at {r['ratio']:g}x is {med['fre_res_full']:.3f}; fed the rebuilt"
        f" latents it is {med['fre_res_mixed']:.3f} ({med['fre_res_mixed'] - med['fre_res_full']:+.3f}).", "",
        "## Encoder cost", "",
        "| encoder input | GFLOPs per frame | seconds per frame |", "|---|---|---|",
        f"| {full['image_size']} px | {full['gflops_per_frame']:.3f} | {full['seconds_per_frame']:.4f} |",
        f"| {low['image_size']} px | {low['gflops_per_frame']:.3f} | {low['seconds_per_frame']:.4f} |", "",
        f"One minute at 30 fps ({MINUTE_FRAMES} frames):", "",
        "| encoding | encoder GFLOPs | encoder seconds | against full |", "|---|---|---|---|"]
    for key, label in (("full", "every frame at full resolution"),
                       ("mixed", "rebuilt (reduced + one full frame per segment)"),
                       ("low_only", "low only")):
        lines.append(f"| {label} | {r['minute_gflops'][key]:.1f} |"
                     f" {r['minute_seconds'][key]:.2f} |"
                     f" {r['minute_seconds']['full'] / r['minute_seconds'][key]:.2f}x faster |")
    return "\n".join(lines) + "\n"


def main(argv):
    del argv
    cli.quiet_libraries()
    f = flags.FLAGS
    command = cli.command_line("frejax.studies.low_res_residuals", (
        "videos", "image_size", "factor", "frames", "segment_len", "ratio", "repeats", "out"))
    for path in run(f.videos, f.image_size, f.factor, f.frames, f.segment_len, f.ratio,
                    f.repeats, f.out, command):
        print(path)


if __name__ == "__main__":
    flags.DEFINE_string("videos", "", "folders and files of videos, comma-separated (default:"
                        " the natural footage of data_pipelines.natural_footage)")
    flags.DEFINE_integer("image_size", 112, "full resolution in pixels (anchors)")
    flags.DEFINE_integer("factor", 2, "the other frames at image_size / factor pixels")
    flags.DEFINE_integer("frames", 32, "T frames per window")
    flags.DEFINE_integer("segment_len", 16, "frames per anchor (Fre-Res's default segment)")
    flags.DEFINE_float("ratio", 8.0, "Fre-Res's compression ratio T*N / budget")
    flags.DEFINE_integer("repeats", 5, "timed batches per resolution")
    flags.DEFINE_string("out", "workdirs/low_res_residuals", "report prefix (.md, .json)")
    cli.run(main, "frejax.studies.low_res_residuals")
