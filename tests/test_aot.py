"""Ahead-of-time compile check and the "sufficiently sharded" guard, on fake devices.

The full pod configuration takes minutes to compile on a small CPU host, so the
command is tested on its pod-like reduction (``scale=pod,smoke``: the pod mesh
``(-1, 16, 4)``, the pod vocabulary and sequence lengths, a tiny model) over 64
fake CPU devices. Figures of the full configuration are in the README.
"""

import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from configs import long_video
from frejax.training import aot
from data_pipelines import datasets as data_lib
from frejax import sharding
from frejax.training import train
from frejax.training import train_state

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _figure(out: str, name: str) -> int:
    """The exact byte count printed on the ``name`` line of the report."""
    match = re.search(rf"^  {name} +[0-9.]+ GiB \((\d+) B\)", out, re.M)
    assert match, f"no {name!r} line in:\n{out}"
    return int(match.group(1))


# The smoke model's 2 heads cannot split over the pod's tensor axis of 4.
POD_LIKE = {"train.batch_size": 16, "model.vision.heads": 4, "model.llm.heads": 4,
            "model.llm.kv_heads": 4, "compressor.fre_res.absorber.heads": 4}


def _pod_like_config():
    config = long_video.get_config("scale=pod,smoke")
    for key, value in POD_LIKE.items():
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


def test_aot_command_compiles_a_pod_like_config_on_64_fake_devices(tmp_path):
    report = tmp_path / "aot.json"
    cmd = [sys.executable, "-m", "frejax.training.aot", "--config=configs/long_video.py:scale=pod,smoke",
           "--devices=64", f"--out={report}",
           *[f"--config.{k}={v}" for k, v in POD_LIKE.items()]]
    env = dict(os.environ, XLA_FLAGS="--xla_backend_optimization_level=0")
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    assert "mesh {'data': 1, 'fsdp': 16, 'tensor': 4} over 64 devices" in text

    # The train state per device is what its shardings say, computed here independently.
    config = _pod_like_config()
    tok = data_lib.make_tokenizer(config)
    with sharding.axis_rules(config.sharding.rules):
        model = nnx.eval_shape(lambda: train_state.create_model(config, tok, seed=0))
        params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    total_param_bytes = sum(p.size * 4 for p in jax.tree.leaves(params))
    state = _figure(text, "train state")
    # params + two Adam moments (3x), split 64 ways but for small replicated vectors
    assert 3 * total_param_bytes / 64 <= state < 3 * total_param_bytes / 32
    # XLA's own argument accounting matches: the state and the batch, less the few
    # batch fields the train step never reads (jit drops them: answer tokens, index, ...).
    unread = state + _figure(text, "batch") - _figure(text, "arguments")
    assert 0 <= unread <= 4096, unread
    assert _figure(text, "temporaries") > 0
    # The donated train state is reused for the new one: its bytes are aliased, not doubled.
    aliased = int(re.search(r"\((\d+) B\) aliased to donated arguments", text).group(1))
    assert state - 4096 <= aliased <= state, (aliased, state)
    flops = float(re.search(r"FLOPs per step ([0-9.e+]+) per device", text).group(1))
    assert flops > 0
    assert "v5e 16 GiB: fits" in text
    # --out: the same figures, and the command that wrote them.
    record = json.loads(report.read_text())
    assert record["num_devices"] == 64 and record["fits"]["v5e"]
    assert record["temp_bytes"] == _figure(text, "temporaries")
    assert record["command"].startswith("python -m frejax.training.aot --config=")


def test_pod_params_are_sufficiently_sharded_and_a_replicating_rule_is_caught():
    config = long_video.get_config("scale=pod")
    tok = data_lib.make_tokenizer(config)
    with sharding.axis_rules(config.sharding.rules):
        model = nnx.eval_shape(lambda: train_state.create_model(config, tok, seed=0))
    state = nnx.state(model, nnx.Param)  # 8B parameters, none allocated
    params = nnx.to_pure_dict(state)
    mesh = dict(data=4, fsdp=16, tensor=4)
    limit = config.sharding.max_unsharded_param_size

    specs = nnx.to_pure_dict(sharding.param_specs(state, config.sharding.rules))
    sharding.check_params_sufficiently_sharded(params, specs, mesh, max_unsharded_size=limit)
    # What stays unsplit over fsdp is small: biases of tensor-split layers.
    leftovers = sharding.unsharded_params(params, specs)
    assert leftovers and all("bias" in path for path, _, _ in leftovers)
    assert np.prod(leftovers[0][1]) <= 27 * 4304  # the largest: the 27 ViT MLP biases, stacked

    # A rule set that forgets fsdp on `embed` leaves the big matrices replicated.
    rules = [(k, None if k == "embed" else v) for k, v in config.sharding.rules]
    specs = nnx.to_pure_dict(sharding.param_specs(state, rules))
    with pytest.raises(ValueError, match=r"sharding.rules leave .*llm/embedding \(152064, 3584\)"):
        sharding.check_params_sufficiently_sharded(params, specs, mesh, max_unsharded_size=limit)
    # Without fsdp there is nothing to split over: no complaint.
    sharding.check_params_sufficiently_sharded(params, specs, dict(data=64, fsdp=1, tensor=4),
                                               max_unsharded_size=limit)


def test_make_setup_refuses_a_mesh_where_fsdp_would_not_split_the_model():
    config = long_video.get_config("smoke")
    config.mesh.shape = (4, 2, 1)
    config.sharding.max_unsharded_param_size = 1000  # the smoke model is tiny
    config.sharding.rules = tuple((k, None if k in ("embed", "vocab") else v)
                                  for k, v in config.sharding.rules)
    mesh = sharding.make_mesh(config.mesh.shape, jax.devices()[:8])
    with sharding.axis_rules(config.sharding.rules):
        with pytest.raises(ValueError, match="max_unsharded_param_size"):
            train_state.make_setup(config, mesh, data_lib.make_tokenizer(config))


