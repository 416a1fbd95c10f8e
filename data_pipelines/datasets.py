"""From config to global device batches: tokenizer, sources, iterators.

Every source becomes a Grain ``MapDataset`` and goes through the one chain in
``data_pipelines.input_pipeline``; this module picks the source and tokenizer from the
config and turns each host's batch into global ``jax.Array``s sharded over the
``batch`` logical axis.

``config.data.name`` picks the source from the registry of ``data_pipelines.sources``:

  synthetic_video_qa  the embedded procedural benchmark;
  video_folder        ``data.root`` + ``data.{train,eval}_annotations`` (JSON/JSONL);
  array_record        shards written by ``python -m data_pipelines.array_record_shards``
                      into ``data.root``;
  tfds                ``data.tfds_name`` (e.g. ``video_folder_qa``) in ``data.tfds_dir``;
  latent_cache        a frozen encoder's latents of the natural-video QA set in ``data.root``.

Real data names its own question families (``family_names``: the sorted
``family`` strings of its records, ``("all",)`` when none has one) and, with
``data.tokenizer=auto``, its own word vocabulary.
"""

from __future__ import annotations

from typing import Any, Iterator

import jax
import ml_collections
import numpy as np

from data_pipelines import input_pipeline
from data_pipelines import sources
from data_pipelines import tokenizer as tokenizer_lib


def make_tokenizer(config: ml_collections.ConfigDict) -> tokenizer_lib.Tokenizer:
    d = config.data
    if d.tokenizer == "sentencepiece":
        return tokenizer_lib.SentencePieceTokenizer(d.tokenizer_path)
    if d.tokenizer == "huggingface":
        return tokenizer_lib.HuggingFaceTokenizer(d.tokenizer_path)
    if d.tokenizer != "auto":
        raise ValueError(f"config.data.tokenizer: unknown tokenizer {d.tokenizer!r}")
    source = sources.get(d.name)
    if source.tokenizer is not None:
        return source.tokenizer()
    # A model trained from scratch on its own data: the data's own words.
    return tokenizer_lib.word_tokenizer_for(source.catalog(config)["words"], d.prompt_template)


family_names = sources.family_names
frame_sampling = sources.frame_sampling


def make_source(config: ml_collections.ConfigDict, split: str, num_examples: int) -> Any:
    """The random-access source of ``split``; real data caps eval at ``num_examples``.

    Real training data uses every usable record (``data.synthetic.train_examples``
    is the embedded benchmark's size).
    """
    return sources.get(config.data.name).make(config, split, num_examples)


def text_lengths(config: ml_collections.ConfigDict, tokenizer) -> tuple[int, int]:
    """``(max_text_len, max_answer_len)``: the config's when set (> 0), else sized from the data.

    Each source measures its own text (the embedded benchmark's is fixed, a video
    folder's is every record of its annotation files read with the run's tokenizer,
    so nothing usable is dropped as too long); ArrayRecord and TFDS sets hold their
    text inside the shards: set both keys for them.
    """
    d = config.data
    text, answer = d.max_text_len, d.max_answer_len
    if not (text and answer):
        measure = sources.get(d.name).text_lengths
        if measure is None:
            raise ValueError(f"config.data.max_text_len and config.data.max_answer_len must be"
                             f" set (> 0) for config.data.name={d.name!r}: its text is inside"
                             " the shards")
        auto = measure(config, tokenizer)
        text, answer = text or auto[0], answer or auto[1]
    if config.eval.max_new_tokens < answer:
        raise ValueError(f"config.eval.max_new_tokens ({config.eval.max_new_tokens}) must be >="
                         f" the longest answer, {answer} tokens (data.max_answer_len)")
    return text, answer


def _dataset(config, tokenizer, source, *, split, batch_size, shuffle, num_epochs):
    d = config.data
    source_spec = sources.get(d.name)
    train_transform = (source_spec.train_transform(config)
                       if split == "train" and source_spec.train_transform else None)
    max_text_len, max_answer_len = text_lengths(config, tokenizer)
    return input_pipeline.make_dataset(
        source, tokenizer=tokenizer, global_batch_size=batch_size,
        max_text_len=max_text_len, max_answer_len=max_answer_len, split=split,
        seed=config.seed, process_index=jax.process_index(),
        process_count=jax.process_count(), shuffle=shuffle, num_epochs=num_epochs,
        worker_count=d.worker_count, worker_buffer_size=d.worker_buffer_size,
        read_threads=d.read_threads, prefetch_buffer_size=d.prefetch_buffer_size,
        template=d.prompt_template, skip_bad_text=source_spec.skip_bad_text,
        max_bad_fraction=d.max_bad_fraction, train_transform=train_transform)


def make_train_iterator(config: ml_collections.ConfigDict, tokenizer, mesh) -> Iterator[dict]:
    """An endless, shuffled, checkpointable iterator of this host's train batches."""
    _check_batch(config, config.train.batch_size, mesh, "train.batch_size")
    # Each accumulation step's micro-batch is sharded over the mesh too.
    _check_batch(config, config.train.batch_size // config.optim.accum_steps, mesh,
                 "train.batch_size / optim.accum_steps")
    source = make_source(config, "train", config.data.synthetic.train_examples)
    ds = _dataset(config, tokenizer, source, split="train", batch_size=config.train.batch_size,
                  shuffle=True, num_epochs=None)
    return iter(ds)


def make_eval_source(config: ml_collections.ConfigDict, mesh) -> Any:
    """The eval split's source, its batch size and annotations checked."""
    _check_batch(config, config.eval.batch_size, mesh, "eval.batch_size")
    return make_source(config, "eval", config.eval.num_examples)


def make_eval_iterator(config: ml_collections.ConfigDict, tokenizer, mesh,
                       source: Any = None) -> Iterator[dict]:
    """Every eval example exactly once; the last batch is padded (``example_valid``)."""
    if source is None:
        source = make_eval_source(config, mesh)
    ds = _dataset(config, tokenizer, source, split="eval", batch_size=config.eval.batch_size,
                  shuffle=False, num_epochs=1)
    return iter(ds)


def to_global(local_batch: dict, batch_sharding: jax.sharding.NamedSharding) -> dict:
    """Host-local numpy batch -> global ``jax.Array``s (multi-host safe)."""
    return {k: jax.make_array_from_process_local_data(batch_sharding, np.asarray(v))
            for k, v in local_batch.items() if _is_array(v)}


def next_global_batch(it: Iterator[dict], batch_sharding) -> dict:
    return to_global(next(it), batch_sharding)


def _is_array(v: Any) -> bool:
    return isinstance(v, np.ndarray) and v.dtype.kind in "biuf"


def _check_batch(config, batch_size: int, mesh: jax.sharding.Mesh, key: str) -> None:
    # The mesh axes the ``batch`` logical axis maps to (config.sharding.rules).
    spec = dict(config.sharding.rules).get("batch")
    axes = () if spec is None else (tuple(spec) if isinstance(spec, (tuple, list)) else (spec,))
    shards = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
    per_process = batch_size // jax.process_count()
    if batch_size % jax.process_count() or per_process % max(1, shards // jax.process_count()):
        raise ValueError(
            f"config.{key} ({batch_size}) must split evenly over {jax.process_count()}"
            f" processes and {shards} batch shards of the mesh {dict(mesh.shape)}")
