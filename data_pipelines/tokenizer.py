"""Tokenizers: a small protocol, word-level tokenizers, SentencePiece and HF files.

Any tokenizer that implements `Tokenizer` can drive the input pipeline and the
model: it must map text to ids and back and name the ids of <pad>, <bos>, <eos>
and the <video> placeholder. Shipped here:

  WordTokenizer           fixed word vocabulary: the benchmark's
                          (`video_qa_synthetic.tokenizer`) or a dataset's own
                          (`word_tokenizer_for`), for models trained from scratch;
  SentencePieceTokenizer  a local `.model` file (Gemma, Llama 2, T5 ...);
  HuggingFaceTokenizer    a local `tokenizer.json` (Qwen, Llama 3 ...).

`format_prompt` is the chat template: `<video>` exactly once, then the question.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

PAD, BOS, EOS, VIDEO, UNK = "<pad>", "<bos>", "<eos>", "<video>", "<unk>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, VIDEO, UNK)  # ids 0..4
# Words of the chat template itself.
TEMPLATE_WORDS: tuple[str, ...] = ("question", "answer", ":")

# A special token, a run of letters/digits/apostrophes, or one punctuation mark.
_WORD_RE = re.compile(r"<[a-z_]+>|[a-z0-9']+|[^\sa-z0-9']")


DEFAULT_TEMPLATE = f"{VIDEO} question : {{question}} answer :"


def check_template(template: str) -> None:
    """A chat template holds ``<video>`` once and ``{question}`` once."""
    if template.count(VIDEO) != 1 or template.count("{question}") != 1:
        raise ValueError(
            f"chat template must contain {VIDEO} once and {{question}} once: {template!r}")


def format_followup(question: str, template: str = DEFAULT_TEMPLATE) -> str:
    """A later turn: the template without the video placeholder.

    >>> format_followup("and then")
    'question : and then answer :'
    """
    check_template(template)
    if VIDEO in question:
        raise ValueError(f"question must not contain {VIDEO}: {question!r}")
    before, after = template.split(VIDEO)
    return (before + after.lstrip()).lstrip().format(question=question.strip())


def format_prompt(question: str, history: Sequence[tuple[str, str]] = (),
                  template: str = DEFAULT_TEMPLATE) -> str:
    """Chat template: the video placeholder (exactly once), the question, a cue.

    Earlier turns of a conversation (``history``, ``(question, answer)`` pairs)
    come first, each answer right after its question; later turns use the
    template without the placeholder, so the video appears once, in turn one.

    >>> format_prompt("what color was the flash")
    '<video> question : what color was the flash answer :'
    >>> format_prompt("and then", history=[("what moved", "a car")])
    '<video> question : what moved answer : a car question : and then answer :'
    """
    check_template(template)
    turns = [*history, (question, None)]
    parts = []
    for i, (q, a) in enumerate(turns):
        if VIDEO in q or (a is not None and VIDEO in a):
            raise ValueError(f"question must not contain {VIDEO}: {q!r}")
        parts.append(template.format(question=q.strip()) if i == 0
                     else format_followup(q, template))
        if a is not None:
            parts.append(a.strip())
    return " ".join(parts)


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

    def to_spec(self) -> dict:
        return dict(kind="word", words=list(self._vocab[len(SPECIAL_TOKENS):]))

    def __repr__(self) -> str:
        return f"WordTokenizer(vocab_size={self.vocab_size})"


def word_tokenizer_for(texts: Iterable[str], template: str = DEFAULT_TEMPLATE) -> WordTokenizer:
    """A word tokenizer over every word of ``texts`` and the chat template (sorted, fixed).

    The vocabulary of a small dataset's own questions and answers: what a model
    trained from scratch needs, with nothing to download.
    """
    words = set(split_words(template.replace("{question}", " ")))
    for text in texts:
        words.update(split_words(text))
    return WordTokenizer(sorted(words - set(SPECIAL_TOKENS)))


class _SpecialIds:
    """Splits text on ``<video>`` so the placeholder is always exactly one id.

    The text between placeholders is encoded as written, whitespace included (as
    LLaVA's ``tokenizer_image_token`` does): chat templates put newlines around it.
    """

    video_id: int

    def _encode_plain(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for i, part in enumerate(text.split(VIDEO)):
            if i:
                ids.append(self.video_id)
            if part:
                ids.extend(self._encode_plain(part))
        return ids


class SentencePieceTokenizer(_SpecialIds):
    """A SentencePiece model file (``.model``) loaded from a local path.

    ``<video>`` (and ``<pad>`` when the model has no pad piece) that the model
    lacks get new ids after its vocabulary, so ``vocab_size`` grows by them and
    the LLM's embedding table must cover them (it does when
    ``model.llm.vocab_size`` is 0).
    """

    def __init__(self, model_path: str, *, proto: bytes | None = None):
        if proto is None:
            with open(model_path, "rb") as f:  # FileNotFoundError names the path
                proto = f.read()
        self._proto, self._path = proto, model_path
        self._load()

    def to_spec(self) -> dict:
        return dict(kind="sentencepiece", path=self._path,
                    proto=base64.b64encode(self._proto).decode("ascii"))

    def _load(self):
        import sentencepiece as spm  # noqa: PLC0415  (optional dependency)

        self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
        n = self._sp.get_piece_size()
        if self._sp.bos_id() < 0 or self._sp.eos_id() < 0:
            raise ValueError(f"{self._path}: the SentencePiece model needs bos and eos pieces")
        extra = []
        video = self._sp.piece_to_id(VIDEO)
        if video == self._sp.unk_id() or video >= n:
            video = n + len(extra)
            extra.append(VIDEO)
        pad = self._sp.pad_id()
        if pad < 0:
            pad = n + len(extra)
            extra.append(PAD)
        self._base, self._extra = n, tuple(extra)
        self._video_id, self._pad_id = video, pad

    def __getstate__(self):  # Grain workers get a pickled copy: ship the model bytes
        return {"proto": self._proto, "path": self._path}

    def __setstate__(self, state):
        self._proto, self._path = state["proto"], state["path"]
        self._load()

    vocab_size = property(lambda self: self._base + len(self._extra))
    pad_id = property(lambda self: self._pad_id)
    bos_id = property(lambda self: self._sp.bos_id())
    eos_id = property(lambda self: self._sp.eos_id())
    video_id = property(lambda self: self._video_id)

    def _encode_plain(self, text: str) -> list[int]:
        return list(self._sp.encode(text))

    def decode(self, ids: Iterable[int]) -> str:
        return _decode_runs(ids, self, lambda run: self._sp.decode(run), self._base, self._extra)

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer({self._path!r}, vocab_size={self.vocab_size})"


class HuggingFaceTokenizer(_SpecialIds):
    """A Hugging Face ``tokenizers`` file (``tokenizer.json``, or a folder holding it).

    bos/eos/pad come from a ``tokenizer_config.json`` beside it when present,
    else from the usual token names; a missing bos reuses eos (as Qwen does), a
    missing ``<pad>`` or ``<video>`` is added as a special token after the vocabulary.
    """

    _BOS = ("<s>", "<bos>", "<|begin_of_text|>", "<|startoftext|>")
    _EOS = ("</s>", "<eos>", "<|endoftext|>", "<|end_of_text|>", "<|im_end|>")
    _PAD = ("<pad>", "<|pad|>", "[PAD]")

    def __init__(self, path: str, *, spec: dict | None = None):
        import tokenizers  # noqa: PLC0415  (optional dependency)

        self._path = path
        if spec is not None:  # a saved tokenizer: its JSON and special ids, no files
            self._tok = tokenizers.Tokenizer.from_str(spec["json"])
            self._ids = {k: int(v) for k, v in spec["ids"].items()}
            self.add_bos = bool(spec.get("add_bos", self._ids["bos"] != self._ids["eos"]))
            return
        file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
        if not os.path.isfile(file):
            raise FileNotFoundError(f"Hugging Face tokenizer file not found: {file}")
        self._tok = tokenizers.Tokenizer.from_file(file)
        names = _hf_special_names(os.path.dirname(file))
        vocab = self._tok.get_vocab(with_added_tokens=True)

        def find(key, candidates):
            for name in ([names[key]] if names.get(key) else []) + list(candidates):
                if name in vocab:
                    return name
            return None

        eos = find("eos_token", self._EOS)
        if eos is None:
            raise ValueError(f"{file}: no end-of-sequence token (tried {self._EOS})")
        bos = find("bos_token", self._BOS) or eos
        pad = find("pad_token", self._PAD)
        missing = [t for t in (VIDEO, None if pad else PAD) if t and t not in vocab]
        if missing:
            self._tok.add_special_tokens(missing)
        pad = pad or PAD
        self._ids = {k: self._tok.token_to_id(v)
                     for k, v in (("bos", bos), ("eos", eos), ("pad", pad), ("video", VIDEO))}
        # Whether a prompt starts with bos: tokenizer_config.json's add_bos_token, else only
        # when bos is a token of its own (Qwen has none: it reuses eos).
        add_bos = names.get("add_bos_token")
        self.add_bos = bool(self._ids["bos"] != self._ids["eos"] if add_bos is None else add_bos)

    def to_spec(self) -> dict:
        return dict(kind="huggingface", path=self._path, json=self._tok.to_str(),
                    ids=dict(self._ids), add_bos=self.add_bos)

    vocab_size = property(lambda self: self._tok.get_vocab_size(with_added_tokens=True))
    pad_id = property(lambda self: self._ids["pad"])
    bos_id = property(lambda self: self._ids["bos"])
    eos_id = property(lambda self: self._ids["eos"])
    video_id = property(lambda self: self._ids["video"])

    def _encode_plain(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Iterable[int]) -> str:
        kept = []
        for n, i in enumerate(ids):
            i = int(i)
            if n == 0 and i == self.bos_id:  # bos may equal eos (Qwen): a leading one is bos
                continue
            if i == self.eos_id:
                break
            if i not in (self.pad_id, self.bos_id):
                kept.append(i)
        return self._tok.decode(kept, skip_special_tokens=False)

    def __repr__(self) -> str:
        return f"HuggingFaceTokenizer({self._path!r}, vocab_size={self.vocab_size})"


def _hf_special_names(folder: str) -> dict:
    """bos/eos/pad token strings from ``tokenizer_config.json`` (plain or AddedToken dicts)."""
    path = os.path.join(folder, "tokenizer_config.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        cfg = json.load(f)
    out = {}
    for key in ("bos_token", "eos_token", "pad_token"):
        value = cfg.get(key)
        out[key] = value.get("content") if isinstance(value, dict) else value
    if "add_bos_token" in cfg:
        out["add_bos_token"] = cfg["add_bos_token"]
    return out


def _decode_runs(ids, tok, decode_run, base: int, extra: tuple[str, ...]) -> str:
    """Decodes runs of model ids, spelling added ids; stops at eos, skips pad and bos."""
    pieces, run = [], []
    for i in ids:
        i = int(i)
        if i == tok.eos_id:
            break
        if i in (tok.pad_id, tok.bos_id):
            continue
        if i >= base:
            pieces.append(decode_run(run))
            run = []
            pieces.append(extra[i - base] if i - base < len(extra) else UNK)
        else:
            run.append(i)
    pieces.append(decode_run(run))
    return " ".join(p for p in pieces if p)


# ----------------------------------------------------------------------------
# Saved with checkpoints and exports: a tokenizer as JSON, and back.
# ----------------------------------------------------------------------------


def to_spec(tokenizer: Tokenizer) -> dict:
    """A JSON-serialisable description that ``from_spec`` turns back into the same tokenizer.

    Holds the whole vocabulary or tokenizer file, so a saved model needs no
    training annotations and no tokenizer path to be read again.
    """
    if not hasattr(tokenizer, "to_spec"):
        raise TypeError(f"{type(tokenizer).__name__} has no to_spec(); a tokenizer saved with a"
                        " checkpoint must describe itself as JSON")
    return tokenizer.to_spec()


def from_spec(spec: dict) -> Tokenizer:
    kind = spec.get("kind")
    if kind == "word":
        return WordTokenizer(spec["words"])
    if kind == "sentencepiece":
        return SentencePieceTokenizer(spec["path"], proto=base64.b64decode(spec["proto"]))
    if kind == "huggingface":
        return HuggingFaceTokenizer(spec["path"], spec=spec)
    raise ValueError(f"saved tokenizer: unknown kind {kind!r}")
