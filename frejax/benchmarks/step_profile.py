"""Where a train step's time goes on this machine: XLA's per-fusion times and its HLO.

Compiles a config's train step (the one ``frejax.main`` runs), feeds it one batch of
the config's own data, and without the input pipeline:

- times the step (median of ``repeats`` runs after a warm-up);
- traces ``trace_steps`` steps with ``jax.profiler`` and sums every XLA:CPU thunk's
  self time over the worker threads (a loop's own time excludes its body's thunks;
  a fusion run on two threads counts twice, so the busy total exceeds the wall
  time by the parallelism), per fusion and per kind
  (copies, matmuls, dynamic-update-slices, ...), each fusion named with the source
  operation of its HLO metadata;
- reads the compiled HLO: temporaries (XLA's memory analysis), and the loops'
  stacked outputs, the residuals a scan saves for its backward pass.

    from frejax.benchmarks import step_profile
    step_profile.profile(config)     # a dict: step_ms, by_kind, top, hlo
    step_profile.profile_many({"a": config_a, "b": config_b})   # timed steps interleaved

Used by ``python -m frejax.benchmarks.accelerator_scale --part=cpu_profile``.
"""

from __future__ import annotations

import collections
import glob
import re
import statistics
import tempfile
import time
from typing import Any

KINDS = (("copy", ("copy", "transpose")), ("dynamic-update-slice", ("dynamic-update-slice",)),
         ("matmul", ("ynn_fusion", "dot", "convolution", "custom-call")),
         ("broadcast", ("broadcast",)), ("reduce", ("reduce",)), ("loop", ("while",)))


def kind_of(name: str) -> str:
    """The kind of an XLA:CPU thunk from its fusion name (``copy_bitcast_fusion.7``: copy)."""
    for kind, marks in KINDS:
        if any(m in name for m in marks):
            return kind
    return "other elementwise"


def source_ops(hlo_text: str) -> dict[str, str]:
    """Instruction name -> the ``op_name`` of its metadata (which jax operation made it)."""
    ops = {}
    for m in re.finditer(r"%([\w.\-]+) = [^\n]*?metadata=\{op_name=\"([^\"]+)\"", hlo_text):
        ops[m.group(1)] = m.group(2)
    return ops


def loop_outputs(hlo_text: str) -> dict[str, int]:
    """The forward loops' carried buffers: count and bytes (a scan's stacked residuals)."""
    sizes = {"f32": 4, "bf16": 2, "f16": 2, "s32": 4, "pred": 1, "f64": 8, "s64": 8, "u32": 4}
    count = total = 0
    for m in re.finditer(r"= \(([^)]*)\) while\([^\n]*op_name=\"([^\"]+)\"", hlo_text):
        if "transpose(" in m.group(2):  # the backward loop reads them; count them once
            continue
        for dtype, dims in re.findall(r"(\w+)\[([\d,]*)\]", m.group(1)):
            n = 1
            for d in filter(None, dims.split(",")):
                n *= int(d)
            count += 1
            total += n * sizes.get(dtype, 4)
    return dict(buffers=count, bytes=total)


def _thunk_times(trace_dir: str, steps: int) -> collections.Counter:
    import jax  # noqa: PLC0415  (imported when profiling: the module loads without JAX)

    path = glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True)[0]
    data = jax.profiler.ProfileData.from_file(path)
    busy: collections.Counter = collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_XLAEigen"):  # XLA:CPU's worker threads
                continue
            # Self time: a loop's event encloses its body's thunks on the same thread.
            events = sorted((e for e in line.events if "ThunkExecutor" not in e.name),
                            key=lambda e: (e.start_ns, -e.duration_ns))
            open_events: list = []  # [name, end_ns] of the enclosing events
            for e in events:
                while open_events and open_events[-1][1] <= e.start_ns:
                    open_events.pop()
                if open_events:
                    busy[open_events[-1][0]] -= e.duration_ns / 1e6 / steps
                busy[e.name] += e.duration_ns / 1e6 / steps
                open_events.append([e.name, e.start_ns + e.duration_ns])
    return busy


class _Step:
    """One config's compiled train step, its state and one batch of its data."""

    def __init__(self, config: Any):
        from data_pipelines import datasets as data_lib  # noqa: PLC0415
        from frejax.training.run import Run  # noqa: PLC0415
        from frejax.training.train import make_train_step  # noqa: PLC0415

        self.run = Run(config)
        with self.run:
            self.batch = data_lib.next_global_batch(
                data_lib.make_train_iterator(config, self.run.tokenizer, self.run.mesh),
                self.run.batch_sharding)
            self.state = self.run.init()
            start = time.perf_counter()
            self.compiled = make_train_step(self.run.setup, config, self.run.batch_sharding).lower(
                self.state, self.batch).compile()
            self.compile_s = time.perf_counter() - start
        self.hlo = self.compiled.as_text()
        self.temporaries = int(self.compiled.memory_analysis().temp_size_in_bytes)
        self.times: list[float] = []
        self.steps(1)  # warm-up

    def steps(self, n: int, timed: bool = False) -> None:
        import jax  # noqa: PLC0415

        with self.run:
            for _ in range(n):
                start = time.perf_counter()
                self.state, metrics = self.compiled(self.state, self.batch)
                jax.block_until_ready(metrics)
                if timed:
                    self.times.append(time.perf_counter() - start)


def profile_many(configs: dict[str, Any], *, repeats: int = 20, trace_steps: int = 5,
                 top: int = 8) -> dict[str, dict]:
    """``profile`` of several configs, their timed steps interleaved round by round, so a
    machine whose speed drifts (a shared host) slows every config alike."""
    import jax  # noqa: PLC0415

    steps = {name: _Step(config) for name, config in configs.items()}
    for _ in range(repeats):
        for step in steps.values():
            step.steps(1, timed=True)
    results = {}
    for name, step in steps.items():
        with tempfile.TemporaryDirectory(prefix="frejax-trace-") as trace_dir:
            jax.profiler.start_trace(trace_dir)
            step.steps(trace_steps)
            jax.profiler.stop_trace()
            busy = _thunk_times(trace_dir, trace_steps)
        ops = source_ops(step.hlo)
        by_kind: collections.Counter = collections.Counter()
        for fusion, ms in busy.items():
            by_kind[kind_of(fusion)] += ms
        results[name] = dict(
            step_ms=round(1e3 * statistics.median(step.times), 1),
            compile_s=round(step.compile_s, 1), busy_ms=round(sum(busy.values()), 1),
            by_kind={k: round(v, 1) for k, v in by_kind.most_common()},
            top=[dict(fusion=f, ms=round(ms, 2), op=ops.get(f, "?"))
                 for f, ms in busy.most_common(top)],
            hlo=dict(temporaries_bytes=step.temporaries, loops=step.hlo.count(" while("),
                     dynamic_update_slices=step.hlo.count(" dynamic-update-slice("),
                     copies=step.hlo.count(" copy("),
                     forward_loop_outputs=loop_outputs(step.hlo)))
    return results


def profile(config: Any, **kwargs) -> dict:
    """Times, traces and reads the compiled train step of ``config`` (see the module doc)."""
    return profile_many({"": config}, **kwargs)[""]
