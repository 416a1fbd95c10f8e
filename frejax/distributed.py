"""Multi-controller start-up: one JAX process per TPU VM host or per GPU task.

Every process runs the same program on its own devices; ``jax.distributed``
connects them before the first JAX computation. Where the processes come from
decides how they learn the coordinator, the process count and their own id:

* ``explicit``: flags or ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` /
  ``JAX_PROCESS_ID`` (a plain multi-node GPU launch, containers, tests);
* ``slurm``: ``srun`` with more than one task; JAX reads the SLURM variables
  (one task per GPU, ``SLURM_LOCALID`` picks the task's GPU);
* ``tpu_vm``: a Cloud TPU VM; JAX asks the TPU metadata for the pod's workers
  (also fine on a single-host TPU VM: one process);
* ``single``: none of the above, one process, nothing to initialise.

Only the launched process initialises: Grain's data workers are spawned
children of it (``multiprocessing``) and must never join the cluster.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
from collections.abc import Mapping

import jax
from absl import logging

_ENV_ADDRESS = "JAX_COORDINATOR_ADDRESS"
_ENV_COUNT = "JAX_NUM_PROCESSES"
_ENV_ID = "JAX_PROCESS_ID"


@dataclasses.dataclass(frozen=True)
class Plan:
    """How this process joins (or not) a multi-process run."""

    how: str                                # explicit | slurm | tpu_vm | single | worker
    coordinator_address: str | None = None  # host:port of process 0 (explicit only)
    num_processes: int | None = None
    process_id: int | None = None


def plan(coordinator_address: str | None = None, num_processes: int | None = None,
         process_id: int | None = None, *, env: Mapping[str, str] | None = None,
         on_tpu_vm: bool | None = None, is_child_process: bool | None = None) -> Plan:
    """Decides how to initialise from the arguments, then the environment.

    Arguments win over ``JAX_*`` variables; explicit settings win over SLURM,
    SLURM over TPU VM detection. ``env``, ``on_tpu_vm`` and ``is_child_process``
    default to this process's own (they are parameters so tests can pass others).
    """
    env = os.environ if env is None else env
    if is_child_process is None:
        is_child_process = multiprocessing.parent_process() is not None
    if is_child_process:
        return Plan("worker")

    address = coordinator_address or env.get(_ENV_ADDRESS) or None
    count = num_processes if num_processes is not None else _env_int(env, _ENV_COUNT)
    index = process_id if process_id is not None else _env_int(env, _ENV_ID)
    given = {"coordinator_address": address, "num_processes": count, "process_id": index}
    if any(v is not None for v in given.values()):
        missing = [k for k, v in given.items() if v is None]
        if missing:
            raise ValueError(
                f"distributed: {missing} not set; an explicit launch needs --coordinator_address,"
                f" --num_processes and --process_id (or {_ENV_ADDRESS}, {_ENV_COUNT},"
                f" {_ENV_ID})")
        if ":" not in address:
            raise ValueError(
                f"distributed: coordinator address {address!r} must be host:port")
        if count < 1 or not 0 <= index < count:
            raise ValueError(
                f"distributed: process_id {index} must be in [0, num_processes={count})")
        return Plan("explicit", address, count, index)

    if "SLURM_JOB_ID" in env and _env_int(env, "SLURM_NTASKS", 1) > 1:
        return Plan("slurm", num_processes=_env_int(env, "SLURM_NTASKS"),
                    process_id=_env_int(env, "SLURM_PROCID"))

    if on_tpu_vm is None:
        on_tpu_vm = running_on_tpu_vm()
    if on_tpu_vm:
        return Plan("tpu_vm")
    return Plan("single")


def running_on_tpu_vm() -> bool:
    """True on a Cloud TPU VM (TPU chips on the PCI bus and libtpu installed).

    JAX makes this check when it is imported, before any backend starts; its own
    cluster detection relies on the same flag.
    """
    from jax._src import cloud_tpu_init  # noqa: PLC0415  (no public equivalent)

    return bool(getattr(cloud_tpu_init, "running_in_cloud_tpu_vm", False))


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, heartbeat_timeout: int = 100) -> Plan:
    """Initialises ``jax.distributed`` as ``plan`` decides; call before any JAX work.

    ``heartbeat_timeout``: seconds without a heartbeat after which a process is
    taken for dead; every other process then stops with an error naming it
    instead of waiting forever in a collective (JAX's default is 100).
    Returns the plan that was carried out. Idempotent: a second call in an
    initialised process does nothing.
    """
    p = plan(coordinator_address, num_processes, process_id)
    if p.how in ("single", "worker") or jax.distributed.is_initialized():
        return p
    # CPU processes (tests, CPU clusters) exchange collectives through gloo;
    # TPU and GPU backends ignore this setting.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if p.how == "explicit":
        # "deactivate": a SLURM or TPU environment must not override what was asked.
        jax.distributed.initialize(
            p.coordinator_address, p.num_processes, p.process_id,
            cluster_detection_method="deactivate", heartbeat_timeout_seconds=heartbeat_timeout)
    elif p.how == "slurm":
        jax.distributed.initialize(cluster_detection_method="slurm",
                                   heartbeat_timeout_seconds=heartbeat_timeout)
    else:  # tpu_vm: JAX finds the pod's workers through the TPU metadata.
        jax.distributed.initialize(heartbeat_timeout_seconds=heartbeat_timeout)
    logging.info("jax.distributed initialised (%s): process %d of %d, %d local devices",
                 p.how, jax.process_index(), jax.process_count(), jax.local_device_count())
    return p


# What a collective or the coordination service says when another process of the
# run is gone (killed, crashed, lost its host): gloo on CPU, the coordination
# service's heartbeats and barriers everywhere.
_PEER_LOST_MARKERS = ("Gloo", "Connection reset by peer", "Connection closed by peer",
                      "heartbeat timeout", "stopped sending heartbeats", "Barrier failed")


def peer_lost(error: BaseException) -> bool:
    """Whether ``error`` (or an error it was raised from) says another process is gone."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if any(m in str(error) for m in _PEER_LOST_MARKERS):
            return True
        error = error.__cause__ or error.__context__
    return False


def _env_int(env: Mapping[str, str], key: str, default: int | None = None) -> int | None:
    value = env.get(key)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"distributed: environment variable {key}={value!r} is not an integer"
                         ) from None
