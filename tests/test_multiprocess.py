"""Multi-controller runs through the real entry point, ``python -m frejax.main``.

Two processes with two CPU devices each (gloo collectives, the README's command)
train, checkpoint and evaluate exactly like one process with four devices; a
SIGTERM to both saves one step and exits 0; a SIGKILL of one stops the other
with an error within the heartbeat timeout; rerunning resumes bit for bit; and
evaluating one checkpoint gives the same results on 1, 4 or 8 devices and 1 or 2
processes. The runs are short (the smoke model) and share a module fixture.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from frejax import distributed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 24
TRAIN = ("--config=configs/short_video.py:smoke", f"--config.train.num_steps={NUM_STEPS}",
         "--config.train.checkpoint_every=4", "--config.train.log_every=2",
         "--config.eval.num_examples=64")
HEARTBEAT_S = 10  # --heartbeat_timeout of the runs: how soon a lost process is noticed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


class Run:
    """``num_processes`` processes of ``python -m frejax.main`` sharing ``devices`` CPU devices."""

    def __init__(self, workdir, num_processes: int, devices: int, *flags: str,
                 mesh: str = "(2,2,1)", mode: str = "train"):
        self.workdir = str(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
        for key in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
            env.pop(key, None)
        # Optimisation level 0 halves the CPU compile time and leaves the float math alone.
        env["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={devices // num_processes}"
                            " --xla_backend_optimization_level=0")
        command = [sys.executable, "-m", "frejax.main", *TRAIN, *flags, f"--mode={mode}",
                   f"--config.mesh.shape={mesh}", f"--workdir={self.workdir}"]
        if num_processes > 1:
            command += [f"--coordinator_address=localhost:{_free_port()}",
                        f"--num_processes={num_processes}", f"--heartbeat_timeout={HEARTBEAT_S}"]
        self.logs, self.procs = [], []
        attempt = sum(n.endswith(".0.log") for n in os.listdir(self.workdir))
        for i in range(num_processes):
            log = os.path.join(self.workdir, f"{mode}.{attempt}.{i}.log")
            self.logs.append(log)
            with open(log, "w") as f:
                rank = [f"--process_id={i}"] if num_processes > 1 else []
                self.procs.append(subprocess.Popen(command + rank, cwd=REPO, env=env,
                                                   stdout=f, stderr=subprocess.STDOUT))

    def log(self, i: int = 0) -> str:
        with open(self.logs[i]) as f:
            return f.read()

    def wait(self, timeout: float = 600) -> list[int]:
        deadline = time.monotonic() + timeout
        try:
            return [p.wait(timeout=max(deadline - time.monotonic(), 1)) for p in self.procs]
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("hung: " + self.log(0)[-3000:]) from None

    def finish(self, timeout: float = 600) -> None:
        codes = self.wait(timeout)
        assert codes == [0] * len(codes), "\n".join(self.log(i)[-3000:] for i in range(len(codes)))

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    def wait_for_checkpoint(self, at_least: int, timeout: float = 300) -> int:
        """Waits for a committed checkpoint step >= ``at_least``; returns the newest."""
        directory = os.path.join(self.workdir, "checkpoints")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            names = os.listdir(directory) if os.path.isdir(directory) else []
            steps = [int(n) for n in names if n.isdigit()]
            steps = [s for s in steps if s >= at_least]
            if steps:
                return max(steps)
            assert all(p.poll() is None for p in self.procs), self.log(0)[-3000:]
            time.sleep(0.2)
        self.kill()
        raise AssertionError(f"no checkpoint >= {at_least} in {timeout} s")

    def results(self) -> dict:
        with open(os.path.join(self.workdir, "results.json")) as f:
            return json.load(f)

    def losses(self) -> dict[int, float]:
        """Step -> train loss; a step logged twice (run again after a kill) must agree."""
        out = {}
        with open(os.path.join(self.workdir, "metrics.jsonl")) as f:
            for line in f:
                row = json.loads(line)
                if "train/loss" in row:
                    assert out.setdefault(row["step"], row["train/loss"]) == row["train/loss"]
        return out

    def checksums(self, step: int = NUM_STEPS) -> dict:
        """The per-array checksums saved with ``step``: equal means bit-identical state."""
        path = os.path.join(self.workdir, "checkpoints", str(step), "checksums", "metadata")
        with open(path) as f:
            return json.load(f)


def _finish_all(runs) -> None:
    """Waits for runs started side by side; on a failure none is left running."""
    try:
        for run in runs:
            run.finish()
    finally:
        for run in runs:
            run.kill()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference runs, side by side: one process of four devices and two of two."""
    root = tmp_path_factory.mktemp("uninterrupted")
    runs = dict(one=Run(root / "one", 1, 4), two=Run(root / "two", 2, 4))
    _finish_all(runs.values())
    return runs


