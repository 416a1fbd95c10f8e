"""The report of ``python -m frejax.studies.dense_video``: the gate, paired differences, goals.

Reads finished run records (``ceiling/seedN``, ``<kind>/<method>@<r>x/seedN`` and the
selection runs ``select:adapted/...``) and writes ``<out>.json``, ``<out>.md`` and
``<out>_groups.png``. Every sentence is computed from the records: no figure is typed in.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

from data_pipelines import dense_video_qa as dense
from frejax import reporting
from frejax.reporting import interval

LEARNED = 0.90        # the ceiling's accuracy on every group, every seed, before retention
GOAL_GAIN = 0.20      # brief events and fast motion over uniform sparse frames
GOAL_STATIC = 0.02    # static detail within this of uniform sparse frames
GOAL_RETAINED = 0.98  # of the dense ceiling, overall
KINDS = ("free", "adapted", "scratch")
FRE_RES_ROWS = ("fre_res:selected", "fre_res")


def chance(family: str) -> float:
    return 1.0 / len(dense.QUESTIONS[family][1])


def _group_acc(record: dict, families) -> float:
    return float(np.mean([record["accuracy_by_family"][f] for f in families]))


def _parse(run_id: str) -> tuple[str, str, str, str]:
    """``(split, kind, method, seed)``; split "" for the report split."""
    head, *tail = run_id.split("/")
    split, _, kind = head.rpartition(":")
    if kind == "ceiling":
        return split, "ceiling", "full", tail[-1]
    return split, kind, tail[0].rsplit("@", 1)[0], tail[-1]


def summarize(records: list[dict], meta: dict) -> dict:
    groups = meta["groups"]
    runs: dict[tuple, dict[str, dict]] = {}
    unavailable = {}
    for r in records:
        split, kind, method, seed = _parse(r["run"])
        if "unavailable" in r:
            unavailable[r["run"].rsplit("/", 1)[0]] = r["unavailable"]
            continue
        runs.setdefault((split, kind, method), {})[seed] = r
    ceilings = runs.get(("", "ceiling", "full"), {})
    gate = {seed: {g: _group_acc(r, fs) for g, fs in groups.items()}
            for seed, r in sorted(ceilings.items())}
    failing = sorted({g for by in gate.values() for g, a in by.items() if a < LEARNED})
    learned = bool(gate) and not failing
    encoder = meta.get("encoder_flops_per_frame", 0.0)

    def row(kind: str, method: str, by_seed: dict[str, dict]) -> dict:
        seeds = sorted(by_seed)
        rs = [by_seed[s] for s in seeds]
        r0 = rs[0]
        frames_encoded = meta["sparse_frames"] if method == meta["reference"] else meta["frames"]
        out = dict(kind=kind, method=method, seeds=len(rs),
                   accuracy=interval(r["accuracy"] for r in rs),
                   by_group={g: interval(_group_acc(r, fs) for r in rs)
                             for g, fs in groups.items()},
                   by_family={f: interval(r["accuracy_by_family"][f] for r in rs)
                              for f in meta["families"]},
                   visual_tokens=r0["visual_tokens"], visual_tokens_used=r0["visual_tokens_used"],
                   prefill_flops=r0["flops"]["prefill"], compressor_flops=r0["flops"]["compressor"],
                   encoder_flops=frames_encoded * encoder, frames_encoded=frames_encoded,
                   seconds=float(np.mean([r["seconds"] for r in rs])), per_seed={
                       s: dict(accuracy=r["accuracy"], by_family=dict(r["accuracy_by_family"]),
                               by_group={g: _group_acc(r, fs) for g, fs in groups.items()})
                       for s, r in zip(seeds, rs)})
        both = [s for s in seeds if s in ceilings and ceilings[s]["accuracy"] > 0]
        if learned and kind != "ceiling" and both:
            out["retained"] = interval(by_seed[s]["accuracy"] / ceilings[s]["accuracy"]
                                       for s in both)
        return out

    rows = [row(k, m, v) for (split, k, m), v in sorted(runs.items()) if not split]
    selection = {m: v["seed0"]["accuracy"] for (split, k, m), v in runs.items()
                 if split == "select" and "seed0" in v}

    def paired(a: dict, b: dict, key=lambda x: x["accuracy"]) -> tuple | None:
        seeds = sorted(set(a["per_seed"]) & set(b["per_seed"]))
        if not seeds:
            return None
        return interval(key(a["per_seed"][s]) - key(b["per_seed"][s]) for s in seeds) + (
            len(seeds),)

    for kind in KINDS:
        mine = {r["method"]: r for r in rows if r["kind"] == kind}
        ref = mine.get(meta["reference"])
        base = [mine[b] for b in meta["baselines"] if b in mine]
        best = max(base, key=lambda r: r["accuracy"][0], default=None)
        for r in mine.values():
            r["vs_reference"] = paired(r, ref) if ref and r is not ref else None
            r["best_baseline"] = best["method"] if best else None
            r["vs_best_baseline"] = paired(r, best) if best and r is not best else None
            r["group_vs_reference"] = ({g: paired(r, ref, key=lambda x, g=g: x["by_group"][g])
                                        for g in groups} if ref and r is not ref else None)
    return dict(rows=rows, gate=gate, learned=learned, failing=failing,
                selection=selection, unavailable=unavailable,
                ceiling_curves={s: r.get("eval_curve", []) for s, r in sorted(ceilings.items())},
                ceiling_fit={s: r.get("train_fit") for s, r in sorted(ceilings.items())})


def _pm(x) -> str:
    if x is None:
        return "-"
    mean, half = x[0], x[1]
    return "-" if math.isnan(mean) else f"{mean:.3f} ± {half:.3f}"


def _signed(x) -> str:
    if x is None:
        return "-"
    mean, half, n = x
    return f"{mean:+.3f} ± {half:.3f} (n={n})"


def goals(summary: dict) -> list[dict]:
    """The acceptance goals for each Fre-Res row, per kind: value, target, met."""
    out = []
    for r in summary["rows"]:
        if r["method"] not in FRE_RES_ROWS or r["kind"] == "ceiling":
            continue
        g = r["group_vs_reference"] or {}
        checks = []
        for group in ("brief", "fast_motion"):
            d = g.get(group)
            checks.append((f"{group} vs uniform frames", d and d[0], f">= +{GOAL_GAIN:.2f}",
                           bool(d) and d[0] >= GOAL_GAIN))
        d = g.get("static")
        checks.append(("static detail vs uniform frames", d and d[0], f">= -{GOAL_STATIC:.2f}",
                       bool(d) and d[0] >= -GOAL_STATIC))
        ret = r.get("retained")
        checks.append(("retained of the dense ceiling", ret and ret[0], f">= {GOAL_RETAINED}",
                       bool(ret) and ret[0] >= GOAL_RETAINED))
        d = r["vs_best_baseline"]
        checks.append((f"vs the best baseline ({r['best_baseline']}), interval's low end",
                       d and d[0] - d[1], "> 0", bool(d) and d[0] - d[1] > 0))
        out.append(dict(kind=r["kind"], method=r["method"], checks=[
            dict(what=w, value=v, target=t, met=m) for w, v, t, m in checks]))
    return out


def findings(summary: dict, meta: dict) -> list[str]:
    out = []
    gate = summary["gate"]
    if not gate:
        return ["No ceiling has finished yet."]
    worst = {g: min(by[g] for by in gate.values()) for g in meta["groups"]}
    out.append(
        f"Learnable first: the full-token ceiling (every frame, every token) on the test"
        f" split, lowest over {len(gate)} seed(s): "
        + ", ".join(f"{g} {a:.3f}" for g, a in worst.items())
        + (f". Every group reaches {LEARNED:.2f} on every seed, so retention is reported."
           if summary["learned"] else
           f". Below {LEARNED:.2f}: {', '.join(summary['failing'])}. This is the finding to"
           " fix first; no retention figure is reported."))
    if summary["selection"]:
        best = max(summary["selection"], key=summary["selection"].get)
        out.append(f"Selection (adapted from seed 0's ceiling, scored on the select split):"
                   f" {best} {summary['selection'][best]:.3f} is chosen of"
                   f" {len(summary['selection'])} candidates.")
    for kind in KINDS:
        mine = [r for r in summary["rows"] if r["kind"] == kind]
        if not mine:
            continue
        top = max(mine, key=lambda r: r["accuracy"][0])
        out.append(f"{kind}: the most accurate method is {top['method']}"
                   f" ({_pm(top['accuracy'])}, {top['seeds']} seed(s)).")
    for goal in goals(summary):
        met = [c for c in goal["checks"] if c["met"]]
        out.append(f"Goals, {goal['kind']} {goal['method']}: {len(met)} of"
                   f" {len(goal['checks'])} met; "
                   + "; ".join(f"{c['what']} {c['value']:+.3f} (target {c['target']})"
                               if c["value"] is not None else f"{c['what']}: not measured"
                               for c in goal["checks"]) + ".")
    return out


def write_report(out: str, records: list[dict], meta: dict) -> list[str]:
    summary = summarize(records, meta)
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out + ".json", "w") as f:
        json.dump(dict(meta=meta, goals=goals(summary), **summary), f, indent=1)
    plots = _plot(out, summary, meta)
    with open(out + ".md", "w") as f:
        f.write(_markdown(summary, meta, plots))
    return [out + ".json", out + ".md"] + plots


def _markdown(summary: dict, meta: dict, plots: list[str]) -> str:
    groups = list(meta["groups"])
    spec = meta["spec"]
    lines = [
        "# Dense video at a sparse model's budget",
        "",
        f"Written by `{meta['command']}` ({meta['seconds']:.0f} s for the runs this invocation"
        " ran; finished runs are read back)."
        + ("" if meta.get("finished", True) else
           f" **Unfinished: {meta['runs']} runs so far; rerunning the command goes on from"
           " them.**"),
        "",
        f"Every frame of {meta['frames']}-frame windows at the footage's own rate (at least"
        f" {spec['min_fps']:g} fps), frozen `{meta['encoder']}` latents averaged to"
        f" {meta['grid'][0]}x{meta['grid'][1]} per frame: {meta['full_tokens']} visual tokens"
        f" in full. Budget: {meta['full_tokens'] // int(meta['ratio'])} tokens"
        f" ({meta['ratio']:g}x fewer), that of {meta['sparse_frames']} uniform frames at full"
        f" per-frame tokens. Ceiling: {meta['ceiling_steps']} steps from scratch at full"
        f" tokens; adapted: {meta['adapt_steps']} steps from the ceiling (projector and"
        f" compressor; LLM frozen); scratch: the ceiling's recipe at the method's budget."
        f" Seeds: {meta['seeds']}. ± is a 95% Student-t interval over seeds; differences are"
        " paired per seed.",
        "",
        "## Benchmark",
        "",
        "| split | examples | sources |",
        "|---|---|---|",
    ]
    for split, n in meta["examples"].items():
        names = sorted(s for s, v in meta["sources"].items() if v["split"] == split)
        lines.append(f"| {split} | {n} | {', '.join(names)} |")
    lines += ["", "| source | kind | split | clips | frames | effective fps |",
              "|---|---|---|---|---|---|"]
    for name, v in sorted(meta["sources"].items(), key=lambda kv: (kv[1]["split"], kv[0])):
        lines.append(f"| {name} | {v['kind']} | {v['split']} | {v['clips']} | {v['frames']} |"
                     f" {v['fps']:g} |")
    for s in meta["skipped"]:
        lines.append(f"| {s['source']} | skipped | | | | {s['reason']} |")
    lines += ["", "## Findings", "", *[f"- {x}" for x in findings(summary, meta)], ""]
    fams = meta["families"]
    ceiling = next((r for r in summary["rows"] if r["kind"] == "ceiling"), None)
    lines += ["## The ceiling per seed (test split)", "",
              "Train fit: answer-token accuracy on the training batches of the last tenth of"
              " training (near 1 with held-out accuracy far below it is memorising).", "",
              "| seed | " + " | ".join(groups) + " | " + " | ".join(fams) + " | train fit |",
              "|---|" + "---|" * (len(groups) + len(fams) + 1),
              "| chance | " + " | ".join(f"{np.mean([chance(f) for f in meta['groups'][g]]):.3f}"
                                          for g in groups) + " | "
              + " | ".join(f"{chance(f):.3f}" for f in fams) + " | - |"]
    for seed, by in summary["gate"].items():
        fam = ceiling["per_seed"][seed]["by_family"] if ceiling else {}
        fit = summary["ceiling_fit"].get(seed)
        lines.append(f"| {seed} | " + " | ".join(f"{by[g]:.3f}" for g in groups) + " | "
                     + " | ".join(f"{fam[f]:.3f}" if f in fam else "-" for f in fams)
                     + f" | {'-' if fit is None else f'{fit:.3f}'} |")
    if summary["selection"]:
        lines += ["", "## Selection (select split, seed 0, adapted)", "",
                  "| candidate | options | accuracy |", "|---|---|---|"]
        for label, acc in sorted(summary["selection"].items(), key=lambda kv: -kv[1]):
            lines.append(f"| {label} | `{meta['candidates'].get(label.split('@')[0], '')}` |"
                         f" {acc:.3f} |")
    lines += ["", "## Accuracy (test split)", "",
              "| kind | method | tokens (used) | accuracy | " + " | ".join(groups)
              + " | retained | vs uniform frames | vs best baseline |",
              "|---|---|---|---|" + "---|" * len(groups) + "---|---|---|"]
    for r in summary["rows"]:
        lines.append(
            f"| {r['kind']} | {r['method']} | {r['visual_tokens']} ({r['visual_tokens_used']}) |"
            f" {_pm(r['accuracy'])} | " + " | ".join(_pm(r["by_group"][g]) for g in groups)
            + f" | {_pm(r.get('retained'))} | {_signed(r.get('vs_reference'))} |"
            f" {_signed(r.get('vs_best_baseline'))} |")
    lines += ["", "## Cost per video", "",
              "FLOPs: XLA's count per example. Prefill: projector and LLM; compressor: the"
              " compressor on the cached latents; encoder: the frozen encoder over the frames the"
              " method needs (uniform frames encode only theirs).", "",
              "| method | visual tokens | frames encoded | encoder GFLOPs | compressor GFLOPs |"
              " prefill GFLOPs |", "|---|---|---|---|---|---|"]
    seen = set()
    for r in summary["rows"]:
        if r["method"] in seen:
            continue
        seen.add(r["method"])
        lines.append(f"| {r['method']} | {r['visual_tokens']} | {r['frames_encoded']} |"
                     f" {r['encoder_flops'] / 1e9:.2f} | {r['compressor_flops'] / 1e9:.4f} |"
                     f" {r['prefill_flops'] / 1e9:.3f} |")
    curves = summary["ceiling_curves"]
    if curves:
        steps = sorted({s for c in curves.values() for s, _ in c})
        lines += ["", "## The ceiling's test accuracy during training", "",
                  "| seed | " + " | ".join(f"step {s}" for s in steps) + " |",
                  "|---|" + "---|" * len(steps)]
        for seed, c in curves.items():
            at = dict(c)
            lines.append(f"| {seed} | " + " | ".join(f"{at[s]:.3f}" if s in at else "-"
                                                     for s in steps) + " |")
    if summary["unavailable"]:
        lines += ["", "## Not run", ""] + [f"- {k}: {v}" for k, v in
                                            sorted(summary["unavailable"].items())]
    lines += ["", *[f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots], ""]
    return "\n".join(lines)


def _plot(out: str, summary: dict, meta: dict) -> list[str]:
    plt = reporting.pyplot("frejax.studies.dense_video_report")
    if plt is None:
        return []
    kinds = [k for k in ("adapted", "scratch") if any(r["kind"] == k for r in summary["rows"])]
    groups = list(meta["groups"])
    ceiling = next((r for r in summary["rows"] if r["kind"] == "ceiling"), None)
    if not kinds:
        if ceiling is None:
            return []
        # Only the ceiling so far: its accuracy per family group against the bar.
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.bar(groups, [ceiling["by_group"][g][0] for g in groups],
               yerr=[ceiling["by_group"][g][1] for g in groups], color="tab:gray")
        ax.axhline(LEARNED, color="k", ls="--", label=f"the bar ({LEARNED:.2f})")
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("test accuracy")
        ax.set_title(f"full-token ceiling, {ceiling['seeds']} seed(s)")
        ax.legend()
        return [reporting.save_figure(fig, out + "_groups.png", dpi=80)]
    fig, axes = plt.subplots(1, len(kinds), figsize=(7 * len(kinds), 5), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        rows = [r for r in summary["rows"] if r["kind"] == kind]
        x = np.arange(len(rows))
        width = 0.8 / len(groups)
        for j, g in enumerate(groups):
            ax.bar(x + j * width, [r["by_group"][g][0] for r in rows], width,
                   yerr=[r["by_group"][g][1] for r in rows], label=g)
            if ceiling:
                ax.axhline(ceiling["by_group"][g][0], color=f"C{j}", ls=":", lw=1)
        ax.set_xticks(x + 0.4 - width / 2, [r["method"] for r in rows], rotation=60,
                      ha="right", fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{kind} at {meta['ratio']:g}x (dotted: the ceiling)")
        ax.set_ylabel("test accuracy (95% interval over seeds)")
        ax.legend(fontsize=8)
    return [reporting.save_figure(fig, out + "_groups.png", dpi=80)]
