"""What every report writer shares: plotting set-up, the source revision, a tree to measure.

Studies (``frejax.studies``) and benchmarks (``frejax.benchmarks``) write a JSON and a
Markdown report with the command that made them; this module is the one place that
sets up matplotlib for files, asks git which code produced a figure, times a call the
way every speed figure is timed, and gives the 95% interval every report uses.
"""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pyplot(who: str) -> Any | None:
    """``matplotlib.pyplot`` drawing to files (Agg), or None with a line saying plots are skipped.

    Imported here, not at module top: matplotlib is an optional extra of the reports.
    """
    try:
        import matplotlib  # noqa: PLC0415  (optional extra)
    except ImportError:
        print(f"{who}: matplotlib is not installed; plots skipped (pip install matplotlib)")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415  (after choosing the backend)

    return plt


def git_rev(source: str = REPO) -> str:
    """Short revision of the tree at ``source``; ``+changes`` when tracked files other than
    the reports in ``docs/`` differ (a report a run has just rewritten is not a change of
    the code that measures)."""
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=source,
                         capture_output=True, text=True, check=False)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                            ":(exclude)docs"],
                           cwd=source, capture_output=True, text=True, check=False).stdout
    return out.stdout.strip() + ("+changes" if dirty.strip() else "")


@contextlib.contextmanager
def checkout(rev: str | None, source: str | None = None) -> Iterator[str]:
    """The frejax tree to measure: ``source``, a temporary worktree of ``rev``, or this one."""
    if source:
        yield os.path.abspath(source)
        return
    if not rev:
        yield REPO
        return
    with tempfile.TemporaryDirectory(prefix="frejax-rev-") as tmp:
        path = os.path.join(tmp, "tree")
        subprocess.run(["git", "worktree", "add", "--detach", path, rev], cwd=REPO, check=True,
                       capture_output=True)
        try:
            yield path
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", path], cwd=REPO,
                           check=False, capture_output=True)


def save_figure(fig: Any, path: str, dpi: int = 100) -> str:
    """Lays out ``fig``, writes it to ``path`` and frees it; returns ``path``."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    fig.clf()
    import matplotlib.pyplot as plt  # noqa: PLC0415  (optional extra; a figure means it is here)

    plt.close(fig)
    return path


_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262}  # two-sided 95% Student t by degrees of freedom


def timed_median(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> tuple[Any, float]:
    """``fn()``'s last output and the median wall seconds of ``repeats`` calls, each
    waited on (``jax.block_until_ready``), after ``warmup`` untimed calls (compiles)."""
    import jax  # noqa: PLC0415  (report writers without a model never time one)

    out = None
    for _ in range(warmup):
        out = jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


def interval(values) -> tuple[float, float]:
    """Mean and the half-width of its two-sided 95% Student-t interval (0 for one value)."""
    x = np.asarray(list(values), float)
    if len(x) < 2:
        return float(x.mean()), 0.0
    return float(x.mean()), float(_T95.get(len(x) - 1, 1.96) * x.std(ddof=1) / math.sqrt(len(x)))
