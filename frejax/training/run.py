"""The run context: one place that builds the mesh, enters it and restores checkpoints.

Every tool that runs a model (training, ``--mode=eval``, predict, export,
benchmark_eval, AOT, the studies and benchmarks) starts from a ``Run``:

    with Run(config) as run:                 # jax.set_mesh + the config's axis rules
        state = run.init()                   # sharded from birth, pretrained groups read
        restored = run.restore(workdir)      # or the newest intact step of a workdir

Inside ``with run:`` the model's logical axis names resolve to the mesh; a
``Run`` may be entered again later (the inference engine enters it per call).
The tokenizer is the data's (``data_pipelines.datasets.make_tokenizer``) for a
new run and the checkpoint's for a restored one: the model's vocabulary is
sized from it, so ``setup`` is built only once the tokenizer is known.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
from absl import logging

from data_pipelines import datasets as data_lib
from frejax import config_lib
from frejax import sharding
from frejax.training import checkpointing
from frejax.training import drift
from frejax.training import train_state

# Which devices a run's mesh takes.
ALL_DEVICES = "all"  # every device; the shape must cover them (training, eval, export)
FIT = "fit"          # the first prod(shape) devices, all of them for a -1 (inference tools)


def make_mesh(config: ml_collections.ConfigDict, devices: str | Sequence[jax.Device] = ALL_DEVICES,
              *, shape: Sequence[int] | None = None) -> jax.sharding.Mesh:
    """The ``(data, fsdp, tensor)`` mesh of ``config.mesh.shape``, or of ``shape``.

    A tool passes ``shape`` when its mesh differs from training's: predict answers
    one video at a time (data 1, params keep their fsdp/tensor layout); the
    single-device benchmarks use ``(1, 1, 1)``.
    """
    shape = [int(s) for s in (config.mesh.shape if shape is None else shape)]
    if devices == ALL_DEVICES:
        devices = jax.devices()
    elif devices == FIT:
        count = jax.device_count() if -1 in shape else math.prod(shape)
        devices = jax.devices()[:count]
    devices = list(devices)
    return sharding.make_mesh(sharding.resolve_mesh_shape(shape, len(devices)), devices)


@dataclasses.dataclass(frozen=True)
class Restored:
    """A restored checkpoint step: the whole train state, or (``params_only``) the params."""

    step: int
    directory: str          # the checkpoints folder it came from
    state: Any = None       # {step, params, opt_state}
    params: Any = None


class Run:
    """A run's mesh, axis rules, tokenizer and model setup.

    Args:
      config: the run's config (validated here).
      devices: ``ALL_DEVICES``, ``FIT`` or an explicit list (AOT's fake topology).
      shape: the mesh shape instead of ``config.mesh.shape`` (see ``make_mesh``).
      tokenizer: a tokenizer to use instead of the data's; ``restore`` sets the
        checkpoint's.
    """

    def __init__(self, config: ml_collections.ConfigDict, *,
                 devices: str | Sequence[jax.Device] = ALL_DEVICES,
                 shape: Sequence[int] | None = None, tokenizer: Any = None):
        config_lib.validate(config)
        self.config = config
        self.mesh = make_mesh(config, devices, shape=shape)
        self._tokenizer = tokenizer
        self._scopes: list[contextlib.ExitStack] = []

    # ------------------------------------------------------------------ scope
    def __enter__(self) -> Run:
        stack = contextlib.ExitStack()
        stack.enter_context(jax.set_mesh(self.mesh))
        stack.enter_context(sharding.axis_rules(self.config.sharding.rules))
        self._scopes.append(stack)
        return self

    def __exit__(self, *exc_info) -> None:
        self._scopes.pop().close()

    @contextlib.contextmanager
    def rules_only(self):
        """The axis rules without the mesh: AOT traces its step here (compile-only
        devices cannot run the eager parts of optax's init under ``set_mesh``)."""
        with sharding.axis_rules(self.config.sharding.rules):
            yield self

    # ------------------------------------------------------------------ model
    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = data_lib.make_tokenizer(self.config)
        return self._tokenizer

    @functools.cached_property
    def setup(self) -> train_state.TrainSetup:
        """Model structure, optimiser and state shardings (abstract: no FLOPs, no memory)."""
        with sharding.axis_rules(self.config.sharding.rules):
            return train_state.make_setup(self.config, self.mesh, self.tokenizer)

    @property
    def batch_sharding(self) -> jax.sharding.NamedSharding:
        return sharding.batch_sharding(self.mesh)

    def init(self) -> dict:
        """A new train state ``{step, params, opt_state}`` placed in its shardings."""
        return train_state.init_state(self.config, self.setup, self.tokenizer)

    def init_params(self) -> Any:
        """The params alone, as ``init`` places them (inference: no optimiser state)."""
        return train_state.init_params(self.config, self.setup, self.tokenizer)

    # ------------------------------------------------------------------ checkpoints
    def checkpointer(self, directory: str, **kwargs) -> checkpointing.Checkpointer:
        return checkpointing.Checkpointer(directory, keep=self.config.train.keep_checkpoints,
                                          **kwargs)

    def restore(self, checkpoint: str, *, params_only: bool = False,
                what: str = "restore") -> Restored:
        """Restores a workdir, its ``checkpoints/`` folder or one step folder.

        ``params_only`` (inference): the named step or the latest, params alone (the
        optimiser state is never read), refused if a checksum differs. Otherwise the
        newest intact step with its whole state: damaged newer steps are set aside,
        a config that drifted is refused by key. Either way the tokenizer becomes
        the one saved with the weights. ``what`` names the purpose in errors.
        """
        directory, step = checkpointing.resolve_checkpoint(checkpoint)
        ckpt = self.checkpointer(directory)
        try:
            if params_only:
                step = ckpt.latest_step() if step is None else step
                if step is None:
                    raise FileNotFoundError(f"--checkpoint: no checkpoint in {directory}")
                drift.check_model_shape(ckpt.restore_config(step), self.config,
                                        where=f"checkpoint step {step} in {directory}")
                self._set_tokenizer(ckpt.restore_tokenizer(step))
                with sharding.axis_rules(self.config.sharding.rules):
                    params = ckpt.restore_params(step, self.setup.abstract_state)
                return Restored(step=step, directory=directory, params=params)
            self._set_tokenizer(ckpt.restore_newest_tokenizer(what))
            with sharding.axis_rules(self.config.sharding.rules):
                latest, state = ckpt.restore_newest_intact(self.setup.abstract_state, self.config)
            if latest is None:
                raise FileNotFoundError(f"no checkpoint to {what} in {directory}")
            return Restored(step=latest, directory=directory, state=state,
                            params=state["params"])
        finally:
            ckpt.close()

    def resume_or_init(self, ckpt: checkpointing.Checkpointer,
                       data_iter: Any = None) -> tuple[int | None, dict]:
        """Training: the newest intact step of ``ckpt`` (moving ``data_iter`` to its
        position), or a new state when there is none -> ``(step or None, state)``.

        The tokenizer saved with that step must equal the data's.
        """
        latest, state = ckpt.restore_newest_intact(self.setup.abstract_state, self.config,
                                                   data_iter)
        if latest is None:
            state = self.init()
            if self.config.init.checkpoint:
                state["params"] = self.params_from(self.config.init.checkpoint,
                                                   self.config.init.groups, state["params"])
            return None, state
        drift.check_tokenizer_drift(ckpt.restore_tokenizer(latest), self.tokenizer,
                                            where=f"step {latest} in {ckpt.directory}")
        return latest, state

    def params_from(self, checkpoint: str, groups: str, params: dict) -> dict:
        """``params`` with the top-level ``groups`` (comma-separated) read from ``checkpoint``
        (latest step unless a step folder is named); every other group keeps its value.

        The groups must exist in the checkpoint with this model's shapes; the tokenizer
        saved there must be this run's (the same ids mean the same words).
        """
        names = [g.strip() for g in groups.split(",") if g.strip()]
        # A group this model has no params in (a parameter-free compressor) is skipped.
        for g in names:
            if g not in params:
                logging.warning("config.init.groups: this model has no %r params; skipped", g)
        names = [g for g in names if g in params]
        if not names:
            return params
        directory, step = checkpointing.resolve_checkpoint(checkpoint)
        ckpt = self.checkpointer(directory)
        try:
            step = ckpt.latest_step() if step is None else step
            if step is None:
                raise FileNotFoundError(f"config.init.checkpoint: no checkpoint in {directory}")
            drift.check_tokenizer_drift(ckpt.restore_tokenizer(step), self.tokenizer,
                                        where=f"config.init.checkpoint step {step} in {directory}")
            abstract = {g: self.setup.abstract_state["params"][g] for g in names}
            try:
                taken = ckpt.restore_params(step, dict(params=abstract))
            except (ValueError, KeyError) as e:
                raise ValueError(f"config.init.groups: {', '.join(names)} of step {step} in"
                                 f" {directory} do not fit this model ({checkpointing.first_line(e)})") from e
        finally:
            ckpt.close()
        logging.info("Took %s from step %d in %s", ", ".join(names), step, directory)
        return {**params, **taken}

    def _set_tokenizer(self, tokenizer: Any) -> None:
        if self.__dict__.get("setup") is not None and tokenizer is not self._tokenizer:
            # The setup was sized by another tokenizer: build it again from this one.
            del self.__dict__["setup"]
        self._tokenizer = tokenizer


def workdir_checkpoints(workdir: str) -> str:
    """``<workdir>/checkpoints``, where ``frejax.main`` saves."""
    return os.path.join(workdir, "checkpoints")
