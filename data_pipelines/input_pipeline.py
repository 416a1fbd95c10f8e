"""One Grain data path for every source: features, shuffle, per-host shard, batch.

    source -> MapDataset.source -> [shuffle] -> repeat -> map(VideoQAFeatures)
           -> (eval) pad to a multiple of the global batch | (train) trim to one
           -> slice[process_index::process_count] -> batch -> to_iter_dataset
           -> [mp_prefetch] -> map(BadInputGuard)

Any random-access source whose examples carry `frames`, `frame_mask`, `question`,
`answer`, `family` and `index` plugs in (see data_pipelines/video_qa_synthetic.py);
real-video sources add `history` (earlier turns) and `input_error` (see
data_pipelines/video_folder.py).

Bad input: an example whose video could not be decoded, or whose text does
not fit or cannot be used (`skip_bad_text`: a video placeholder inside the
question or answer, an answer of no tokens), keeps its slot with `example_valid` False, a zero
`loss_mask` and its cause in `input_error`. The flag rides in the batch through
worker processes; `BadInputGuard`, in the main process after prefetching,
counts it and stops the run with a summary once more than `max_bad_fraction`
of the examples are bad.
`iter(make_dataset(...))` is a Grain DatasetIterator: `get_state()` / `set_state()`
let the trainer checkpoint the data position with the model.
"""

from __future__ import annotations

import collections
import multiprocessing
import os
import sys
import threading
from typing import Any

import grain
import numpy as np
from absl import logging

from data_pipelines import video_decode
from data_pipelines import tokenizer as tokenizer_lib

# input_error codes carried per example: 0 is good, then decode failures, then text.
INPUT_ERRORS: tuple[str, ...] = ("none",) + video_decode.DECODE_ERRORS + ("text_too_long",
                                                                          "bad_text")
_TEXT_TOO_LONG = INPUT_ERRORS.index("text_too_long")
_BAD_TEXT = INPUT_ERRORS.index("bad_text")


class BadTextError(ValueError):
    """An example's text the model cannot take: the video placeholder inside the
    question or an answer (the video would go in twice), or an answer of no tokens."""


class BadInputError(RuntimeError):
    """More of the data was bad than ``data.max_bad_fraction`` allows."""