def test_two_processes_through_main_equal_one_process_of_four(uninterrupted):
    one, two = uninterrupted["one"], uninterrupted["two"]
    assert two.results() == one.results()  # accuracy, per-family accuracy and counts
    assert two.results()["num_examples"] == 64
    # Gloo sums across processes in another order than XLA within one: the losses
    # agree to float32 rounding, not bit for bit (a resume in the same layout is exact).
    losses_one, losses_two = one.losses(), two.losses()
    assert sorted(losses_two) == sorted(losses_one) and len(losses_one) >= NUM_STEPS // 2
    np.testing.assert_allclose([losses_two[s] for s in sorted(losses_one)],
                               [losses_one[s] for s in sorted(losses_one)], rtol=1e-6)
    assert min(losses_one.values()) < losses_one[1]  # it trains
    # Both processes wrote their own data-iterator position into each checkpoint.
    data_iter = os.path.join(two.workdir, "checkpoints", str(NUM_STEPS), "data_iter")
    assert sorted(n for n in os.listdir(data_iter) if n.startswith("process_")) == [
        "process_0-of-2.json", "process_1-of-2.json"]
    # One voice per run: only process 0 prints the results.
    assert "accuracy" in two.log(0) and "accuracy " not in two.log(1)


def test_evaluation_is_the_same_on_1_4_8_devices_and_1_or_2_processes(uninterrupted,
                                                                       tmp_path):
    reference = uninterrupted["two"].results()  # evaluated by 2 processes x 2 devices
    layouts = {(1, 1): "(1,1,1)", (1, 8): "(4,2,1)", (2, 8): "(4,2,1)"}
    runs = {}
    for (processes, devices), mesh in layouts.items():
        workdir = tmp_path / f"{processes}x{devices}"
        shutil.copytree(os.path.join(uninterrupted["two"].workdir, "checkpoints"),
                        workdir / "checkpoints")
        runs[processes, devices] = Run(workdir, processes, devices, mesh=mesh, mode="eval")
    _finish_all(runs.values())
    for layout, run in runs.items():
        assert run.results() == reference, layout


def test_preempt_both_then_kill_one_then_resume_equals_the_uninterrupted_run(
        uninterrupted, tmp_path):
    workdir = tmp_path / "run"
    # 1. Saves on the clock (decided by process 0, joined by both), then SIGTERM to
    #    both processes: both save the same step and exit 0.
    run = Run(workdir, 2, 4, "--config.train.checkpoint_every=1000",
              "--config.train.checkpoint_minutes=1e-6")
    run.wait_for_checkpoint(4)
    for p in run.procs:
        p.send_signal(signal.SIGTERM)
    run.finish(timeout=120)
    saved = [line for i in range(2) for line in run.log(i).splitlines()
             if "Preempted: saved step" in line]
    steps = {line.split("Preempted: saved step ")[1].split()[0] for line in saved}
    assert len(steps) == 1 and len(saved) >= 2, saved
    preempted_at = int(steps.pop())
    assert 4 <= preempted_at < NUM_STEPS
    assert not os.path.exists(os.path.join(workdir, "results.json"))
    assert "Checkpoint of step 2 started" in run.log(0)  # a step only the clock saves

    # 2. The rerun resumes; SIGKILL of process 1 after its next checkpoint: process 0
    #    stops with an error that says a process was lost, within the heartbeat bound.
    run = Run(workdir, 2, 4)
    assert run.wait_for_checkpoint(preempted_at + 1) < NUM_STEPS
    run.procs[1].kill()
    killed = time.monotonic()
    code = run.wait(timeout=HEARTBEAT_S + 60)[0]
    assert time.monotonic() - killed < HEARTBEAT_S + 60
    assert code != 0
    log = run.log(0)
    assert "Resuming from step %d" % preempted_at in log
    assert distributed.peer_lost(Exception(log)), log[-3000:]

    # 3. Rerunning both resumes exactly: the final state, losses and results equal the
    #    uninterrupted two-process run bit for bit.
    run = Run(workdir, 2, 4)
    run.finish()
    reference = uninterrupted["two"]
    assert run.checksums() == reference.checksums()
    assert run.losses() == reference.losses()
    assert run.results() == reference.results()


