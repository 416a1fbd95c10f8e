"""One Orbax checkpoint manager for everything a run needs to continue.

Each step directory holds three items, committed atomically by Orbax:

* ``state``: the train state (step, params, optimiser state), written by every
  process for its own shards (no host-0 bottleneck) and restored straight into
  the shardings of the current mesh, which may differ from the saving one;
* ``data_iter``: the Grain iterator position of this process, so a resumed run
  neither repeats nor skips an example;
* ``config``: the resolved config as JSON, for humans and for drift checks;
* ``tokenizer``: the tokenizer as JSON;
* ``checksums``: one checksum per saved array (``state_checksums``), verified when the
  step is restored: a bit flip inside an array file, which Orbax would read back as a
  different value, makes the step damaged.

The state holds no RNG: training draws no random numbers (no dropout), and the
data order is a function of ``config.seed`` and the iterator position.

Saves are asynchronous: ``save`` returns once device arrays are copied out, and
the next train step overlaps with the write.

Resuming (``Checkpointer.restore_newest_intact``) walks the steps newest first
and takes the first one that is whole: a step with a missing commit marker or
metadata file, whose arrays cannot be read back (truncated or deleted files), or
whose arrays read back with another checksum than the one saved (a flipped bit),
is reported, renamed to ``<step>.unusable`` (kept, never deleted) and skipped. Steps
saved before checksums existed restore unverified. A step saved with a different model shape is not "damaged": that
stops the run with ``ConfigDriftError`` or ``CheckpointMismatchError``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
from collections.abc import Mapping
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from data_pipelines import tokenizer as tokenizer_lib
from frejax import distributed
from frejax.training.checksums import ChecksumMismatchError, state_checksums
from frejax.training.drift import ConfigDriftError, check_config_drift

# Orbax writes these last, when a step is committed.
_COMMIT_MARKER = "commit_success.txt"
_STEP_METADATA = "_CHECKPOINT_METADATA"
_ITEMS = ("state", "data_iter", "config", "tokenizer")  # required; "checksums" is newer
# Orbax names an unfinished save `<step>.orbax-checkpoint-tmp`.
_UNFINISHED_SUFFIX = ".orbax-checkpoint-tmp"
_SET_ASIDE_SUFFIX = ".unusable"


class CheckpointMismatchError(ValueError):
    """The saved arrays do not fit the state the current code builds."""


class NoIntactCheckpointError(RuntimeError):
    """Every checkpoint in the directory is damaged."""


class CheckpointSaveError(OSError):
    """A save could not be written (a full disk, a read-only directory, ...)."""


def _save_failure(directory: str, step: int | None, error: BaseException) -> str:
    text = str(error)
    fix = "Free space or make the directory writable, then rerun the same command"
    if "No space left" in text or "RESOURCE_EXHAUSTED" in text or \
            getattr(error, "errno", None) == errno.ENOSPC:
        cause = "the disk is full"
    elif "Read-only file system" in text or getattr(error, "errno", None) == errno.EROFS:
        cause = "the directory is read-only"
    elif "Permission denied" in text or getattr(error, "errno", None) == errno.EACCES:
        cause = "writing is not permitted"
    elif distributed.peer_lost(error):
        cause = "another process of the run stopped"
        fix = "Rerun every process with the same command"
    else:
        cause = "the write failed"
    intact = sorted(int(n) for n in (os.listdir(directory) if os.path.isdir(directory) else ())
                    if n.isdigit())
    which = f"step {step}" if step is not None else "a step"
    return (f"saving checkpoint {which} in {directory} failed: {cause} ({first_line(error)})."
            f" Committed steps, intact: {intact or 'none'}; the unfinished save is left as"
            f" '<step>{_UNFINISHED_SUFFIX}' and is never resumed from. {fix} to resume"
            + (f" from step {intact[-1]}." if intact else "."))


class Checkpointer:
    """Saves and restores ``(state, data iterator, config, tokenizer)`` under ``directory``.

    The tokenizer is saved whole (``tokenizer.to_spec``: the vocabulary, or the
    tokenizer file's contents), so evaluation, ``predict`` and ``export`` never
    rebuild it from training annotations or a tokenizer path.
    """

    def __init__(self, directory: str, *, keep: int = 2, async_save: bool = True):
        self.directory = os.path.abspath(directory)
        self._in_flight: int | None = None  # the step whose async write may still fail
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
        self._manager = ocp.CheckpointManager(
            self.directory, options=options,
            item_handlers=dict(
                state=ocp.StandardCheckpointHandler(),
                data_iter=grain.checkpoint.CheckpointHandler(),
                config=ocp.JsonCheckpointHandler(),
                tokenizer=ocp.JsonCheckpointHandler(),
                checksums=ocp.JsonCheckpointHandler()))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def save(self, step: int, state: Any, data_iter: Any,
             config: ml_collections.ConfigDict, tokenizer: Any, *, force: bool = False) -> bool:
        """Starts an async save of ``step``; the iterator position is captured now.

        A failure of this save or of the one still in flight (a full disk, a read-only
        directory) raises ``CheckpointSaveError``, here or in ``wait`` / ``close``.
        """
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data_iter=grain.checkpoint.CheckpointSave(data_iter),
            config=ocp.args.JsonSave(config.to_dict()),
            tokenizer=ocp.args.JsonSave(tokenizer_lib.to_spec(tokenizer)),
            checksums=ocp.args.JsonSave(state_checksums(state)))
        self._probe_writable(step)
        with self._save_errors(step):
            saved = self._manager.save(step, args=args, force=force)
        if saved:
            self._in_flight = step
            logging.info("Checkpoint of step %d started in %s", step, self.directory)
        return saved

    def _probe_writable(self, step: int) -> None:
        """Fails at once when the directory cannot take a file: Orbax's own directory
        creation fails in a background thread, which its other threads wait on until a
        timeout of minutes."""
        probe = os.path.join(self.directory, f".write_probe.{jax.process_index()}")
        try:
            with open(probe, "wb") as f:
                f.write(b"\0")
            os.remove(probe)
        except OSError as e:
            raise CheckpointSaveError(_save_failure(self.directory, step, e)) from e

    @contextlib.contextmanager
    def _save_errors(self, step: int | None = None):
        """Turns a failed write into ``CheckpointSaveError``: which step, why, what is intact."""
        try:
            yield
        except Exception as e:  # noqa: BLE001  (TensorStore and Orbax raise bare errors)
            failed = getattr(self, "_in_flight", None) or step
            self._in_flight = None
            raise CheckpointSaveError(_save_failure(self.directory, failed, e)) from e

    def restore(self, step: int, abstract_state: Any, data_iter: Any | None = None) -> Any:
        """Restores ``step`` into ``abstract_state``'s shapes, dtypes and shardings.

        The shardings are those of ``abstract_state`` (the current mesh), not the
        saved ones: a checkpoint written on 8 devices restores onto 4.
        ``data_iter`` (if given) is moved to the saved position in place.
        """
        items = dict(state=ocp.args.StandardRestore(abstract_state))
        if data_iter is not None:
            items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        logging.info("Restored step %d from %s", step, self.directory)
        return restored["state"]

    def restore_params(self, step: int, abstract_state: Any) -> Any:
        """Only the params of ``step`` (inference): the optimiser state is never read,
        so restoring needs the memory of the params alone, not three times it."""
        target = dict(params=abstract_state["params"])
        with ocp.PyTreeCheckpointer() as reader:  # the format StandardSave writes
            restored = reader.restore(
                os.path.join(self.step_dir(step), "state"),
                args=ocp.args.PyTreeRestore(
                    target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                    partial_restore=True))
        # A partial restore leaves what the checkpoint lacks as the abstract target.
        missing = [jax.tree_util.keystr(path, simple=True, separator="/")
                   for path, x in jax.tree_util.tree_leaves_with_path(restored["params"])
                   if isinstance(x, jax.ShapeDtypeStruct)]
        if missing:
            raise CheckpointMismatchError(
                f"checkpoint step {step} in {self.directory} holds no params"
                f" {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
        self.verify(step, dict(params=restored["params"]))
        return restored["params"]

    def restore_tokenizer(self, step: int) -> Any:
        """The tokenizer saved with ``step``."""
        if not os.path.isdir(os.path.join(self.step_dir(step), "tokenizer")):
            raise FileNotFoundError(
                f"checkpoint step {step} in {self.directory} holds no tokenizer (written by an"
                " older frejax); evaluate or export it with the frejax version that wrote it")
        spec = self._manager.restore(
            step, args=ocp.args.Composite(tokenizer=ocp.args.JsonRestore()))["tokenizer"]
        return tokenizer_lib.from_spec(spec)

    def restore_newest_tokenizer(self, what: str) -> Any:
        """The tokenizer to build the model with before ``restore_newest_intact``: every step
        of a run saves the same one, so the newest step whose tokenizer reads back serves
        (a half-written newest step does not hide it). ``what``: the caller's purpose, for
        the error when there is no checkpoint."""
        steps = sorted(self.all_steps(), reverse=True)
        if not steps:
            raise FileNotFoundError(f"no checkpoint to {what} in {self.directory}")
        first_error = None
        for step in steps:
            try:
                return self.restore_tokenizer(step)
            except Exception as e:  # noqa: BLE001  (a damaged step: try an older one)
                first_error = first_error or e
        raise first_error

    def restore_config(self, step: int) -> dict:
        return self._manager.restore(
            step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]

    def restore_newest_intact(
            self, abstract_state: Any, config: ml_collections.ConfigDict,
            data_iter: Any | None = None) -> tuple[int | None, Any]:
        """Restores the newest whole checkpoint saved with a compatible config.

        Returns ``(step, state)``, or ``(None, None)`` when there is no checkpoint.
        Damaged steps newer than the one restored are logged and set aside as
        ``<step>.unusable``. Raises ``ConfigDriftError`` or
        ``CheckpointMismatchError`` when the newest whole step does not fit the
        current model, and ``NoIntactCheckpointError`` when every step is damaged
        (then nothing is renamed).
        """
        self._report_unfinished_saves()
        damaged: dict[int, str] = {}
        for step in sorted(self.all_steps(), reverse=True):
            if data_iter is not None:
                _check_process_count(self.step_dir(step), step)
            state, reason = None, find_damage(
                self.step_dir(step), None if data_iter is None else _data_iter_file())
            if reason is None:
                try:
                    check_config_drift(self.restore_config(step), config,
                                       where=f"step {step} in {self.directory}")
                    self._check_structure(step, abstract_state)
                    state = self.restore(step, abstract_state, data_iter)
                    self.verify(step, state)
                except (ConfigDriftError, CheckpointMismatchError):
                    raise
                except ChecksumMismatchError as e:
                    reason = str(e)
                except Exception as e:  # noqa: BLE001  (TensorStore raises bare Exception)
                    reason = f"cannot be read back: {type(e).__name__}: {first_line(e)}"
            reason = _agreed_reason(reason)
            if reason is None:
                if damaged:
                    self._set_aside(damaged)
                    logging.warning(
                        "Resuming from step %d, the newest intact checkpoint in %s", step,
                        self.directory)
                return step, state
            logging.warning("Checkpoint step %d in %s is damaged (%s); trying an older one",
                            step, self.directory, reason)
            damaged[step] = reason
        if damaged:
            listing = "; ".join(f"step {s}: {r}" for s, r in damaged.items())
            raise NoIntactCheckpointError(
                f"no intact checkpoint in {self.directory} ({listing}). Nothing was renamed"
                " or deleted; move the directory away to start over.")
        return None, None

    def verify(self, step: int, state: Any) -> None:
        """Raises ``ChecksumMismatchError`` naming the arrays of ``state`` (as restored from
        ``step``: the whole state, or ``{"params": ...}``) whose checksum differs from the
        one saved with them. Resuming falls back to an older step; inference stops."""
        path = os.path.join(self.step_dir(step), "checksums", "metadata")  # JsonSave's file
        if not os.path.isfile(path):
            logging.warning("Checkpoint step %d in %s has no checksums (saved by an older"
                            " version): restored unverified", step, self.directory)
            return
        try:
            with open(path) as f:
                saved = json.load(f)
        except (OSError, ValueError) as e:
            raise ChecksumMismatchError(f"checksums/metadata is unreadable ({first_line(e)})") \
                from None
        now = state_checksums(state)  # what was restored: all of the state, or its params
        bad = sorted(k for k in now if saved.get(k) != now[k])
        if bad:
            raise ChecksumMismatchError(
                f"{len(bad)} array(s) read back with another checksum than saved (flipped bits"
                f" on disk?): {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}")

    def wait(self) -> None:
        """Blocks until every started save is committed."""
        with self._save_errors():
            self._manager.wait_until_finished()
        self._in_flight = None

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._manager.close()

    def _check_structure(self, step: int, abstract_state: Any) -> None:
        """Compares saved array paths and shapes with the state the code builds now."""
        saved = _shapes_by_path(self._manager.item_metadata(step)["state"].tree)
        wanted = _shapes_by_path(abstract_state)
        problems = [f"{p}: missing in the checkpoint" for p in sorted(set(wanted) - set(saved))]
        problems += [f"{p}: in the checkpoint only" for p in sorted(set(saved) - set(wanted))]
        problems += [f"{p}: checkpoint {saved[p]}, now {wanted[p]}"
                     for p in sorted(set(saved) & set(wanted)) if saved[p] != wanted[p]]
        if problems:
            shown = "\n  ".join(problems[:20])
            more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
            raise CheckpointMismatchError(
                f"checkpoint step {step} in {self.directory} does not fit the train state"
                f" the current code builds (model or optimiser changed?):\n  {shown}{more}"
                + _layer_layout_hint(saved, wanted))

    def _report_unfinished_saves(self) -> None:
        if not os.path.isdir(self.directory):
            return
        unfinished = sorted(n for n in os.listdir(self.directory) if _UNFINISHED_SUFFIX in n)
        if unfinished:
            logging.warning(
                "Ignoring unfinished saves in %s (the run stopped while writing them): %s;"
                " Orbax replaces each when its step is saved again", self.directory, unfinished)

    def _set_aside(self, damaged: Mapping[int, str]) -> None:
        """Renames damaged steps so they are kept but never resumed from or overwritten."""
        if jax.process_index() == 0:
            for step in damaged:
                target = self.step_dir(step) + _SET_ASIDE_SUFFIX
                n = 1
                while os.path.exists(target):
                    n += 1
                    target = f"{self.step_dir(step)}{_SET_ASIDE_SUFFIX}{n}"
                os.rename(self.step_dir(step), target)
                logging.warning("Kept damaged checkpoint step %d as %s", step, target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("frejax_checkpoint_set_aside")
        self._manager.reload()


def find_damage(step_dir: str, data_iter_file: str | None = None) -> str | None:
    """Says why ``step_dir`` is not a whole checkpoint, or None when it looks whole.

    File-level checks only, no array is read: the commit markers Orbax writes
    last, and the metadata of every item; ``data_iter_file`` (e.g.
    ``process_0-of-1.json``) when the data position is to be restored too. A
    truncated or deleted array file is found by ``Checkpointer.restore`` when it
    reads the arrays back.
    """
    json_files = [_STEP_METADATA, "state/_METADATA", "config/metadata", "tokenizer/metadata"]
    if data_iter_file is not None:
        json_files.append(f"data_iter/{data_iter_file}")
    required = [_COMMIT_MARKER, *json_files, *(f"{item}/{_COMMIT_MARKER}" for item in _ITEMS)]
    for name in required:
        if not os.path.isfile(os.path.join(step_dir, name)):
            return f"{name} is missing (half-written or copied incompletely)"
    for name in json_files:
        try:
            with open(os.path.join(step_dir, name)) as f:
                content = json.load(f)
        except (OSError, ValueError) as e:
            return f"{name} is not valid JSON ({first_line(e)})"
        if name == _STEP_METADATA and not content.get("commit_timestamp_nsecs"):
            return f"{name} has no commit timestamp (the save never finished)"
    return None


def _check_process_count(step_dir: str, step: int) -> None:
    """Each process saved its own data position: their number cannot change on resume."""
    folder = os.path.join(step_dir, "data_iter")
    counts = {m.group(1) for name in (os.listdir(folder) if os.path.isdir(folder) else ())
              if (m := re.fullmatch(r"process_\d+-of-(\d+)\.json", name))}
    if counts and counts != {str(jax.process_count())}:
        raise CheckpointMismatchError(
            f"checkpoint step {step} in {os.path.dirname(step_dir)} holds the data-iterator"
            f" positions of {'/'.join(sorted(counts))} processes, this run has"
            f" {jax.process_count()}: the per-host data shards would change, so examples would"
            " be repeated or skipped. Resume with the same number of processes (the devices"
            " per process and the mesh may change).")


def _data_iter_file() -> str:
    """The file Grain's checkpoint handler writes for this process."""
    return f"process_{jax.process_index()}-of-{jax.process_count()}.json"


def _shapes_by_path(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{"params/llm/embedding": (shape, dtype)}`` for arrays or array metadata."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        name = "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))
                        for k in path)
        out[name] = (tuple(leaf.shape), str(np.dtype(leaf.dtype)))
    return out


