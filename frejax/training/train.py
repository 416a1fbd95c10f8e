"""The train step and the run: train (resuming), evaluate, write results.

Read top to bottom: the jitted train step, then ``train_and_evaluate``, the
whole run, inside its run context (``frejax.training.run.Run``: mesh, axis rules,
tokenizer, model setup, init and restore). The one training loop: ``python -m
frejax.main`` and the natural-video QA study train through it; benchmarks time its step.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils

from data_pipelines import datasets as data_lib
from frejax import sharding
from frejax.training import evaluate as eval_lib
from frejax.training import metric_logging, train_state
from frejax.training import preemption as preemption_lib
from frejax.training.run import Run, workdir_checkpoints
from frejax.training.train_state import TrainSetup

# ----------------------------------------------------------------------------
# The train step.
# ----------------------------------------------------------------------------


def loss_and_metrics(logits: jax.Array, batch: dict) -> tuple[jax.Array, dict]:
    """Next-token cross-entropy on answer positions only.

    ``logits`` are text-aligned ``(batch, length, vocab)``: position i predicts
    token i+1; ``loss_mask[:, i]`` marks positions whose next token is answer or eos.
    """
    logits = logits[:, :-1].astype(jnp.float32)
    targets = batch["tokens"][:, 1:]
    weights = batch["loss_mask"][:, :-1].astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    denom = jnp.maximum(weights.sum(), 1.0)
    loss = (ce * weights).sum() / denom
    correct = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
    return loss, dict(loss=loss, token_accuracy=(correct * weights).sum() / denom,
                      answer_tokens=weights.sum())


def split_micro_batches(batch: dict, accum: int) -> dict:
    """``(B, ...)`` -> ``(accum, B / accum, ...)``, micro-batch ``j`` = rows ``j, j + accum, ...``.

    Strided, not contiguous: each device holds a contiguous block of the batch, so
    every micro-batch takes ``1 / accum`` of every device's rows and stays sharded
    over the whole batch axis; the split is a local reshape, with no all-gather.
    Needs ``B / accum`` divisible by the batch shards (checked with the config).
    """
    def split(x):
        x = x.reshape((x.shape[0] // accum, accum) + x.shape[1:]).swapaxes(0, 1)
        return sharding.constrain(x, (None, "batch") + (None,) * (x.ndim - 2))

    return jax.tree.map(split, batch)


def make_train_step(setup: TrainSetup, config: ml_collections.ConfigDict, batch_shardings: Any):
    """Returns ``step(state, batch) -> (state, metrics)``, jitted, donating the state."""
    graphdef, tx = setup.graphdef, setup.tx
    accum = config.optim.accum_steps
    schedule = train_state.learning_rate_schedule(config)
    frozen = train_state.frozen_groups(config)

    def grads_of(params, batch):
        def loss_fn(p):
            if frozen:  # constants to autodiff: no backward pass through a frozen encoder
                p = jax.tree_util.tree_map_with_path(
                    lambda path, x: jax.lax.stop_gradient(x)
                    if train_state.training_group(path) in frozen
                    else x, p)
            model = nnx.merge(graphdef, p)
            return loss_and_metrics(model(batch), batch)

        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return grads, metrics

    def step(state, batch):
        params = state["params"]
        if accum == 1:
            grads, metrics = grads_of(params, batch)
        else:
            # Micro-batches summed in a scan: memory of one micro-batch, the same update
            # as the full batch (equal weights per micro-batch, i.e. the mean of
            # per-micro-batch mean losses). See ``split_micro_batches`` for the layout.
            micro = split_micro_batches(batch, accum)

            def body(carry, mb):
                g, m = grads_of(params, mb)
                return jax.tree.map(jnp.add, carry, (g, m)), None

            zeros = jax.eval_shape(grads_of, params, jax.tree.map(lambda x: x[0], micro))
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), zeros)
            (grads, metrics), _ = jax.lax.scan(body, zeros, micro)
            grads = jax.tree.map(lambda g: g / accum, grads)
            metrics = {k: (v if k == "answer_tokens" else v / accum) for k, v in metrics.items()}
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        params = optax.apply_updates(params, updates)
        # A state with a non-finite parameter must never be checkpointed.
        params_finite = jnp.all(jnp.array(
            [jnp.isfinite(p).all() for p in jax.tree.leaves(params)]))
        metrics = dict(metrics, grad_norm=optax.tree.norm(grads),
                       learning_rate=schedule(state["step"]),
                       params_finite=params_finite.astype(jnp.float32))
        if "input_error" in batch:  # examples of this global batch skipped as bad input
            metrics["bad_inputs"] = (batch["input_error"] > 0).sum().astype(jnp.float32)
        return dict(step=state["step"] + 1, params=params, opt_state=opt_state), metrics

    return jax.jit(
        step, in_shardings=(setup.state_shardings, batch_shardings),
        out_shardings=(setup.state_shardings, None), donate_argnums=(0,))


# ----------------------------------------------------------------------------
# The run.
# ----------------------------------------------------------------------------


class NonFiniteLossError(FloatingPointError):
    pass


class Preempted(Exception):
    """The run stopped on a preemption notice after committing ``step`` to ``path``.

    Not a failure: ``frejax.main`` exits 0 and a rerun of the same command resumes.
    """

    def __init__(self, step: int, path: str):
        super().__init__(f"Preempted: saved step {step} to {path}; rerun the same command"
                         " to resume from it.")
        self.step, self.path = step, path


def _check_finite(step: int, values: dict | None, last_saved: int | None) -> None:
    if values is None:
        return
    if not np.isfinite(values["loss"]) or values["params_finite"] != 1.0:
        what = (f"non-finite loss {values['loss']}" if not np.isfinite(values["loss"])
                else "non-finite parameters after the update")
        raise NonFiniteLossError(
            f"{what} at step {step}; stopping without saving."
            f" Last good checkpoint: {last_saved if last_saved is not None else 'none'}."
            " Lower optim.learning_rate, check the data, or use train.dtype=float32.")


def _save_time_reached(step: int, last_save_time: float, train_cfg) -> bool:
    """Whether ``train.checkpoint_minutes`` have passed since the last save (0: never).

    Asked every ``train.log_every`` steps only, and on several hosts decided by
    process 0 and broadcast: every host must join the same (collective) save,
    and their clocks disagree.
    """
    if train_cfg.checkpoint_minutes <= 0 or step % train_cfg.log_every:
        return False
    due = (time.monotonic() - last_save_time) / 60 >= train_cfg.checkpoint_minutes
    if jax.process_count() > 1:
        due = bool(multihost_utils.broadcast_one_to_all(np.int32(due)))
    return due


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains (resuming from ``workdir`` if it holds a checkpoint), evaluates, writes results.

    Returns the results dict also written to ``<workdir>/results.json``.
    """
    run = Run(config)
    os.makedirs(workdir, exist_ok=True)
    with run:
        return _train_and_evaluate(run, workdir)