class VideoQAFeatures(grain.transforms.Map):
    """Example -> model features for next-token training on the answer.

    Output (per example):
      tokens        (L,) int32    [bos] + prompt + answer + [eos], then each
                                  follow-up turn (question + answer + [eos]), right-padded
      text_mask     (L,) bool     True on real tokens
      prompt_len    () int32      bos + prompt (incl. the <video> placeholder)
      loss_mask     (L,) float32  1 where tokens[i + 1] is an answer token or eos
                                  (of the question and of every follow-up)
      answer_tokens (A,) int32    answer ids, padded
      answer_len    () int32
      frames        (T, H, W, 3) uint8 (or ``latents`` (T, N, D) float16, a frozen
                                  encoder's, passed through), frame_mask (T,) bool,
                                  family () int32,
      index         () int32,
      example_valid () bool         False for a bad input (and for eval padding)
      input_error   () int32        0, or the cause's index in INPUT_ERRORS

    ``followups`` (optional ``(question, answer)`` pairs) are later turns about
    the same video, trained in the same sequence: one encoded video, several
    supervised answers. ``prompt_len`` and ``answer_tokens`` stay those of the
    first question, the one evaluation asks.

    With ``skip_bad_text`` a text longer than the limits becomes a bad input
    (``text_too_long``) instead of an error: real annotations hold the odd essay.
    """

    def __init__(self, tokenizer: tokenizer_lib.Tokenizer, max_text_len: int, max_answer_len: int,
                 template: str = tokenizer_lib.DEFAULT_TEMPLATE, skip_bad_text: bool = False):
        self.tokenizer = tokenizer
        self.max_text_len = int(max_text_len)
        self.max_answer_len = int(max_answer_len)
        self.template = template
        self.skip_bad_text = skip_bad_text

    def encode(self, element: dict[str, Any]) -> tuple[list[int], list[int], list[int], list]:
        """Text of one example -> (ids, prompt, answer, supervised ``(start, length)``).

        The one rule for how an example becomes tokens; ``text_lengths`` sizes
        ``max_text_len`` / ``max_answer_len`` with it.
        """
        tok = self.tokenizer
        index = element.get("index")
        history, followups = element.get("history", ()), element.get("followups", ())
        user_text = [element["question"], element["answer"], *(t for turn in history for t in turn),
                     *(t for turn in followups for t in turn)]
        if any(tokenizer_lib.VIDEO in t for t in user_text):
            raise BadTextError(f"example {index}: the text holds {tokenizer_lib.VIDEO}; only the"
                               " prompt template may place the video")
        text = tokenizer_lib.format_prompt(element["question"], history, self.template)
        prompt = [tok.bos_id] + tok.encode(text)
        answer = tok.encode(element["answer"])
        if not answer:
            raise BadTextError(f"example {index}: the answer encodes to no tokens:"
                               f" {element['answer']!r}")
        ids = prompt + answer + [tok.eos_id]
        supervised = [(len(prompt), len(answer))]  # (first answer token, answer length)
        for question, followup_answer in followups:
            turn = tok.encode(tokenizer_lib.format_followup(question, self.template))
            reply = tok.encode(followup_answer)
            if not reply:
                raise BadTextError(f"example {index}: a follow-up answer encodes to no tokens:"
                                   f" {followup_answer!r}")
            supervised.append((len(ids) + len(turn), len(reply)))
            ids += turn + reply + [tok.eos_id]
        if ids.count(tok.video_id) != 1:  # e.g. "<VIDEO>", which a word tokenizer lower-cases
            raise BadTextError(f"example {index}: the text encodes to the video placeholder's"
                               f" token; only the prompt template may place the video")
        return ids, prompt, answer, supervised

    def map(self, element: dict[str, Any]) -> dict[str, Any]:
        tok = self.tokenizer
        error = int(element.get("input_error", 0))
        problem, kind = None, _TEXT_TOO_LONG
        try:
            ids, prompt, answer, supervised = self.encode(element)
        except BadTextError as e:
            if not self.skip_bad_text:
                raise
            problem, kind = str(e), _BAD_TEXT
        if problem is None:
            longest = max(length for _, length in supervised)
            if longest > self.max_answer_len:
                problem = (f"answer has {longest} tokens > data.max_answer_len="
                           f"{self.max_answer_len}: {element['answer']!r}")
            elif len(ids) > self.max_text_len:
                problem = (f"text has {len(ids)} tokens > data.max_text_len="
                           f"{self.max_text_len}: {element['question']!r}")
        if problem and not self.skip_bad_text:
            raise ValueError(problem)
        if problem:
            logging.warning("Skipping example %s: %s", element.get("index"), problem)
            error = error or kind
        if error:  # a well-formed stand-in (one video placeholder) that trains nothing
            prompt, answer = [tok.bos_id, tok.video_id], []
            ids = prompt + [tok.eos_id]
            supervised = []
        n, p = len(ids), len(prompt)
        tokens = np.full((self.max_text_len,), tok.pad_id, np.int32)
        tokens[:n] = ids
        loss_mask = np.zeros((self.max_text_len,), np.float32)
        for start, length in supervised:
            loss_mask[start - 1 : start + length] = 1.0  # predicts answer tokens and eos
        answer_tokens = np.full((self.max_answer_len,), tok.pad_id, np.int32)
        answer_tokens[: len(answer)] = answer
        video = ({"latents": np.asarray(element["latents"], np.float16)} if "latents" in element
                 else {"frames": np.asarray(element["frames"], np.uint8)})
        return {
            **video,
            "tokens": tokens,
            "text_mask": np.arange(self.max_text_len) < n,
            "prompt_len": np.int32(p),
            "loss_mask": loss_mask,
            "answer_tokens": answer_tokens,
            "answer_len": np.int32(len(answer)),
            "frame_mask": np.asarray(element["frame_mask"], bool),
            "family": np.int32(element["family"]),
            "index": np.int32(element["index"]),
            "example_valid": np.bool_(not error),
            "input_error": np.int32(error),
        }


def text_lengths(tokenizer: tokenizer_lib.Tokenizer, texts, template: str
                 ) -> tuple[int, int]:
    """The longest token sequence and answer of ``texts`` (dicts with ``question``,
    ``answer``, optional ``history`` / ``followups``), encoded as ``VideoQAFeatures`` does.

    Texts the model cannot take (``BadTextError``) do not size anything: they become
    counted bad inputs when the pipeline reads them."""
    features = VideoQAFeatures(tokenizer, 0, 0, template)
    text, answer = 0, 0
    for element in texts:
        try:
            ids, _, _, supervised = features.encode(element)
        except BadTextError:
            continue
        text = max(text, len(ids))
        answer = max(answer, *(length for _, length in supervised))
    return text, answer


