r"""Ahead-of-time check: compile the train step for a big mesh before renting it.

    python -m frejax.training.aot --config=configs/long_video.py:scale=pod --devices=256
    python -m frejax.training.aot --config=configs/long_video.py:scale=pod --devices=64 \
        --config.mesh.shape='(-1,16,4)' --config.train.batch_size=64
    python -m frejax.training.aot --config=configs/long_video.py:scale=pod --topology=v5e:16x16

Lowers and compiles ``train.make_train_step`` against a mesh of fake devices;
the train state and the batch are ``ShapeDtypeStruct``s carrying their
shardings (``jax.eval_shape``), so no weight is ever allocated. Prints XLA's
per-device memory analysis (arguments, outputs, temporaries) and the FLOPs of
one step. Fake devices are CPU devices (``--devices``, via XLA_FLAGS, set here
before JAX starts) or, with ``libtpu`` installed, compile-only TPU devices of a
named topology (``--topology``), whose figures are the TPU compiler's own.

CPU devices compile with CPU fusion and layouts, so their temporaries are an
estimate of an accelerator's; the argument bytes (weights, optimiser state,
batch) are exact. ``train.dtype=auto`` resolves to bfloat16, as on TPU/GPU.
"""

from __future__ import annotations

import dataclasses
import glob
import math
import os
import re
import shutil
import sys
import tempfile
import time

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

# JAX is imported inside functions only: the fake CPU devices are an XLA flag
# that must be set before JAX starts (``use_fake_cpu_devices``).

def define_flags() -> None:
    """The command's flags; defined when it runs, so importing this module defines none."""
    config_flags.DEFINE_config_file(
        "config", None, "Config file, optionally with an arg: configs/x.py:arg.",
        lock_config=True)
    flags.DEFINE_integer(
        "devices", 0, "Number of fake CPU devices (0: the product of config.mesh.shape).")
    flags.DEFINE_string(
        "topology", None, "Compile for compile-only TPU devices of this topology instead,"
        " e.g. v5e:16x16 or v5p:8x8x4 (needs libtpu).")
    flags.DEFINE_bool(
        "pass_timings", False, "With --topology: also dump the step after every XLA pass"
        " and print where the compile's time went, per pipeline of passes (the dumps'"
        " write times; the dumping itself lengthens the compile).")
    flags.DEFINE_string(
        "out", None, "Also write the report as JSON here (the command, the devices and"
        " every figure printed).")
    flags.mark_flags_as_required(["config"])

GIB = 2**30
# The line before the pass timings in the printed report (benchmarks parse what follows it).
PASS_TIMINGS_HEADER = "XLA pipelines by time (from the per-pass dumps, their writing included):"
# Per-chip high-bandwidth memory of the TPUs this check is usually run for.
HBM_GIB = {"v4": 32, "v5e": 16, "v5p": 95, "v6e": 32}


@dataclasses.dataclass(frozen=True)
class Report:
    """Per-device figures of one compiled train step."""

    num_devices: int
    mesh_shape: dict
    state_bytes: int        # params + optimiser state on one device (from the shardings)
    batch_bytes: int        # one train batch on one device (from its sharding)
    argument_bytes: int     # XLA: inputs (state + batch) on one device
    output_bytes: int       # XLA: outputs (new state + metrics)
    alias_bytes: int        # XLA: outputs written in place of donated inputs
    temp_bytes: int         # XLA: activations and other temporaries
    flops: float            # per device, one step

    @property
    def peak_bytes(self) -> int:
        """Arguments + outputs + temporaries, counting donated buffers once."""
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes

    def format(self) -> str:
        lines = [
            f"mesh {self.mesh_shape} over {self.num_devices} devices; per device:",
            f"  train state  {_bytes(self.state_bytes)} (params + optimiser, from the shardings)",
            f"  batch        {_bytes(self.batch_bytes)}",
            f"  arguments    {_bytes(self.argument_bytes)}",
            f"  outputs      {_bytes(self.output_bytes)}"
            f" ({_bytes(self.alias_bytes)} aliased to donated arguments)",
            f"  temporaries  {_bytes(self.temp_bytes)}",
            f"  peak         {_bytes(self.peak_bytes)} (arguments + outputs - aliased"
            " + temporaries)",
            f"  FLOPs per step {self.flops:.4g} per device, {self.flops * self.num_devices:.4g}"
            " in all",
        ]
        fits = ", ".join(f"{chip} {gib} GiB: {'fits' if self.peak_bytes <= gib * GIB else 'no'}"
                         for chip, gib in HBM_GIB.items())
        return "\n".join(lines + [f"  per-chip HBM {fits}"])


