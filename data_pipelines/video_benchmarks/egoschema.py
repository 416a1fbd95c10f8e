"""EgoSchema, the 500-question subset with public answers, as lmms-eval's ``egoschema_subset``.

Follows lmms-eval ``lmms_eval/tasks/egoschema/utils.py``: prompt = question, each option
on its own line, then ``"\\nAnswer with the option's letter from the given choices
directly."``; 16 new tokens; ``egoschema_process_results_generation``'s exact matching
(the whole option string, then the option sentence, then the letter; anything else is
no answer, index -1); accuracy over all 500 (``egoschema_aggregate_score``, a fraction).

Released layouts read: lmms-eval's ``lmms-eval/egoschema`` (``Subset/test-*.parquet`` with
``video_idx``, ``question``, ``option`` as ``"A. ..."``, ``answer``) or the original
release (``questions.json`` with ``q_uid``, ``option 0``..``option 4`` and
``subset_answers.json``); videos ``videos/<video_idx>.mp4``.
"""

from __future__ import annotations

import json
import os

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


def pred_index(options: list[str], pred: str) -> int:
    """lmms-eval's matching: complete option, option sentence, option letter; else -1."""
    strs = [o if o.endswith(".") else o + "." for o in options]
    sents = [o.split(". ")[1] if ". " in o else o for o in strs]
    inds = [o.split(". ")[0] if ". " in o else o for o in strs]
    for i, s in enumerate(strs):
        if pred == s:
            return i
    for i, s in enumerate(sents):
        if pred == s:
            return i
    for i, s in enumerate(inds):
        if pred == s or pred == s.replace(".", ""):
            return i
    return -1


def process(doc: Doc, pred: str, rng) -> dict:
    del rng
    return {"pred": pred_index(list(doc["option"]), pred), "ground_truth": doc["answer"]}


def aggregate(values: list[dict]) -> dict:
    yes = sum(str(v["ground_truth"]) == str(v["pred"]) for v in values)
    return {"score": yes / len(values) if values else 0,
            "unparsed": sum(v["pred"] == -1 for v in values)}