def _train_and_evaluate(run: Run, workdir: str) -> dict:
    config, setup = run.config, run.setup
    batch_sharding = run.batch_sharding
    train_iter = data_lib.make_train_iterator(config, run.tokenizer, run.mesh)
    ckpt = run.checkpointer(workdir_checkpoints(workdir),
                            async_save=config.train.async_checkpoints)
    # Watch for SIGTERM from here on: a notice during start-up stops after step one.
    with preemption_lib.PreemptionWatcher() as preemption, contextlib.closing(ckpt):
        # The newest whole checkpoint, shapes checked against the config and the
        # code, restored into this mesh's shardings; damaged newer ones are set aside.
        latest, state = run.resume_or_init(ckpt, train_iter)
        if latest is None:
            logging.info("Initialised a new run in %s", workdir)
        else:
            logging.info("Resuming from step %d in %s", latest, workdir)
        start_step = int(jax.device_get(state["step"]))
        _log_model_summary(setup, state)

        train_step = make_train_step(setup, config, batch_sharding)
        evaluator = eval_lib.Evaluator(config, setup.graphdef, run.tokenizer, run.mesh)
        logger = metric_logging.MetricLogger(
            workdir, total_steps=config.train.num_steps, initial_step=start_step,
            log_every=config.train.log_every, progress_bar=config.train.progress_bar)
        profiler = _Profiler(workdir, config.train.profile_steps, start_step)
        last_saved = latest
        last_save_time = time.monotonic()
        try:
            for step in range(start_step + 1, config.train.num_steps + 1):
                profiler.maybe_start(step)
                batch = data_lib.next_global_batch(train_iter, batch_sharding)
                state, metrics = train_step(state, batch)
                _check_finite(step - 1, logger.log_late(step, metrics), last_saved)
                profiler.maybe_stop(step, state)

                preempted = preemption.reached(step)  # every host, every step
                if preempted:
                    logging.warning("Preemption notice: saving step %d and stopping", step)
                if (preempted or step % config.train.checkpoint_every == 0
                        or step == config.train.num_steps
                        or _save_time_reached(step, last_save_time, config.train)):
                    # The loss of this very step must be finite before it may be saved.
                    _check_finite(step, logger.flush(), last_saved)
                    ckpt.save(step, state, train_iter, config, run.tokenizer, force=True)
                    last_saved, last_save_time = step, time.monotonic()
                if preempted:
                    ckpt.wait()  # committed before the scheduler's grace period ends
                    raise Preempted(step, ckpt.step_dir(step))
                if config.train.eval_every and step % config.train.eval_every == 0 \
                        and step != config.train.num_steps:
                    results = evaluator.evaluate(state["params"])
                    logger.write(step, _scalar_results(results), prefix="eval")
            _check_finite(config.train.num_steps, logger.flush(), last_saved)
        finally:
            logger.close()

    results = evaluator.evaluate(state["params"])
    results = finalize_results(results, setup, config, int(jax.device_get(state["step"])))
    write_results(workdir, results)
    return results


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """``--mode=eval``: restores the newest intact checkpoint in ``workdir``, evaluates it.

    The tokenizer is the one saved with the checkpoint.
    """
    run = Run(config)
    with run:
        restored = run.restore(workdir_checkpoints(workdir), what="evaluate")
        evaluator = eval_lib.Evaluator(config, run.setup.graphdef, run.tokenizer, run.mesh)
        results = finalize_results(evaluator.evaluate(restored.params), run.setup, config,
                                   restored.step)
    write_results(workdir, results)
    return results


