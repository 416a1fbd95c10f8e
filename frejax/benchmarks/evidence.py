"""Evidence for Fre-Res, side by side: accuracy against visual tokens for every
compressor at matched budgets, the ablations, and the residual energy spectrum.

    python -m frejax.benchmarks.evidence                              # the whole sweep
    python -m frejax.benchmarks.evidence --lengths=long --ratios=8    # a slice of it
    python -m frejax.benchmarks.evidence --preset=smoke --out=/tmp/ev --report_dir=/tmp/ev

Every run is ``python -m frejax.main`` in its own process with the same recipe
and seed; only the compressor settings differ. Runs live in
``<out>/runs/<name>``, and one whose ``results.json`` exists is not run again,
so an interrupted sweep resumes where it stopped. A run that cannot be built
(a budget a method cannot meet, say) is reported as such, with its error, and
the sweep goes on. The report is ``<report_dir>/results.md`` with PNG plots
beside it: accuracy against visual tokens per method, accuracy per question
family per method, residual energy against DCT coefficient index (of the
trained encoder's latents and of the raw pixels).

Two studies train methods again with one setting changed, beside their main
run (``--no_studies`` skips them): at the ablation budget, Fre-Res and
temporal-DCT-only with the background noise held still over each clip instead
of drawn afresh every frame (``data.synthetic.background_noise=clip``), to show what that
noise does to the residual track; on the short clips at 8x, where the budget
buys one segment, the same two with one residual time window instead of two
(``compressor.fre_res.time_windows=1``).

The full sweep trains (2 lengths x 4 ratios x 7 methods + 2 full-token runs +
the ablations) ~70 times; on 2 CPU cores that is days, on one accelerator
hours. Speed and memory are measured by ``frejax/benchmarks/dct_and_compressor.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import subprocess
import sys
import time

import jax
import numpy as np
from flax import nnx

from data_pipelines import datasets as data_lib
from frejax import reporting
from frejax.compression import energy
from frejax.models import vit
from frejax.reporting import REPO
from frejax.training import run as run_lib

CONFIGS = {"short": "configs/short_video.py", "long": "configs/long_video.py"}
# Every registry entry; `full` runs once per length, at ratio 0 (all tokens).
METHODS = ("full", "fre_res", "uniform_frames", "spatial_pool", "fourier_2d", "temporal_merge",
           "temporal_dct_only", "anchors_only")
# The paper's split (Fre-Res's defaults before natural video chose others): the ablations
# below change one thing of it, so each run names it first (a later flag wins).
PAPER = ("--config.compressor.fre_res.anchor=middle",
         "--config.compressor.fre_res.residual=inter_frame",
         "--config.compressor.fre_res.coding=single")
# (label, flag overrides of fre_res at the preset's ablation ratio and length).
ABLATIONS = tuple((label, PAPER + flags) for label, flags in (
    ("paper split: dual track, absorber", ()),
    ("absorbed only (no residual tokens)", ("--config.compressor.fre_res.output=absorbed",)),
    ("plain concatenation (no absorber)", ("--config.compressor.fre_res.absorber.enabled=false",)),
    ("anchor-relative residuals", ("--config.compressor.fre_res.residual=anchor_relative",)),
    ("anchor: first frame", ("--config.compressor.fre_res.anchor=first",)),
    ("anchor: highest energy", ("--config.compressor.fre_res.anchor=energy",)),
    ("K = 1 coefficient", ("--config.compressor.fre_res.num_coeffs=1",)),
    ("K = 2 coefficients", ("--config.compressor.fre_res.num_coeffs=2",)),
    ("one anchor, two time windows (L = 32)", ("--config.compressor.fre_res.segment_len=32",)),
    ("one anchor, one time window (L = 32)", ("--config.compressor.fre_res.segment_len=32",
                                              "--config.compressor.fre_res.time_windows=1")),
    ("absorber window 1", ("--config.compressor.fre_res.absorber.window=1",)),
    ("absorber window 5", ("--config.compressor.fre_res.absorber.window=5",)),
))


@dataclasses.dataclass(frozen=True)
class Study:
    """Methods trained again with one setting changed, reported beside their main runs."""
    slug: str                # run names: <length>-<slug>-<method>-x<ratio>
    title: str               # report section
    text: str                # what changed, for the report
    flags: tuple[str, ...]   # the change
    main_label: str          # the main run's row
    label: str               # the rerun's row


STUDIES = {
    # The benchmark's background noise is drawn afresh every frame: what does it do to the
    # residual track (README, "Every method at matched budgets")?
    "background": Study(
        "static-background", "Static background",
        "The same runs with the background noise drawn once per clip and held still"
        " (`data.synthetic.background_noise=clip`) instead of afresh every frame.",
        ("--config.data.synthetic.background_noise=clip",), "noise every frame", "static"),
    # Where the budget buys one segment, the paper's split cuts its residual track into two
    # time windows by its rule; the rerun keeps one.
    "windows": Study(
        "one-time-window", "Time windows",
        "The budget buys one segment here; the paper's split then cuts its residual track into"
        " two time windows, the rerun is that split with one (`compressor.fre_res.time_windows=1`),"
        " the same token count.",
        PAPER + ("--config.compressor.fre_res.time_windows=1",), "default split",
        "paper split, one time window"),
}
STATIC_BACKGROUND = STUDIES["background"].flags


@dataclasses.dataclass(frozen=True)
class Preset:
    lengths: tuple[str, ...]
    ratios: tuple[int, ...]
    methods: tuple[str, ...]
    ablations: tuple[str, ...]  # labels of ABLATIONS
    ablation_length: str
    ablation_ratio: int
    config_arg: str = ""  # extra config-file arg, e.g. "smoke"
    # (STUDIES key, length, ratio, methods): reruns with the study's flags.
    studies: tuple[tuple[str, str, int, tuple[str, ...]], ...] = ()


PRESETS = {
    "full": Preset(("short", "long"), (2, 4, 8, 16), METHODS,
                   tuple(label for label, _ in ABLATIONS), "long", 8,
                   studies=(("background", "long", 8, ("fre_res", "temporal_dct_only")),
                            ("windows", "short", 8, ("fre_res", "temporal_dct_only")))),
    # Seconds-long runs of the smoke model: checks the sweep, the report and the plots.
    "smoke": Preset(("short",), (4,), ("full", "fre_res", "uniform_frames"),
                    ("absorbed only (no residual tokens)",), "short", 4, config_arg="smoke",
                    studies=(("background", "short", 4, ("fre_res",)),
                             ("windows", "short", 4, ("fre_res",)))),
}


@dataclasses.dataclass(frozen=True)
class Run:
    name: str
    length: str
    method: str
    ratio: int      # 0: full tokens
    flags: tuple[str, ...] = ()
    ablation: str = ""
    study: str = ""  # STUDIES key of a rerun

    @property
    def is_main(self) -> bool:
        """A cell of the method x budget tables (not an ablation or a study's rerun)."""
        return not self.ablation and not self.study


def plan_runs(preset: Preset) -> list[Run]:
    """Every run of ``preset``; the ablations and each study's reruns only when the
    preset's lengths and ratios hold their length and ratio (their main runs)."""
    runs = []
    for length in preset.lengths:
        if "full" in preset.methods:
            runs.append(Run(f"{length}-full", length, "full", 0))
        runs += [Run(f"{length}-{m}-x{r}", length, m, r)
                 for r in preset.ratios for m in preset.methods if m != "full"]
    length, ratio = preset.ablation_length, preset.ablation_ratio
    if length in preset.lengths and ratio in preset.ratios:
        for label, flags in ABLATIONS:
            if label in preset.ablations:
                slug = "".join(c if c.isalnum() else "-" for c in label.lower()).strip("-")
                slug = "-".join(filter(None, slug.split("-")))
                runs.append(Run(f"{length}-ablation-{slug}-x{ratio}", length, "fre_res", ratio,
                                flags, ablation=label))
    for key, length, ratio, methods in preset.studies:
        if length in preset.lengths and ratio in preset.ratios:
            study = STUDIES[key]
            runs += [Run(f"{length}-{study.slug}-{m}-x{ratio}", length, m, ratio, study.flags,
                         study=key) for m in methods if m in preset.methods]
    return runs


def _config_arg(run: Run, preset: Preset) -> str:
    return ",".join(a for a in (preset.config_arg, f"compressor={run.method}",
                                f"ratio={run.ratio}") if a)


def command(run: Run, preset: Preset, out: str) -> list[str]:
    return [sys.executable, "-m", "frejax.main",
            f"--config={CONFIGS[run.length]}:{_config_arg(run, preset)}",
            f"--workdir={os.path.join(out, 'runs', run.name)}",
            "--config.train.progress_bar=False", *run.flags]


def execute(runs: list[Run], preset: Preset, out: str,
            train: bool = True) -> dict[str, dict]:
    """Runs what has no ``results.json`` yet; returns results (or errors) by run name.

    Without ``train`` only finished runs are returned (the rest read "not run").
    """
    results = {}
    for i, run in enumerate(runs, 1):
        workdir = os.path.join(out, "runs", run.name)
        path = os.path.join(workdir, "results.json")
        if not train and not os.path.isfile(path):
            continue
        if train and not os.path.isfile(path):
            os.makedirs(workdir, exist_ok=True)
            start = time.monotonic()
            print(f"[{i}/{len(runs)}] {run.name}", flush=True)
            with open(os.path.join(workdir, "log.txt"), "w") as log:
                done = subprocess.run(command(run, preset, out), cwd=REPO, stdout=log,
                                      stderr=subprocess.STDOUT, check=False)
            print(f"    {'done' if done.returncode == 0 else 'FAILED'} in"
                  f" {time.monotonic() - start:.0f} s", flush=True)
        if os.path.isfile(path):
            with open(path) as f:
                results[run.name] = json.load(f)
        else:
            results[run.name] = {"error": _last_error(os.path.join(workdir, "log.txt"))}
    return results


def _last_error(log_path: str) -> str:
    if not os.path.isfile(log_path):
        return "did not run"
    with open(log_path) as f:
        lines = [line.strip() for line in f if line.strip()]
    errors = [line for line in lines if "Error" in line.split(":")[0]]
    return (errors or lines or ["no output"])[-1][:200]


# ----------------------------------------------------------------------------
# Residual energy spectrum, on the latents of the trained Fre-Res encoder.
# ----------------------------------------------------------------------------


def _run_config(run: Run, preset: Preset):
    """The config a run trains with: its config-file arg, then its ``--config.*`` flags."""
    module = importlib.import_module(CONFIGS[run.length][:-3].replace("/", "."))
    config = module.get_config(_config_arg(run, preset))
    for flag in run.flags:
        key, value = flag.removeprefix("--config.").split("=", 1)
        *path, leaf = key.split(".")
        section = config
        for name in path:
            section = section[name]
        old = section[leaf]
        section[leaf] = (value.lower() == "true") if isinstance(old, bool) else type(old)(value)
    return config


def energy_spectrum(run: Run, preset: Preset, out: str | None,
                    num_videos: int = 64) -> list[float]:
    """Mean share of residual energy per DCT coefficient index (whole clip as one segment).

    Of the latents of the run's trained encoder on its eval clips, or with ``out``
    None of the clips' raw pixels (each patch's pixels as one token): what the
    video itself puts in each frequency, before any encoder.
    """
    config = _run_config(run, preset)
    config.eval.update(num_examples=num_videos, batch_size=min(num_videos, 32))
    with run_lib.Run(config, devices=jax.devices()[:1], shape=(1, 1, 1)) as ctx:
        tokenizer, mesh = ctx.tokenizer, ctx.mesh
        if out is None:
            patch = config.model.vision.patch_size
            params = None
            encode = jax.jit(lambda _, frames: jax.vmap(lambda clip: vit.patchify(
                vit.normalize_pixels(clip), patch))(frames))
        else:
            params = ctx.restore(os.path.join(out, "runs", run.name, "checkpoints"),
                                 params_only=True).params
            graphdef = ctx.setup.graphdef
            encode = jax.jit(lambda p, frames: nnx.merge(graphdef, p).encoder(frames))
        spectra = []
        for batch in data_lib.make_eval_iterator(config, tokenizer, mesh):
            valid = batch["example_valid"].astype(bool)
            latents = encode(params, batch["frames"])
            spectrum = energy.residual_energy_spectrum(latents, batch["frame_mask"])
            spectra.append(np.asarray(spectrum)[valid])
    spectrum = np.concatenate(spectra).mean(0)
    return (spectrum / spectrum.sum()).tolist()


def energy_spectra(runs: list[Run], preset: Preset, results: dict,
                   out: str) -> dict[str, list[float]]:
    """Spectra by label: the trained Fre-Res encoder's and the raw pixels', per background."""
    trained = [r for r in runs if r.method == "fre_res" and not r.ablation
               and r.study in ("", "background") and "accuracy" in results.get(r.name, {})]
    spectra, main = {}, None
    for static in (False, True):
        background = "static background" if static else "noise every frame"
        pick = [r for r in trained if (r.study == "background") == static]
        # The encoder of the main Fre-Res run if it trained, else any Fre-Res run.
        pick = [r for r in pick if (r.length, r.ratio) == (preset.ablation_length,
                                                           preset.ablation_ratio)] or pick
        if pick:
            spectra[f"encoder, {background}"] = energy_spectrum(pick[0], preset, out)
            main = main or pick[0]
    if main:  # the same clips' pixels, with either background (nothing trained)
        for flags, background in (((), "noise every frame"),
                                  (STATIC_BACKGROUND, "static background")):
            clips = dataclasses.replace(main, flags=flags)
            spectra[f"pixels, {background}"] = energy_spectrum(clips, preset, None)
    return spectra


# ----------------------------------------------------------------------------
# Report: markdown tables and PNG plots.
# ----------------------------------------------------------------------------


def _acc(result: dict | None, family: str | None = None) -> str:
    if not result:
        return "not run"
    if "error" in result:
        return "n/a"
    value = result["accuracy"] if family is None else result["accuracy_by_family"].get(family)
    return "-" if value is None else f"{value:.2f}"


def write_report(runs: list[Run], results: dict, spectra: dict[str, list[float]],
                 command_line: str, report_dir: str) -> str:
    os.makedirs(report_dir, exist_ok=True)
    by_name = {r.name: r for r in runs}
    lines = ["# Fre-Res evidence on the embedded benchmark", "",
             f"Written by `python -m frejax.benchmarks.evidence {command_line}`; every number is"
             " exact-match accuracy on the eval split, from one training run with the same"
             " recipe and seed (only the compressor differs).", ""]
    lengths = sorted({r.length for r in runs}, key=list(CONFIGS).index)
    for length in lengths:
        main = [r for r in runs if r.length == length and r.is_main]
        ratios = sorted({r.ratio for r in main if r.ratio})
        methods = list(dict.fromkeys(r.method for r in main if r.ratio))
        full = results.get(f"{length}-full", {})
        tokens = {}  # any finished run at a ratio gives its token count
        for r in main:
            if r.ratio and not tokens.get(r.ratio):
                tokens[r.ratio] = results.get(r.name, {}).get("visual_tokens_per_video")
        full_tokens = next((res["full_visual_tokens_per_video"] for r in main
                            if "accuracy" in (res := results.get(r.name, {}))), "?")
        lines += [f"## {length} clips: accuracy against visual tokens per video", "",
                  f"Full tokens ({full_tokens} per video): accuracy {_acc(full)}.", "",
                  "| method | " + " | ".join(f"{r}x ({tokens.get(r) or '?'} tokens)"
                                           for r in ratios) + " |",
                  "|---|" + "---|" * len(ratios)]
        for m in methods:
            cells = [_acc(results.get(f"{length}-{m}-x{r}")) for r in ratios]
            lines.append(f"| `{m}` | " + " | ".join(cells) + " |")
        families = sorted(next((res["accuracy_by_family"] for r in main
                                if "accuracy" in (res := results.get(r.name, {}))), {}))
        ratio = 8 if 8 in ratios else (ratios[-1] if ratios else 0)
        if families and ratio:
            lines += ["", f"Per question family at {ratio}x:", "",
                      "| method | " + " | ".join(families) + " |",
                      "|---|" + "---|" * len(families),
                      "| `full` | " + " | ".join(_acc(full, f) for f in families) + " |"]
            for m in methods:
                res = results.get(f"{length}-{m}-x{ratio}")
                lines.append(f"| `{m}` | " + " | ".join(_acc(res, f) for f in families) + " |")
        lines += ["", f"![accuracy, {length} clips](accuracy_{length}.png)", ""]
        _plot_accuracy(length, main, results, report_dir)
    ablations = [r for r in runs if r.ablation]
    if ablations:
        base = [r for r in runs if r.is_main and r.method == "fre_res"
                and r.length == ablations[0].length and r.ratio == ablations[0].ratio]
        rows = [("default split (the main fre_res run)", base[0])] if base else []
        rows += [(r.ablation, r) for r in ablations]
        families = sorted(next((results[r.name]["accuracy_by_family"] for _, r in rows
                                if "accuracy_by_family" in results.get(r.name, {})), {}))
        lines += [f"## Ablations ({ablations[0].length} clips, fre_res at {ablations[0].ratio}x)",
                  "", "| variant | overall | " + " | ".join(families) + " |",
                  "|---|---|" + "---|" * len(families)]
        for label, r in rows:
            res = results.get(r.name)
            lines.append(f"| {label} | {_acc(res)} | "
                         + " | ".join(_acc(res, f) for f in families) + " |")
        lines.append("")
    for key, study in STUDIES.items():
        reruns = [r for r in runs if r.study == key]
        if not reruns:
            continue
        length, ratio = reruns[0].length, reruns[0].ratio
        families = sorted(next((res["accuracy_by_family"] for r in runs
                                if r.length == length and r.ratio == ratio
                                and "accuracy_by_family" in (res := results.get(r.name, {}))),
                               {}))
        lines += [f"## {study.title} ({length} clips, {ratio}x)", "", study.text, "",
                  "| method | setting | overall | " + " | ".join(families) + " |",
                  "|---|---|---|" + "---|" * len(families)]
        for r in reruns:
            for label, name in ((study.main_label, f"{length}-{r.method}-x{ratio}"),
                                (study.label, r.name)):
                res = results.get(name)
                lines.append(f"| `{r.method}` | {label} | {_acc(res)} | "
                             + " | ".join(_acc(res, f) for f in families) + " |")
        lines.append("")
    if spectra:
        shown = [k for k in (1, 2, 4, 8) if k <= len(next(iter(spectra.values())))]
        lines += ["## Residual energy against DCT coefficient index", "",
                  "Inter-frame residuals on eval clips, the whole clip as one segment: share of"
                  " the residual energy in the lowest K coefficients, of the trained Fre-Res"
                  " encoder's latents and of the raw pixels (each patch one token).", "",
                  "| residuals of | " + " | ".join(f"K = {k}" for k in shown) + " |",
                  "|---|" + "---|" * len(shown)]
        for label, spectrum in spectra.items():
            cumulative = [sum(spectrum[:k]) for k in shown]
            lines.append(f"| {label} | " + " | ".join(f"{c:.2f}" for c in cumulative) + " |")
        lines += ["", "![energy](energy_spectrum.png)", ""]
        _plot_spectrum(spectra, report_dir)
    errors = [(n, res["error"]) for n, res in results.items() if "error" in res]
    if errors:
        lines += ["## Runs that could not be built or failed", ""]
        lines += [f"- `{n}` ({by_name[n].method} at {by_name[n].ratio}x): {e}" for n, e in errors]
        lines.append("")
    path = os.path.join(report_dir, "results.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


def _plot_accuracy(length: str, runs: list[Run], results: dict, report_dir: str) -> None:
    plt = reporting.pyplot("frejax.benchmarks.evidence")
    if plt is None:
        return
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.5))
    for method in dict.fromkeys(r.method for r in runs if r.ratio):
        points = sorted((results[r.name]["visual_tokens_per_video"], results[r.name]["accuracy"])
                        for r in runs if r.method == method and "accuracy" in results.get(r.name, {}))
        if points:
            ax.plot(*zip(*points), marker="o", label=method)
    full = results.get(f"{length}-full", {})
    if "accuracy" in full:
        ax.axhline(full["accuracy"], color="k", linestyle="--", label="full tokens")
    ax.set(xscale="log", xlabel="visual tokens per video", ylabel="accuracy",
           title=f"{length} clips: accuracy against visual tokens")
    ax.legend(fontsize=8)
    ratios = sorted({r.ratio for r in runs if r.ratio})
    ratio = 8 if 8 in ratios else ratios[-1]
    chosen = [r for r in runs if r.ratio == ratio and "accuracy_by_family" in results.get(r.name, {})]
    families = sorted(full.get("accuracy_by_family", {}) or
                      (results[chosen[0].name]["accuracy_by_family"] if chosen else {}))
    width = 0.8 / max(len(chosen), 1)
    for i, r in enumerate(chosen):
        values = [results[r.name]["accuracy_by_family"].get(f, 0.0) for f in families]
        bx.bar([j + i * width for j in range(len(families))], values, width, label=r.method)
    bx.set_xticks([j + 0.4 - width / 2 for j in range(len(families))], families, rotation=20,
                  fontsize=8)
    bx.set(ylabel="accuracy", title=f"{length} clips: per family at {ratio}x")
    bx.legend(fontsize=7)
    reporting.save_figure(fig, os.path.join(report_dir, f"accuracy_{length}.png"))


