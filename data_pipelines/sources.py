"""The data-source registry: what each ``config.data.name`` reads, needs and gives.

Every source declares, in one ``DataSource``:

* ``required``: config keys that must be set (``config_lib.validate`` asks);
* ``keys``: the ``data.*`` keys only it (or its kind) reads, so a key set for
  another source is refused instead of silently ignored;
* ``make``: ``(config, split, num_examples) -> a random-access source`` whose
  records the one Grain chain of ``input_pipeline`` turns into batches;
* ``catalog``: ``config -> {"families": [...], "words": [...]}``, the question
  families and the word vocabulary (``data.tokenizer=auto``) of the data;
* ``text_lengths``: ``(config, tokenizer) -> (max_text, max_answer)`` measured
  from the data, or None when the text lives inside shards (then the config
  must set both);
* ``skip_bad_text``: whether a record whose text does not fit is a counted skip
  (real data) or a bug (the embedded benchmark, whose text is fixed);
* ``input``: ``pixels`` (frames) or ``latents`` (a frozen encoder's cache).

``data_pipelines.datasets`` and ``frejax.config_lib`` ask this registry; no
other module tests ``data.name``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Callable
from typing import Any

import ml_collections

from data_pipelines import annotations as annotations_lib
from data_pipelines import array_record_shards
from data_pipelines import input_pipeline
from data_pipelines import latent_source
from data_pipelines import tokenizer as tokenizer_lib
from data_pipelines import video_decode
from data_pipelines import video_folder
from data_pipelines import video_qa_synthetic


@dataclasses.dataclass(frozen=True)
class DataSource:
    name: str
    make: Callable[[ml_collections.ConfigDict, str, int], Any]
    catalog: Callable[[ml_collections.ConfigDict], dict[str, list[str]]]
    text_lengths: Callable[[ml_collections.ConfigDict, Any], tuple[int, int]] | None
    required: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()
    skip_bad_text: bool = True
    input: str = "pixels"
    # A fixed tokenizer for ``data.tokenizer=auto`` instead of the catalog's words.
    tokenizer: Callable[[], tokenizer_lib.Tokenizer] | None = None
    # A Grain random map over training records, seeded per read (``None``: none).
    train_transform: Callable[[ml_collections.ConfigDict], Any] | None = None
    # Checks of its own keys on the flat ``{"data.x": value}`` config; errors name the key.
    validate: Callable[[dict], None] | None = None


_SOURCES: dict[str, DataSource] = {}


def register(source: DataSource) -> DataSource:
    if source.name in _SOURCES:
        raise ValueError(f"data source {source.name!r} is registered twice")
    _SOURCES[source.name] = source
    return source


def get(name: str) -> DataSource:
    if name not in _SOURCES:
        raise ValueError(f"config.data.name: unknown dataset {name!r}; choose one of"
                         f" {names()}")
    return _SOURCES[name]


def names() -> tuple[str, ...]:
    return tuple(sorted(_SOURCES))


def all_keys() -> set[str]:
    """Every source-specific key: a key set for another source than the chosen one is refused."""
    return {k for s in _SOURCES.values() for k in s.keys}


# ----------------------------------------------------------------------------
# Shared by the real-video sources.
# ----------------------------------------------------------------------------

# Keys every real-video source reads (how frames are sampled from a file).
_SAMPLING_KEYS = ("data.sampling", "data.sample_fps", "data.resize")


def frame_sampling(config: ml_collections.ConfigDict) -> video_decode.FrameSampling:
    d = config.data
    return video_decode.FrameSampling(
        num_frames=d.num_frames, image_size=d.image_size, mode=d.sampling, fps=d.sample_fps,
        resize=d.resize)


def _common(config: ml_collections.ConfigDict, split: str, num_examples: int) -> dict:
    """Arguments of every real-video source; real training data uses every usable record."""
    return dict(sampling=frame_sampling(config), families=family_names(config),
                seed=config.seed, num_examples=None if split == "train" else num_examples)


def family_names(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """The question families of ``config``'s data (``("all",)`` when none is named)."""
    return tuple(get(config.data.name).catalog(config)["families"]) or \
        (annotations_lib.DEFAULT_FAMILY,)


