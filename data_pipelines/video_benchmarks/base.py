"""What every standard video benchmark shares: reading released files, the task interface,
lmms-eval's samples log.

A benchmark module defines, exactly as lmms-eval's task of the same name does:

  NAME, METRIC         the task and its metric key (the samples log names the metric);
  MAX_NEW_TOKENS       greedy decoding length (``generation_kwargs.max_new_tokens``);
  load(data_dir)       the released files on local disk -> ``Doc`` list (videos resolved);
  doc_to_text(doc)     the question text the model's chat template wraps;
  process(doc, pred, rng)  one stripped prediction -> the metric's per-sample value;
  aggregate(values)    -> ``{"score": headline, "per_category": {...}, ...}``.

``rng`` is a ``random.Random`` owned by the run (seeded): the rules that fall back to a
random option (NExT-QA, LongVideoBench) draw from it in sample order, so a rerun with the
same seed scores the same.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from typing import Any


@dataclasses.dataclass
class Doc:
    """One question: the released record as it is, and its video on disk."""

    doc_id: int
    fields: dict[str, Any]
    video: str
    target: Any

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)


def read_records(path: str) -> list[dict]:
    """A released annotation file: JSON list, JSON lines or parquet -> list of dicts."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"benchmark annotations not found: {path}")
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq  # noqa: PLC0415  (tensorflow-datasets brings pyarrow)

        return pq.read_table(path).to_pylist()
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        if path.endswith(".jsonl"):
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        records = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if isinstance(records, dict):  # a {id: record} map
        records = [dict(v, **({"_key": k} if "_key" not in v else {})) for k, v in records.items()]
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ValueError(f"{path}: expected a list of records")
    return records


def find_annotations(data_dir: str, candidates: Sequence[str], what: str) -> str:
    """The first of ``candidates`` (paths relative to ``data_dir``) that exists."""
    for name in candidates:
        path = os.path.join(data_dir, name)
        if os.path.isfile(path):
            return path
        if os.path.isdir(path):  # a folder of parquet shards: the first split file
            shards = sorted(f for f in os.listdir(path) if f.endswith(".parquet"))
            if shards:
                return os.path.join(path, shards[0])
    raise FileNotFoundError(f"{what}: none of {list(candidates)} under {data_dir}")


def find_video(folder: str, stem: str, extensions: Iterable[str] = (".mp4", ".MP4", ".mkv",
                                                                     ".webm", ".avi")) -> str:
    """``folder/stem`` with the first extension that exists (lmms-eval tries mp4, MP4, mkv)."""
    if os.path.splitext(stem)[1] and os.path.exists(os.path.join(folder, stem)):
        return os.path.join(folder, stem)
    for ext in extensions:
        path = os.path.join(folder, stem + ext)
        if os.path.exists(path):
            return path
    return os.path.join(folder, stem + next(iter(extensions)))  # missing: the reader counts it


def require(record: dict, keys: Sequence[str], where: str) -> None:
    missing = [k for k in keys if k not in record]
    if missing:
        raise ValueError(f"{where}: record lacks field(s) {missing}")


# ----------------------------------------------------------------------------
# lmms-eval's --log_samples record.
# ----------------------------------------------------------------------------


def hash_string(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _jsonable(x: Any) -> Any:
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


def sample_record(doc: Doc, prompt: str, generation: dict, raw: str, filtered: str,
                  metric: str, value: Any) -> dict:
    """One sample as lmms-eval 0.7.3 holds it before writing (``evaluator``'s logged
    sample); ``log_line`` gives the line its ``--log_samples`` file holds."""
    fields = _jsonable(doc.fields)
    return {"doc_id": doc.doc_id, "doc": fields, "target": _jsonable(doc.target),
            "arguments": [prompt, generation], "resps": [[raw]], "filtered_resps": [filtered],
            # lmms-eval logs None for a model that reports no token counts, as here.
            "token_counts": [None],
            "doc_hash": hash_string(json.dumps(fields, indent=2, ensure_ascii=False)),
            metric: _jsonable(value)}


def log_line(sample: dict) -> dict:
    """A ``sample_record`` as lmms-eval 0.7.3's evaluation tracker writes it to the samples
    log: the prompt as ``input``, one-request wrappers flattened, ``resps`` dropped when it
    equals ``filtered_resps``, the target as text, no ``arguments`` nor ``doc``."""
    line = {k: v for k, v in sample.items() if k not in ("arguments", "doc")}
    resps, filtered = sample["resps"], sample["filtered_resps"]
    if isinstance(resps, list) and len(resps) == 1:
        resps = resps[0]
    if isinstance(filtered, list) and len(filtered) == 1:
        filtered = filtered[0]
    line["filtered_resps"] = filtered
    if resps == filtered or (isinstance(resps, list) and len(resps) == 1
                             and resps[0] == filtered):
        line.pop("resps")
    else:
        line["resps"] = resps
    line["target"] = str(sample["target"])
    line["input"] = sample["arguments"][0]
    return line
