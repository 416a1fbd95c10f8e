"""Annotation files -> validated question-answer records, indexed once, up front.

Two record formats, in a JSON list or one JSON object per line (JSONL):

LLaVA-Video conversations (multi-turn allowed; every assistant turn becomes one
example whose earlier turns are its ``history``)::

    {"id": "v1", "video": "clips/v1.mp4", "conversations": [
        {"from": "human", "value": "<video>\\nWhat is the man holding?"},
        {"from": "gpt", "value": "A red umbrella."}]}

Plain QA, optionally multiple choice and with a question ``family`` for
per-family accuracy::

    {"video": "clips/v2.mp4", "question": "Which way does the car turn?",
     "options": ["left", "right"], "answer": "B", "family": "motion"}

Multiple-choice options are rendered into the question as lettered lines
("A. left"), and the answer, given as a letter ("B", "(B)", "B.") or as the
option text, is normalised to the letter: exact-match evaluation then compares
letters. Video paths are relative to the video root and must stay inside it.

A record that cannot be used is skipped with a warning naming the file and
line and counted by kind (``ANNOTATION_ERRORS``); the caller decides whether
too many were bad.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import os
import re
import string
from typing import Any

from absl import logging

ANNOTATION_ERRORS: tuple[str, ...] = (
    "malformed_json",
    "missing_field",
    "unknown_option",
    "missing_video",
    "path_escapes_root",
)
DEFAULT_FAMILY = "all"
_HUMAN, _ASSISTANT = ("human", "user"), ("gpt", "assistant")
_PLACEHOLDERS = re.compile(r"<video>|<image>")
_LETTER = re.compile(r"^\(?([A-Za-z])\)?[.):]?$")            # "B", "(b)", "B.", "B)"
_LETTER_PREFIX = re.compile(r"^\(?([A-Za-z])[.):]\s+(.*)$", re.S)  # "B. text", "(B) text"


@dataclasses.dataclass(frozen=True)
class QARecord:
    """One example: a question about a video and its reference answer.

    ``history`` holds earlier ``(question, answer)`` turns of the same
    conversation; ``where`` is ``file:line`` (plus ``#turn``) for messages.
    """

    video: str
    question: str
    answer: str
    family: str = DEFAULT_FAMILY
    history: tuple[tuple[str, str], ...] = ()
    where: str = ""


class AnnotationError(ValueError):
    """A record that cannot be used; ``kind`` is one of ``ANNOTATION_ERRORS``."""

    def __init__(self, kind: str, message: str):
        super().__init__(f"{kind}: {message}")
        self.kind = kind


@dataclasses.dataclass(frozen=True)
class AnnotationIndex:
    """Every usable record of one file plus the count of skipped ones by kind."""

    path: str
    records: tuple[QARecord, ...]
    bad: dict[str, int]  # kind -> count
    num_entries: int     # records in the file, good or bad (before turn expansion)

    @property
    def num_bad(self) -> int:
        return sum(self.bad.values())

    @property
    def families(self) -> tuple[str, ...]:
        return tuple(sorted({r.family for r in self.records}))


def load_annotations(path: str, root: str) -> AnnotationIndex:
    """Parses and validates ``path`` against the video folder ``root``.

    Cached per (file, modification time): the train and eval sources, the
    tokenizer vocabulary and the family list all share one parse.
    """
    stat = os.stat(path)  # FileNotFoundError names the path
    return _load_cached(os.path.abspath(path), os.path.realpath(root), stat.st_mtime_ns,
                        stat.st_size)


@functools.lru_cache(maxsize=16)
def _load_cached(path: str, root: str, mtime_ns: int, size: int) -> AnnotationIndex:
    del mtime_ns, size  # cache keys only
    records, bad = [], collections.Counter()
    entries = list(_read_entries(path))
    for where, entry in entries:
        try:
            if isinstance(entry, AnnotationError):
                raise entry
            records.extend(parse_entry(entry, where, root))
        except AnnotationError as e:
            bad[e.kind] += 1
            logging.warning("Skipping annotation %s: %s", where, e)
    if bad:
        logging.warning("%s: skipped %d of %d records (%s)", path, sum(bad.values()),
                        len(entries), dict(bad))
    return AnnotationIndex(path=path, records=tuple(records), bad=dict(bad),
                           num_entries=len(entries))


def _read_entries(path: str):
    """Yields ``(where, dict | AnnotationError)``; a JSON list or JSON lines.

    A file whose text starts with ``[`` is a JSON list and must parse as a whole;
    otherwise every line is one record, and a line that is not UTF-8, not JSON,
    nested too deeply or holding a number too long to read is skipped and counted.
    """
    with open(path, "rb") as f:
        data = f.read()
    if data.lstrip().startswith(b"["):
        try:
            items = json.loads(data.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 text (byte {e.start}); a JSON list must parse"
                             " as a whole, JSON lines may skip bad lines") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON (line {e.lineno}: {e.msg}); a JSON list"
                             " must parse as a whole, JSON lines may skip bad lines") from None
        except (RecursionError, ValueError) as e:  # nesting or an integer beyond Python's limits
            raise ValueError(f"{path}: not readable as JSON ({_reason(e)}); a JSON list must"
                             " parse as a whole, JSON lines may skip bad lines") from None
        for i, item in enumerate(items):
            yield f"{path}:record {i + 1}", item
        return
    for lineno, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            yield where, json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as e:
            yield where, AnnotationError("malformed_json", f"not UTF-8 text (byte {e.start})")
        except json.JSONDecodeError as e:
            yield where, AnnotationError("malformed_json", f"{e.msg} at column {e.colno}")
        except (RecursionError, ValueError) as e:
            yield where, AnnotationError("malformed_json", _reason(e))


def _reason(error: Exception) -> str:
    if isinstance(error, RecursionError):
        return "nested too deeply"
    return str(error).split(";")[0]  # e.g. an integer literal of more than 4300 digits


def parse_entry(entry: Any, where: str, root: str) -> list[QARecord]:
    """One annotation entry -> its records (one per assistant turn for conversations)."""
    if not isinstance(entry, dict):
        raise AnnotationError("malformed_json", f"expected a JSON object, got {type(entry).__name__}")
    video = _field(entry, "video", str)
    resolve_video(video, root)
    family = entry.get("family", DEFAULT_FAMILY)
    if not isinstance(family, str) or not family.strip():
        raise AnnotationError("missing_field", f"'family' must be a non-empty string, got {family!r}")
    if "conversations" in entry:
        turns = _conversation_turns(_field(entry, "conversations", list))
        return [QARecord(video=video, question=q, answer=a, family=family.strip(),
                         history=tuple(turns[:i]),
                         where=where if len(turns) == 1 else f"{where}#turn {i + 1}")
                for i, (q, a) in enumerate(turns)]
    question = _clean(_field(entry, "question", str))
    answer = _field(entry, "answer", (str, int))
    answer = str(answer).strip()
    if "options" in entry:
        question, answer = render_multiple_choice(question, entry["options"], answer)
    if not question or not answer:
        raise AnnotationError("missing_field", "empty 'question' or 'answer'")
    return [QARecord(video=video, question=question, answer=answer, family=family.strip(),
                     where=where)]


def resolve_video(video: str, root: str) -> str:
    """``root``-relative video path -> absolute path; it must exist and stay inside root."""
    root = os.path.realpath(root)
    path = os.path.realpath(os.path.join(root, video))
    if os.path.commonpath([root, path]) != root:
        raise AnnotationError("path_escapes_root", f"video {video!r} resolves outside {root}")
    if not os.path.isfile(path):
        raise AnnotationError("missing_video", f"video {video!r} not found under {root}")
    return path


def render_multiple_choice(question: str, options: Any, answer: str) -> tuple[str, str]:
    """Options into the question as lettered lines; the answer as its option letter.

    ``options``: a list of texts (optionally already "A. ..."), or a dict
    letter -> text. ``answer``: a letter ("b", "(B)", "B.") or an option text.
    """
    if isinstance(options, dict):
        pairs = sorted((str(k).strip().upper(), str(v).strip()) for k, v in options.items())
    elif isinstance(options, list) and options:
        texts = [str(o).strip() for o in options]
        prefixed = [_LETTER_PREFIX.match(t) for t in texts]
        letters = string.ascii_uppercase[:len(texts)]
        if all(m and m.group(1).upper() == l for m, l in zip(prefixed, letters)):
            texts = [m.group(2).strip() for m in prefixed]
        pairs = list(zip(letters, texts))
    else:
        raise AnnotationError("missing_field", f"'options' must be a non-empty list or dict,"
                              f" got {options!r}")
    if len(pairs) > 26 or not all(len(l) == 1 and l.isalpha() and t for l, t in pairs):
        raise AnnotationError("missing_field", f"'options' must map letters A-Z to texts: {options!r}")
    letter = _LETTER.match(answer)
    by_letter = dict(pairs)
    if letter:
        chosen = letter.group(1).upper()
        if chosen not in by_letter:
            raise AnnotationError("unknown_option", f"answer {answer!r} is not one of the option"
                                  f" letters {sorted(by_letter)}")
    else:
        prefixed = _LETTER_PREFIX.match(answer)
        text = (prefixed.group(2) if prefixed else answer).strip().lower()
        matches = [l for l, t in pairs if t.lower() == text]
        if prefixed and prefixed.group(1).upper() in by_letter:
            matches = [prefixed.group(1).upper()]
        if not matches:
            raise AnnotationError("unknown_option", f"answer {answer!r} matches no option of"
                                  f" {[t for _, t in pairs]}")
        chosen = matches[0]
    lines = [question] + [f"{l}. {t}" for l, t in pairs]
    return "\n".join(lines), chosen


def _conversation_turns(conversations: list) -> list[tuple[str, str]]:
    """Alternating human/assistant messages -> ``[(question, answer), ...]``."""
    turns, question = [], None
    for i, message in enumerate(conversations):
        if not isinstance(message, dict) or "from" not in message or "value" not in message:
            raise AnnotationError("missing_field", f"conversations[{i}] needs 'from' and 'value'")
        role, value = str(message["from"]).lower(), _clean(str(message["value"]))
        if role in _HUMAN and question is None:
            question = value
        elif role in _ASSISTANT and question is not None:
            turns.append((question, value))
            question = None
        else:
            raise AnnotationError("missing_field", f"conversations[{i}] from {role!r}: turns"
                                  " must alternate human, gpt")
    if not turns or any(not q or not a for q, a in turns):
        raise AnnotationError("missing_field", "conversations need at least one human turn"
                              " answered by a gpt turn, both non-empty")
    return turns


def _field(entry: dict, key: str, types):
    if key not in entry:
        raise AnnotationError("missing_field", f"no {key!r} field")
    value = entry[key]
    if not isinstance(value, types) or isinstance(value, bool):
        raise AnnotationError("missing_field", f"{key!r} has the wrong type: {value!r}")
    return value


def _clean(text: str) -> str:
    """Drops image/video placeholders (the chat template places the video once)."""
    return _PLACEHOLDERS.sub("", text).strip()
