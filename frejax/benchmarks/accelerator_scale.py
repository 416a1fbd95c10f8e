r"""Accelerator-scale speed and memory, before and after, written to ``docs/accelerator_scale``.

Each part runs on its own and merges its rows into ``docs/accelerator_scale.json``;
the Markdown report is rebuilt from that file every time, so parts can be run
(and rerun) separately on the machines that suit them:

    # Pod train step, AOT-compiled for compile-only TPU devices (needs libtpu:
    # pip install -e ".[tpu]"); ``--source`` / ``--baseline`` measure another
    # revision of frejax with this same command (``git worktree``).
    python -m frejax.benchmarks.accelerator_scale --part=pod
    python -m frejax.benchmarks.accelerator_scale --part=pod --baseline=113c08a

    python -m frejax.benchmarks.accelerator_scale --part=attention   # backends at 8k / 32k tokens
    python -m frejax.benchmarks.accelerator_scale --part=cpu_step    # the main job's train step
    python -m frejax.benchmarks.accelerator_scale --part=cpu_profile # ... and where its time goes

``pod`` compiles ``configs/long_video.py:scale=pod`` (8B parameters, global
batch 256) with ``python -m frejax.training.aot --topology=...`` in a subprocess and
records its wall and CPU time, and the per-chip figures the TPU compiler
reports (or the fact that it refused the program as too large for HBM).
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import re
import resource
import subprocess
import sys
import time

from frejax.benchmarks import accelerator_parts
from frejax.reporting import REPO, checkout, git_rev
from frejax.training.aot import HBM_GIB, PASS_TIMINGS_HEADER

DEFAULT_OUT = os.path.join(REPO, "docs", "accelerator_scale")
POD_CONFIG = "configs/long_video.py:scale=pod"
TOPOLOGIES = ("v5e:16x16", "v5p:8x8x4")


# ----------------------------------------------------------------------------
# The report file.
# ----------------------------------------------------------------------------


def load(out: str) -> dict:
    path = out + ".json"
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {}


def save(out: str, report: dict, parts: tuple[str, ...] | None = None) -> None:
    """Writes ``report``'s ``parts`` over what the file holds now (other parts kept)."""
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    if parts is not None:
        report = dict(load(out), **{k: report[k] for k in parts if k in report})
    with open(out + ".json", "w") as f:
        json.dump(report, f, indent=2, sort_keys=True)
    with open(out + ".md", "w") as f:
        f.write(markdown(report))
    print(f"wrote {out}.json and {out}.md")


# ----------------------------------------------------------------------------
# Part ``pod``: AOT compile of the pod config per TPU topology.
# ----------------------------------------------------------------------------

_PHASES = re.compile(r"^\s+compile time trace and lower ([\d.]+) s(?:, xla compile ([\d.]+) s)?")
_FIGURE = re.compile(r"^\s+(arguments|temporaries|peak|train state|batch)\s+([\d.]+) GiB \((\d+) B\)")


_PASS_TIME = re.compile(r"^\s+([\d.]+) s  (.+)$")


def compile_pod(source: str, topology: str, overrides: list[str], host_cores: int = 0,
                pass_timings: bool = False) -> dict:
    """Runs ``frejax.training.aot`` for ``topology`` in ``source``; wall/CPU seconds and per-chip
    figures. ``host_cores``: pin the compile to that many of this machine's cores (0: all);
    ``pass_timings``: also record where XLA's compile went (``aot --pass_timings``)."""
    cmd = [sys.executable, "-m", "frejax.training.aot", f"--config={POD_CONFIG}",
           f"--topology={topology}"] + (["--pass_timings"] if pass_timings else []) + overrides
    env = dict(os.environ, PYTHONPATH=source, JAX_PLATFORMS="cpu")
    cores = sorted(os.sched_getaffinity(0))
    pin = cores[:host_cores] if host_cores else cores
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=source, env=env, capture_output=True, text=True,
                          check=False, preexec_fn=lambda: os.sched_setaffinity(0, pin))
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    row = dict(topology=topology, overrides=overrides, wall_s=round(wall, 1),
               cpu_s=round((after.ru_utime - before.ru_utime)
                           + (after.ru_stime - before.ru_stime), 1),
               exit_code=proc.returncode, host_cores=len(pin), pinned=bool(host_cores),
               pass_dumps=pass_timings)
    lines = proc.stdout.splitlines()
    if PASS_TIMINGS_HEADER in lines:
        at = lines.index(PASS_TIMINGS_HEADER)
        row["pass_timings"] = [[m.group(2), float(m.group(1))] for m in
                               map(_PASS_TIME.match, lines[at + 1:]) if m]
    for i, line in enumerate(lines):
        m = _FIGURE.match(line)
        if m:
            row[m.group(1).replace(" ", "_") + "_bytes"] = int(m.group(3))
        if line.startswith(("does not fit:", "largest allocations:")):
            # aot prints the compiler's report on the next lines: its first line, then
            # the largest allocations, up to the compile-time line.
            report = list(itertools.takewhile(lambda x: not x.startswith("  compile time"),
                                              lines[i + 1:]))
            if line.startswith("does not fit:"):
                row["does_not_fit"] = (report[0] if report else line).strip()[:400]
                report = report[1:]
            row["allocations"] = report
        m = _PHASES.match(line)
        if m:
            row.update(trace_and_lower_s=float(m.group(1)),
                       **({"xla_compile_s": float(m.group(2))} if m.group(2) else {}))
        if "FLOPs per step" in line:
            row["flops_line"] = line.strip()
    if proc.returncode not in (0, 1) or (proc.returncode == 1 and "does_not_fit" not in row):
        row["error"] = (proc.stderr.strip().splitlines() or ["?"])[-1][:400]
    return row