def finalize_results(results: dict, setup: TrainSetup, config, step: int) -> dict:
    return dict(
        results,
        compressor=config.compressor.name,
        step=step,
        visual_tokens_per_video=setup.num_visual_tokens,
        visual_tokens_used_per_video=setup.visual_tokens_used,
        full_visual_tokens_per_video=setup.full_visual_tokens,
        compression_ratio=setup.full_visual_tokens / setup.num_visual_tokens,
        config_name=config.name,
    )


def write_results(workdir: str, results: dict) -> None:
    if jax.process_index() != 0:
        return
    path = os.path.join(workdir, "results.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=2, sort_keys=True)
    os.replace(tmp, path)  # atomic: a reader never sees half a file
    logging.info("Wrote %s: %s", path, json.dumps(_scalar_results(results)))


def _scalar_results(results: dict) -> dict:
    return {k: v for k, v in results.items() if isinstance(v, (int, float, dict))}


def _log_model_summary(setup: TrainSetup, state: dict) -> None:
    num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state["params"]))
    logging.info(
        "Model: %.2fM params; visual tokens per video %d of %d (%.1fx fewer), %d used",
        num_params / 1e6, setup.num_visual_tokens, setup.full_visual_tokens,
        setup.full_visual_tokens / setup.num_visual_tokens, setup.visual_tokens_used)


class _Profiler:
    """Traces ``num_steps`` steps (after compilation settles) into ``<workdir>/profile``."""

    def __init__(self, workdir: str, num_steps: int, start_step: int):
        self.dir = os.path.join(workdir, "profile")
        self.first = start_step + 10
        self.last = self.first + num_steps - 1
        self.enabled = num_steps > 0
        self.active = False

    def maybe_start(self, step: int) -> None:
        if self.enabled and step == self.first and jax.process_index() == 0:
            jax.profiler.start_trace(self.dir)
            self.active = True

    def maybe_stop(self, step: int, state: Any) -> None:
        if self.active and step >= self.last:
            jax.block_until_ready(state)
            jax.profiler.stop_trace()
            self.active = False
            logging.info("Profile of steps %d-%d written to %s", self.first, step, self.dir)


def format_results(results: dict) -> str:
    """A short human summary of ``results.json``."""
    lines = [
        f"compressor {results['compressor']}: {results['visual_tokens_per_video']} visual tokens"
        f" per video vs {results['full_visual_tokens_per_video']} full"
        f" ({results['compression_ratio']:.1f}x fewer), step {results['step']}",
        f"accuracy {results['accuracy']:.3f} on {results['num_examples']} examples",
    ]
    lines += [f"  {name:<18} {acc:.3f}" for name, acc in results["accuracy_by_family"].items()]
    return "\n".join(lines)
