"""A folder of video files plus an annotation file, as a Grain random-access source.

    source = VideoFolderSource("my_videos", "my_videos/train.jsonl",
                               sampling=FrameSampling(num_frames=16, image_size=224),
                               families=("all",), split="train", seed=0)
    source[3]  # {"frames": (16, 224, 224, 3) uint8, "frame_mask": (16,) bool, ...}

The annotation file is parsed and checked once, when the source is built
(``annotations.load_annotations``); videos are decoded with PyAV at read time,
inside the Grain map (so in worker processes when there are any).

A video that cannot be decoded does not stop the run: its example comes back
with zero frames and ``input_error`` set to the cause's code (1 + its position
in ``video_decode.DECODE_ERRORS``) after a warning naming the file and the
annotation line. The flag travels with the example through batching and
worker processes, so the main process counts bad inputs exactly and
deterministically, and checkpoint/resume need no extra counter state.
``ClipReader`` holds that logic for every source that stores encoded videos
(this folder, ArrayRecord shards, TFDS).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from absl import logging

from data_pipelines import annotations as annotations_lib
from data_pipelines import video_decode


def input_error_code(kind: str) -> int:
    """0 is a good example; decode failures are 1 + their index in ``DECODE_ERRORS``."""
    return 1 + video_decode.DECODE_ERRORS.index(kind)


class ClipReader:
    """(index, record, encoded bytes) -> example dict; bad videos become flagged examples.

    Example (dict):
      frames       (T, S, S, 3) uint8 (zeros past the clip, or for a bad video)
      frame_mask   (T,) bool (a bad video: one valid black frame)
      question     str, answer str, history tuple of (question, answer) pairs
      family       int, index into ``families``
      index        int
      input_error  int, 0 or a decode error code (see ``input_error_code``)
    """

    def __init__(self, sampling: video_decode.FrameSampling, families: Sequence[str],
                 *, split: str, seed: int):
        self.sampling = sampling
        self.families = tuple(families)
        self._family_ids = {f: i for i, f in enumerate(self.families)}
        # Dense windows move per example in training and sit in the middle for eval.
        self._random_windows = split == "train"
        self._seed = int(seed)

    def family_id(self, family: str) -> int:
        if family not in self._family_ids:
            raise ValueError(f"family {family!r} is not one of {self.families}")
        return self._family_ids[family]

    def read(self, index: int, record: annotations_lib.QARecord,
             read_bytes: Callable[[], bytes], name: str) -> dict[str, Any]:
        window_seed = None
        if self._random_windows:
            window_seed = zlib.crc32(f"{self._seed}/{index}".encode())
        error = 0
        try:
            frames, mask = video_decode.decode_video(_read(read_bytes, name), self.sampling,
                                                     window_seed)
        except video_decode.VideoDecodeError as e:
            logging.warning("Skipping video %s (annotation %s): %s", name, record.where, e)
            error = input_error_code(e.kind)
            t, s = self.sampling.num_frames, self.sampling.image_size
            # One black frame marked valid: the model sees a well-defined (if empty)
            # clip, and the zero loss mask set downstream keeps it out of training.
            frames, mask = np.zeros((t, s, s, 3), np.uint8), np.arange(t) < 1
        return {
            "frames": frames,
            "frame_mask": mask,
            "question": record.question,
            "answer": record.answer,
            "history": record.history,
            "family": self.family_id(record.family),
            "index": int(index),
            "input_error": error,
        }


def _read(read_bytes: Callable[[], bytes], name: str) -> bytes:
    try:
        return read_bytes()
    except OSError as e:
        raise video_decode.VideoDecodeError("unreadable_file", f"{name}: {e}") from None


class VideoFolderSource:
    """Grain random-access source over the usable records of one annotation file."""

    def __init__(self, root: str, annotation_file: str, *,
                 sampling: video_decode.FrameSampling, families: Sequence[str],
                 split: str, seed: int = 0, num_examples: int | None = None):
        self.root = root
        self.index = annotations_lib.load_annotations(annotation_file, root)
        records = self.index.records
        if num_examples is not None:
            records = records[:num_examples]
        if not records:
            raise ValueError(f"{annotation_file}: no usable records"
                             f" (skipped {self.index.num_bad}: {self.index.bad})")
        self.records = records
        self.split = split
        self.reader = ClipReader(sampling, families, split=split, seed=seed)
        for r in records:  # unknown families fail now, not in a worker
            self.reader.family_id(r.family)

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return (f"VideoFolderSource(root={self.root!r}, annotations={self.index.path!r},"
                f" n={len(self)}, split={self.split!r})")

    def video_path(self, index: int) -> str:
        return annotations_lib.resolve_video(self.records[index].video, self.root)

    def read_bytes(self, index: int) -> bytes:
        """The encoded video of example ``index`` (what the ArrayRecord converter stores)."""
        with open(self.video_path(index), "rb") as f:
            return f.read()

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        record = self.records[index]

        def read_bytes():
            try:
                return self.read_bytes(index)
            except annotations_lib.AnnotationError as e:  # the file vanished since indexing
                raise OSError(str(e)) from None

        return self.reader.read(index, record, read_bytes, record.video)
