r"""Exports trained params to one safetensors file, with the config, for inference elsewhere.

    python -m frejax.inference.export --config=configs/long_video.py --workdir=workdirs/long_video \
        --output=long_video.safetensors

The newest intact checkpoint in ``<workdir>/checkpoints`` is restored (the
config must match its model shape, as for resuming) and its params written as
float arrays named by their path in the params tree joined with ``/``, e.g.
``llm/layers/0/attn/query/kernel``. The file's metadata holds the resolved
config as JSON (``config``), the training ``step`` and ``format=frejax``.

``load`` reads such a file back with safetensors' numpy API only: plain arrays
and strings, never pickle, so a file from anywhere is safe to open.

The params are restored onto the config's mesh; on a small machine pass
``--config.mesh.shape=-1,1,1``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app
from absl import flags
from absl import logging
from jax.experimental import multihost_utils
from ml_collections import config_flags
from safetensors import numpy as safetensors_np
from safetensors import safe_open

from data_pipelines import tokenizer as tokenizer_lib
from frejax import cli, distributed
from frejax.training.run import Run, workdir_checkpoints

FORMAT = "frejax"
_SEP = "/"


def flatten_params(params: Any) -> dict[str, np.ndarray]:
    """Nested params dict -> ``{"llm/embedding": array}`` (list indices become digits)."""
    flat = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        names = [str(k.key) for k in path]
        if any(_SEP in n for n in names):
            raise ValueError(f"param name {names} contains {_SEP!r}")
        flat[_SEP.join(names)] = np.asarray(leaf)
    return flat


def unflatten_params(flat: dict[str, np.ndarray]) -> dict:
    """Inverse of ``flatten_params``: digit path parts become int keys, as in NNX state."""
    params: dict = {}
    for name, array in flat.items():
        node = params
        *parents, last = [int(p) if p.isdigit() else p for p in name.split(_SEP)]
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = array
    return params


def save(path: str, params: Any, config: dict, step: int, tokenizer: Any) -> None:
    """Writes ``params``, ``config`` and the tokenizer to ``path`` (atomically: a reader
    never sees half a file)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    metadata = dict(format=FORMAT, step=str(step), config=json.dumps(config, sort_keys=True),
                    tokenizer=json.dumps(tokenizer_lib.to_spec(tokenizer), sort_keys=True))
    tmp = path + ".tmp"
    safetensors_np.save_file(flatten_params(params), tmp, metadata=metadata)
    os.replace(tmp, path)


def _metadata(path: str) -> dict:
    with safe_open(path, framework="numpy") as f:
        metadata = f.metadata() or {}
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path}: not a frejax export (metadata format="
                         f"{metadata.get('format')!r}, expected {FORMAT!r})")
    return metadata


def load_tokenizer(path: str) -> Any:
    """The tokenizer saved in an export (no annotation file or tokenizer path is read)."""
    return tokenizer_lib.from_spec(json.loads(_metadata(path)["tokenizer"]))


def load(path: str) -> tuple[dict, dict, int]:
    """Reads ``(params, config dict, step)`` from a file written by ``save``."""
    metadata = _metadata(path)
    return (unflatten_params(safetensors_np.load_file(path)), json.loads(metadata["config"]),
            int(metadata["step"]))


def export_checkpoint(config: ml_collections.ConfigDict, workdir: str, output: str) -> int:
    """Restores the newest intact checkpoint of ``workdir`` and writes its params; returns the step."""
    run = Run(config)
    with run:
        restored = run.restore(workdir_checkpoints(workdir), what="export")
        params = restored.params
        if jax.process_count() > 1:  # every host holds only its shards
            params = multihost_utils.process_allgather(params, tiled=True)
        params = jax.device_get(params)
    step, tokenizer = restored.step, run.tokenizer
    if jax.process_index() == 0:
        save(output, params, json.loads(json.dumps(config.to_dict())), step, tokenizer)
        logging.info("Exported the params of step %d to %s", step, output)
    return step


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    distributed.initialize()  # from the environment, as frejax.main; a no-op on one host
    output = flags.FLAGS.output or os.path.join(flags.FLAGS.workdir, "params.safetensors")
    step = export_checkpoint(flags.FLAGS.config, flags.FLAGS.workdir, output)
    if jax.process_index() == 0:
        print(f"Exported the params of step {step} to {output}")


def _define_flags() -> None:
    # Defined only when run as a program, so importing this module next to
    # frejax.main (which owns --config) never defines a flag twice.
    config_flags.DEFINE_config_file(
        "config", None, "Config file the run was trained with: configs/x.py:arg.",
        lock_config=True)
    flags.DEFINE_string("workdir", None, "Run directory holding checkpoints/.")
    flags.DEFINE_string("output", None,
                        "The .safetensors file to write. Default: <workdir>/params.safetensors.")
    flags.mark_flags_as_required(["config", "workdir"])


if __name__ == "__main__":
    _define_flags()
    cli.run(main, "frejax.inference.export")
