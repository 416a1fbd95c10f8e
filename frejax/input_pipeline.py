"""One Grain data path for every source: features, shuffle, per-host shard, batch.

    source -> MapDataset.source -> [shuffle] -> repeat -> map(VideoQAFeatures)
           -> (eval) pad to a multiple of the global batch | (train) trim to one
           -> slice[process_index::process_count] -> batch -> to_iter_dataset
           -> [mp_prefetch]

Any random-access source whose examples carry `frames`, `frame_mask`, `question`,
`answer`, `family` and `index` plugs in (see data_pipelines/video_qa_synthetic.py).
`iter(make_dataset(...))` is a Grain DatasetIterator: `get_state()` / `set_state()`
let the trainer checkpoint the data position with the model.
"""

from __future__ import annotations

import sys
from typing import Any

import grain
import numpy as np

from frejax import tokenizer as tokenizer_lib


class VideoQAFeatures(grain.transforms.Map):
    """Example -> model features for next-token training on the answer.

    Output (per example):
      tokens        (L,) int32    [bos] + prompt + answer + [eos], right-padded
      text_mask     (L,) bool     True on real tokens
      prompt_len    () int32      bos + prompt (incl. the <video> placeholder)
      loss_mask     (L,) float32  1 where tokens[i + 1] is an answer token or eos
      answer_tokens (A,) int32    answer ids, padded
      answer_len    () int32
      frames        (T, H, W, 3) uint8, frame_mask (T,) bool, family () int32,
      index         () int32, example_valid () bool (True)
    """

    def __init__(self, tokenizer: tokenizer_lib.Tokenizer, max_text_len: int, max_answer_len: int):
        self.tokenizer = tokenizer
        self.max_text_len = int(max_text_len)
        self.max_answer_len = int(max_answer_len)

    def map(self, element: dict[str, Any]) -> dict[str, Any]:
        tok = self.tokenizer
        prompt = [tok.bos_id] + tok.encode(tokenizer_lib.format_prompt(element["question"]))
        if prompt.count(tok.video_id) != 1:
            raise ValueError(f"prompt must hold exactly one video placeholder: {prompt}")
        answer = tok.encode(element["answer"])
        if not answer:
            raise ValueError(f"empty answer for example {element.get('index')}")
        if len(answer) > self.max_answer_len:
            raise ValueError(
                f"answer has {len(answer)} tokens > data.max_answer_len="
                f"{self.max_answer_len}: {element['answer']!r}"
            )
        ids = prompt + answer + [tok.eos_id]
        if len(ids) > self.max_text_len:
            raise ValueError(
                f"text has {len(ids)} tokens > data.max_text_len="
                f"{self.max_text_len}: {element['question']!r}"
            )
        n, p = len(ids), len(prompt)
        tokens = np.full((self.max_text_len,), tok.pad_id, np.int32)
        tokens[:n] = ids
        loss_mask = np.zeros((self.max_text_len,), np.float32)
        loss_mask[p - 1 : p + len(answer)] = 1.0  # predicts answer tokens and eos
        answer_tokens = np.full((self.max_answer_len,), tok.pad_id, np.int32)
        answer_tokens[: len(answer)] = answer
        return {
            "tokens": tokens,
            "text_mask": np.arange(self.max_text_len) < n,
            "prompt_len": np.int32(p),
            "loss_mask": loss_mask,
            "answer_tokens": answer_tokens,
            "answer_len": np.int32(len(answer)),
            "frames": np.asarray(element["frames"], np.uint8),
            "frame_mask": np.asarray(element["frame_mask"], bool),
            "family": np.int32(element["family"]),
            "index": np.int32(element["index"]),
            "example_valid": np.bool_(True),
        }


class _PadToMultiple(grain.MapDataset):
    """Pads a finite dataset to a multiple of `multiple` with invalid copies.

    Copies have example_valid=False and a zero loss_mask, so shapes stay static
    and metrics that honour either flag ignore them.
    """

    _MUTATES_ELEMENT_SPEC = False

    def __init__(self, parent: grain.MapDataset, multiple: int):
        super().__init__(parent)
        self._n = len(parent)
        if self._n == 0:
            raise ValueError("cannot pad an empty dataset")
        self._length = -(-self._n // multiple) * multiple

    def __len__(self) -> int:
        return self._length

    def __str__(self) -> str:
        return f"_PadToMultiple(length={self._length})"

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        if index >= self._length:
            raise IndexError(index)
        if index < self._n:
            return self._parent[index]
        element = dict(self._parent[index % self._n])
        element["example_valid"] = np.bool_(False)
        element["loss_mask"] = np.zeros_like(element["loss_mask"])
        return element


def make_dataset(
    source: Any,
    *,
    tokenizer: tokenizer_lib.Tokenizer,
    global_batch_size: int,
    max_text_len: int,
    max_answer_len: int,
    split: str,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    shuffle: bool = True,
    num_epochs: int | None = None,
    worker_count: int = 0,
    worker_buffer_size: int = 1,
    read_threads: int = 1,
    prefetch_buffer_size: int = 2,
) -> grain.IterDataset:
    """Builds this host's batched Grain IterDataset.

    Train (split == 'train'): batches of global_batch_size // process_count, the
    last partial one dropped; with finite epochs every host gets the same number
    of batches. Eval (any other split, usually shuffle=False, num_epochs=1): every
    example exactly once across hosts; the tail is padded with copies marked
    example_valid=False so all batches (and all hosts) have the same shape/count.

    Batches are dicts of numpy arrays with a leading (global_batch_size //
    process_count) axis; see VideoQAFeatures for the keys.
    """
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(
            f"process_index={process_index} must be in [0, process_count={process_count})"
        )
    if global_batch_size <= 0 or global_batch_size % process_count:
        raise ValueError(
            f"data.global_batch_size={global_batch_size} must be a "
            f"positive multiple of process_count={process_count}"
        )
    training = split == "train"
    per_host = global_batch_size // process_count

    ds = grain.MapDataset.source(source)
    if shuffle:
        ds = ds.shuffle(seed=seed)  # same seed on every host: slicing stays a partition
    ds = ds.repeat(num_epochs)  # reshuffles each epoch
    ds = ds.map(VideoQAFeatures(tokenizer, max_text_len, max_answer_len))
    n = len(ds)
    if n < sys.maxsize:  # finite: make all hosts see the same batch count
        if training:
            if n < global_batch_size:
                raise ValueError(
                    f"{n} training examples < data.global_batch_size={global_batch_size}"
                )
            ds = ds.slice(slice(0, n - n % global_batch_size))
        else:
            ds = _PadToMultiple(ds, global_batch_size)
    ds = ds.slice(slice(process_index, None, process_count))
    ds = ds.batch(per_host, drop_remainder=training)
    it = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch_buffer_size)
    )
    if worker_count > 0:
        it = it.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=worker_count, per_worker_buffer_size=worker_buffer_size
            )
        )
    return it