def _bytes(n: int) -> str:
    """Bytes in GiB with the exact count beside them, e.g. ``1.500 GiB (1610612736 B)``."""
    return f"{n / GIB:.3f} GiB ({n} B)"


def abstract_batch(config, tokenizer, batch_sharding) -> dict:
    """``ShapeDtypeStruct``s of one global train batch, from one example of the source."""
    from data_pipelines import datasets as data_lib  # noqa: PLC0415  (JAX after use_fake_cpu_devices)
    from data_pipelines import input_pipeline  # noqa: PLC0415  (JAX after use_fake_cpu_devices)

    import jax  # noqa: PLC0415  (JAX after use_fake_cpu_devices)

    source = data_lib.make_source(config, "train", 1)
    features = input_pipeline.VideoQAFeatures(
        tokenizer, *data_lib.text_lengths(config, tokenizer),
        template=config.data.prompt_template).map(source[0])
    batch = config.train.batch_size
    return {k: jax.ShapeDtypeStruct((batch,) + v.shape, v.dtype, sharding=batch_sharding)
            for k, v in features.items() if v.dtype.kind in "biuf"}  # as data.to_global


def compile_train_step(config, devices, phases: dict | None = None) -> tuple[Report, object]:
    """Compiles the train step of ``config`` on ``devices``; returns the report and executable.

    ``phases`` (filled as each ends, so a refused compile keeps the first): seconds of
    tracing and lowering to StableHLO (``trace_and_lower_s``, JAX and this code) and of
    XLA's compile (``xla_compile_s``), which tell where a slow compile spends its time.
    """
    import time  # noqa: PLC0415

    import jax  # noqa: PLC0415  (JAX after use_fake_cpu_devices)

    from frejax.training import train  # noqa: PLC0415  (JAX after use_fake_cpu_devices)
    from frejax.training.run import Run  # noqa: PLC0415  (JAX after use_fake_cpu_devices)

    run = Run(config, devices=devices)
    mesh = run.mesh
    with run.rules_only():
        # Outside ``set_mesh``: optax builds a placeholder state eagerly, and
        # compile-only TPU devices cannot run anything.
        setup = run.setup
        batch = abstract_batch(config, run.tokenizer, run.batch_sharding)
        step = train.make_train_step(setup, config, run.batch_sharding)
        phases = {} if phases is None else phases
        with run:
            start = time.perf_counter()
            lowered = step.lower(setup.abstract_state, batch)
            phases["trace_and_lower_s"] = round(time.perf_counter() - start, 1)
            start = time.perf_counter()
            compiled = lowered.compile()
            phases["xla_compile_s"] = round(time.perf_counter() - start, 1)
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # older jax: one per module
    report = Report(
        num_devices=len(devices), mesh_shape=dict(mesh.shape),
        state_bytes=sum(_shard_bytes(x) for x in jax.tree.leaves(setup.abstract_state)),
        batch_bytes=sum(_shard_bytes(x) for x in jax.tree.leaves(batch)),
        argument_bytes=int(memory.argument_size_in_bytes),
        output_bytes=int(memory.output_size_in_bytes),
        alias_bytes=int(memory.alias_size_in_bytes),
        temp_bytes=int(memory.temp_size_in_bytes),
        flops=float((cost or {}).get("flops", 0.0)))
    return report, compiled


def _shard_bytes(x) -> int:
    """Bytes of one device's shard of a ``ShapeDtypeStruct`` with a sharding."""
    return math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize


def fake_devices(num_devices: int, topology: str | None):
    """This process's fake devices; CPU ones need ``use_fake_cpu_devices`` first."""
    import jax  # noqa: PLC0415  (JAX after use_fake_cpu_devices)

    if topology:
        from jax.experimental import topologies  # noqa: PLC0415  (needs libtpu)

        try:
            return list(topologies.get_topology_desc(topology, "tpu").devices)
        except Exception as e:  # noqa: BLE001  (no libtpu raises several kinds)
            raise app.UsageError(
                f"--topology={topology}: cannot build compile-only TPU devices ({e});"
                " install libtpu (pip install 'jax[tpu]') or use --devices") from None
    devices = jax.devices()
    if len(devices) != num_devices:
        raise app.UsageError(
            f"--devices={num_devices} but JAX has {len(devices)} devices: JAX started before"
            " use_fake_cpu_devices (run as python -m frejax.training.aot)")
    return devices


