"""The report of ``python -m frejax.studies.natural_qa``: intervals over seeds, retention, findings.

Reads finished run records (one dict per run: ``run`` = ``kind/method@ratiox/seedN`` or
``ceiling/seedN``, accuracy, per-family accuracy, tokens, FLOPs) and writes
``<out>.json``, ``<out>.md`` and ``<out>_accuracy.png``. Every sentence of the findings
is computed from the rows: no figure is typed in.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

from frejax import compression, reporting
from frejax.reporting import interval

FAMILY_GROUPS = {
    "temporal (real motion)": ("direction", "speed", "freeze", "order"),
    "temporal probes": ("brief_event", "counting", "object_motion"),
    "static detail": ("static_detail",),
}
CHANCE = dict(direction=1 / 2, speed=1 / 3, freeze=1 / 3, order=1 / 2, static_detail=1 / 4,
              brief_event=1 / 3, counting=1 / 3, object_motion=1 / 2)
HEADLINE_RATIO = 10.0


def group_chance(families) -> float:
    return float(np.mean([CHANCE[f] for f in families]))


def compression_family(name: str) -> str:
    return "fre_res" if compression.get(name).section == "fre_res" else "baseline"


def summarize(records: list[dict], families: tuple[str, ...]) -> dict:
    """Rows per (kind, method, ratio) over seeds: accuracy, retention of the same seed's
    ceiling, per family and per family group, tokens and FLOPs relative to full."""
    ceilings = {r["run"].split("/")[1]: r for r in records if r["run"].startswith("ceiling/")}
    groups: dict[tuple, list[dict]] = {}
    unavailable: dict[tuple, str] = {}
    for r in records:
        kind, *rest = r["run"].split("/")
        if kind == "ceiling":
            key = ("ceiling", "full", 1.0)
        else:
            label, ratio = rest[0].rsplit("@", 1)
            key = (kind, label, float(ratio.rstrip("x")))
        if "unavailable" in r:
            unavailable[key] = r["unavailable"]
            continue
        groups.setdefault(key, []).append(r)
    full_flops = (np.mean([r["flops"]["prefill"] for r in ceilings.values()])
                  if ceilings else None)
    rows = []
    for key, rs in sorted(groups.items(), key=lambda kv: (kv[0][0] != "ceiling",) + kv[0]):
        kind, label, ratio = key
        seeds = [r["run"].rsplit("/", 1)[1] for r in rs]
        acc = interval([r["accuracy"] for r in rs])
        retained = [r["accuracy"] / ceilings[s]["accuracy"] for r, s in zip(rs, seeds)
                    if s in ceilings and ceilings[s]["accuracy"] > 0]
        fam = {f: interval([r["accuracy_by_family"].get(f, float("nan")) for r in rs])
               for f in families}
        grp = {g: interval([float(np.mean([r["accuracy_by_family"][f] for f in fs
                                           if f in r["accuracy_by_family"]])) for r in rs])
               for g, fs in FAMILY_GROUPS.items()}
        rows.append(dict(
            kind=kind, method=label, ratio=ratio, seeds=len(rs), accuracy=acc,
            retained=interval(retained) if retained else None, by_family=fam, by_group=grp,
            visual_tokens=rs[0]["visual_tokens"], visual_tokens_used=rs[0]["visual_tokens_used"],
            full_visual_tokens=rs[0]["full_visual_tokens"],
            prefill_flops_vs_full=(float(np.mean([r["flops"]["prefill"] for r in rs])
                                         / full_flops) if full_flops else None),
            compressor_flops_vs_full=(float(np.mean([r["flops"]["compressor"] for r in rs])
                                            / full_flops) if full_flops else None),
            seconds=float(np.mean([r["seconds"] for r in rs]))))
    curves = {seed: r.get("eval_curve", []) for seed, r in sorted(ceilings.items())}
    return dict(rows=rows, ceiling_curves=curves, unavailable={f"{k[0]}/{k[1]}@{k[2]:g}x": v
                                        for k, v in sorted(unavailable.items())})


def _pm(x) -> str:
    if x is None:
        return "-"
    mean, half = x
    return f"{mean:.3f} ± {half:.3f}" if not math.isnan(mean) else "-"


def _pct(x) -> str:
    if x is None:
        return "-"
    mean, half = x
    return f"{100 * mean:.1f}% ± {100 * half:.1f}"


def findings(summary: dict) -> list[str]:
    """Answers to the acceptance questions, from the rows (no figure is typed in)."""
    rows = summary["rows"]
    out = []
    ceil = next((r for r in rows if r["kind"] == "ceiling"), None)
    if ceil is None:
        return out
    compressed = [r for r in rows if r["kind"] != "ceiling" and r["method"] != "full"]
    above = [r for r in compressed if r["accuracy"][0] > ceil["accuracy"][0]]
    learned = [g for g, fs in FAMILY_GROUPS.items()
               if ceil["by_group"][g][0] - ceil["by_group"][g][1] > group_chance(fs)]
    out.append(
        "Family groups the ceiling learned (its interval's lower end above chance): "
        + (", ".join(learned) if learned else "none") + "; "
        + "; ".join(f"{g} {ceil['by_group'][g][0]:.3f} against chance {group_chance(fs):.3f}"
                    for g, fs in FAMILY_GROUPS.items())
        + ". Compressors can only be compared on what the ceiling learned.")
    control = next((r for r in rows if r["kind"] == "adapted" and r["method"] == "full"), None)
    if control:
        best = max((r for r in compressed if r["kind"] == "adapted"),
                   key=lambda r: r["accuracy"][0], default=None)
        out.append(
            f"The full-token control after the same adaptation: {_pm(control['accuracy'])}"
            + (f"; the best adapted compressed run ({best['method']} at {best['ratio']:g}x) "
               f"reaches {best['accuracy'][0] / control['accuracy'][0]:.1%} of it."
               if best and control["accuracy"][0] > 0 else "."))
    out.append(
        f"Ceiling (full tokens, {ceil['seeds']} seeds): accuracy {_pm(ceil['accuracy'])}. "
        + ("No compressed run's mean exceeds it." if not above else
           f"{len(above)} compressed rows have a higher mean: "
           + ", ".join(f"{r['kind']} {r['method']} @{r['ratio']:g}x {r['accuracy'][0]:.3f}"
                       for r in above) + "."))
    for kind in ("free", "adapted"):
        at10 = [r for r in compressed if r["kind"] == kind and r["ratio"] == HEADLINE_RATIO]
        if not at10:
            continue
        fre = [r for r in at10 if compression_family(r["method"].split(":")[0]) == "fre_res"]
        base = [r for r in at10 if r not in fre]
        best_fre = max(fre, key=lambda r: r["accuracy"][0], default=None)
        best_base = max(base, key=lambda r: r["accuracy"][0], default=None)
        if best_fre and best_base:
            gap = best_fre["accuracy"][0] - best_base["accuracy"][0]
            out.append(
                f"{kind} at 10x: best Fre-Res variant {best_fre['method']} retains "
                f"{_pct(best_fre['retained'])} of the ceiling (goal: 98%); best baseline "
                f"{best_base['method']} retains {_pct(best_base['retained'])}; Fre-Res "
                + (f"leads by {gap:.3f} accuracy." if gap > 0 else
                   f"trails by {-gap:.3f} accuracy." if gap < 0 else "ties."))
            for g in ("temporal (real motion)", "temporal probes", "static detail"):
                fg, bg = best_fre["by_group"][g][0], best_base["by_group"][g][0]
                out.append(f"  {g}: {best_fre['method']} {fg:.3f} vs "
                           f"{best_base['method']} {bg:.3f}.")
        for fre_name in ("fre_res", "fre_res_frames"):
            fr = next((r for r in at10 if r["method"] == fre_name), None)
            for name, what in (("temporal_dct_only", "Fre-Res's residual track alone"),
                               ("temporal_dct", "the plain temporal DCT of the latents")):
                dct = next((r for r in at10 if r["method"] == name), None)
                if dct and fr:
                    out.append(f"{kind} at 10x, static detail: {fre_name} "
                               f"{_pm(fr['by_family']['static_detail'])} vs {name} ({what}) "
                               f"{_pm(dct['by_family']['static_detail'])}.")
    return out


def write_report(out: str, summary: dict, meta: dict) -> list[str]:
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out + ".json", "w") as f:
        json.dump(dict(meta=meta, **summary), f, indent=1)
    plots = _plot(out, summary)
    with open(out + ".md", "w") as f:
        f.write(_markdown(summary, meta, plots))
    return [out + ".json", out + ".md"] + plots


def _markdown(summary: dict, meta: dict, plots: list[str]) -> str:
    fams = meta["families"]
    lines = [
        "# Natural-video QA: accuracy retained under compression",
        "",
        f"Written by `{meta['command']}` ({meta['seconds']:.0f} s for the runs this"
        " invocation ran; finished runs are read back, see the per-run seconds below)."
        + ("" if meta.get("finished", True) else
           f" **Unfinished: {meta['runs']} runs so far; rerunning the command goes on"
           " from them.**"),
        "",
        f"Benchmark: {meta['train_examples']} training and {meta['eval_examples']} held-out"
        f" examples ({meta['eval_per_family']} per family) from the clips"
        f" {', '.join(meta['train_videos'])} (train) and {', '.join(meta['eval_videos'])}"
        f" (eval); {meta['frames']} frames, frozen DINOv2-S/14 latents pooled to"
        f" {meta['grid'][0]}x{meta['grid'][1]} per frame ({meta['full_tokens']} tokens in"
        f" full). Ceiling: {meta['ceiling_steps']} steps from scratch; adaptation:"
        f" {meta['adapt_steps']} steps (projector + compressor; the LLM frozen)."
        f" Seeds: {meta['seeds']}. Intervals: 95% Student t over seeds. Retained: accuracy"
        " / the same seed's ceiling. FLOPs: XLA's count of the forward per example relative"
        " to the full-token prefill, split into the prefill (projector and LLM) and the"
        " compressor; the cached encoder is the same for all and excluded. This LLM is"
        " tiny (width 128), so a compressor's own FLOPs weigh far more here than beside a"
        " 7B LLM.",
        "",
        "## Findings",
        "",
        *[f"- {x}" if not x.startswith("  ") else f"  - {x.strip()}"
          for x in findings(summary)],
        "",
        "## Accuracy",
        "",
        "| run | method | ratio | tokens (used) | FLOPs vs full: prefill + compressor"
        " | accuracy | retained | "
        + " | ".join(FAMILY_GROUPS) + " | seconds/run |",
        "|---|---|---|---|---|---|---|" + "---|" * len(FAMILY_GROUPS) + "---|",
    ]
    lines.append("| chance | | | | | | | " + " | ".join(
        f"{group_chance(fs):.3f}" for fs in FAMILY_GROUPS.values()) + " | |")
    for r in summary["rows"]:
        flops = (f"{r['prefill_flops_vs_full']:.3f} + {r['compressor_flops_vs_full']:.3f}"
                 if r["prefill_flops_vs_full"] is not None else "-")
        lines.append(
            f"| {r['kind']} | {r['method']} | {r['ratio']:g}x | {r['visual_tokens']}"
            f" ({r['visual_tokens_used']}) | {flops} | {_pm(r['accuracy'])} |"
            f" {_pct(r['retained'])} | "
            + " | ".join(_pm(r["by_group"][g]) for g in FAMILY_GROUPS)
            + f" | {r['seconds']:.0f} |")
    lines += ["", "## Per family (mean over seeds)", "",
              "| run | method | ratio | " + " | ".join(fams) + " |",
              "|---|---|---|" + "---|" * len(fams),
              "| chance | | | " + " | ".join(f"{CHANCE.get(f, float('nan')):.3f}"
                                               for f in fams) + " |"]
    for r in summary["rows"]:
        lines.append(f"| {r['kind']} | {r['method']} | {r['ratio']:g}x | "
                     + " | ".join(f"{r['by_family'][f][0]:.3f}" for f in fams) + " |")
    curves = summary.get("ceiling_curves", {})
    if curves:
        steps = sorted({step for c in curves.values() for step, _ in c})
        lines += ["", "## The ceiling's held-out accuracy during training (convergence)", "",
                  "| seed | " + " | ".join(f"step {s}" for s in steps) + " |",
                  "|---|" + "---|" * len(steps)]
        for seed, c in curves.items():
            at = dict(c)
            lines.append(f"| {seed} | " + " | ".join(
                f"{at[s]:.3f}" if s in at else "-" for s in steps) + " |")
    if summary["unavailable"]:
        lines += ["", "## Not run", ""]
        lines += [f"- {k}: {v}" for k, v in summary["unavailable"].items()]
    lines += ["", *[f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots], ""]
    return "\n".join(lines)


def _plot(out: str, summary: dict) -> list[str]:
    plt = reporting.pyplot("frejax.studies.natural_qa_report")
    if plt is None:
        return []
    rows = [r for r in summary["rows"] if r["kind"] != "ceiling"]
    if not rows:
        return []
    ceil = next((r for r in summary["rows"] if r["kind"] == "ceiling"), None)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, kind in zip(axes, ("free", "adapted")):
        sel = sorted((r for r in rows if r["kind"] == kind and r["ratio"] == HEADLINE_RATIO),
                     key=lambda r: -r["accuracy"][0])
        ax.barh([r["method"] for r in sel], [r["accuracy"][0] for r in sel],
                xerr=[r["accuracy"][1] for r in sel], color="tab:blue")
        if ceil:
            ax.axvline(ceil["accuracy"][0], color="k", ls="--", label="full-token ceiling")
            ax.legend(loc="lower right")
        ax.set_title(f"{kind} at {HEADLINE_RATIO:g}x")
        ax.set_xlabel("accuracy (95% interval over seeds)")
    return [reporting.save_figure(fig, out + "_accuracy.png", dpi=90)]
