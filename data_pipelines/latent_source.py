"""A finished latent cache as a data source: ``config.data.name = "latent_cache"``.

A cache folder (written by ``frejax.studies.latent_cache.build``) holds a frozen
encoder's latents of every planned natural-video QA example; this module reads
it for the one Grain chain of ``input_pipeline``, so ``python -m frejax.main``
trains on it like on any other source:

* every latent dimension is standardised by the training split's statistics (a
  frozen encoder's features differ in scale by dimension; a linear probe would
  do the same), computed once per cache;
* training examples of the temporal families (direction, speed, freeze, order)
  are redrawn from the training clips' frame latents every time they are read
  (``data.latents.redraw``): same question and answer, a new stretch of footage
  (``Redraw``, a Grain random map seeded per read position);
* the text is the question with its options rendered as for every multiple-choice
  source, the answer its letter; the word vocabulary is the cache's own.

Layout of a cache folder::

    manifest.json              settings, footage, grid, width, counts per split
    <split>_latents.npy        (examples, T, N, D) float16 (train, eval; a dense-video
                               cache: train, select, test)
    <split>.jsonl              per example: family, question, options, answer, source
    footage_<i>.npy            (frames, N, D) float16: every frame of clip i (sorted by name)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any

import grain
import numpy as np

from data_pipelines import annotations as annotations_lib
from data_pipelines import input_pipeline
from data_pipelines import natural_video_qa as qa
from data_pipelines import tokenizer as tokenizer_lib


@dataclasses.dataclass
class Split:
    latents: np.ndarray          # (E, T, N, D) float16, memory-mapped
    examples: list[dict[str, Any]]


def manifest(folder: str) -> dict:
    path = os.path.join(folder, "manifest.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"config.data.root: {folder} is no finished latent cache (no manifest.json); build"
            " one with python -m frejax.studies.natural_qa --part=cache")
    with open(path) as f:
        return json.load(f)


def load(folder: str, split: str) -> Split:
    """One split of a finished cache folder."""
    path = os.path.join(folder, f"{split}_latents.npy")
    if not os.path.isfile(os.path.join(folder, "manifest.json")) or not os.path.isfile(path):
        raise FileNotFoundError(f"latent_cache: {folder} holds no finished {split!r} split")
    with open(os.path.join(folder, f"{split}.jsonl")) as f:
        examples = [json.loads(line) for line in f]
    latents = np.load(path, mmap_mode="r")
    if len(latents) != len(examples):
        raise ValueError(f"latent_cache: {path} has {len(latents)} rows but"
                         f" {split}.jsonl has {len(examples)} examples")
    return Split(latents, examples)


def footage_latents(folder: str, clip: str) -> np.ndarray:
    """Every frame's latents ``(frames, N, D)`` of one footage clip of a cache."""
    return np.load(os.path.join(folder, f"footage_{manifest(folder)['clips'].index(clip)}.npy"))


# ----------------------------------------------------------------------------
# The cache as model inputs.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Standardise:
    """Per-dimension ``(x - mean) / scale`` by the training split's statistics."""

    mean: np.ndarray   # (D,) float64
    scale: np.ndarray  # (D,) float64

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, np.float32) - self.mean) / self.scale).astype(np.float16)


@functools.lru_cache(maxsize=4)
def _opened(folder: str, stamp: float) -> tuple[dict, dict[str, Split], Standardise, tuple]:
    """Manifest, both splits, the standardisation and the rendered texts of a cache (once)."""
    del stamp  # part of the key: a rebuilt cache is read again
    info = manifest(folder)
    splits = {s: load(folder, s) for s in info["splits"]}
    train = splits["train"].latents
    d = train.shape[-1]
    total, square, count = np.zeros(d), np.zeros(d), 0
    for start in range(0, len(train), 256):
        x = np.asarray(train[start:start + 256], np.float64).reshape(-1, d)
        total, square, count = total + x.sum(0), square + (x * x).sum(0), count + len(x)
    mean = total / count
    scale = np.sqrt(np.maximum(square / count - mean * mean, 1e-12))
    texts = {s: tuple(annotations_lib.render_multiple_choice(ex["question"], ex["options"],
                                                             ex["answer"])
                      for ex in split.examples) for s, split in splits.items()}
    return info, splits, Standardise(mean, scale), texts


