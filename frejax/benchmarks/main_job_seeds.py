"""The main job over several seeds: its accuracy as a spread, not one run's digits.

    python -m frejax.benchmarks.main_job_seeds                      # seeds 0, 1, 2
    python -m frejax.benchmarks.main_job_seeds --seeds=0,1,2,3,4 --report_only

Each seed is one ``python -m frejax.main --config=configs/long_video.py
--config.seed=S`` in ``workdirs/main_job_seeds/seed_S`` (the seed draws the
initial weights and every training and eval video; a rerun skips finished
seeds). Writes ``docs/main_job_seeds.md`` and ``.json``: per seed the overall
and per-family accuracy and the token counts, then mean, standard deviation,
minimum and maximum over the seeds. One seed is a main job: minutes on an
accelerator, about 10 on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from frejax.reporting import REPO

CONFIG = "configs/long_video.py"


def run_seed(seed: int, workdir: str, extra: list[str]) -> dict:
    results = os.path.join(workdir, "results.json")
    if not os.path.exists(results):
        cmd = [sys.executable, "-m", "frejax.main", f"--config={os.path.join(REPO, CONFIG)}",
               f"--config.seed={seed}", f"--workdir={workdir}",
               "--config.train.progress_bar=False", *extra]
        print("running:", " ".join(cmd[1:]), flush=True)
        subprocess.run(cmd, check=True)
    with open(results) as f:
        return json.load(f)


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
    parser.add_argument("extra", nargs="*", help="more frejax.main flags, after --")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    rows = {}
    for seed in seeds:
        workdir = os.path.join(args.workdir, f"seed_{seed}")
        if args.report_only and not os.path.exists(os.path.join(workdir, "results.json")):
            continue
        rows[seed] = run_seed(seed, workdir, args.extra)
    if not rows:
        raise SystemExit("no finished seed to report")
    summary = summarize(rows)
    command = "python -m frejax.benchmarks.main_job_seeds --seeds=" + ",".join(map(str, seeds))
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output + ".json", "w") as f:
        json.dump(dict(summary, command=command), f, indent=2, sort_keys=True)
    with open(args.output + ".md", "w") as f:
        f.write(markdown(summary, command))
    print(markdown(summary, command))


if __name__ == "__main__":
    main()