def _state_and_parent(pid) -> tuple[str, int] | None:
    """``(state letter, parent pid)`` of a process from ``/proc``; None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1])


def _descendants(pid: int) -> set[int]:
    """Live processes below ``pid`` (Linux ``/proc``): Grain's workers and their helpers."""
    children: dict[int, list[int]] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        stat = _state_and_parent(entry)
        if stat and stat[0] != "Z":  # a zombie is dead, waiting for its parent to read it
            children.setdefault(stat[1], []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pids: set[int], within: float) -> set[int]:
    """Which of ``pids`` still run after waiting up to ``within`` seconds for them to end."""
    deadline = time.monotonic() + within
    while True:
        alive = {p for p in pids if (_state_and_parent(p) or ("Z",))[0] != "Z"}
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


def test_grain_workers_end_with_the_trainer_and_a_run_with_workers_resumes_exactly(
        uninterrupted, tmp_path):
    workdir, workers = tmp_path / "run", "--config.data.worker_count=2"
    # SIGTERM: the trainer saves, exits 0, and its workers end with it.
    run = Run(workdir, 1, 4, workers)
    run.wait_for_checkpoint(4)
    spawned = _descendants(run.procs[0].pid)
    assert len(spawned) >= 2, spawned  # the workers (and multiprocessing's resource tracker)
    run.procs[0].send_signal(signal.SIGTERM)
    run.finish(timeout=120)
    saved = int(run.log(0).split("Preempted: saved step ")[1].split()[0])
    assert not _alive(spawned, within=10)

    # SIGKILL: nothing can run in the trainer, yet the workers notice and end.
    run = Run(workdir, 1, 4, workers)
    run.wait_for_checkpoint(saved + 1)
    spawned = _descendants(run.procs[0].pid)
    assert len(spawned) >= 2, spawned
    run.procs[0].kill()
    run.wait()
    assert not _alive(spawned, within=10)

    # The rerun with workers resumes exactly; Grain's workers deliver the batches in
    # the order one process reads them, so it equals the run without workers.
    run = Run(workdir, 1, 4, workers)
    run.finish()
    reference = uninterrupted["one"]
    assert run.checksums() == reference.checksums()
    assert run.losses() == reference.losses()
    assert run.results() == reference.results()


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



def test_a_lost_peer_is_told_apart_from_a_storage_fault(tmp_path):
    from frejax.training import checkpointing  # noqa: PLC0415

    gloo = RuntimeError("UNKNOWN: Gloo AllGather failed: [pair.cc:538] Read error:"
                        " Connection reset by peer")
    wrapped = ValueError("save failed")
    wrapped.__cause__ = gloo
    assert distributed.peer_lost(gloo) and distributed.peer_lost(wrapped)
    assert not distributed.peer_lost(OSError(28, "No space left on device"))
    message = checkpointing._save_failure(str(tmp_path), 12, wrapped)  # noqa: SLF001
    assert "another process of the run stopped" in message
    assert "Rerun every process" in message
    disk = checkpointing._save_failure(str(tmp_path), 12, OSError(28, "No space left"))  # noqa: SLF001
    assert "the disk is full" in disk and "another process" not in disk
