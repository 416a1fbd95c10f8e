"""Video-MME (900 videos, 2,700 questions; short, medium, long) as lmms-eval's ``videomme`` task
(frames only, no subtitles).

Follows lmms-eval 0.7.3's ``lmms_eval/tasks/videomme/utils.py`` (``videomme_doc_to_text``,
``extract_characters_regex`` = ``_task_utils/mcq_extract.extract_mcq_answer`` over A-D,
``videomme_aggregate_results``) with ``videomme.yaml``'s default ``post_prompt`` and 16 new
tokens. (Earlier lmms-eval releases stripped "The best answer is"-style prefixes and took
the first capital A-D; 0.7.3 ranks every letter it finds by the format it appears in.) The
score is over every question (no letter found counts as wrong).

Released layout (``lmms-lab/Video-MME``): ``videomme/test-*.parquet`` (or a JSON / JSONL
export with the same fields) and ``data/<videoID>.mp4``.
"""

from __future__ import annotations

import os
import re

from data_pipelines.video_benchmarks.base import (Doc, find_annotations, find_video, read_records,
                                                  require)

NAME, METRIC, MAX_NEW_TOKENS = "videomme", "videomme_perception_score", 16
OPTION_PROMPT = ("Select the best answer to the following multiple-choice question based on the"
                 " video and the subtitles. Respond with only the letter (A, B, C, or D) of the"
                 " correct option.")
POST_PROMPT = "\nAnswer with the option's letter from the given choices directly."
FIELDS = ("videoID", "question_id", "duration", "domain", "sub_category", "task_type",
          "question", "options", "answer")


def load(data_dir: str) -> list[Doc]:
    path = find_annotations(data_dir, ["videomme", "videomme/test.parquet", "test.parquet",
                                       "videomme.json", "videomme.jsonl"], "Video-MME")
    docs = []
    for record in read_records(path):
        require(record, FIELDS, path)
        video = find_video(os.path.join(data_dir, "data"), record["videoID"])
        docs.append(Doc(len(docs), record, video, record["answer"]))
    return docs


def doc_to_text(doc: Doc) -> str:
    question = doc["question"] + "\n" + "\n".join(f"{opt}" for opt in doc["options"])
    return OPTION_PROMPT + "\n" + question + "\n" + POST_PROMPT


# lmms-eval's shared multiple-choice extractor (``_task_utils/mcq_extract.py``): every
# occurrence of a choice letter in a known format is a candidate; the highest-priority
# format wins, and within it the last position.
_PHRASES = ("the answer is", "answer is", "the correct answer is", "correct answer is",
            "the best answer is", "best answer is", "the correct option is", "correct option is",
            "the best option is", "best option is", "the choice is", "choice is",
            "the correct choice is", "correct choice is", "i choose", "i select", "i pick",
            "my answer is", "my choice is", "옵션", "정답은", "답은", "답:", "答案是", "答案为", "选",
            "答えは")
_PRIORITY = dict(start=10, end=9, phrase=7, parentheses=6, period=5, colon=4, right_paren=3,
                 space=2, fallback=0)
CHOICES = ("A", "B", "C", "D")


def extract(response: str, choices=CHOICES) -> str:
    """The choice letter of a free-form reply, or "" (lmms-eval's ``extract_mcq_answer``)."""
    if not response or not response.strip():
        return ""
    text = response.strip()
    for char in [",", ".", "!", "?", ";", ":", "'", '"']:
        text = text.strip(char)
    text = " " + text + " "
    found = []  # (letter, position, format)
    for fmt, pattern in (("parentheses", "({})"), ("period", "{}."), ("colon", "{}:"),
                         ("right_paren", "{})"), ("space", "{} ")):
        found += [(c, text.rfind(pattern.format(c)), fmt) for c in choices
                  if pattern.format(c) in text]
    lower = text.lower()
    for phrase in _PHRASES:
        at = lower.find(phrase)
        if at != -1:
            found += [(c, text.find(c, at + len(phrase)), "phrase") for c in choices
                      if text.find(c, at + len(phrase)) != -1]
    core = text.strip()
    found += [(c, 0, "start") for c in choices
              if core.startswith(c) and (len(core) == 1 or not core[1].isalpha())]
    found += [(c, len(text) - 1, "end") for c in choices
              if core.endswith(c) and (len(core) == 1 or not core[-2].isalpha())]
    if not found:
        found = [(c, text.rfind(c), "fallback") for c in choices if c in text]
    if not found:
        return ""
    found.sort(key=lambda f: (_PRIORITY[f[2]], f[1]), reverse=True)
    return found[0][0]


def process(doc: Doc, pred: str, rng) -> dict:
    del rng
    pred_ans = extract(pred)
    return {"question_id": doc["question_id"], "duration": doc["duration"],
            "category": doc["domain"], "sub_category": doc["sub_category"],
            "task_category": doc["task_type"], "pred_answer": pred_ans, "answer": doc["answer"],
            "score": float(pred_ans.lower() == doc["answer"].lower()), "videoID": doc["videoID"]}


def _rates(values: list[dict], key: str) -> dict:
    groups: dict[str, list[int]] = {}
    for v in values:
        g = groups.setdefault(v[key], [0, 0])
        g[0] += v["pred_answer"] == v["answer"]
        g[1] += 1
    return {k: 100 * c / n for k, (c, n) in sorted(groups.items())}


def aggregate(values: list[dict]) -> dict:
    correct = sum(v["pred_answer"] == v["answer"] for v in values)
    return {"score": 100 * correct / len(values) if values else 0,
            "per_category": _rates(values, "task_category"),
            "per_duration": _rates(values, "duration"), "per_domain": _rates(values, "category"),
            "per_sub_category": _rates(values, "sub_category")}