def test_unsharded_params_lists_largest_first():
    params = dict(a=np.zeros((4, 8)), b=np.zeros((100,)), c=np.zeros((16, 16)))
    specs = dict(a=jax.P("fsdp", None), b=jax.P(None), c=jax.P(None, "tensor"))
    assert sharding.unsharded_params(params, specs) == [
        ("c", (16, 16), jax.P(None, "tensor")), ("b", (100,), jax.P(None))]
    assert sharding.unsharded_params(params, specs, min_size=200) == [
        ("c", (16, 16), jax.P(None, "tensor"))]


def test_an_out_of_memory_report_keeps_the_largest_allocations():
    message = "\n".join([
        "RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory"
        " space hbm. Used 27.06G of 15.75G hbm. Exceeded hbm capacity by 11.31G.",
        "", "Total hbm usage >= 27.31G:", "    reserved        258.00M",
        "    program          27.06G", "",
        "Output size 1.53G; shares 0.00 with arguments.", "",
        "Program hbm requirement 27.06G:",
        "Largest program allocations in hbm:", "",
        "  1. Size: 6.00G", "     Operator: op_name=\"jit(train_step)/llm/mlp/dot\"",
        "     Shape: bf16[64,8192,6144]{2,1,0}",
        "  2. Size: 3.00G", "     Shape: f32[64,8192,1536]{2,1,0}"])
    report = aot.allocation_report(message)
    assert report.startswith("RESOURCE_EXHAUSTED") and "1. Size: 6.00G" in report
    assert "jit(train_step)/llm/mlp/dot" in report and "2. Size: 3.00G" in report
    assert aot.allocation_report("one line only") == "one line only"


def test_pass_timings_charge_the_time_between_dumps_to_the_later_pipeline(tmp_path):
    def dump(name: str, at: float) -> None:
        path = tmp_path / name
        path.write_text("HloModule jit_step")
        os.utime(path, (at, at))

    prefix = "module_0000.jit_step.cl_1"
    dump(f"{prefix}.0000.simplification-1.after_pipeline-start.before_cse.txt", 102.0)
    dump(f"{prefix}.0001.simplification-1.after_cse.before_dce.txt", 103.0)
    dump(f"{prefix}.0002.xla-partitioner.after_shardy-xla.before_cleanup.txt", 110.0)
    dump(f"{prefix}.0003.Main_fusion.after_tpu_fusion.before_x.txt", 114.0)
    dump(f"{prefix}.0004.simplification-1.after_algsimp.before_dce.txt", 115.0)
    dump(f"{prefix}.after_optimizations-memory-usage-report.txt", 121.0)
    os.makedirs(tmp_path / "shardy")  # folders are not dumps
    dump("module_0001.jit_other.0000.Main_fusion.after_tpu_fusion.before_x.txt", 200.0)
    dump(f"{prefix}.after_codegen.txt", 130.0)
    timings = dict(aot.pass_timings(str(tmp_path), start=100.0))
    assert timings == {"before the first pass": 2.0, "HLO passes: simplification-1": 2.0,
                       "HLO passes: xla-partitioner": 7.0, "HLO passes: Main fusion": 4.0,
                       "after the HLO passes: after_optimizations-memory-usage-report": 6.0,
                       "after the HLO passes: after_codegen": 9.0}
    assert [n for n, _ in aot.pass_timings(str(tmp_path), 100.0)][:2] == [
        "after the HLO passes: after_codegen", "HLO passes: xla-partitioner"]
    assert aot.pass_timings(str(tmp_path / "none"), 0.0) == []


def test_accelerator_scale_reports_host_cores_and_where_the_compile_went():
    from frejax.benchmarks import accelerator_scale

    row = dict(label="after", revision="abc1234", topology="v5e:16x16", overrides=[],
               wall_s=150.0, cpu_s=270.0, exit_code=0, host_cores=2, pass_dumps=True,
               trace_and_lower_s=1.2, xla_compile_s=140.0, peak_bytes=12 * 2**30,
               pass_timings=[["after the HLO passes: after_codegen", 120.0],
                             ["HLO passes: xla-partitioner", 30.0]],
               command="python -m frejax.benchmarks.accelerator_scale --part=pod"
                       " --pass_timings")
    text = accelerator_scale.markdown(dict(pod=[row]))
    assert "| after | abc1234 | v5e:16x16 | – (pass dumps) | 2 | 150.0 | 270.0 |" in text
    assert "| after the HLO passes: after_codegen | 120.0 | 80% |" in text
    assert "(150.0 s in all" in text
    args = accelerator_scale._parser().parse_args(["--part=pod", "--pass_timings",
                                                   "--host_cores=1"])
    assert accelerator_scale.command_line(args) == (
        "python -m frejax.benchmarks.accelerator_scale --part=pod --host_cores=1"
        " --pass_timings")


def test_a_wrong_use_of_the_command_is_one_line_and_exit_status_2():
    out = subprocess.run([sys.executable, "-m", "frejax.training.aot",
                          "--config=configs/long_video.py:smoke", "--pass_timings"],
                         cwd=REPO, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert out.returncode == 2, out.stderr[-2000:]
    lines = [line for line in out.stderr.splitlines() if "error:" in line]
    assert lines == ["frejax.training.aot: error: --pass_timings needs --topology (the TPU"
                     " compiler's dumps) (--helpfull lists the flags)"], out.stderr[-2000:]
    assert "Traceback" not in out.stderr and "USAGE" not in out.stderr.upper()