def allocation_report(message: str, max_lines: int = 60) -> str:
    """The compiler's out-of-memory report: its first line, then the sections that list
    the largest allocations (what dominates), not only the first line."""
    lines = message.splitlines()
    keep = lines[:1]
    in_list = False
    for line in lines[1:]:
        if "largest" in line.lower() or "allocation" in line.lower():
            in_list = True
        if in_list:
            keep.append(line)
        if len(keep) >= max_lines:
            keep.append(f"... ({len(lines) - len(keep)} more lines)")
            break
    if len(keep) == 1:  # no allocation list in the message: show its start
        keep = lines[:max_lines]
    return "\n".join(keep)


def dump_step_memory_report(every_pass: bool = False) -> str:
    """Asks XLA to dump the train step's compiled modules to a new folder (before JAX
    initialises); the TPU compiler writes its memory-usage report there even for a program
    it refuses, the allocation list its error message lacks. ``every_pass``: the module
    after every pass that changed it too (``pass_timings`` reads their times). Returns the
    folder."""
    folder = tempfile.mkdtemp(prefix="frejax-aot-")
    os.environ["XLA_FLAGS"] = " ".join(
        [os.environ.get("XLA_FLAGS", ""), f"--xla_dump_to={folder}",
         "--xla_dump_hlo_module_re=jit_step"]
        + (["--xla_dump_hlo_pass_re=.*"] if every_pass else [])).strip()
    return folder


def pass_timings(folder: str, start: float) -> list[tuple[str, float]]:
    """Seconds per stage of XLA's compile, from the per-pass dumps in ``folder``.

    XLA writes ``<module>.<NNNN>.<pipeline>.after_<pass>...txt`` after each HLO pass that
    changed the module and, after the HLO passes, the optimised module, its buffer
    assignment and the backend's reports. In the order they were written, the time
    between two dumps is charged to the later one: for a pass dump its pipeline (with
    the unchanged passes before it and the dump's own writing), for the others what
    they record. ``start``: when XLA's compile began (``time.time()``); the time to the
    first dump is "before the first pass". Stages largest first."""
    pass_dump = re.compile(r"\.jit_step\.[^/]*?\.(\d{4})\.([^.]+)\.after_")
    dumps = []
    for path in glob.glob(os.path.join(folder, "*jit_step*")):
        if not os.path.isfile(path):
            continue
        name = os.path.basename(path)
        m = pass_dump.search(name)
        if m:
            order, label = int(m.group(1)), "HLO passes: " + m.group(2).replace("_", " ")
        else:  # e.g. module_0000.jit_step.cl_1.after_optimizations-buffer-assignment.txt
            order, label = 10_000, "after the HLO passes: " + name.split(".")[-2]
        dumps.append((os.path.getmtime(path), order, label))
    if not dumps:
        return []
    dumps.sort()
    totals: dict[str, float] = {"before the first pass": max(0.0, dumps[0][0] - start)}
    for (t0, _, _), (t1, _, label) in zip(dumps, dumps[1:]):
        totals[label] = totals.get(label, 0.0) + max(0.0, t1 - t0)
    return sorted(totals.items(), key=lambda kv: -kv[1])


def largest_allocations(folder: str, count: int = 12) -> str:
    """The first ``count`` buffers of the step's memory-usage report in ``folder`` (largest
    first: cumulative size, size, the values that share the buffer), or "" if none."""
    reports = sorted(glob.glob(os.path.join(folder, "*jit_step*memory-usage-report.txt")))
    if not reports:
        return ""
    with open(reports[-1]) as f:
        lines = f.read().splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip().startswith("-----")), 0)
    head = [line for line in lines[:start + 1] if line.strip()]
    return "\n".join(head + [line[:400] for line in lines[start + 1:start + 1 + count]])


