"""Metrics that never block the train loop: one step late, three sinks.

``MetricLogger.log_late(step, device_metrics)`` keeps this step's metrics as
device arrays and writes the previous step's, which are ready by then: the host
never waits on the device it just dispatched to. Sinks: a JSON-lines file, a
TensorBoard event file and a progress bar (step, loss, steps/s, ETA).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import jax
import numpy as np
import tqdm
from absl import logging
from tensorboardX import SummaryWriter


class MetricLogger:
    """Writes scalars to ``<workdir>/metrics.jsonl`` and TensorBoard; drives a progress bar.

    Only process 0 writes; every process may call it.
    """

    def __init__(self, workdir: str, *, total_steps: int, initial_step: int = 0,
                 log_every: int = 1, progress_bar: bool = True):
        self.is_writer = jax.process_index() == 0
        self.log_every = max(1, log_every)
        self._pending: tuple[int, Any] | None = None
        self._last_time = time.perf_counter()
        self._last_step = initial_step
        self._jsonl = self._tb = self._bar = None
        if self.is_writer:
            os.makedirs(workdir, exist_ok=True)
            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
            self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
            self._bar = tqdm.tqdm(
                total=total_steps, initial=initial_step, desc="train", unit="step",
                dynamic_ncols=True, mininterval=2.0, file=sys.stderr,
                disable=not progress_bar)

    def log_late(self, step: int, metrics: Any) -> dict | None:
        """Queues ``metrics`` of ``step``; writes and returns the previously queued ones."""
        previous, self._pending = self._pending, (step, metrics)
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
        if previous is None:
            return None
        return self._write_train(*previous)

    def flush(self) -> dict | None:
        """Writes the queued metrics now (blocks until they are computed)."""
        previous, self._pending = self._pending, None
        return None if previous is None else self._write_train(*previous)

    def _write_train(self, step: int, metrics: Any) -> dict:
        values = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if step % self.log_every == 0 or step == 1:
            now = time.perf_counter()
            rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
            self._last_time, self._last_step = now, step
            values_out = dict(values, steps_per_sec=rate)
            self.write(step, values_out, prefix="train")
            if self._bar is not None:
                self._bar.set_postfix(loss=f"{values['loss']:.4f}", refresh=False)
            logging.info("step %d: %s", step, _fmt(values_out))
        return values

    def write(self, step: int, values: dict, prefix: str) -> None:
        if not self.is_writer:
            return
        flat = {f"{prefix}/{k}": v for k, v in _flatten(values).items()}
        self._jsonl.write(json.dumps(dict(step=step, **flat)) + "\n")
        self._jsonl.flush()
        for k, v in flat.items():
            self._tb.add_scalar(k, v, step)
        self._tb.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._jsonl is not None:
            self._jsonl.close()
            self._tb.close()


def _flatten(values: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in values.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float, np.floating, np.integer)):
            out[f"{prefix}{k}"] = float(v)
    return out


def _fmt(values: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in values.items())
