"""LongVideoBench validation, video only, as lmms-eval's ``longvideobench_val_v``.

Follows lmms-eval 0.7.3's ``lmms_eval/tasks/longvideobench/utils.py`` and
``longvideobench_val_v.yaml``: prompt = question, the options that are not ``"N/A"`` as
``"A. ..."`` lines, then ``"\\nAnswer with the option's letter from the given choices
directly.\\n"``; 32 new tokens; extraction strips the answer prefixes, and a reply of
more than 10 words without a letter, or with no letter A-E, gets a random option (here
from the run's seeded ``random.Random``, in sample order); accuracy per duration group
and question category, overall the instance-level accuracy over both groupings.

Released layout (``longvideobench/LongVideoBench``): ``lvb_val.json`` (``id``,
``video_path``, ``question``, ``option0``..``option4``, ``correct_choice``,
``duration_group``, ``question_category``) or its parquet; ``videos/<video_path>``.
"""

from __future__ import annotations

import os
import re

from data_pipelines.video_benchmarks.base import Doc, find_annotations, read_records, require

NAME, METRIC, MAX_NEW_TOKENS = "longvideobench", "lvb_acc", 32
POST_PROMPT = "Answer with the option's letter from the given choices directly.\n"
_PREFIXES = ["The best answer is", "The correct answer is", "The answer is", "The answer",
             "The best option is", "The correct option is", "Best answer:", "Best option:"]


def load(data_dir: str) -> list[Doc]:
    path = find_annotations(data_dir, ["lvb_val.json", "validation", "lvb_val.jsonl"],
                            "LongVideoBench validation")
    docs = []
    for record in read_records(path):
        require(record, ("id", "video_path", "question", "correct_choice", "duration_group",
                         "question_category", "option0"), path)
        video = os.path.join(data_dir, "videos", record["video_path"])
        docs.append(Doc(len(docs), record, video, record["correct_choice"]))
    return docs


def _candidates(doc: Doc) -> list[str]:
    return [doc.get(f"option{i}") for i in range(5) if doc.get(f"option{i}") != "N/A"]


def doc_to_text(doc: Doc) -> str:
    options = "\n".join(". ".join([chr(ord("A") + i), c]) for i, c in enumerate(_candidates(doc)))
    return f"{doc['question']}\n{options}\n{POST_PROMPT}"


def parse(response: str, all_choices: list[str], rng) -> str:
    s = response.strip()
    for prefix in _PREFIXES:
        s = s.replace(prefix, "")
    if len(s.split()) > 10 and not re.search("[ABCDE]", s):
        return rng.choice(all_choices)
    match = re.search(r"[ABCDE]", s)
    return rng.choice(all_choices) if match is None else match[0]


def process(doc: Doc, pred: str, rng) -> dict:
    choices = []
    for i in range(5):  # lmms-eval stops at the first "N/A"
        if doc.get(f"option{i}") == "N/A":
            break
        choices.append(chr(ord("A") + i))
    return {"id": doc["id"], "duration_group": doc["duration_group"],
            "question_category": doc["question_category"],
            "answer": chr(ord("A") + int(doc["correct_choice"])),
            "parsed_pred": parse(pred, choices, rng)}


def aggregate(values: list[dict]) -> dict:
    subsets: dict[str, list[dict]] = {}
    for v in values:
        subsets.setdefault(str(v["duration_group"]), []).append(v)
        subsets.setdefault(v["question_category"], []).append(v)
    accs = {k: sum(v["answer"] == v["parsed_pred"] for v in g) / len(g)
            for k, g in sorted(subsets.items())}
    total = sum(len(g) for g in subsets.values())
    overall = sum(accs[k] * len(g) for k, g in subsets.items()) / total if total else 0
    return {"score": round(overall, 5), "per_category": {k: round(a, 5) for k, a in accs.items()}}