def use_fake_cpu_devices(num_devices: int) -> None:
    """Asks XLA for ``num_devices`` CPU devices; must run before JAX initialises."""
    flags_ = [f for f in os.environ.get("XLA_FLAGS", "").split()
              if not f.startswith("--xla_force_host_platform_device_count")]
    os.environ["XLA_FLAGS"] = " ".join(
        flags_ + [f"--xla_force_host_platform_device_count={num_devices}"])
    os.environ["JAX_PLATFORMS"] = "cpu"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = flags.FLAGS.config.copy_and_resolve_references()
    if config.train.dtype == "auto":
        config.train.dtype = "bfloat16"  # what "auto" means on the TPU/GPU being sized
    num_devices = flags.FLAGS.devices
    if flags.FLAGS.pass_timings and not flags.FLAGS.topology:
        raise app.UsageError("--pass_timings needs --topology (the TPU compiler's dumps)")
    dump = (dump_step_memory_report(every_pass=flags.FLAGS.pass_timings)
            if flags.FLAGS.topology else None)
    try:
        _compile_and_report(config, num_devices, dump)
    finally:
        if dump:
            shutil.rmtree(dump, ignore_errors=True)


def _compile_and_report(config, num_devices: int, dump: str | None) -> None:
    if not flags.FLAGS.topology:
        if num_devices <= 0:
            num_devices = 1
            for s in config.mesh.shape:
                if s == -1:
                    raise app.UsageError("--devices is needed: config.mesh.shape has a -1 entry")
                num_devices *= s
        use_fake_cpu_devices(num_devices)
    devices = fake_devices(num_devices, flags.FLAGS.topology)
    import jax  # noqa: PLC0415  (after use_fake_cpu_devices)

    logging.info("Compiling %s for %d %s devices", config.name, len(devices),
                 devices[0].platform)
    print(f"{config.name}: train step, global batch {config.train.batch_size},"
          f" {devices[0].device_kind} x{len(devices)}")
    phases: dict = {}
    start = time.time()
    try:
        report, _ = compile_train_step(config, devices, phases)
    except jax.errors.JaxRuntimeError as e:
        # The TPU compiler refuses a program that cannot fit its HBM and says by how much.
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        allocations = "\n".join(filter(None, [
            allocation_report(str(e)), dump and largest_allocations(dump)]))
        print("does not fit:\n" + allocations)
        print(_phases(phases))
        _write(dict(fits=False, allocations=allocations, **phases), devices)
        sys.exit(1)
    print(report.format())
    allocations = dump and largest_allocations(dump)
    if allocations:  # what the temporaries hold, for a step near its chip's limit
        print("largest allocations:\n" + allocations)
    print(_phases(phases))
    xla_start = start + phases.get("trace_and_lower_s", 0.0)
    passes = pass_timings(dump, xla_start) if dump and flags.FLAGS.pass_timings else []
    if passes:
        print(PASS_TIMINGS_HEADER)
        print("\n".join(f"  {s:8.1f} s  {name}" for name, s in passes[:20]))
    _write(dict(dataclasses.asdict(report), peak_bytes=report.peak_bytes, **phases,
                **({"allocations": allocations} if allocations else {}),
                **({"pass_timings": [[n, round(s, 2)] for n, s in passes]} if passes else {}),
                fits={chip: report.peak_bytes <= gib * GIB for chip, gib in HBM_GIB.items()}),
           devices)


def _phases(phases: dict) -> str:
    return "  compile time " + ", ".join(
        f"{name.removesuffix('_s').replace('_', ' ')} {s} s" for name, s in phases.items())


def _write(figures: dict, devices) -> None:
    """``--out``: the report as JSON, with the command that wrote it."""
    if not flags.FLAGS.out:
        return
    import json  # noqa: PLC0415

    record = dict(command="python -m frejax.training.aot " + " ".join(sys.argv[1:]),
                  device_kind=devices[0].device_kind, num_devices=len(devices),
                  topology=flags.FLAGS.topology)
    record.update(figures)
    os.makedirs(os.path.dirname(flags.FLAGS.out) or ".", exist_ok=True)
    with open(flags.FLAGS.out, "w") as f:
        json.dump(record, f, indent=2)


if __name__ == "__main__":
    from frejax import cli  # noqa: PLC0415  (JAX is not imported before main runs)

    define_flags()
    cli.run(main, "frejax.training.aot")
