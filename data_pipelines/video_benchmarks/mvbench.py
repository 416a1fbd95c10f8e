"""MVBench (20 temporal tasks, 200 questions each) as lmms-eval's ``mvbench_*`` tasks.

Follows lmms-eval 0.7.3's ``lmms_eval/tasks/mvbench/utils.py`` and per-task yamls: prompt
``"Question:" + question + "\\nOption:\\n" + "(A) ...\\n" ... + post_prompt``, 16 new
tokens, ``mcq_acc`` extraction (its punctuation rules and its ``re.UNICODE`` passed as
the ``count`` of ``periodStrip.sub`` included), and a task score over the predictions
that are not empty: empty ones leave the denominator. The group score is the mean of the
task scores weighted by each task's number of questions (lmms-eval's group default).

Released layout (``OpenGVLab/MVBench``): ``json/<task>.json`` (lists of ``video``,
``question``, ``candidates``, ``answer``) and the videos unpacked under ``<data>/`` or
``<data>/video/`` in the folders of ``DATA_LIST``; a video that is a folder of frames is
read as its images in name order. Segment bounds (``start``/``end``) are not applied, as
in lmms-eval.
"""

from __future__ import annotations

import os
import re
import string

from data_pipelines.video_benchmarks.base import Doc, find_annotations, read_records, require

NAME, METRIC, MAX_NEW_TOKENS = "mvbench", "mvbench_accuracy", 16
POST_PROMPT = "Only give the best option.\n"

DATA_LIST = {
    "object_interaction": "star/Charades_segment",
    "action_sequence": "star/Charades_segment",
    "action_prediction": "star/Charades_segment",
    "action_localization": "sta/sta_video_segment",
    "moving_count": "clevrer/video_validation",
    "fine_grained_pose": "nturgbd_convert",
    "character_order": "perception/videos",
    "object_shuffle": "perception/videos",
    "egocentric_navigation": "vlnqa",
    "moving_direction": "clevrer/video_validation",
    "episodic_reasoning": "tvqa/video_fps3_hq_segment",
    "fine_grained_action": "Moments_in_Time_Raw/videos",
    "scene_transition": "scene_qa/video",
    "state_change": "perception/videos",
    "moving_attribute": "clevrer/video_validation",
    "action_antonym": "ssv2_video_mp4",
    "unexpected_action": "FunQA_test/test",
    "counterfactual_inference": "clevrer/video_validation",
    "object_existence": "clevrer/video_validation",
    "action_count": "perception/videos",
}


def load(data_dir: str) -> list[Doc]:
    docs = []
    for task, folder in DATA_LIST.items():
        path = find_annotations(data_dir, [f"json/{task}.json", f"{task}.json"], f"MVBench {task}")
        for record in read_records(path):
            require(record, ("video", "question", "candidates", "answer"), f"{path}")
            video = os.path.join(data_dir, folder, record["video"])
            if not os.path.exists(video):
                video = os.path.join(data_dir, "video", folder, record["video"])
            docs.append(Doc(len(docs), dict(record, sub_task=task), video, record["answer"]))
    return docs


def doc_to_text(doc: Doc) -> str:
    options = "".join(f"({string.ascii_uppercase[i]}) {c}\n" for i, c in enumerate(doc["candidates"]))
    return "Question:" + doc["question"] + "\nOption:\n" + options + POST_PROMPT


_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")
_PUNCT = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<",
          "@", "`", ",", "?", "!"]


def _process_punctuation(text: str) -> str:
    out = text
    for p in _PUNCT:
        if (p + " " in text or " " + p in text) or re.search(_COMMA_STRIP, text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, re.UNICODE)  # as lmms-eval: the flag lands in `count`


def normalise(answer: str) -> str:
    """lmms-eval's ``mcq_acc.process``: a letter A-E when one is found, else the cleaned text."""
    match = re.compile(r"^([A-E])\.\s*(.+)$", re.IGNORECASE).match(answer.strip())
    if match:
        return match.group(1).upper()
    answer = answer.replace("\n", " ").replace("\t", " ").strip()
    answer = _process_punctuation(answer)
    answer = answer.strip("'").strip('"').strip(")").strip("(").strip().lower()
    letter = re.search(r"\b([A-E])\b", answer, re.IGNORECASE)
    return letter.group(1).upper() if letter else answer


def gt_letter(doc: Doc) -> str | None:
    for i, candidate in enumerate(doc["candidates"]):
        if candidate == doc["answer"]:
            return string.ascii_uppercase[i]
    return None


def process(doc: Doc, pred: str, rng) -> dict:
    del rng
    gt = gt_letter(doc)
    score = int(gt is not None and normalise(pred) == normalise(gt))
    return {"pred_answer": pred, "gt_answer": gt, "score": score, "sub_task": doc["sub_task"]}


def aggregate(values: list[dict]) -> dict:
    per_task: dict[str, dict] = {}
    for v in values:
        t = per_task.setdefault(v["sub_task"], {"num": 0, "answered": 0, "correct": 0})
        t["num"] += 1
        if v["pred_answer"] != "":
            t["answered"] += 1
            t["correct"] += v["score"]
    for t in per_task.values():
        t["score"] = 100 * t["correct"] / t["answered"] if t["answered"] else 0
    total = sum(t["num"] for t in per_task.values())
    score = sum(t["score"] * t["num"] for t in per_task.values()) / total if total else 0
    return {"score": score, "per_category": {k: per_task[k]["score"] for k in sorted(per_task)},
            "counts": per_task, "unanswered": sum(t["num"] - t["answered"]
                                                   for t in per_task.values())}
