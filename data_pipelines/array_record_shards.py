r"""A video folder + annotations -> ArrayRecord shards, and the Grain source that reads them.

    python -m data_pipelines.array_record_shards --root=my_videos \
        --train_annotations=my_videos/train.jsonl --eval_annotations=my_videos/eval.jsonl \
        --output=my_shards --num_shards=8

writes ``my_shards/{train,eval}-NNNNN-of-MMMMM.array_record`` and
``my_shards/metadata.json`` (families, vocabulary words, counts). Train on them
with ``--config.data.name=array_record --config.data.root=my_shards``.

Each record holds the original encoded video bytes (no re-encoding, so no
quality loss and no size blow-up) after a small JSON header with the question,
answer, history, family and source line. Records keep the annotation order
(shard k holds a contiguous run), so example ``i`` of the shards is example
``i`` of the folder, decoded by the same ``ClipReader``: converting, then
training gives the same examples as reading the folder directly. Annotation
problems are skipped (and counted in the metadata) at conversion; decode
problems surface at read time, as for the folder.
"""

from __future__ import annotations

import glob
import json
import os
import struct
from collections.abc import Sequence
from typing import Any

import grain
import tqdm
from absl import logging

from data_pipelines import annotations as annotations_lib
from data_pipelines import tokenizer as tokenizer_lib
from data_pipelines import video_decode, video_folder

_MAGIC = b"FXV1"
METADATA = "metadata.json"


def encode_record(record: annotations_lib.QARecord, video: bytes) -> bytes:
    """``MAGIC | uint32 header length | JSON header | encoded video bytes``."""
    header = json.dumps(dict(
        video=record.video, question=record.question, answer=record.answer,
        family=record.family, history=[list(t) for t in record.history], where=record.where,
    )).encode()
    return _MAGIC + struct.pack("<I", len(header)) + header + video


def decode_record(raw: bytes) -> tuple[annotations_lib.QARecord, bytes]:
    if raw[:4] != _MAGIC:
        raise ValueError(f"not a frejax video record (starts with {raw[:4]!r})")
    (n,) = struct.unpack("<I", raw[4:8])
    h = json.loads(raw[8:8 + n])
    record = annotations_lib.QARecord(
        video=h["video"], question=h["question"], answer=h["answer"], family=h["family"],
        history=tuple(tuple(t) for t in h["history"]), where=h["where"])
    return record, raw[8 + n:]


def shard_paths(directory: str, split: str) -> list[str]:
    return sorted(glob.glob(os.path.join(directory, f"{split}-*-of-*.array_record")))


def read_metadata(directory: str) -> dict[str, Any]:
    path = os.path.join(directory, METADATA)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} not found: is {directory} an output of data_pipelines.array_record_shards?")
    with open(path) as f:
        return json.load(f)


def convert(root: str, annotation_files: dict[str, str], output: str, num_shards: int = 1,
            progress: bool = True) -> dict[str, Any]:
    """Writes one set of shards per split (``{"train": file, "eval": file}``) and the metadata."""
    from array_record.python import array_record_module  # noqa: PLC0415  (writer: here only)

    os.makedirs(output, exist_ok=True)
    meta = dict(format=1, splits={}, families=set(), words=set())
    for split, path in annotation_files.items():
        index = annotations_lib.load_annotations(path, root)
        records = index.records
        for old in shard_paths(output, split):
            os.remove(old)
        n = len(records)
        shards = max(1, min(num_shards, n))
        bounds = [round(k * n / shards) for k in range(shards + 1)]
        bar = tqdm.tqdm(total=n, desc=f"{split} -> {output}", unit="clip", disable=not progress)
        written = missing = 0
        for k in range(shards):
            name = os.path.join(output, f"{split}-{k:05d}-of-{shards:05d}.array_record")
            # group_size 1: every record is its own chunk, the fastest random access.
            writer = array_record_module.ArrayRecordWriter(name, "group_size:1")
            for r in records[bounds[k]:bounds[k + 1]]:
                bar.update(1)
                try:
                    with open(annotations_lib.resolve_video(r.video, root), "rb") as f:
                        video = f.read()
                except (OSError, annotations_lib.AnnotationError) as e:
                    logging.warning("Skipping %s (annotation %s): %s", r.video, r.where, e)
                    missing += 1
                    continue
                writer.write(encode_record(r, video))
                written += 1
                meta["families"].add(r.family)
                for text in [r.question, r.answer, *(t for qa in r.history for t in qa)]:
                    meta["words"].update(tokenizer_lib.split_words(text))
            writer.close()
        bar.close()
        bad = dict(index.bad)
        if missing:
            bad["missing_video"] = bad.get("missing_video", 0) + missing
        meta["splits"][split] = dict(num_examples=written, num_shards=shards,
                                     num_entries=index.num_entries, bad=bad, annotations=path)
    meta["families"] = sorted(meta["families"])
    meta["words"] = sorted(meta["words"])
    with open(os.path.join(output, METADATA), "w") as f:
        json.dump(meta, f, indent=1)
    return meta


class ArrayRecordVideoSource:
    """Grain random-access source over the shards of one split; examples as ``ClipReader``'s."""

    def __init__(self, directory: str, split: str, *, sampling: video_decode.FrameSampling,
                 families: Sequence[str], seed: int = 0, num_examples: int | None = None):
        paths = shard_paths(directory, split)
        if not paths:
            raise FileNotFoundError(f"no {split}-*.array_record shards in {directory}")
        self.directory, self.split = directory, split
        self._source = grain.sources.ArrayRecordDataSource(paths)
        n = len(self._source)
        self._len = n if num_examples is None else min(n, num_examples)
        self.reader = video_folder.ClipReader(sampling, families, split=split, seed=seed)

    def __len__(self) -> int:
        return self._len

    def __repr__(self) -> str:
        return f"ArrayRecordVideoSource({self.directory!r}, split={self.split!r}, n={len(self)})"

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not 0 <= index < self._len:
            raise IndexError(f"index {index} out of range [0, {self._len})")
        record, video = decode_record(self._source[index])
        return self.reader.read(index, record, lambda: video, record.video)


def main(argv):
    del argv
    files = {s: f for s, f in (("train", FLAGS.train_annotations),
                               ("eval", FLAGS.eval_annotations)) if f}
    if not files:
        raise app.UsageError("give --train_annotations and/or --eval_annotations")
    meta = convert(FLAGS.root, files, FLAGS.output, FLAGS.num_shards)
    for split, info in meta["splits"].items():
        print(f"{split}: {info['num_examples']} examples in {info['num_shards']} shards"
              f" ({sum(info['bad'].values())} records skipped: {info['bad']})")


if __name__ == "__main__":
    from absl import app, flags  # noqa: PLC0415

    flags.DEFINE_string("root", None, "Video folder; annotation video paths are inside it.")
    flags.DEFINE_string("train_annotations", "", "Train annotations (JSON or JSONL).")
    flags.DEFINE_string("eval_annotations", "", "Eval annotations (JSON or JSONL).")
    flags.DEFINE_string("output", None, "Folder for the shards and metadata.json.")
    flags.DEFINE_integer("num_shards", 1, "Shards per split.")
    flags.mark_flags_as_required(["root", "output"])
    FLAGS = flags.FLAGS
    app.run(main)