def open_cache(folder: str) -> tuple[dict, dict[str, Split], Standardise, dict]:
    path = os.path.join(folder, "manifest.json")
    return _opened(os.path.abspath(folder), os.stat(path).st_mtime if os.path.isfile(path)
                   else 0.0)


class LatentCacheSource:
    """One split of a cache as records ``{latents, frame_mask, question, answer, family, index}``."""

    def __init__(self, folder: str, split: str, num_examples: int | None = None):
        info, splits, self.standardise, texts = open_cache(folder)
        self.split = splits[split]
        self.texts = texts[split]
        self.families = tuple(info["spec"]["families"])
        self.num_frames = self.split.latents.shape[1]
        self._len = len(self.split.examples) if not num_examples else \
            min(num_examples, len(self.split.examples))

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> dict[str, Any]:
        ex = self.split.examples[index]
        question, answer = self.texts[index]
        return dict(latents=self.standardise(self.split.latents[index]),
                    frame_mask=np.ones((self.num_frames,), bool), question=question,
                    answer=answer, family=self.families.index(ex["family"]), index=index,
                    option=int("ABCD".index(ex["answer"])))


class Redraw(grain.transforms.RandomMap):
    """Temporal training examples drawn afresh from the training clips' frame latents: the
    same family and answer, a new window of footage, every time a row is read."""

    def __init__(self, folder: str):
        info, _, standardise, _ = open_cache(folder)
        self.footage = [standardise(footage_latents(folder, c))
                        for c in info["splits"]["train"]["videos"]]
        self.families = tuple(info["spec"]["families"])
        self.frames, self.size = int(info["spec"]["frames"]), int(info["spec"]["size"])

    def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        family = self.families[int(element["family"])]
        if family not in qa.TEMPORAL_FAMILIES:
            return element
        need = self.frames * 4 if family == "speed" else 2 * self.frames
        usable = [v for v, f in enumerate(self.footage) if len(f) >= need]
        video = int(rng.choice(usable))
        ex = qa.plan_one(family, element["option"], video, len(self.footage[video]),
                         self.frames, self.size, rng)
        return dict(element, latents=self.footage[video][np.asarray(ex.frames)])


# ----------------------------------------------------------------------------
# The ``latent_cache`` entry of ``data_pipelines.sources``.
# ----------------------------------------------------------------------------


def check_config(config: Any) -> dict:
    """The cache's manifest, after checking the config's geometry against it by key."""
    info = manifest(config.data.root)
    spec, vision = info["spec"], config.model.vision
    for key, have, want in (("data.num_frames", config.data.num_frames, spec["frames"]),
                            ("data.image_size", config.data.image_size, spec["size"]),
                            ("model.vision.latent_grid", tuple(vision.latent_grid),
                             tuple(info["grid"])),
                            ("model.vision.width", vision.width, info["width"])):
        if have != want:
            raise ValueError(f"config.{key} ({have}) does not match the latent cache"
                             f" {config.data.root} ({want})")
    return info


def make_source(config: Any, split: str, num_examples: int) -> Any:
    """``split`` train, or eval: the cache's ``data.latents.eval_split`` (a dense-video
    cache holds ``select`` and ``test``)."""
    info = check_config(config)
    if split == "train":
        return LatentCacheSource(config.data.root, "train")
    name = config.data.latents.eval_split
    if name not in info["splits"] or name == "train":
        raise ValueError(f"config.data.latents.eval_split: {name!r} is not an evaluation split"
                         f" of the latent cache {config.data.root} (it has"
                         f" {sorted(set(info['splits']) - {'train'})})")
    return LatentCacheSource(config.data.root, name, num_examples)


def train_transform(config: Any) -> grain.transforms.RandomMap | None:
    """The training split's redraw of temporal examples (``data.latents.redraw``)."""
    return Redraw(config.data.root) if config.data.latents.redraw else None


def catalog(config: Any) -> dict[str, list[str]]:
    info, _, _, texts = open_cache(config.data.root)
    words = sorted({w for split in texts.values() for pair in split for t in pair
                    for w in tokenizer_lib.split_words(t)})
    return dict(families=list(info["spec"]["families"]), words=words)


def text_lengths(config: Any, tokenizer: Any) -> tuple[int, int]:
    _, _, _, texts = open_cache(config.data.root)
    return input_pipeline.text_lengths(
        tokenizer, (dict(question=q, answer=a) for split in texts.values() for q, a in split),
        config.data.prompt_template)