_UNSTACKED = re.compile(r"/(layers|blocks)/\d+/")


def _layer_layout_hint(saved: Mapping[str, Any], wanted: Mapping[str, Any]) -> str:
    """Names the cause when one side has per-layer params and the other stacked ones."""
    saved_unstacked = any(_UNSTACKED.search(p) for p in saved)
    wanted_unstacked = any(_UNSTACKED.search(p) for p in wanted)
    if saved_unstacked == wanted_unstacked:
        return ""
    if saved_unstacked:
        return ("\nThe checkpoint holds unstacked layers (layers/0/..., written with"
                " scan_layers=False or before layers were scanned) and the config builds"
                " stacked ones: resume with --config.model.vision.scan_layers=False"
                " --config.model.llm.scan_layers=False.")
    return ("\nThe checkpoint holds stacked (scanned) layers and the config builds unstacked"
            " ones: resume with --config.model.vision.scan_layers=True"
            " --config.model.llm.scan_layers=True.")


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else repr(e)


def _agreed_reason(reason: str | None) -> str | None:
    """Multi-host: a step is damaged if any process found it so (all then skip it)."""
    if jax.process_count() == 1:
        return reason
    flags = multihost_utils.process_allgather(np.array(reason is not None))
    if reason is None and flags.any():
        return f"damaged on process {int(np.argmax(flags))}"
    return reason


def resolve_checkpoint(path: str) -> tuple[str, int | None]:
    """A workdir, a ``checkpoints/`` folder or a step folder -> (checkpoints folder, step or None)."""
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such folder")
    if os.path.isdir(os.path.join(path, "checkpoints")):
        return os.path.join(path, "checkpoints"), None
    name = os.path.basename(path)
    if name.isdigit():
        return os.path.dirname(path), int(name)
    return path, None
