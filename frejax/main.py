r"""frejax entry point: train and evaluate a video MLLM with a token compressor.

    python -m frejax.main --config=configs/long_video.py
    python -m frejax.main --config=configs/short_video.py:smoke --workdir=/tmp/run
    python -m frejax.main --config=configs/long_video.py --mode=eval
    python -m frejax.main --config=configs/long_video.py \
        --config.compressor.name=uniform_frames --config.compressor.ratio=8
    python -m frejax.main --config=configs/long_video.py:scale=pod \
        --coordinator_address=10.0.0.2:8476 --num_processes=4 --process_id=0

Everything but flag parsing lives in importable modules (``frejax.training.train``).
"""

import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from frejax import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, optionally with an arg: configs/x.py:arg.", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory (checkpoints, metrics, results). Default: workdirs/<config name>.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"],
                          "train: train (resuming if possible) then evaluate; eval: evaluate the latest checkpoint.")
# Multi-host runs (see frejax/distributed.py): unset on TPU VMs and under SLURM,
# where the environment says it all; set all three for a plain multi-node launch.
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0 (default: $JAX_COORDINATOR_ADDRESS).")
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Processes in the run (default: $JAX_NUM_PROCESSES).")
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "This process's rank in [0, num_processes) (default: $JAX_PROCESS_ID).")
_HEARTBEAT_TIMEOUT = flags.DEFINE_integer(
    "heartbeat_timeout", 100,
    "Several processes: seconds without a heartbeat after which a process counts as dead"
    " and the others stop with an error naming it.")
flags.mark_flags_as_required(["config"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cli.quiet_libraries()
    import jax  # noqa: PLC0415  (after flags: JAX initialises here)
    from frejax import distributed  # noqa: PLC0415  (after flag parsing: JAX initialises here)

    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                           heartbeat_timeout=_HEARTBEAT_TIMEOUT.value)
    if jax.process_index() != 0:  # one voice per run; other hosts report only problems
        logging.set_verbosity(logging.WARNING)
    from frejax.training import train  # noqa: PLC0415  (after flag parsing: JAX initialises here)

    config = _CONFIG.value
    workdir = _WORKDIR.value or os.path.join("workdirs", config.name)
    logging.info("Config %s, workdir %s, mode %s", config.name, workdir, _MODE.value)
    try:
        if _MODE.value == "train":
            results = train.train_and_evaluate(config, workdir)
        else:
            results = train.evaluate_checkpoint(config, workdir)
    except train.Preempted as e:  # saved and committed: exit 0, the rerun resumes
        logging.warning("%s", e)
        if jax.process_index() == 0:
            print(e)
        return
    except Exception as e:
        if jax.process_count() > 1 and distributed.peer_lost(e):
            # JAX's own report follows (or came first); this says what to do about it.
            logging.error("process %d of %d: another process of the run stopped, so this one"
                          " cannot go on. Rerun all %d processes with the same command: they"
                          " resume from the newest intact checkpoint in %s.",
                          jax.process_index(), jax.process_count(), jax.process_count(),
                          workdir)
        raise
    if jax.process_index() == 0:
        print(train.format_results(results))


if __name__ == "__main__":  # Grain workers spawn: nothing may run on import.
    cli.run(main, "frejax.main")
