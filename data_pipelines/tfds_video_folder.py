r"""A TensorFlow-free TFDS builder for a video folder with annotations, and its reader.

    python -m data_pipelines.tfds_video_folder --root=my_videos \
        --train_annotations=my_videos/train.jsonl --eval_annotations=my_videos/eval.jsonl \
        --data_dir=my_tfds

prepares ``video_folder_qa`` in ``my_tfds`` (ArrayRecord files, splits
``train`` and ``eval``); train with ``--config.data.name=tfds
--config.data.tfds_name=video_folder_qa --config.data.tfds_dir=my_tfds``.

``tfds.features.Video`` decodes with TensorFlow, so videos are stored as their
original encoded bytes and decoded with PyAV by the same ``ClipReader`` as the
folder and ArrayRecord sources; the dataset is read back through
``builder.as_data_source`` (random access, no TensorFlow).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import annotations as annotations_lib
from data_pipelines import tokenizer as tokenizer_lib
from data_pipelines import video_decode
from data_pipelines import video_folder

NAME = "video_folder_qa"


class VideoFolderQa(tfds.core.GeneratorBasedBuilder):
    """Video QA from a local folder: encoded video bytes plus question/answer text.

    ``root`` and the annotation files are needed to prepare the dataset, not to read it.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Encoded video bytes, question, answer, history, family."}

    def __init__(self, *, root: str | None = None, train_annotations: str = "",
                 eval_annotations: str = "", **kwargs):
        self._root = root
        self._annotation_files = {s: f for s, f in (("train", train_annotations),
                                                    ("eval", eval_annotations)) if f}
        kwargs.setdefault("file_format", "array_record")  # random access without TF
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        text = tfds.features.Text()
        return tfds.core.DatasetInfo(
            builder=self,
            description="Video question answering from a local video folder.",
            features=tfds.features.FeaturesDict({
                "video": tfds.features.Tensor(shape=(), dtype=np.object_),  # encoded bytes
                "video_path": text,
                "question": text,
                "answer": text,
                "history": text,  # JSON list of [question, answer] pairs
                "family": text,
                "where": text,
            }),
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing is downloaded
        if not self._root or not self._annotation_files:
            raise ValueError(f"{NAME}: preparing needs root= and train_annotations= /"
                             " eval_annotations= (reading a prepared copy does not)")
        indices = {s: annotations_lib.load_annotations(f, self._root)
                   for s, f in self._annotation_files.items()}
        records = [r for index in indices.values() for r in index.records]
        words = set()
        for r in records:
            for text in [r.question, r.answer, *(t for qa in r.history for t in qa)]:
                words.update(tokenizer_lib.split_words(text))
        self.info.metadata.update(
            families=sorted({r.family for r in records}), words=sorted(words),
            bad={s: index.bad for s, index in indices.items()})
        return {s: self._generate_examples(index.records) for s, index in indices.items()}

    def _generate_examples(self, records):
        for i, r in enumerate(records):
            with open(annotations_lib.resolve_video(r.video, self._root), "rb") as f:
                video = f.read()
            # Zero-padded keys: TFDS shuffles by key hash, so order is not kept;
            # examples are still identical to the folder's, record by record.
            yield f"{i:09d}", {
                "video": video, "video_path": r.video, "question": r.question,
                "answer": r.answer, "history": json.dumps([list(t) for t in r.history]),
                "family": r.family, "where": r.where,
            }


def builder(name: str, data_dir: str | None = None, **kwargs) -> tfds.core.DatasetBuilder:
    """``tfds.builder`` with this module's builder registered (importing it registers it)."""
    return tfds.builder(name, data_dir=data_dir or None, **kwargs)


class TfdsVideoSource:
    """Grain random-access source over one split of a prepared ``video_folder_qa``."""

    def __init__(self, data_source: Any, *, sampling: video_decode.FrameSampling,
                 families: Sequence[str], split: str, seed: int = 0,
                 num_examples: int | None = None):
        self._source = data_source
        n = len(data_source)
        self._len = n if num_examples is None else min(n, num_examples)
        self.split = split
        self.reader = video_folder.ClipReader(sampling, families, split=split, seed=seed)

    def __len__(self) -> int:
        return self._len

    def __repr__(self) -> str:
        return f"TfdsVideoSource(split={self.split!r}, n={len(self)})"

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not 0 <= index < self._len:
            raise IndexError(f"index {index} out of range [0, {self._len})")
        ex = self._source[index]
        text = lambda k: ex[k].decode() if isinstance(ex[k], bytes) else str(ex[k])  # noqa: E731
        record = annotations_lib.QARecord(
            video=text("video_path"), question=text("question"), answer=text("answer"),
            family=text("family"), history=tuple(tuple(t) for t in json.loads(text("history"))),
            where=text("where"))
        return self.reader.read(index, record, lambda: ex["video"], record.video)


def main(argv):
    del argv
    b = VideoFolderQa(root=FLAGS.root, train_annotations=FLAGS.train_annotations,
                      eval_annotations=FLAGS.eval_annotations, data_dir=FLAGS.data_dir)
    b.download_and_prepare()
    for split, info in b.info.splits.items():
        print(f"{split}: {info.num_examples} examples in {b.data_dir}")


if __name__ == "__main__":
    from absl import app, flags  # noqa: PLC0415

    flags.DEFINE_string("root", None, "Video folder; annotation video paths are inside it.")
    flags.DEFINE_string("train_annotations", "", "Train annotations (JSON or JSONL).")
    flags.DEFINE_string("eval_annotations", "", "Eval annotations (JSON or JSONL).")
    flags.DEFINE_string("data_dir", None, "TFDS data_dir to prepare into.")
    flags.mark_flags_as_required(["root"])
    FLAGS = flags.FLAGS
    app.run(main)
