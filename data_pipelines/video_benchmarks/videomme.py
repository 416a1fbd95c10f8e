"""Video-MME (900 videos, 2,700 questions; short, medium, long) as lmms-eval's ``videomme`` task
(frames only, no subtitles).

Follows lmms-eval ``lmms_eval/tasks/videomme/utils.py`` (``videomme_doc_to_text``,
``extract_characters_regex``, ``videomme_aggregate_results``) with ``videomme.yaml``'s
default ``post_prompt`` and 16 new tokens. Extraction strips the answer prefixes (the
list as written there, two pairs joined by Python's string concatenation), returns no
answer for more than 10 words without a letter, else the first of A-D. The score is
over every question (an unparsed answer counts as wrong).

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


_PREFIXES = [
    "The best answer is",
    "The correct answer is",
    "The answer is",
    "The answer",
    "The best option is" "The correct option is",  # noqa: ISC001  (lmms-eval's list, as is)
    "Best answer:" "Best option:",  # noqa: ISC001
]


def extract(s: str) -> str:
    s = s.strip()
    for prefix in _PREFIXES:
        s = s.replace(prefix, "")
    if len(s.split()) > 10 and not re.search("[ABCD]", s):
        return ""
    match = re.search(r"[ABCD]", s)
    return "" if match is None else match[0]


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