def run_pod(args, report: dict) -> None:
    with checkout(args.baseline, args.source) as source:
        rev = args.baseline or git_rev(source)
        label = args.label or ("before" if args.baseline else "after")
        for topology in args.topologies.split(","):
            print(f"compiling {POD_CONFIG} for {topology} at {rev} ...", flush=True)
            row = compile_pod(source, topology, args.override or [], args.host_cores,
                              args.pass_timings)
            row.update(label=label, revision=rev,
                       command=command_line(args),
                       date=datetime.date.today().isoformat())
            print(json.dumps(row), flush=True)
            report = load(args.out)  # rows other runs wrote meanwhile are kept
            rows = [r for r in report.setdefault("pod", [])
                    if not (r["label"] == label and r["topology"] == topology
                            and r.get("overrides", []) == row["overrides"]
                            and r.get("host_cores") in (None, row["host_cores"])
                            and r.get("pass_dumps", False) == row["pass_dumps"])]
            report["pod"] = rows + [row]
            save(args.out, report, ("pod",))


# ----------------------------------------------------------------------------
# The Markdown report.
# ----------------------------------------------------------------------------


def _gib(n) -> str:
    return "–" if n is None else f"{n / 2**30:.2f}"


def _same_cores(a: dict, b: dict) -> bool:
    """Both compiles ran on all of their host's cores, or were pinned to as many."""
    if a.get("pinned") or b.get("pinned"):
        return a.get("host_cores") == b.get("host_cores")
    return True