def check_bad_records(config, where: str, bad: dict[str, int], num_entries: int) -> None:
    """Annotation problems found up front count against ``data.max_bad_fraction`` too."""
    num_bad = sum(bad.values())
    limit = config.data.max_bad_fraction
    if num_entries and num_bad > limit * num_entries:
        raise input_pipeline.BadInputError(
            f"{where}: {num_bad} of {num_entries} annotation records are unusable ({bad});"
            f" more than data.max_bad_fraction={limit} allows. The warnings above name each"
            " file and line.")


def _text_inside_shards(config, tokenizer) -> tuple[int, int]:
    raise ValueError(f"config.data.max_text_len and config.data.max_answer_len must be"
                     f" set (> 0) for config.data.name={config.data.name!r}: its text is inside"
                     " the shards")


# ----------------------------------------------------------------------------
# synthetic_video_qa: the embedded procedural benchmark.
# ----------------------------------------------------------------------------


def _synthetic_source(config, split: str, num_examples: int):
    d = config.data
    return video_qa_synthetic.VideoQASource(
        num_frames=d.num_frames, image_size=d.image_size, num_examples=num_examples,
        split=split, seed=config.seed, followups=d.synthetic.followups,
        family_weights=d.synthetic.train_family_weights if split == "train" else (),
        background=d.synthetic.background_noise)


def _synthetic_text_lengths(config, tokenizer) -> tuple[int, int]:
    if isinstance(tokenizer, tokenizer_lib.WordTokenizer):
        return video_qa_synthetic.MAX_TEXT_LEN, video_qa_synthetic.MAX_ANSWER_LEN
    # A pretrained LLM's tokenizer: measure over all of the benchmark's text.
    return input_pipeline.text_lengths(tokenizer, video_qa_synthetic.all_texts(),
                                       config.data.prompt_template)


def _synthetic_validate(v: dict) -> None:
    try:
        video_qa_synthetic.family_cycle(video_qa_synthetic.FAMILIES,
                                        v["data.synthetic.train_family_weights"])
    except ValueError as e:
        raise ValueError(f"config.data.synthetic.train_{e}") from None
    if v["data.synthetic.background_noise"] not in video_qa_synthetic.BACKGROUNDS:
        raise ValueError(f"config.data.synthetic.background_noise must be one of"
                         f" {video_qa_synthetic.BACKGROUNDS},"
                         f" got {v['data.synthetic.background_noise']!r}")


register(DataSource(
    name="synthetic_video_qa", make=_synthetic_source, validate=_synthetic_validate,
    catalog=lambda config: dict(families=list(video_qa_synthetic.FAMILIES), words=[]),
    text_lengths=_synthetic_text_lengths, keys=("data.synthetic.",), skip_bad_text=False,
    tokenizer=video_qa_synthetic.tokenizer))


# ----------------------------------------------------------------------------
# video_folder: data.root + JSON/JSONL annotation files.
# ----------------------------------------------------------------------------


def _annotation_file(config, split: str) -> str:
    return config.data.train_annotations if split == "train" else config.data.eval_annotations


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


def _folder_catalog(config) -> dict[str, list[str]]:
    d = config.data
    families, words = set(), set()
    for r in _folder_records(d.root, _file_stamps(d.train_annotations, d.eval_annotations)):
        families.add(r.family)
        for text in [r.question, r.answer, *(t for qa in r.history for t in qa)]:
            words.update(tokenizer_lib.split_words(text))
    return dict(families=sorted(families), words=sorted(words))


@functools.lru_cache(maxsize=8)
def _folder_text_lengths_cached(tokenizer, template: str, root: str,
                                stamps: tuple) -> tuple[int, int]:
    return input_pipeline.text_lengths(
        tokenizer, (dict(question=r.question, answer=r.answer, history=r.history)
                    for r in _folder_records(root, stamps)), template)


def _folder_text_lengths(config, tokenizer) -> tuple[int, int]:
    d = config.data
    return _folder_text_lengths_cached(tokenizer, d.prompt_template, d.root,
                                       _file_stamps(d.train_annotations, d.eval_annotations))


def _folder_source(config, split: str, num_examples: int):
    source = video_folder.VideoFolderSource(config.data.root, _annotation_file(config, split),
                                            split=split, **_common(config, split, num_examples))
    check_bad_records(config, source.index.path, source.index.bad, source.index.num_entries)
    return source


