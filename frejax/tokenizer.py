"""Tokenizers: a small protocol plus the built-in word-level benchmark tokenizer.

Any tokenizer (this one, SentencePiece, a Hugging Face one) that implements
`Tokenizer` can drive the input pipeline and the model: it must map text to ids
and back and name the ids of <pad>, <bos>, <eos> and the <video> placeholder.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

PAD, BOS, EOS, VIDEO, UNK = "<pad>", "<bos>", "<eos>", "<video>", "<unk>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, VIDEO, UNK)  # ids 0..4
# Words of the chat template itself.
TEMPLATE_WORDS: tuple[str, ...] = ("question", "answer", ":")

# A special token, a run of letters/digits/apostrophes, or one punctuation mark.
_WORD_RE = re.compile(r"<[a-z_]+>|[a-z0-9']+|[^\sa-z0-9']")


def format_prompt(question: str) -> str:
    """Chat template: the video placeholder (exactly once), the question, a cue.

    >>> format_prompt("what color was the flash")
    '<video> question : what color was the flash answer :'
    """
    if VIDEO in question:
        raise ValueError(f"question must not contain {VIDEO}: {question!r}")
    return f"{VIDEO} question : {question.strip()} answer :"


@runtime_checkable
class Tokenizer(Protocol):
    """What the pipeline and model need from a tokenizer."""

    @property
    def vocab_size(self) -> int: ...

    @property
    def pad_id(self) -> int: ...

    @property
    def bos_id(self) -> int: ...

    @property
    def eos_id(self) -> int: ...

    @property
    def video_id(self) -> int: ...

    def encode(self, text: str) -> list[int]:
        """Text -> ids, without bos/eos."""
        ...

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text; stops at the first eos, skips pad (and bos)."""
        ...


def split_words(text: str) -> list[str]:
    """Lower-cases and splits into words and single punctuation marks."""
    return _WORD_RE.findall(text.lower())


class WordTokenizer:
    """Word-level tokenizer over a fixed vocabulary (specials first, ids 0..4)."""

    def __init__(self, words: Sequence[str]):
        vocab = list(SPECIAL_TOKENS)
        for w in words:
            if w not in vocab:
                vocab.append(w)
        self._vocab = tuple(vocab)
        self._ids = {w: i for i, w in enumerate(self._vocab)}

    @property
    def vocab(self) -> tuple[str, ...]:
        return self._vocab

    @property
    def vocab_size(self) -> int:
        return len(self._vocab)

    @property
    def pad_id(self) -> int:
        return self._ids[PAD]

    @property
    def bos_id(self) -> int:
        return self._ids[BOS]

    @property
    def eos_id(self) -> int:
        return self._ids[EOS]

    @property
    def video_id(self) -> int:
        return self._ids[VIDEO]

    @property
    def unk_id(self) -> int:
        return self._ids[UNK]

    def encode(self, text: str) -> list[int]:
        unk = self.unk_id
        return [self._ids.get(w, unk) for w in split_words(text)]

    def decode(self, ids: Iterable[int]) -> str:
        words = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i in (self.pad_id, self.bos_id):
                continue
            words.append(self._vocab[i] if 0 <= i < len(self._vocab) else UNK)
        return " ".join(words)

    def __repr__(self) -> str:
        return f"WordTokenizer(vocab_size={self.vocab_size})"


def benchmark_tokenizer() -> WordTokenizer:
    """The word tokenizer for `data_pipelines.video_qa_synthetic` (fixed vocab)."""
    from data_pipelines import video_qa_synthetic  # pylint: disable=g-import-not-at-top

    return WordTokenizer(TEMPLATE_WORDS + tuple(video_qa_synthetic.vocabulary()))
