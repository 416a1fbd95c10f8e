"""EgoSchema, the 500-question subset with public answers, as lmms-eval's ``egoschema_subset``.

Follows lmms-eval 0.7.3's ``lmms_eval/tasks/egoschema/utils.py``: prompt = question, each
option on its own line, then ``"\\nAnswer with the option's letter from the given choices
directly."``; 16 new tokens; ``egoschema_process_results_generation`` with that file's own
``parse_multi_choice_response`` (letters in ``(X)``, ``X `` or ``X.`` form, the first in the
reply wins; option texts for longer replies; a random letter when nothing is found, here
from the run's seeded ``random.Random``); accuracy over all 500
(``egoschema_aggregate_score``, a fraction).

Released layouts read: lmms-eval's ``lmms-eval/egoschema`` (``Subset/test-*.parquet`` with
``video_idx``, ``question``, ``option`` as ``"A. ..."``, ``answer``) or the original
release (``questions.json`` with ``q_uid``, ``option 0``..``option 4`` and
``subset_answers.json``); videos ``videos/<video_idx>.mp4``.
"""

from __future__ import annotations

import json
import os

import numpy as np

from data_pipelines.video_benchmarks.base import (Doc, find_annotations, find_video, read_records,
                                                  require)

NAME, METRIC, MAX_NEW_TOKENS = "egoschema", "score", 16
POST_PROMPT = "\nAnswer with the option's letter from the given choices directly."
LETTERS = "ABCDE"


def _original_release(data_dir: str) -> list[dict] | None:
    questions = os.path.join(data_dir, "questions.json")
    answers = os.path.join(data_dir, "subset_answers.json")
    if not (os.path.isfile(questions) and os.path.isfile(answers)):
        return None
    with open(answers) as f:
        subset = json.load(f)
    records = []
    for q in read_records(questions):
        require(q, ("q_uid", "question") + tuple(f"option {i}" for i in range(5)), questions)
        if q["q_uid"] in subset:
            records.append({"question_idx": q["q_uid"], "question": q["question"],
                            "video_idx": q["q_uid"],
                            "option": [f"{LETTERS[i]}. {q[f'option {i}']}" for i in range(5)],
                            "answer": str(subset[q["q_uid"]])})
    return records


def load(data_dir: str) -> list[Doc]:
    records = _original_release(data_dir)
    where = os.path.join(data_dir, "questions.json")
    if records is None:
        where = find_annotations(data_dir, ["Subset", "subset.parquet", "subset.json",
                                            "subset.jsonl"], "EgoSchema subset")
        records = read_records(where)
    docs = []
    for record in records:
        require(record, ("video_idx", "question", "option", "answer"), where)
        video = find_video(os.path.join(data_dir, "videos"), record["video_idx"], (".mp4", ".MP4"))
        docs.append(Doc(len(docs), record, video, record["answer"]))
    return docs


def doc_to_text(doc: Doc) -> str:
    question = doc["question"]
    for op in doc["option"]:
        question += "\n" + op
    return question + POST_PROMPT


def parse(response: str, options: list[str], rng) -> str:
    """lmms-eval 0.7.3's EgoSchema parser: every ``(X)``, ``X `` and ``X.`` found is a candidate
    (then, for replies of more than 5 words, the option texts); the first one in the reply
    wins; none: a random letter."""
    for char in [",", ".", "!", "?", ";", ":", "'"]:
        response = response.strip(char)
    response = " " + response + " "
    index2ans = {LETTERS[i]: options[i].strip() for i in range(5)}
    found = [f"({c})" for c in LETTERS if f"({c})" in response]
    found += [f"{c} " for c in LETTERS if f"{c} " in response]
    found += [f"{c}." for c in LETTERS if f"{c}." in response]
    by_text = False
    if not found and len(response.split()) > 5:
        found = [c for c, ans in index2ans.items() if ans.lower() in response.lower()]
        by_text = True
    if not found:
        return rng.choice(list(LETTERS))
    if len(found) > 1:
        starts = [response.lower().rfind(index2ans[c].lower()) if by_text else response.rfind(c)
                  for c in found]
        pick = found[int(np.argmin(starts))]
    else:
        pick = found[0]
    return pick.replace("(", "").replace(")", "").replace(".", "").strip()


def process(doc: Doc, pred: str, rng) -> dict:
    parsed = parse(pred, list(doc["option"]), rng)
    return {"pred": LETTERS.find(parsed) if parsed in LETTERS else -1,
            "ground_truth": doc["answer"], "parsed": parsed}


def aggregate(values: list[dict]) -> dict:
    yes = sum(str(v["ground_truth"]) == str(v["pred"]) for v in values)
    return {"score": yes / len(values) if values else 0,
            "per_category": {}}