def markdown(report: dict) -> str:
    lines = ["# Accelerator-scale speed and memory", "",
             "Written by `python -m frejax.benchmarks.accelerator_scale` (each part's command is in its"
             " rows); the JSON beside this file holds every figure.", ""]
    pod = report.get("pod", [])
    if pod:
        lines += ["## Pod train step: AOT compile for compile-only TPU devices", "",
                  f"`{POD_CONFIG}` (8B parameters, global batch 256 unless overridden), compiled"
                  " by `python -m frejax.training.aot --topology=...` in a subprocess. Compile time is the"
                  " subprocess's wall and CPU time (JAX start-up, tracing, lowering, XLA);"
                  " of it, tracing and lowering to StableHLO, and XLA's compile, where"
                  " recorded. Per-chip figures are the TPU compiler's memory analysis.", "",
                  "Host cores: the cores of this machine the compile ran on (– where not"
                  " recorded: all of them). Rows marked with pass dumps wrote the module"
                  " after every XLA pass to time the passes, which lengthens the compile.", "",
                  "| label | revision | topology | overrides | host cores | wall s | CPU s |"
                  " trace+lower s | XLA compile s | state GiB |"
                  " temporaries GiB | peak GiB | fits |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in sorted(pod, key=lambda r: (r["topology"], r["label"] != "before")):
            chip = HBM_GIB.get(r["topology"].split(":")[0])
            fits = ("no: " + r["does_not_fit"][:120] if "does_not_fit" in r
                    else "error: " + r["error"][:120] if "error" in r
                    else f"compiles, but the peak exceeds the chip's {chip} GiB"
                    if chip and r.get("peak_bytes", 0) > chip * 2**30 else "yes")
            lines.append(
                f"| {r['label']} | {r['revision']} | {r['topology']} |"
                f" {' '.join(r.get('overrides', [])) or '–'}"
                f"{' (pass dumps)' if r.get('pass_dumps') else ''} |"
                f" {r.get('host_cores', '–')} | {r['wall_s']} | {r['cpu_s']} |"
                f" {r.get('trace_and_lower_s', '–')} | {r.get('xla_compile_s', '–')} |"
                f" {_gib(r.get('train_state_bytes'))} | {_gib(r.get('temporaries_bytes'))} |"
                f" {_gib(r.get('peak_bytes'))} | {fits} |")
        for r in pod:
            if r.get("pass_timings"):
                total = sum(sec for _, sec in r["pass_timings"])
                lines += ["", f"{' '.join([r['topology']] + r.get('overrides', []))} at"
                          f" {r['revision']}: where XLA's compile went ({total:.1f} s in all,"
                          " from the time between the per-pass dumps; a dump written after"
                          " the HLO passes is charged the time since the one before it):", "",
                          "| stage | s | share |", "|---|---|---|"]
                lines += [f"| {name} | {sec:.1f} | {sec / total:.0%} |"
                          for name, sec in r["pass_timings"][:12]]
        for r in pod:
            if r.get("allocations"):
                lines += ["", f"{' '.join([r['topology']] + r.get('overrides', []))} at"
                          f" {r['revision']}, the compiler's largest allocations (its"
                          " memory-usage report):",
                          "", "```", *r["allocations"], "```"]
        lines += ["", "Commands:", ""]
        lines += sorted({f"- `{r['command']}`" for r in pod})
        lines.append("")
        speedups = []
        for r in pod:  # the same topology and overrides compiled before and after
            if r["label"] != "after" or r["exit_code"] != 0:
                continue
            for b in pod:
                if (b["label"] == "before" and b["exit_code"] == 0
                        and b["topology"] == r["topology"]
                        and b.get("overrides", []) == r.get("overrides", [])
                        and not r.get("pass_dumps") and not b.get("pass_dumps")
                        and _same_cores(b, r)):
                    speedups.append(
                        f"- {' '.join([r['topology']] + r.get('overrides', []))}: compile"
                        f" {b['wall_s']} s -> {r['wall_s']} s wall"
                        f" ({b['wall_s'] / r['wall_s']:.1f}x), peak {_gib(b.get('peak_bytes'))}"
                        f" -> {_gib(r.get('peak_bytes'))} GiB per chip")
        if speedups:
            lines += ["Before -> after, where both compiled:", ""] + speedups + [""]
    for key, title in (("attention", "Attention backends"), ("cpu_step", "CPU main job"),
                       ("cpu_profile", "CPU main job: where the step's time goes"),
                       ("gpu_suite", "GPU suite")):
        section = report.get(key)
        if section:
            lines += [f"## {title}", ""] + section.get("markdown", []) + [""]
        elif key == "gpu_suite":
            lines += [f"## {title}", "", "Pending: not yet run on a GPU. On one H100/H200,"
                      " `python -m frejax.benchmarks.gpu_suite` fills this section (TTFT, memory and"
                      " train-step MFU of a LLaVA-OneVision-7B-shaped model, full tokens"
                      " against Fre-Res 8x and 16x, next to the paper's H100 figures).", ""]
    return "\n".join(lines)


def command_line(args) -> str:
    """The command that reproduces ``args``: every flag that differs from its default."""
    defaults = vars(_parser().parse_args([f"--part={args.part}"]))
    parts = ["python -m frejax.benchmarks.accelerator_scale", f"--part={args.part}"]
    for key, value in vars(args).items():
        if key in ("part", "out") or value == defaults[key]:
            continue
        for v in value if isinstance(value, list) else [value]:
            parts.append(f"--{key}" if v is True else f"--{key}={v}")
    return " ".join(parts)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", required=True, choices=("pod", "attention", "cpu_step", "cpu_profile"))
    p.add_argument("--out", default=DEFAULT_OUT, help="report path without extension")
    p.add_argument("--baseline", default=None,
                   help="git revision to measure (pod part); cpu_step: comma-separated revisions")
    p.add_argument("--source", default=None, help="frejax tree to measure (pod part)")
    p.add_argument("--label", default=None, help="row label (default: before/after)")
    p.add_argument("--topologies", default=",".join(TOPOLOGIES))
    p.add_argument("--host_cores", type=int, default=0,
                   help="pod: compile on this many of this machine's cores (0: all)")
    p.add_argument("--pass_timings", action="store_true",
                   help="pod: record where XLA's compile goes (per-pass dumps; slower)")
    p.add_argument("--override", action="append",
                   help="extra frejax.training.aot flag, e.g. --config.train.batch_size=64")
    p.add_argument("--max_run_gib", type=float, default=6.0,
                   help="attention: run programs whose temporaries fit this")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tpu_topology", default="v5e:2x2",
                   help="attention: compile-only TPU topology whose first chip gives the TPU rows")
    p.add_argument("--steps", type=int, default=120, help="cpu_step: train steps per run")
    return p


def parse_args(argv=None):
    return _parser().parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    report = load(args.out)
    if args.part == "pod":
        run_pod(args, report)
    else:
        accelerator_parts.run(args.part, args, report, command_line(args))
        save(args.out, report, (args.part,))


if __name__ == "__main__":
    main()