register(DataSource(
    name="video_folder", make=_folder_source, catalog=_folder_catalog,
    text_lengths=_folder_text_lengths,
    required=("data.root", "data.train_annotations", "data.eval_annotations"),
    keys=("data.root", "data.train_annotations", "data.eval_annotations", *_SAMPLING_KEYS)))


# ----------------------------------------------------------------------------
# array_record: shards written by ``python -m data_pipelines.array_record_shards``.
# ----------------------------------------------------------------------------


def _array_record_source(config, split: str, num_examples: int):
    root = config.data.root
    info = array_record_shards.read_metadata(root)["splits"].get(split)
    if info is None:
        raise ValueError(f"config.data.root: {root} has no {split!r} shards")
    check_bad_records(config, info["annotations"], info["bad"], info["num_entries"])
    return array_record_shards.ArrayRecordVideoSource(root, split,
                                                      **_common(config, split, num_examples))


def _array_record_catalog(config) -> dict[str, list[str]]:
    meta = array_record_shards.read_metadata(config.data.root)
    return dict(families=meta["families"], words=meta["words"])


register(DataSource(
    name="array_record", make=_array_record_source, catalog=_array_record_catalog,
    text_lengths=None, required=("data.root",), keys=("data.root", *_SAMPLING_KEYS)))


# ----------------------------------------------------------------------------
# tfds: a prepared TFDS dataset (``video_folder_qa`` is prepared from data.root).
# ----------------------------------------------------------------------------


def _tfds_builder(config: ml_collections.ConfigDict):
    d = config.data
    kwargs = {}
    from data_pipelines import tfds_video_folder  # noqa: PLC0415  (TFDS: this source only)

    if d.tfds_name == tfds_video_folder.NAME and d.root:
        kwargs = dict(root=d.root, train_annotations=d.train_annotations,
                      eval_annotations=d.eval_annotations)
    return _cached_tfds_builder(d.tfds_name, d.tfds_dir, json.dumps(kwargs, sort_keys=True))


@functools.lru_cache(maxsize=4)
def _cached_tfds_builder(name: str, data_dir: str, kwargs_json: str):
    from data_pipelines import tfds_video_folder  # noqa: PLC0415  (TFDS: this source only)

    builder = tfds_video_folder.builder(name, data_dir, **json.loads(kwargs_json))
    if not builder.is_prepared():
        if not json.loads(kwargs_json):
            raise FileNotFoundError(
                f"config.data.tfds_name: {name!r} is not prepared in {builder.data_dir};"
                " prepare it with python -m data_pipelines.tfds_video_folder")
        builder.download_and_prepare()
    return builder


def _tfds_source(config, split: str, num_examples: int):
    from data_pipelines import tfds_video_folder  # noqa: PLC0415  (TFDS: this source only)

    builder = _tfds_builder(config)
    bad = builder.info.metadata.get("bad", {}).get(split, {})
    check_bad_records(config, f"{config.data.tfds_name}[{split}]", bad,
                      builder.info.splits[split].num_examples + sum(bad.values()))
    return tfds_video_folder.TfdsVideoSource(builder.as_data_source(split=split), split=split,
                                             **_common(config, split, num_examples))


def _tfds_catalog(config) -> dict[str, list[str]]:
    meta = _tfds_builder(config).info.metadata
    return dict(families=list(meta["families"]), words=list(meta["words"]))


register(DataSource(
    name="tfds", make=_tfds_source, catalog=_tfds_catalog, text_lengths=None,
    required=("data.tfds_name",),
    keys=("data.tfds_name", "data.tfds_dir", "data.root", "data.train_annotations",
          "data.eval_annotations", *_SAMPLING_KEYS)))


# ----------------------------------------------------------------------------
# latent_cache: a frozen encoder's latents of the natural-video QA set.
# ----------------------------------------------------------------------------


register(DataSource(
    name="latent_cache", make=latent_source.make_source, catalog=latent_source.catalog,
    text_lengths=latent_source.text_lengths, required=("data.root",),
    keys=("data.root", "data.latents."), skip_bad_text=False, input="latents",
    train_transform=latent_source.train_transform))
