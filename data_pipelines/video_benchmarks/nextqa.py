"""NExT-QA multiple choice (test, 8,564 questions) as lmms-eval's ``nextqa_mc_test``.

Follows lmms-eval 0.7.3's ``lmms_eval/tasks/nextqa/utils.py`` (``nextqa_doc_to_text_mc``,
``nextqa_mc_process_results``, MMMU's ``parse_multi_choice_response``) and
``nextqa_mc_test.yaml``: prompt = the stripped question, then ``"A. <a0>"`` ..
``"E. <a4>"`` on their own lines (no post-prompt), 16 new tokens (lmms-eval's default
for generate_until tasks without generation_kwargs is larger; 16 covers a letter), exact
match averaged (a fraction). When nothing parses, lmms-eval picks a random option with
Python's global ``random``; here the run's seeded ``random.Random`` picks it, in sample
order. Per category: the question type (``CW``, ``CH``, ``TN``/``TP``, ``TC``, ``DB``,
``DC``, ``DL``, ``DO``).

Released layout (``lmms-lab/NExTQA``): ``MC/test-*.parquet`` (``video``, ``question``,
``a0``..``a4``, ``answer``, ``qid``, ``type``) and the videos anywhere under
``NExTVideo/`` as ``<video>.mp4``.
"""

from __future__ import annotations

import os

from data_pipelines.video_benchmarks.base import Doc, find_annotations, read_records, require
from data_pipelines.video_benchmarks.mc_parse import parse_multi_choice_response

NAME, METRIC, MAX_NEW_TOKENS = "nextqa", "exact_match", 16
OPTIONS = ["A", "B", "C", "D", "E"]


def _video_index(root: str) -> dict[str, str]:
    index = {}
    for folder, _, files in os.walk(root):
        for name in files:
            stem, ext = os.path.splitext(name)
            if ext.lower() in (".mp4", ".webm", ".avi", ".mkv"):
                index.setdefault(stem, os.path.join(folder, name))
    return index


def load(data_dir: str) -> list[Doc]:
    path = find_annotations(data_dir, ["MC", "MC/test.parquet", "nextqa_mc_test.json",
                                       "nextqa_mc_test.jsonl", "test.csv.json"], "NExT-QA MC")
    videos = _video_index(os.path.join(data_dir, "NExTVideo"))
    docs = []
    for record in read_records(path):
        require(record, ("video", "question", "answer", "type") + tuple(f"a{i}" for i in range(5)),
                path)
        video = videos.get(str(record["video"]),
                           os.path.join(data_dir, "NExTVideo", f"{record['video']}.mp4"))
        docs.append(Doc(len(docs), record, video, record["answer"]))
    return docs


def doc_to_text(doc: Doc) -> str:
    lines = [doc["question"].strip()]
    lines += [f"{OPTIONS[i]}. {doc[f'a{i}'].strip()}" for i in range(5)]
    return "\n".join(lines)


def process(doc: Doc, pred: str, rng) -> dict:
    index2ans = {OPTIONS[i]: doc[f"a{i}"].strip() for i in range(5)}
    parsed = parse_multi_choice_response(pred, list(OPTIONS), index2ans, rng)
    qtype = "TN" if doc["type"] == "TP" else doc["type"]
    return {"exact_match": parsed == OPTIONS[int(doc["answer"])], "parsed": parsed, "type": qtype}


def aggregate(values: list[dict]) -> dict:
    groups: dict[str, list[bool]] = {}
    for v in values:
        groups.setdefault(v["type"], []).append(v["exact_match"])
    return {"score": sum(v["exact_match"] for v in values) / len(values) if values else 0,
            "per_category": {k: sum(g) / len(g) for k, g in sorted(groups.items())}}
