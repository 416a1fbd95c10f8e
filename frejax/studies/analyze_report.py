"""The model-free analysis's summary and report: ``<out>.json``, ``<out>.md`` and its plots."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from frejax import compression, reporting
from frejax.studies import kept_information as info


def family(label: str) -> str:
    """``fre_res`` for Fre-Res, its ablations and variants; ``baseline`` otherwise."""

    name = label.split(":")[0]
    return "fre_res" if compression.get(name).section == "fre_res" else "baseline"


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
             + "; ".join(f"{n} {len(s)}" for n, s in meta["shots"].items()) + "."
             + (" Effective frame rates from timestamps: "
                + "; ".join(f"{n} {r:g} fps" for n, r in meta["fps"].items()) + "."
                if meta.get("fps") else ""), ""]
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
    plt = reporting.pyplot("frejax.studies.analyze")
    if plt is None:
        return []

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
    spectra = reporting.save_figure(fig, out + "_spectra.png", dpi=90)
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
    return [spectra, reporting.save_figure(fig, out + "_errors.png", dpi=90)]