def exit_with_parent(worker_index: int, worker_count: int) -> None:
    """Grain worker start-up: the worker ends as soon as the process that spawned it ends.

    A trainer stopped by SIGKILL (or the OOM killer) cannot stop its workers, and
    they would live on as orphans holding memory and open files. The parent's
    sentinel (a pipe ``multiprocessing`` keeps for every spawned child) turns ready
    when the parent is gone, however it died.
    """
    del worker_index, worker_count
    parent = multiprocessing.parent_process()
    if parent is None:  # not a spawned child: nothing to watch
        return

    def watch() -> None:
        parent.join()
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


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
        element["input_error"] = np.int32(0)  # a copy: its original is counted once
        return element


class BadInputGuard(grain.transforms.Map):
    """Counts bad inputs per batch (main process) and stops above ``max_fraction``.

    The allowance is ``max_fraction`` of the examples seen so far, but never
    less than ``max_fraction`` of one pass over this host's share of the data
    (``examples_per_epoch``): a bad file early in a run does not end it, a
    mostly broken dataset does, before the first epoch is over. Counts are of
    this process since it started.
    """

    def __init__(self, max_fraction: float, examples_per_epoch: int, name: str):
        self.max_fraction = float(max_fraction)
        self.examples_per_epoch = int(examples_per_epoch)
        self.name = name
        self.seen = 0
        self.bad: collections.Counter[str] = collections.Counter()

    def map(self, batch: dict[str, Any]) -> dict[str, Any]:
        errors = np.asarray(batch["input_error"])
        real = np.asarray(batch["example_valid"]) | (errors > 0)  # not eval padding
        self.seen += int(real.sum())
        for code in errors[errors > 0]:
            self.bad[INPUT_ERRORS[int(code)]] += 1
        num_bad = sum(self.bad.values())
        if num_bad > self.max_fraction * max(self.seen, self.examples_per_epoch):
            raise BadInputError(
                f"{self.name}: {num_bad} of {self.seen} examples read were bad ({dict(self.bad)});"
                f" more than data.max_bad_fraction={self.max_fraction} of"
                f" max({self.seen}, {self.examples_per_epoch}) allows. The warnings above name"
                " each file and annotation line.")
        if errors.any():
            logging.warning("%s: %d bad inputs so far in %d examples (%s)", self.name, num_bad,
                            self.seen, dict(self.bad))
        return batch


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
    template: str = tokenizer_lib.DEFAULT_TEMPLATE,
    skip_bad_text: bool = False,
    max_bad_fraction: float = 0.0,
    train_transform: grain.transforms.RandomMap | None = None,
) -> grain.IterDataset:
    """Builds this host's batched Grain IterDataset.

    Train (split == 'train'): batches of global_batch_size // process_count, the
    last partial one dropped; with finite epochs every host gets the same number
    of batches. Eval (any other split, usually shuffle=False, num_epochs=1): every
    example exactly once across hosts; the tail is padded with copies marked
    example_valid=False so all batches (and all hosts) have the same shape/count.

    Batches are dicts of numpy arrays with a leading (global_batch_size //
    process_count) axis; see VideoQAFeatures for the keys. Bad inputs (see the
    module docstring) end the iteration with ``BadInputError`` once more than
    ``max_bad_fraction`` of the examples are bad. ``train_transform`` (training only) is
    a random map over the source's records, seeded by ``seed`` and each read's position,
    so every epoch draws anew and a resumed run draws what it would have.
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

    num_source = len(source)
    ds = grain.MapDataset.source(source)
    if shuffle:
        ds = ds.shuffle(seed=seed)  # same seed on every host: slicing stays a partition
    ds = ds.repeat(num_epochs)  # reshuffles each epoch
    if training and train_transform is not None:
        ds = ds.random_map(train_transform, seed=seed)
    ds = ds.map(VideoQAFeatures(tokenizer, max_text_len, max_answer_len, template, skip_bad_text))
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
            ),
            worker_init_fn=exit_with_parent,
        )
    # After prefetching: runs in the main process, so it sees every worker's batches.
    return it.map(BadInputGuard(max_bad_fraction, -(-num_source // process_count), split))
