"""One Orbax checkpoint manager for everything a run needs to continue.

Each step directory holds three items, committed atomically by Orbax:

* ``state``: the train state (step, params, optimiser state), written by every
  process for its own shards (no host-0 bottleneck) and restored straight into
  the shardings of the current mesh;
* ``data_iter``: the Grain iterator position of this process, so a resumed run
  neither repeats nor skips an example;
* ``config``: the resolved config as JSON, for humans and for drift checks.

Saves are asynchronous: ``save`` returns once device arrays are copied out, and
the next train step overlaps with the write.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import ml_collections
import orbax.checkpoint as ocp
from absl import logging


class Checkpointer:
    """Saves and restores ``(state, data iterator, config)`` under ``directory``."""

    def __init__(self, directory: str, *, keep: int = 2, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
        self._manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers=dict(
                state=ocp.StandardCheckpointHandler(),
                data_iter=grain.checkpoint.CheckpointHandler(),
                config=ocp.JsonCheckpointHandler()))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, step: int, state: Any, data_iter: Any,
             config: ml_collections.ConfigDict, *, force: bool = False) -> bool:
        """Starts an async save of ``step``; the iterator position is captured now."""
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data_iter=grain.checkpoint.CheckpointSave(data_iter),
            config=ocp.args.JsonSave(config.to_dict()))
        saved = self._manager.save(step, args=args, force=force)
        if saved:
            logging.info("Checkpoint of step %d started in %s", step, self.directory)
        return saved

    def restore(self, step: int, abstract_state: Any, data_iter: Any | None = None) -> Any:
        """Restores ``step`` into ``abstract_state``'s shapes, dtypes and shardings.

        ``data_iter`` (if given) is moved to the saved position in place.
        """
        items = dict(state=ocp.args.StandardRestore(abstract_state))
        if data_iter is not None:
            items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        logging.info("Restored step %d from %s", step, self.directory)
        return restored["state"]

    def restore_config(self, step: int) -> dict:
        return self._manager.restore(
            step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]

    def wait(self) -> None:
        """Blocks until every started save is committed."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
