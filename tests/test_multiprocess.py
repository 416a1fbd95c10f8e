"""A real multi-controller run: two processes with two CPU devices each equal one with four.

Each process is this file run as a script (``_worker``). In the pair, each joins
the cluster through ``frejax.distributed``, reads its own half of every batch
from the Grain pipeline and trains a few steps of the smoke config on the
global 2x2 mesh; then both write their shards of one Orbax checkpoint and
restore it. The reference is the same script as one process with four devices.
"""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import short_video
from frejax import checkpointing
from data_pipelines import datasets as data_lib
from frejax import distributed
from frejax import sharding
from frejax import train
from frejax import train_state

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 3
MESH = (2, 2, 1)  # (data, fsdp, tensor) over 4 devices


def _config():
    config = short_video.get_config("smoke")
    config.mesh.shape = MESH
    return config


def _run_steps(config, mesh, num_steps):
    """Trains ``num_steps`` from a fresh state; returns ``(losses, state, setup, iterator)``."""
    tok = data_lib.make_tokenizer(config)
    setup = train_state.make_setup(config, mesh, tok)
    state = train_state.init_state(config, setup, tok)
    batch_sharding = sharding.batch_sharding(mesh)
    step = train.make_train_step(setup, config, batch_sharding)
    it = data_lib.make_train_iterator(config, tok, mesh)
    losses = []
    for _ in range(num_steps):
        state, metrics = step(state, data_lib.next_global_batch(it, batch_sharding))
        losses.append(float(metrics["loss"]))
    return losses, state, setup, it


def _worker(coordinator: str, num_processes: int, process_id: int, workdir: str) -> None:
    """One process of the run; prints ``RESULT {json}`` for the test to read."""
    jax.config.update("jax_threefry_partitionable", True)  # as tests/conftest.py
    if num_processes > 1:
        plan = distributed.initialize(coordinator, num_processes, process_id)
        assert plan.how == "explicit", plan
    assert jax.process_count() == num_processes and jax.device_count() == 4

    config = _config()
    mesh = train_state.build_mesh(config)
    with jax.set_mesh(mesh), sharding.axis_rules(config.sharding.rules):
        losses, state, setup, it = _run_steps(config, mesh, NUM_STEPS)
        ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
        ckpt.save(NUM_STEPS, state, it, config, data_lib.make_tokenizer(config), force=True)
        ckpt.wait()
        restored = ckpt.restore(NUM_STEPS, setup.abstract_state)
        ckpt.close()
    same = jax.tree.map(
        lambda a, b: all(np.array_equal(x.data, y.data)
                         for x, y in zip(a.addressable_shards, b.addressable_shards)),
        restored, state)
    print("RESULT " + json.dumps(dict(
        process=jax.process_index(), losses=losses,
        restored_step=int(restored["step"].addressable_data(0)),
        restored_equal=all(jax.tree.leaves(same)))), flush=True)
    if num_processes > 1:
        jax.distributed.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _launch(num_processes: int, workdir) -> list[subprocess.Popen]:
    """Starts ``num_processes`` workers sharing 4 CPU devices between them."""
    coordinator = f"localhost:{_free_port()}"
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    for key in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(key, None)
    # Optimisation level 0 halves the CPU compile time; it leaves the float math alone.
    env["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={4 // num_processes}"
                        " --xla_backend_optimization_level=0")
    return [subprocess.Popen(
        [sys.executable, __file__, coordinator, str(num_processes), str(i), str(workdir)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(num_processes)]


def _results(procs: list[subprocess.Popen]) -> list[dict]:
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        line = [l for l in out.splitlines() if l.startswith("RESULT ")]
        assert line, out[-2000:] + err[-2000:]
        results.append(json.loads(line[-1][len("RESULT "):]))
    return results


def test_two_processes_of_two_devices_equal_one_process_of_four(tmp_path):
    # All three processes at once: the single-process reference and the pair.
    procs = _launch(1, tmp_path / "one") + _launch(2, tmp_path / "two")
    try:
        (reference,), pair = _results(procs[:1]), _results(procs[1:])
    finally:
        for p in procs:
            p.kill()

    assert sorted(r["process"] for r in pair) == [0, 1]
    for r in pair:
        np.testing.assert_allclose(r["losses"], reference["losses"], atol=1e-5, rtol=0)
    assert reference["losses"][-1] < reference["losses"][0]  # it trains
    for r in [reference, *pair]:
        assert r["restored_step"] == NUM_STEPS and r["restored_equal"], r
    # Both processes wrote their own data-iterator position into the one checkpoint.
    data_iter = tmp_path / "two" / "checkpoints" / str(NUM_STEPS) / "data_iter"
    assert sorted(p.name for p in data_iter.glob("process_*")) == [
        "process_0-of-2.json", "process_1-of-2.json"]


@pytest.mark.parametrize("env, expected", [
    ({}, distributed.Plan("single")),
    (dict(JAX_COORDINATOR_ADDRESS="10.0.0.2:8476", JAX_NUM_PROCESSES="4", JAX_PROCESS_ID="3"),
     distributed.Plan("explicit", "10.0.0.2:8476", 4, 3)),
    (dict(SLURM_JOB_ID="77", SLURM_NTASKS="16", SLURM_PROCID="5"),
     distributed.Plan("slurm", num_processes=16, process_id=5)),
    (dict(SLURM_JOB_ID="77", SLURM_NTASKS="1", SLURM_PROCID="0"), distributed.Plan("single")),
    # Explicit settings win over the SLURM allocation they run inside.
    (dict(SLURM_JOB_ID="77", SLURM_NTASKS="16", JAX_COORDINATOR_ADDRESS="h:1",
          JAX_NUM_PROCESSES="2", JAX_PROCESS_ID="0"), distributed.Plan("explicit", "h:1", 2, 0)),
])
def test_plan_reads_the_environment(env, expected):
    assert distributed.plan(env=env, on_tpu_vm=False, is_child_process=False) == expected


def test_plan_on_a_tpu_vm_and_in_a_data_worker():
    assert distributed.plan(env={}, on_tpu_vm=True, is_child_process=False).how == "tpu_vm"
    # A spawned Grain worker never joins, whatever its inherited environment says.
    env = dict(JAX_COORDINATOR_ADDRESS="h:1", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID="0")
    assert distributed.plan(env=env, on_tpu_vm=True, is_child_process=True).how == "worker"


def test_flags_override_the_environment_and_bad_settings_name_the_flag():
    env = dict(JAX_COORDINATOR_ADDRESS="h:1", JAX_NUM_PROCESSES="2", JAX_PROCESS_ID="0")
    got = distributed.plan("node0:9999", 8, 7, env=env, on_tpu_vm=False, is_child_process=False)
    assert got == distributed.Plan("explicit", "node0:9999", 8, 7)
    kw = dict(env={}, on_tpu_vm=False, is_child_process=False)
    with pytest.raises(ValueError, match="--num_processes"):
        distributed.plan("node0:9999", **kw)
    with pytest.raises(ValueError, match="host:port"):
        distributed.plan("node0", 2, 0, **kw)
    with pytest.raises(ValueError, match="process_id 2"):
        distributed.plan("node0:1", 2, 2, **kw)
    with pytest.raises(ValueError, match="SLURM_NTASKS"):
        distributed.plan(env=dict(SLURM_JOB_ID="1", SLURM_NTASKS="x"), on_tpu_vm=False,
                         is_child_process=False)


if __name__ == "__main__":
    _worker(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