def _plot_spectrum(spectra: dict[str, list[float]], report_dir: str) -> None:
    plt = reporting.pyplot("frejax.benchmarks.evidence")
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, spectrum in spectra.items():
        ax.plot(range(len(spectrum)), spectrum, marker=".",
                linestyle="-" if label.startswith("encoder") else "--", label=label)
    ax.set(xlabel="temporal DCT coefficient index k", ylabel="share of residual energy",
           title="Inter-frame residual energy per temporal frequency")
    ax.legend(fontsize=8)
    reporting.save_figure(fig, os.path.join(report_dir, "energy_spectrum.png"))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="full")
    parser.add_argument("--out", default="workdirs/evidence", help="run directories")
    parser.add_argument("--report_dir", default="docs", help="results.md and the PNG plots")
    parser.add_argument("--lengths", default="", help="comma-separated subset: short,long")
    parser.add_argument("--ratios", default="", help="comma-separated subset, e.g. 8,16")
    parser.add_argument("--methods", default="", help="comma-separated subset of compressors")
    parser.add_argument("--no_ablations", action="store_true")
    parser.add_argument("--no_studies", action="store_true",
                        help="skip the studies' reruns (static background, time windows)")
    parser.add_argument("--report_only", action="store_true",
                        help="train nothing: report the runs already finished")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    pick = lambda text, default, cast=str: tuple(cast(x) for x in text.split(",")) if text else default  # noqa: E731
    preset = dataclasses.replace(
        preset, lengths=pick(args.lengths, preset.lengths),
        ratios=pick(args.ratios, preset.ratios, int), methods=pick(args.methods, preset.methods),
        ablations=() if args.no_ablations else preset.ablations,
        studies=() if args.no_studies else preset.studies)
    unknown = sorted(set(preset.lengths) - set(CONFIGS)) + sorted(set(preset.methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"frejax.benchmarks.evidence: unknown lengths or methods {unknown}")
    out = os.path.abspath(args.out)  # the runs start in the repository root
    runs = plan_runs(preset)
    print(f"{len(runs)} runs in {out}/runs", flush=True)
    results = execute(runs, preset, out, train=not args.report_only)
    spectra = energy_spectra(runs, preset, results, out)
    shown = [a for a in (argv if argv is not None else sys.argv[1:])
             if not a.startswith(("--out", "--report_dir", "--report_only"))]
    path = write_report(runs, results, spectra, " ".join(shown), args.report_dir)
    print(f"Wrote {path}")


if __name__ == "__main__":
    main()
