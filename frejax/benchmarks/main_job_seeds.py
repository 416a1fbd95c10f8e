"""The main job over several seeds: its accuracy as a spread, not one run's digits.

    python -m frejax.benchmarks.main_job_seeds                      # seeds 0, 1, 2
    python -m frejax.benchmarks.main_job_seeds --seeds=0,1,2,3,4 --report_only
    python -m frejax.benchmarks.main_job_seeds --seeds=0,1,2,3,4 --baseline=425705c

Each seed is one ``python -m frejax.main --config=configs/long_video.py
--config.seed=S`` in ``workdirs/main_job_seeds/seed_S`` (the seed draws the
initial weights and every training and eval video; a rerun skips finished
seeds). Writes ``docs/main_job_seeds.md`` and ``.json``: per seed the overall
and per-family accuracy and the token counts, then mean, standard deviation,
minimum and maximum over the seeds. One seed is a main job: minutes on an
accelerator, about 10 on 2 CPU cores.

``--baseline=REV`` runs the same seeds at revision ``REV`` too (a temporary git
worktree, workdirs under ``<workdir>/<REV>``) and reports per seed the difference
between this tree and it, with the paired mean difference and its 95% interval: a
change of the code is read against the seed-to-seed spread, not against one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from frejax import reporting
from frejax.reporting import REPO

CONFIG = "configs/long_video.py"


def run_seed(seed: int, workdir: str, extra: list[str], source: str = REPO) -> dict:
    """The main job at ``seed`` with the frejax tree at ``source`` (skipped when finished)."""
    results = os.path.join(workdir, "results.json")
    if not os.path.exists(results):
        cmd = [sys.executable, "-m", "frejax.main", f"--config={os.path.join(source, CONFIG)}",
               f"--config.seed={seed}", f"--workdir={os.path.abspath(workdir)}",
               "--config.train.progress_bar=False", *extra]
        print("running:", " ".join(cmd[1:]), "in", source, flush=True)
        subprocess.run(cmd, check=True, cwd=source)
    with open(results) as f:
        return json.load(f)


def run_seeds(seeds: list[int], workdir: str, extra: list[str], report_only: bool,
              source: str = REPO) -> dict[int, dict]:
    """Each seed's results from ``<workdir>/seed_S`` (run there first, unless
    ``report_only``, which skips the seeds that have not finished)."""
    rows = {}
    for seed in seeds:
        folder = os.path.join(workdir, f"seed_{seed}")
        if report_only and not os.path.exists(os.path.join(folder, "results.json")):
            continue
        rows[seed] = run_seed(seed, folder, extra, source)
    return rows


def summarize(rows: dict[int, dict]) -> dict:
    def spread(values):
        values = list(values)
        return dict(mean=statistics.fmean(values),
                    std=statistics.stdev(values) if len(values) > 1 else 0.0,
                    min=min(values), max=max(values))

    families = sorted({f for r in rows.values() for f in r["accuracy_by_family"]})
    return dict(
        seeds=sorted(rows),
        accuracy=spread(r["accuracy"] for r in rows.values()),
        by_family={f: spread(r["accuracy_by_family"][f] for r in rows.values())
                   for f in families},
        visual_tokens_per_video=sorted({r["visual_tokens_per_video"] for r in rows.values()}),
        full_visual_tokens_per_video=sorted(
            {r["full_visual_tokens_per_video"] for r in rows.values()}),
        per_seed={s: dict(accuracy=r["accuracy"], by_family=r["accuracy_by_family"],
                          step=r["step"]) for s, r in sorted(rows.items())})


def paired(rows: dict[int, dict], baseline: dict[int, dict]) -> dict:
    """This tree minus the baseline, seed by seed (seeds both finished), overall and per
    family: the per-seed differences and their mean with its 95% Student-t half-width."""
    seeds = sorted(set(rows) & set(baseline))

    def diff(get):
        d = [get(rows[s]) - get(baseline[s]) for s in seeds]
        mean, half = reporting.interval(d) if d else (0.0, 0.0)
        return dict(per_seed=dict(zip(seeds, d)), mean=mean, half_width=half)

    families = sorted({f for r in rows.values() for f in r["accuracy_by_family"]})
    return dict(seeds=seeds, accuracy=diff(lambda r: r["accuracy"]),
                by_family={f: diff(lambda r, f=f: r["accuracy_by_family"][f])
                           for f in families})


def paired_markdown(summary: dict, base: dict, diff: dict, rev: str) -> str:
    fams = list(diff["by_family"])
    lines = ["", f"## Against revision {rev}, seed by seed", "",
             f"The same seeds at {rev}: {base['accuracy']['mean']:.3f} ±"
             f" {base['accuracy']['std']:.3f} (mean ± std) against this tree's"
             f" {summary['accuracy']['mean']:.3f} ± {summary['accuracy']['std']:.3f}."
             " Differences are this tree minus the baseline; the last row is their mean"
             " with its 95% Student-t interval over the seeds.", "",
             f"| seed | overall ({rev}) | overall (this tree) | difference | "
             + " | ".join(fams) + " |",
             "|---|---|---|---|" + "---|" * len(fams)]
    for s in diff["seeds"]:
        lines.append(f"| {s} | {base['per_seed'][s]['accuracy']:.3f} |"
                     f" {summary['per_seed'][s]['accuracy']:.3f} |"
                     f" {diff['accuracy']['per_seed'][s]:+.3f} | "
                     + " | ".join(f"{diff['by_family'][f]['per_seed'][s]:+.2f}" for f in fams)
                     + " |")

    def cell(d):
        return f"{d['mean']:+.3f} ± {d['half_width']:.3f}"

    lines.append(f"| mean ± 95% | | | {cell(diff['accuracy'])} | "
                 + " | ".join(cell(diff["by_family"][f]) for f in fams) + " |")
    return "\n".join(lines) + "\n"


def markdown(summary: dict, command: str) -> str:
    fams = list(summary["by_family"])
    lines = [
        "# The main job over seeds", "",
        f"Written by `{command}`. Each seed is `python -m frejax.main --config={CONFIG}"
        " --config.seed=S`; the seed draws the initial weights and every video.", "",
        f"Visual tokens per video: {summary['visual_tokens_per_video']} of"
        f" {summary['full_visual_tokens_per_video']} full.", "",
        "| seed | overall | " + " | ".join(fams) + " |",
        "|---|---|" + "---|" * len(fams)]
    for seed, row in summary["per_seed"].items():
        lines.append(f"| {seed} | {row['accuracy']:.3f} | "
                     + " | ".join(f"{row['by_family'][f]:.2f}" for f in fams) + " |")
    a = summary["accuracy"]
    lines.append(f"| mean ± std | {a['mean']:.3f} ± {a['std']:.3f} | "
                 + " | ".join(f"{summary['by_family'][f]['mean']:.2f} ±"
                              f" {summary['by_family'][f]['std']:.2f}" for f in fams) + " |")
    lines.append(f"| min - max | {a['min']:.3f} - {a['max']:.3f} | "
                 + " | ".join(f"{summary['by_family'][f]['min']:.2f} -"
                              f" {summary['by_family'][f]['max']:.2f}" for f in fams) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--workdir", default=os.path.join("workdirs", "main_job_seeds"))
    parser.add_argument("--output", default=os.path.join(REPO, "docs", "main_job_seeds"))
    parser.add_argument("--report_only", action="store_true",
                        help="train nothing; report the seeds that have finished")
    parser.add_argument("--baseline", default="",
                        help="a git revision whose main job runs the same seeds, compared"
                        " seed by seed")
    parser.add_argument("extra", nargs="*", help="more frejax.main flags, after --")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    rows = run_seeds(seeds, args.workdir, args.extra, args.report_only)
    if not rows:
        raise SystemExit("no finished seed to report")
    summary = summarize(rows)
    command = "python -m frejax.benchmarks.main_job_seeds --seeds=" + ",".join(map(str, seeds))
    report, compared = dict(summary), ""
    if args.baseline:
        rev = subprocess.run(["git", "rev-parse", "--short", args.baseline], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout.strip()
        command += f" --baseline={args.baseline}"
        with reporting.checkout(rev) as source:
            base_rows = run_seeds(seeds, os.path.join(args.workdir, rev), args.extra,
                                  args.report_only, source)
        if base_rows:
            base, diff = summarize(base_rows), paired(rows, base_rows)
            report.update(baseline=dict(base, revision=rev), paired=diff)
            compared = paired_markdown(summary, base, diff, rev)
    text = markdown(summary, command) + compared
    report["command"] = command
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output + ".json", "w") as f:
        json.dump(report, f, indent=2, sort_keys=True)
    with open(args.output + ".md", "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
