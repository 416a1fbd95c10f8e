"""From config to global device batches: tokenizer, sources, iterators.

Every source becomes a Grain ``MapDataset`` and goes through the one chain in
``frejax.input_pipeline``; this module picks the source and tokenizer from the
config and turns each host's batch into global ``jax.Array``s sharded over the
``batch`` logical axis.
"""

from __future__ import annotations

from typing import Any, Iterator

import jax
import ml_collections
import numpy as np

from data_pipelines import video_qa_synthetic
from frejax import input_pipeline
from frejax import sharding
from frejax import tokenizer as tokenizer_lib


def make_tokenizer(config: ml_collections.ConfigDict) -> tokenizer_lib.Tokenizer:
    if config.data.name == "synthetic_video_qa":
        return tokenizer_lib.benchmark_tokenizer()
    raise ValueError(f"config.data.name: no tokenizer for {config.data.name!r}")


def family_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    if config.data.name == "synthetic_video_qa":
        return video_qa_synthetic.FAMILIES
    raise ValueError(f"config.data.name: unknown dataset {config.data.name!r}")


def make_source(config: ml_collections.ConfigDict, split: str, num_examples: int) -> Any:
    d = config.data
    if d.name == "synthetic_video_qa":
        return video_qa_synthetic.VideoQASource(
            num_frames=d.num_frames, image_size=d.image_size, num_examples=num_examples,
            split=split, seed=config.seed)
    raise ValueError(f"config.data.name: unknown dataset {d.name!r}")


def _dataset(config, tokenizer, source, *, split, batch_size, shuffle, num_epochs):
    d = config.data
    return input_pipeline.make_dataset(
        source, tokenizer=tokenizer, global_batch_size=batch_size,
        max_text_len=d.max_text_len, max_answer_len=d.max_answer_len, split=split,
        seed=config.seed, process_index=jax.process_index(),
        process_count=jax.process_count(), shuffle=shuffle, num_epochs=num_epochs,
        worker_count=d.worker_count, worker_buffer_size=d.worker_buffer_size,
        read_threads=d.read_threads, prefetch_buffer_size=d.prefetch_buffer_size)


def make_train_iterator(config: ml_collections.ConfigDict, tokenizer, mesh) -> Iterator[dict]:
    """An endless, shuffled, checkpointable iterator of this host's train batches."""
    _check_batch(config.train.batch_size, mesh, "train.batch_size")
    # Each accumulation step's micro-batch is sharded over the mesh too.
    _check_batch(config.train.batch_size // config.optim.accum_steps, mesh,
                 "train.batch_size / optim.accum_steps")
    source = make_source(config, "train", config.data.train_examples)
    ds = _dataset(config, tokenizer, source, split="train", batch_size=config.train.batch_size,
                  shuffle=True, num_epochs=None)
    return iter(ds)


def make_eval_iterator(config: ml_collections.ConfigDict, tokenizer, mesh) -> Iterator[dict]:
    """Every eval example exactly once; the last batch is padded (``example_valid``)."""
    _check_batch(config.eval.batch_size, mesh, "eval.batch_size")
    source = make_source(config, "eval", config.eval.num_examples)
    ds = _dataset(config, tokenizer, source, split="eval", batch_size=config.eval.batch_size,
                  shuffle=False, num_epochs=1)
    return iter(ds)


def batch_sharding(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
    """Leading (batch) axis over the mesh axes ``batch`` maps to; the rest replicated."""
    return jax.sharding.NamedSharding(mesh, sharding.logical_to_spec(("batch",)))


def to_global(local_batch: dict, batch_sharding: jax.sharding.NamedSharding) -> dict:
    """Host-local numpy batch -> global ``jax.Array``s (multi-host safe)."""
    return {k: jax.make_array_from_process_local_data(batch_sharding, np.asarray(v))
            for k, v in local_batch.items() if _is_array(v)}


def next_global_batch(it: Iterator[dict], batch_sharding) -> dict:
    return to_global(next(it), batch_sharding)


def _is_array(v: Any) -> bool:
    return isinstance(v, np.ndarray) and v.dtype.kind in "biuf"


def _check_batch(batch_size: int, mesh: jax.sharding.Mesh, key: str) -> None:
    spec = sharding.logical_to_spec(("batch",))[0]
    axes = () if spec is None else (spec if isinstance(spec, tuple) else (spec,))
    shards = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
    per_process = batch_size // jax.process_count()
    if batch_size % jax.process_count() or per_process % max(1, shards // jax.process_count()):
        raise ValueError(
            f"config.{key} ({batch_size}) must split evenly over {jax.process_count()}"
            f" processes and {shards} batch shards of the mesh {dict(mesh.shape)}")
