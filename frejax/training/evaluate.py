"""Exact-match evaluation by greedy decoding through the KV cache.

An answer is right when the generated tokens up to the first end-of-sequence
token equal the reference answer tokens. Accuracy is reported overall and per
question family; padding examples (``example_valid`` False) never count.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from data_pipelines import datasets as data_lib
from frejax import sharding

MODEL_INPUTS = ("frames", "latents", "frame_mask", "tokens", "text_mask", "prompt_len")


class Evaluator:
    """Compiles generation once; ``evaluate(params)`` runs the whole eval split."""

    def __init__(self, config: ml_collections.ConfigDict, graphdef: nnx.GraphDef,
                 tokenizer: Any, mesh: jax.sharding.Mesh):
        self.config, self.tokenizer, self.mesh = config, tokenizer, mesh
        self.families = data_lib.family_names(config)
        self.batch_sharding = sharding.batch_sharding(mesh)
        # Built now, so a bad eval split stops the run before training, not after it.
        self.source = data_lib.make_eval_source(config, mesh)
        max_new = config.eval.max_new_tokens
        eos = tokenizer.eos_id

        def generate(params, batch, prefix_len):
            model = nnx.merge(graphdef, params)
            return model.generate(batch, max_new, prefix_len=prefix_len, eos_id=eos)

        # Rows come out sharded as they went in, so each process reads back exactly
        # its own examples (``_local_rows``); left to jit, the output layout (and with
        # it which rows a process holds) would depend on the compiler's choice.
        self._generate = jax.jit(generate, static_argnums=2, out_shardings=self.batch_sharding)

    def evaluate(self, params: Any) -> dict:
        correct = np.zeros(len(self.families), np.int64)
        total = np.zeros(len(self.families), np.int64)
        for local in data_lib.make_eval_iterator(self.config, self.tokenizer, self.mesh,
                                                  self.source):
            prefix_len = self._prefix_len(local)
            batch = data_lib.to_global({k: local[k] for k in MODEL_INPUTS if k in local},
                                       self.batch_sharding)
            generated = self._local_rows(self._generate(params, batch, prefix_len))
            hits = exact_match(generated, local["answer_tokens"], local["answer_len"],
                               self.tokenizer.eos_id)
            valid = local["example_valid"].astype(bool)
            np.add.at(correct, local["family"][valid], hits[valid])
            np.add.at(total, local["family"][valid], 1)
        if jax.process_count() > 1:
            correct = multihost_utils.process_allgather(correct).sum(0)
            total = multihost_utils.process_allgather(total).sum(0)
        by_family = {name: float(c / t) for name, c, t in zip(self.families, correct, total) if t}
        return dict(
            accuracy=float(correct.sum() / max(total.sum(), 1)),
            accuracy_by_family=by_family,
            num_examples=int(total.sum()),
            num_examples_by_family={n: int(t) for n, t in zip(self.families, total) if t})

    def _prefix_len(self, local: dict) -> int:
        """Text tokens before the video placeholder: one value for every real example.

        The chat template puts the video in the first turn, so the prefix is the
        template's start; bad-input stand-ins and padding rows are not read.
        """
        rows = local["tokens"][local["example_valid"].astype(bool)]
        found = {int(i) for i in np.argmax(rows == self.tokenizer.video_id, axis=1)}
        if len(found) > 1:
            raise ValueError(f"config.data.prompt_template: the video placeholder sits after"
                             f" {sorted(found)} tokens in different examples; it must open the"
                             " same prefix in every prompt")
        if jax.process_count() > 1:  # every process compiles the same program
            found = {int(multihost_utils.process_allgather(
                np.int32(found.pop() if found else -1)).max())}
        value = found.pop() if found else -1
        return value if value >= 0 else 1  # only padding here: any prefix reads nothing

    @staticmethod
    def _local_rows(x: jax.Array) -> np.ndarray:
        """This process's rows of a batch-sharded global array, in order."""
        if jax.process_count() == 1:
            return np.asarray(jax.device_get(x))
        shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
        rows, seen = [], set()
        for s in shards:
            start = s.index[0].start or 0
            if start not in seen:
                seen.add(start)
                rows.append(np.asarray(s.data))
        return np.concatenate(rows)


def exact_match(generated: np.ndarray, answer_tokens: np.ndarray, answer_len: np.ndarray,
                eos_id: int) -> np.ndarray:
    """``(B, G)`` generated, ``(B, A)`` reference, ``(B,)`` lengths -> ``(B,)`` 0/1.

    The prediction is everything before the first ``eos_id`` (all of it if none).
    """
    hits = np.zeros(len(generated), np.int64)
    for i, (gen, ref, n) in enumerate(zip(generated, answer_tokens, answer_len)):
        stop = np.flatnonzero(gen == eos_id)
        pred = gen[: stop[0]] if stop.size else gen
        hits[i] = int(len(pred) == n and np.array_equal(pred, ref[:n]))
    return hits
