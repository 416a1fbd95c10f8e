"""Standard video QA benchmarks read from their released files, scored as lmms-eval scores them.

    from data_pipelines import video_benchmarks
    task = video_benchmarks.get("videomme")
    docs = task.load("/data/Video-MME")

Each module reproduces one lmms-eval task definition (prompt, generation length,
answer extraction, aggregation); its docstring names the lmms-eval files it follows.
Nothing is downloaded: ``load`` reads local files and names what is missing.
"""

from data_pipelines.video_benchmarks import egoschema, longvideobench, mvbench, nextqa, videomme
from data_pipelines.video_benchmarks.base import Doc, log_line, sample_record

BENCHMARKS = {m.NAME: m for m in (mvbench, videomme, egoschema, nextqa, longvideobench)}


def get(name: str):
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose from {sorted(BENCHMARKS)}")
    return BENCHMARKS[name]


__all__ = ["BENCHMARKS", "Doc", "get", "log_line", "sample_record"]
