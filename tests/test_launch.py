"""The launch scripts' dry runs print the exact commands they would run."""

import os
import shlex
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POD = "--config=configs/long_video.py:scale=pod"


def _dry_run(script, *args, **env):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    environ.update(env)
    return subprocess.run(["bash", os.path.join(REPO, "launch", script), *args],
                          cwd=REPO, env=environ, capture_output=True, text=True, timeout=30)


def _commands(result):
    """The ``+ cmd`` lines of a dry run, each split as the shell would."""
    assert result.returncode == 0, result.stderr
    return [shlex.split(line[2:]) for line in result.stdout.splitlines() if line.startswith("+ ")]


TPU = ["gcloud", "compute", "tpus", "tpu-vm"]
WHERE = ["--zone=us-west4-a", "--project=my-proj"]


@pytest.mark.parametrize("accelerator, runtime", [
    ("v4-32", "tpu-ubuntu2204-base"), ("v5litepod-256", "v2-alpha-tpuv5-lite"),
    ("v5p-128", "v2-alpha-tpuv5"), ("v6e-64", "v2-alpha-tpuv6e")])
def test_tpu_vm_create_picks_the_runtime_of_each_tpu_family(accelerator, runtime):
    out = _dry_run("tpu_vm.sh", "create", "--name=pod", "--zone=us-west4-a",
                   "--project=my-proj", f"--accelerator={accelerator}", "--dry-run")
    assert _commands(out) == [TPU + ["create", "pod", *WHERE, f"--accelerator-type={accelerator}",
                                     f"--version={runtime}"]]
    assert f"Creating TPU VM pod ({accelerator}" in out.stdout


def test_tpu_vm_run_starts_main_on_every_worker_with_per_worker_logs():
    out = _dry_run("tpu_vm.sh", "run", "--name=pod", "--zone=us-west4-a", "--project=my-proj",
                   "--run=pod1", "--", POD, "--workdir=/mnt/runs/pod 1", DRY_RUN="1")
    (cmd,) = _commands(out)
    remote = ("mkdir -p ~/frejax_logs && cd ~/frejax && setsid nohup ~/frejax_venv/bin/python"
              f" -m frejax.main {POD} '--workdir=/mnt/runs/pod 1'"
              " > ~/frejax_logs/pod1.$(hostname).log 2>&1 < /dev/null &")
    assert cmd == TPU + ["ssh", "pod", *WHERE, "--worker=all", f"--command={remote}"]
    # The remote shell reads the frejax arguments back intact.
    main_args = shlex.split(remote.split("-m frejax.main ")[1].split(" >")[0])
    assert main_args == [POD, "--workdir=/mnt/runs/pod 1"]


def test_tpu_vm_copy_logs_and_delete():
    common = ["--name=pod", "--zone=us-west4-a", "--project=my-proj", "--dry-run"]
    copy = _commands(_dry_run("tpu_vm.sh", "copy", *common))
    assert copy[0][:2] == ["tar", "-czf"] and copy[0][-1] == "."
    assert copy[1] == TPU + ["scp", "/tmp/frejax_src.tgz", "pod:frejax_src.tgz", *WHERE,
                             "--worker=all"]
    assert copy[2][:-1] == TPU + ["ssh", "pod", *WHERE, "--worker=all"]
    assert "pip install -q -e ~/frejax'[tpu]'" in copy[2][-1]
    (logs,) = _commands(_dry_run("tpu_vm.sh", "logs", *common))
    assert logs[:-1] == TPU + ["ssh", "pod", *WHERE, "--worker=all"]
    assert "~/frejax_logs/frejax.*.log" in logs[-1]
    assert _commands(_dry_run("tpu_vm.sh", "delete", *common)) == [
        TPU + ["delete", "pod", *WHERE, "--quiet"]]


def test_tpu_vm_rejects_what_it_cannot_run():
    assert _dry_run("tpu_vm.sh", "create", "--name=p", "--zone=z", "--accelerator=v3-8",
                    "--dry-run").returncode != 0
    missing = _dry_run("tpu_vm.sh", "run", "--name=p", "--dry-run")
    assert missing.returncode == 2 and "--zone" in missing.stderr


def test_slurm_batch_script_runs_one_task_per_gpu_with_per_task_logs():
    out = _dry_run("slurm_gpu.sbatch", POD, "--workdir=/shared/runs/pod1", DRY_RUN="1",
                   SLURM_JOB_NAME="frejax", SLURM_JOB_ID="4242", PYTHON="/opt/venv/bin/python")
    assert _commands(out) == [[
        "srun", "--kill-on-bad-exit=1", "--output=logs/frejax-4242/task-%t.log",
        "/opt/venv/bin/python", "-m", "frejax.main", POD, "--workdir=/shared/runs/pod1"]]
    script = open(os.path.join(REPO, "launch", "slurm_gpu.sbatch")).read()
    assert "#SBATCH --ntasks-per-node=8" in script and "#SBATCH --gpus-per-node=8" in script


def test_multinode_gpu_script_passes_coordinator_count_and_rank():
    env = dict(COORDINATOR_ADDRESS="10.0.0.2:8476", NUM_NODES="4", NODE_RANK="3")
    out = _dry_run("multinode_gpu.sh", "--dry-run", POD, **env)
    assert _commands(out) == [[
        "python", "-m", "frejax.main", "--coordinator_address=10.0.0.2:8476",
        "--num_processes=4", "--process_id=3", POD]]
    assert "Node 3 of 4" in out.stdout
    bad = _dry_run("multinode_gpu.sh", "--dry-run", POD, **dict(env, NODE_RANK="4"))
    assert bad.returncode == 2 and "NODE_RANK=4" in bad.stderr
    unset = _dry_run("multinode_gpu.sh", "--dry-run", POD, NUM_NODES="4", NODE_RANK="0")
    assert unset.returncode == 2 and "COORDINATOR_ADDRESS" in unset.stderr
