"""From config to global device batches: tokenizer, sources, iterators.

Every source becomes a Grain ``MapDataset`` and goes through the one chain in
``data_pipelines.input_pipeline``; this module picks the source and tokenizer from the
config and turns each host's batch into global ``jax.Array``s sharded over the
``batch`` logical axis.

``config.data.name`` picks the source:

  synthetic_video_qa  the embedded procedural benchmark;
  video_folder        ``data.root`` + ``data.{train,eval}_annotations`` (JSON/JSONL);
  array_record        shards written by ``python -m data_pipelines.array_record_shards``
                      into ``data.root``;
  tfds                ``data.tfds_name`` (e.g. ``video_folder_qa``) in ``data.tfds_dir``.

Real data names its own question families (``family_names``: the sorted
``family`` strings of its records, ``("all",)`` when none has one) and, with
``data.tokenizer=auto``, its own word vocabulary.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Iterator

import jax
import ml_collections
import numpy as np

from data_pipelines import annotations as annotations_lib
from data_pipelines import array_record_shards
from data_pipelines import video_decode
from data_pipelines import video_folder
from data_pipelines import video_qa_synthetic
from data_pipelines import input_pipeline
from data_pipelines import tokenizer as tokenizer_lib


def make_tokenizer(config: ml_collections.ConfigDict) -> tokenizer_lib.Tokenizer:
    d = config.data
    if d.tokenizer == "sentencepiece":
        return tokenizer_lib.SentencePieceTokenizer(d.tokenizer_path)
    if d.tokenizer == "huggingface":
        return tokenizer_lib.HuggingFaceTokenizer(d.tokenizer_path)
    if d.tokenizer != "auto":
        raise ValueError(f"config.data.tokenizer: unknown tokenizer {d.tokenizer!r}")
    if d.name == "synthetic_video_qa":
        return video_qa_synthetic.tokenizer()
    # A model trained from scratch on its own data: the data's own words.
    return tokenizer_lib.word_tokenizer_for(_catalog(config)["words"], d.prompt_template)


def family_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    if config.data.name == "synthetic_video_qa":
        return video_qa_synthetic.FAMILIES
    return tuple(_catalog(config)["families"]) or (annotations_lib.DEFAULT_FAMILY,)


def make_source(config: ml_collections.ConfigDict, split: str, num_examples: int) -> Any:
    """The random-access source of ``split``; real data caps eval at ``num_examples``.

    Real training data uses every usable record (``data.synthetic.train_examples``
    is the embedded benchmark's size).
    """
    d = config.data
    if config.model.vision.get("input", "pixels") == "latents":
        raise ValueError("config.model.vision.input='latents': every data.name source gives"
                         " frames; a model on cached encoder latents trains with"
                         " `python -m frejax.natural_qa` (frejax/latent_cache.py)")
    if d.name == "synthetic_video_qa":
        return video_qa_synthetic.VideoQASource(
            num_frames=d.num_frames, image_size=d.image_size, num_examples=num_examples,
            split=split, seed=config.seed, followups=d.synthetic.followups,
            family_weights=d.synthetic.train_family_weights if split == "train" else (),
            background=d.synthetic.background_noise)
    cap = None if split == "train" else num_examples
    common = dict(sampling=frame_sampling(config), families=family_names(config),
                  seed=config.seed, num_examples=cap)
    if d.name == "video_folder":
        source = video_folder.VideoFolderSource(
            d.root, _annotation_file(config, split), split=split, **common)
        _check_bad_records(config, source.index.path, source.index.bad, source.index.num_entries)
        return source
    if d.name == "array_record":
        info = array_record_shards.read_metadata(d.root)["splits"].get(split)
        if info is None:
            raise ValueError(f"config.data.root: {d.root} has no {split!r} shards")
        _check_bad_records(config, info["annotations"], info["bad"], info["num_entries"])
        return array_record_shards.ArrayRecordVideoSource(d.root, split, **common)
    if d.name == "tfds":
        from data_pipelines import tfds_video_folder  # noqa: PLC0415  (imports TFDS)

        builder = _tfds_builder(config)
        bad = builder.info.metadata.get("bad", {}).get(split, {})
        _check_bad_records(config, f"{d.tfds_name}[{split}]", bad,
                           builder.info.splits[split].num_examples + sum(bad.values()))
        return tfds_video_folder.TfdsVideoSource(
            builder.as_data_source(split=split), split=split, **common)
    raise ValueError(f"config.data.name: unknown dataset {d.name!r}")


def frame_sampling(config: ml_collections.ConfigDict) -> video_decode.FrameSampling:
    d = config.data
    return video_decode.FrameSampling(
        num_frames=d.num_frames, image_size=d.image_size, mode=d.sampling, fps=d.sample_fps,
        resize=d.resize)


def _annotation_file(config, split: str) -> str:
    return config.data.train_annotations if split == "train" else config.data.eval_annotations


def _catalog(config: ml_collections.ConfigDict) -> dict[str, list[str]]:
    """Families and vocabulary words of a real dataset, over all its splits (deterministic)."""
    d = config.data
    if d.name == "video_folder":
        return _folder_catalog(d.root, d.train_annotations, d.eval_annotations)
    if d.name == "array_record":
        meta = array_record_shards.read_metadata(d.root)
        return dict(families=meta["families"], words=meta["words"])
    if d.name == "tfds":
        meta = _tfds_builder(config).info.metadata
        return dict(families=list(meta["families"]), words=list(meta["words"]))
    raise ValueError(f"config.data.name: no catalog for {d.name!r}")


def _file_stamps(*files: str) -> tuple:
    """``(path, mtime, size)`` per file: a cache key that changes when a file does."""
    stamps = []
    for path in files:
        st = os.stat(path) if os.path.exists(path) else None  # missing: load_annotations says so
        stamps.append((path, st and st.st_mtime_ns, st and st.st_size))
    return tuple(stamps)


@functools.lru_cache(maxsize=4)
def _folder_records(root: str, stamps: tuple) -> tuple:
    """Every usable record of the annotation files, read once while the files are unchanged
    (the catalog and the text lengths both need them)."""
    return tuple(r for path, *_ in stamps
                 for r in annotations_lib.load_annotations(path, root).records)


def _folder_catalog(root: str, *files: str) -> dict[str, list[str]]:
    families, words = set(), set()
    for r in _folder_records(root, _file_stamps(*files)):
        families.add(r.family)
        for text in [r.question, r.answer, *(t for qa in r.history for t in qa)]:
            words.update(tokenizer_lib.split_words(text))
    return dict(families=sorted(families), words=sorted(words))


def _tfds_builder(config: ml_collections.ConfigDict):
    """The TFDS builder; ``video_folder_qa`` is prepared from ``data.root`` on first use."""
    from data_pipelines import tfds_video_folder  # noqa: PLC0415  (imports TFDS)

    d = config.data
    kwargs = {}
    if d.tfds_name == tfds_video_folder.NAME and d.root:
        kwargs = dict(root=d.root, train_annotations=d.train_annotations,
                      eval_annotations=d.eval_annotations)
    return _cached_tfds_builder(d.tfds_name, d.tfds_dir, json.dumps(kwargs, sort_keys=True))


@functools.lru_cache(maxsize=4)
def _cached_tfds_builder(name: str, data_dir: str, kwargs_json: str):
    from data_pipelines import tfds_video_folder  # noqa: PLC0415

    builder = tfds_video_folder.builder(name, data_dir, **json.loads(kwargs_json))
    if not builder.is_prepared():
        if not json.loads(kwargs_json):
            raise FileNotFoundError(
                f"config.data.tfds_name: {name!r} is not prepared in {builder.data_dir};"
                " prepare it with python -m data_pipelines.tfds_video_folder")
        builder.download_and_prepare()
    return builder


def _check_bad_records(config, where: str, bad: dict[str, int], num_entries: int) -> None:
    """Annotation problems found up front count against ``data.max_bad_fraction`` too."""
    num_bad = sum(bad.values())
    limit = config.data.max_bad_fraction
    if num_entries and num_bad > limit * num_entries:
        raise input_pipeline.BadInputError(
            f"{where}: {num_bad} of {num_entries} annotation records are unusable ({bad});"
            f" more than data.max_bad_fraction={limit} allows. The warnings above name each"
            " file and line.")


def text_lengths(config: ml_collections.ConfigDict, tokenizer) -> tuple[int, int]:
    """``(max_text_len, max_answer_len)``: the config's when set (> 0), else sized from the data.

    The synthetic benchmark's text is fixed (measured over all of it for a tokenizer other
    than its word vocabulary); a video folder's is measured over
    every record of its annotation files with the run's tokenizer, so nothing
    usable is dropped as too long. ArrayRecord and TFDS sets hold their text
    inside the shards: set both keys for them.
    """
    d = config.data
    text, answer = d.max_text_len, d.max_answer_len
    if not (text and answer):
        if d.name == "synthetic_video_qa" and isinstance(tokenizer, tokenizer_lib.WordTokenizer):
            auto = (video_qa_synthetic.MAX_TEXT_LEN, video_qa_synthetic.MAX_ANSWER_LEN)
        elif d.name == "synthetic_video_qa":  # a pretrained LLM's tokenizer: measure
            auto = input_pipeline.text_lengths(tokenizer, video_qa_synthetic.all_texts(),
                                               d.prompt_template)
        elif d.name == "video_folder":
            auto = _folder_text_lengths(
                tokenizer, d.prompt_template, d.root,
                _file_stamps(d.train_annotations, d.eval_annotations))
        else:
            raise ValueError(f"config.data.max_text_len and config.data.max_answer_len must be"
                             f" set (> 0) for config.data.name={d.name!r}: its text is inside"
                             " the shards")
        text, answer = text or auto[0], answer or auto[1]
    if config.eval.max_new_tokens < answer:
        raise ValueError(f"config.eval.max_new_tokens ({config.eval.max_new_tokens}) must be >="
                         f" the longest answer, {answer} tokens (data.max_answer_len)")
    return text, answer


@functools.lru_cache(maxsize=8)
def _folder_text_lengths(tokenizer, template: str, root: str, stamps: tuple) -> tuple[int, int]:
    return input_pipeline.text_lengths(
        tokenizer, (dict(question=r.question, answer=r.answer, history=r.history)
                    for r in _folder_records(root, stamps)), template)


def _dataset(config, tokenizer, source, *, split, batch_size, shuffle, num_epochs):
    d = config.data
    max_text_len, max_answer_len = text_lengths(config, tokenizer)
    return input_pipeline.make_dataset(
        source, tokenizer=tokenizer, global_batch_size=batch_size,
        max_text_len=max_text_len, max_answer_len=max_answer_len, split=split,
        seed=config.seed, process_index=jax.process_index(),
        process_count=jax.process_count(), shuffle=shuffle, num_epochs=num_epochs,
        worker_count=d.worker_count, worker_buffer_size=d.worker_buffer_size,
        read_threads=d.read_threads, prefetch_buffer_size=d.prefetch_buffer_size,
        template=d.prompt_template, skip_bad_text=d.name != "synthetic_video_qa",
        max_bad_fraction=d.max_bad_fraction)


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
