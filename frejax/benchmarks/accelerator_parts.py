"""The ``attention``, ``cpu_step`` and ``cpu_profile`` parts of ``frejax.benchmarks.accelerator_scale``.

``attention``: every backend's forward + backward at 8k and 32k tokens (one
sequence, 8 query heads over 2 key/value heads, head width 64, causal, float32),
compiled on this machine's CPU: XLA's temporary memory for each, wall time where
the program fits ``--max_run_gib``. With libtpu installed, the same programs
compiled for one compile-only TPU v5e chip give the TPU compiler's memory
figures, splash included.

``cpu_step``: the main job (``configs/long_video.py``) trained for a few
steps by ``python -m frejax.main`` in a subprocess, for this tree (its default,
scanned layers without remat, unrolled layers) and baseline revisions; steps per
second from its ``metrics.jsonl``, the first logged interval (compilation) left out.

``cpu_profile``: the main job's train step alone, in this process, for the same
layouts, the remat policies that keep matmul outputs, and without the absorber
(``frejax.benchmarks.step_profile``, timed steps interleaved): step time,
XLA:CPU's per-fusion times by kind, the largest fusions with their source
operations, and the compiled HLO's temporaries and loop-carried buffers.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from frejax.reporting import checkout, git_rev

GIB = 2**30
LENGTHS = (8192, 32768)
HEADS, KV_HEADS, HEAD_DIM = 8, 2, 64
CPU_BACKENDS = ("xla", "dot_product", "blockwise")
TPU_BACKENDS = ("xla", "splash", "blockwise")


def _attention_program(backend: str, length: int):
    import jax  # noqa: PLC0415  (the pod part's parent process runs without JAX)
    import jax.numpy as jnp  # noqa: PLC0415  (the pod part's parent process runs without JAX)

    from frejax.nn import attention  # noqa: PLC0415  (the pod part's parent process runs without JAX)

    mask = attention.AttentionMask(causal=True)

    def loss(q, k, v):
        return attention.attention(q, k, v, mask, implementation=backend).astype(
            jnp.float32).sum()

    q = jax.ShapeDtypeStruct((1, length, HEADS, HEAD_DIM), jnp.float32)
    kv = jax.ShapeDtypeStruct((1, length, KV_HEADS, HEAD_DIM), jnp.float32)
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))), (q, kv, kv)


def run_attention(args, command: str) -> dict:
    import jax  # noqa: PLC0415  (the pod part's parent process runs without JAX)

    rows = []
    for length in LENGTHS:
        for backend in CPU_BACKENDS:
            fn, shapes = _attention_program(backend, length)
            start = time.perf_counter()
            compiled = fn.lower(*shapes).compile()
            compile_s = time.perf_counter() - start
            temp = int(compiled.memory_analysis().temp_size_in_bytes)
            row = dict(platform="cpu", length=length, backend=backend, temp_bytes=temp,
                       compile_s=round(compile_s, 2))
            if temp <= args.max_run_gib * GIB and (length <= 8192 or backend == "blockwise"):
                arrays = [jax.random.normal(jax.random.key(i), s.shape, s.dtype)
                          for i, s in enumerate(shapes)]
                jax.block_until_ready(compiled(*arrays))
                times = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    jax.block_until_ready(compiled(*arrays))
                    times.append(time.perf_counter() - start)
                row["seconds"] = round(statistics.median(times), 3)
            else:
                row["seconds"] = None
            print(json.dumps(row), flush=True)
            rows.append(row)
    rows += _tpu_attention_rows(args)
    lines = [f"Forward + backward of one causal sequence, {HEADS} query heads over"
             f" {KV_HEADS} key/value heads, head width {HEAD_DIM}, float32. Temporaries from"
             " XLA's memory analysis of the compiled program; time the median of"
             f" {args.repeats} runs on this machine's CPU, where the program fits"
             f" {args.max_run_gib} GiB (32k: blockwise only, the others are compiled, not run).",
             "", "| platform | tokens | backend | temporaries GiB | compile s | run s |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        secs = "–" if r.get("seconds") is None else r["seconds"]
        temp = (f"{r['temp_bytes'] / GIB:.3f}" if r["temp_bytes"] >= 0
                 else "refused: " + r.get("refused", "does not fit the chip"))
        lines.append(f"| {r['platform']} | {r['length']} | {r['backend']} | {temp} |"
                     f" {r['compile_s']} | {secs} |")
    lines += ["", f"Command: `{command}` (jax {jax.__version__})."]
    return dict(rows=rows, markdown=lines)


def _tpu_attention_rows(args) -> list[dict]:
    """The same programs compiled for one compile-only TPU v5e chip (needs libtpu)."""
    import jax  # noqa: PLC0415  (the pod part's parent process runs without JAX)

    try:
        from jax.experimental import topologies  # noqa: PLC0415  (needs libtpu)

        device = topologies.get_topology_desc(args.tpu_topology, "tpu").devices[0]
    except Exception as e:  # noqa: BLE001  (no libtpu raises several kinds)
        print(f"no compile-only TPU ({type(e).__name__}); TPU rows skipped", flush=True)
        return []
    rows = []
    sharding = jax.sharding.SingleDeviceSharding(device)
    for length in LENGTHS:
        for backend in TPU_BACKENDS:
            fn, shapes = _attention_program(backend, length)
            shapes = [jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding) for s in shapes]
            start = time.perf_counter()
            refused = None
            try:
                compiled = fn.lower(*shapes).compile()
                temp = int(compiled.memory_analysis().temp_size_in_bytes)
            except Exception as e:  # noqa: BLE001  (the TPU compiler refuses oversize programs)
                refused = str(e).splitlines()[0][:200]
                print(f"tpu {backend} {length}: {refused}", flush=True)
                temp = -1
            row = dict(platform=f"tpu {device.device_kind} (compile only)", length=length,
                       backend=backend, temp_bytes=temp,
                       compile_s=round(time.perf_counter() - start, 2), seconds=None)
            if refused:
                row["refused"] = refused
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


# ----------------------------------------------------------------------------
# cpu_step
# ----------------------------------------------------------------------------


def _steps_per_second(source: str, flags: list[str], steps: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="frejax-step-") as workdir:
        cmd = [sys.executable, "-m", "frejax.main", "--config=configs/long_video.py",
               f"--workdir={workdir}", f"--config.train.num_steps={steps}",
               "--config.train.log_every=20", "--config.train.checkpoint_every=100000",
               "--config.eval.num_examples=50", "--config.train.progress_bar=False"] + flags
        env = dict(os.environ, PYTHONPATH=source, JAX_PLATFORMS="cpu")
        proc = subprocess.run(cmd, cwd=source, env=env, capture_output=True, text=True,
                              check=False)
        if proc.returncode:
            return dict(error=proc.stderr.strip().splitlines()[-1][:300])
        rates = []
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            for line in f:
                record = json.loads(line)
                if "train/steps_per_sec" in record:
                    rates.append(record["train/steps_per_sec"])
    rates = rates[1:]  # the first interval holds the compilation
    return dict(steps_per_sec=round(statistics.median(rates), 3), intervals=len(rates))


# The layouts compared, as config overrides of the main job.
LAYOUTS = (
    ("default (scanned layers, remat full)", {}),
    ("scanned layers, remat none", {"model.vision.remat": "none", "model.llm.remat": "none"}),
    ("unrolled layers, remat none", {"model.vision.remat": "none", "model.llm.remat": "none",
                                     "model.vision.scan_layers": False,
                                     "model.llm.scan_layers": False}),
)
# The profile also sets the policies between the two: keep the matmul outputs.
POLICIES = tuple((f"scanned layers, remat {p}", {"model.vision.remat": p, "model.llm.remat": p})
                 for p in ("save_dots", "save_dots_no_batch"))
NO_ABSORBER = ("default without the absorber", {"compressor.fre_res.absorber.enabled": False})


def machine() -> str:
    """This machine in words, for the reports: CPU model and cores."""
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f
                          if line.startswith("model name")), "")
    except OSError:
        pass
    return f"{os.cpu_count()} CPU cores" + (f" ({model})" if model else "")


def run_cpu_step(args, command: str) -> dict:
    rows = []
    variants = [(f"this tree: {label}", None,
                 [f"--config.{k}={v}" for k, v in overrides.items()])
                for label, overrides in LAYOUTS]
    for rev in reversed((args.baseline or "").split(",")):
        if rev:
            variants.insert(0, (f"revision {rev}", rev, []))
    for label, rev, flags in variants:
        with checkout(rev, None) as source:
            row = dict(label=label, revision=rev or git_rev(source), flags=flags,
                       **_steps_per_second(source, flags, args.steps))
        print(json.dumps(row), flush=True)
        rows.append(row)
    lines = [f"The main job's train step (`configs/long_video.py`: 32 frames, Fre-Res 8x, batch"
             f" 32) on {machine()}, one run: {args.steps} steps of `python -m frejax.main`"
             " per variant, steps per second the median over 20-step intervals after the"
             " first.", "",
             "| variant | revision | steps/s |", "|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['label']} | {r['revision']} |"
                     f" {r.get('steps_per_sec', 'error: ' + r.get('error', '?'))} |")
    lines += ["", f"Command: `{command}`."]
    return dict(rows=rows, markdown=lines)


def run_cpu_profile(args, command: str) -> dict:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # profiles XLA:CPU, whatever else is installed
    from configs import long_video  # noqa: PLC0415  (the pod part's parent process runs without JAX)
    from frejax.benchmarks import step_profile  # noqa: PLC0415

    variants = dict((*LAYOUTS, *POLICIES, NO_ABSORBER))
    configs = {}
    for label, overrides in variants.items():
        configs[label] = long_video.get_config()
        configs[label].update_from_flattened_dict(overrides)
    rows = []
    for label, result in step_profile.profile_many(configs, repeats=args.repeats).items():
        rows.append(dict(label=label, overrides=variants[label], **result))
        print(json.dumps(rows[-1]), flush=True)
    mib = 2**20
    lines = [f"The main job's train step alone (one batch of its data, no input pipeline) on"
             f" {machine()}: wall time the median of {args.repeats} steps, the layouts' steps"
             " interleaved round by round (one step of each in turn); busy time the sum"
             " of XLA:CPU's thunks over its worker threads (so above the wall time where"
             " both cores work), from a `jax.profiler` trace of 5 steps; HLO figures from"
             " the compiled step.", "",
             "| layout | step ms | busy ms | copies | matmuls | dyn.-update-slices |"
             " other | temporaries MiB | loop-carried buffers (MiB) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        k = r["by_kind"]
        other = r["busy_ms"] - k.get("copy", 0) - k.get("matmul", 0) - k.get(
            "dynamic-update-slice", 0)
        loops = r["hlo"]["forward_loop_outputs"]
        lines.append(
            f"| {r['label']} | {r['step_ms']} | {r['busy_ms']} | {k.get('copy', 0)} |"
            f" {k.get('matmul', 0)} | {k.get('dynamic-update-slice', 0)} | {other:.1f} |"
            f" {r['hlo']['temporaries_bytes'] / mib:.0f} |"
            f" {loops['buffers']} ({loops['bytes'] / mib:.0f}) |")
    for r in rows:
        lines += ["", f"Largest fusions, {r['label']} (busy ms per step, source operation):", ""]
        lines += [f"- `{t['fusion']}` {t['ms']}: `{t['op']}`" for t in r["top"][:5]]
    lines += ["", f"Command: `{command}`."]
    return dict(rows=rows, markdown=lines)


def run(part: str, args, report: dict, command: str) -> None:
    """Runs ``part`` into ``report``; ``command`` is the line that reproduces it."""
    if part == "attention":
        report["attention"] = run_attention(args, command)
    elif part == "cpu_step":
        report["cpu_step"] = run_cpu_step(args, command)
    elif part == "cpu_profile":
        report["cpu_profile"] = run_cpu_profile(args, command)
    else:
        raise ValueError(f"unknown part {part!r}")
